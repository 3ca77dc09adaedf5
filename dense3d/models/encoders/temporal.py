"""Frame-level features on a time axis: what the audio and video encoders return."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TemporalFeatures", "frame_periods", "frame_centres"]


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


def frame_periods(times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) seconds between frames of each clip: the mean gap between its real frames (``mask``
    (B, T)) at ``times`` (B, T), 1 s for a clip of fewer than two frames (no gap to measure).

    The clip's own mean gap, not the batch's first: a reader's fps grid keeps frames at uneven
    gaps (25 fps read at 8 fps keeps 0, 0.16, 0.28, 0.40, ...), and a padded clip's gaps run into
    the padding."""
    n = mask.sum(dim=1)  # (B,) real frames per clip
    last = torch.where(mask, times, torch.full_like(times, -torch.inf)).amax(dim=1)  # (B,)
    first = torch.where(mask, times, torch.full_like(times, torch.inf)).amin(dim=1)  # (B,)
    gaps = (last - first) / (n - 1).clamp(min=1).to(times.dtype)  # inf - inf = nan for a clip without frames
    return torch.where(n > 1, gaps, torch.ones_like(gaps))


def frame_centres(starts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) each real frame's mid-time from its start time (video pts) ``starts`` (B, T): the start
    plus half the clip's frame period (:func:`frame_periods`), so 4 fps frames starting at 0 are
    centred at 0.125, 0.375, ...; padded frames keep their value."""
    half = frame_periods(starts, mask)[:, None] / 2  # (B,) -> (B, 1)
    return torch.where(mask, starts + half, starts)
