"""dense3d.models.losses"""
