"""Frame-level features on a time axis: what the audio and video encoders return."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TemporalFeatures"]


@dataclass
class TemporalFeatures:
    """``features`` (B, T, D); ``times`` (B, T) seconds at each frame's centre; ``mask`` (B, T)
    bool, True at real (not padded) frames; ``directions`` (B, T, N) or None: a steered-response
    power map over N azimuth bins (``dense3d.models.encoders.audio.encoder.azimuth_bins``), from
    an audio encoder that computes one."""

    features: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    directions: torch.Tensor | None = None
