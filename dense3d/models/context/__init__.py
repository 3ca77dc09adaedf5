"""dense3d.models.context"""
