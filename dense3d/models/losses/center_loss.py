"""CenterPoint losses: Gaussian focal loss on heatmaps + weighted L1 on the box code at centres."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.losses.focal import GaussianFocalLoss

__all__ = ["CenterPointLoss"]


class CenterPointLoss(nn.Module):
    """Args:
        heatmap_weight, regression_weight: weights of the two terms.
        code_weights: one weight per regression channel (see ``CenterHead.code_names``), or None
            for all ones.
        focal: the heatmap loss module.

    ``forward(predictions, targets)`` with a ``CenterPredictions`` and a ``CenterTargets`` ->
    ``{"heatmap": scalar, "regression": scalar, "total": scalar}`` (sums over class groups).
    """

    def __init__(self, heatmap_weight: float = 1.0, regression_weight: float = 0.25, code_weights: Sequence[float] | None = None, focal: GaussianFocalLoss | None = None):
        super().__init__()
        self.heatmap_weight = heatmap_weight
        self.regression_weight = regression_weight
        self.code_weights = None if code_weights is None else tuple(float(w) for w in code_weights)
        self.focal = focal if focal is not None else GaussianFocalLoss()

    def forward(self, predictions, targets) -> dict[str, torch.Tensor]:
        heat = 0.0
        reg = 0.0
        for logits, regmap, t_heat, idx, t_reg, mask in zip(
            predictions.heatmaps, predictions.regression, targets.heatmaps, targets.indices, targets.regression, targets.masks
        ):
            heat = heat + self.focal(logits, t_heat)
            B, K = regmap.shape[:2]
            # (B, K, H, W) -> (B, H * W, K), then gather the centre cells: (B, M, K)
            flat = regmap.flatten(2).transpose(1, 2)
            pred = flat.gather(1, idx.unsqueeze(-1).expand(-1, -1, K))
            if self.code_weights is not None and len(self.code_weights) != K:
                raise ConfigError("CenterPointLoss", "code_weights", f"one weight per box code channel ({K})", got=list(self.code_weights))
            w = torch.ones(K, device=pred.device, dtype=pred.dtype) if self.code_weights is None else pred.new_tensor(self.code_weights)
            err = (pred - t_reg).abs() * w * mask.unsqueeze(-1).to(pred.dtype)
            reg = reg + err.sum() / mask.sum().clamp(min=1).to(pred.dtype)
        heat = heat * self.heatmap_weight
        reg = reg * self.regression_weight
        return {"heatmap": heat, "regression": reg, "total": heat + reg}
