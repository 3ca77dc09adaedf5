"""Sample transforms; each declares the ``Sample`` fields it ``reads`` and ``writes``."""
from dense3d.data.transforms.audio import AudioChannels, AudioResample, LogMelSpectrogram
from dense3d.data.transforms.compose import Compose, SampleKey, current_sample_key, sample_key
from dense3d.data.transforms.geometry import GlobalFlip, GlobalRotate, GlobalScale, apply_global_transform
from dense3d.data.transforms.images import ImageNormalize, ImageResize
from dense3d.data.transforms.points import ObjectRangeFilter, PointRangeFilter, PointShuffle, select_boxes

__all__ = [
    "AudioChannels",
    "AudioResample",
    "Compose",
    "GlobalFlip",
    "GlobalRotate",
    "GlobalScale",
    "ImageNormalize",
    "ImageResize",
    "LogMelSpectrogram",
    "ObjectRangeFilter",
    "PointRangeFilter",
    "PointShuffle",
    "SampleKey",
    "apply_global_transform",
    "current_sample_key",
    "sample_key",
    "select_boxes",
]
