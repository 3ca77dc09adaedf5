"""dense3d.engine"""
