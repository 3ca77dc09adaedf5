"""dense3d.models"""
