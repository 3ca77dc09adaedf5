"""dense3d.eval"""
