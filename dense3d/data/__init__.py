"""dense3d.data"""
