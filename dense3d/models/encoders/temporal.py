"""Frame-level features on a time axis: what the audio and video encoders return."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TemporalFeatures"]


@dataclass
class TemporalFeatures:
    """``features`` (B, T, D); ``times`` (B, T) seconds at each frame's centre; ``mask`` (B, T)
    bool, True at real (not padded) frames."""

    features: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
