"""Plain data: boxes, time spans, captions, samples and batches (no ``torch.nn``)."""
from dense3d.structures.boxes import BOX_CORNER_SIGNS, BOX_EDGES, Boxes3D, limit_period
from dense3d.structures.captions import DenseCaption
from dense3d.structures.events import Events
from dense3d.structures.sample import (
    AudioClip,
    Batch,
    BoxAnnotations,
    CameraImages,
    EventAnnotations,
    PointCloud,
    RegionFeatures,
    Sample,
    VideoFrames,
)

__all__ = [
    "AudioClip",
    "Batch",
    "BOX_CORNER_SIGNS",
    "BOX_EDGES",
    "BoxAnnotations",
    "Boxes3D",
    "CameraImages",
    "DenseCaption",
    "EventAnnotations",
    "Events",
    "limit_period",
    "PointCloud",
    "RegionFeatures",
    "Sample",
    "VideoFrames",
]
