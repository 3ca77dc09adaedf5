"""Gaussian focal loss (CenterNet, Zhou et al. 2019) on centre heatmaps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GaussianFocalLoss"]


class GaussianFocalLoss(nn.Module):
    """Penalty-reduced pixel-wise focal loss; targets are Gaussian splats with peak 1 at centres.

    ``forward(logits, target)`` (same shape) -> scalar, summed and divided by the number of
    peaks (at least 1). Computed from logits with ``logsigmoid`` for stability.
    """

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = logits.sigmoid()
        log_p = F.logsigmoid(logits)
        log_1mp = F.logsigmoid(-logits)
        pos = target.eq(1).to(logits.dtype)
        pos_loss = -log_p * (1 - p).pow(self.alpha) * pos
        neg_loss = -log_1mp * p.pow(self.alpha) * (1 - target).pow(self.gamma) * (1 - pos)
        return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)
