"""dense3d.models.captioner"""
