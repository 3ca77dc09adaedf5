"""dense3d.vis"""
