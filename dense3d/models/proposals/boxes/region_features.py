"""Region features of box proposals: the BEV map sampled on a fixed grid inside each rotated
box (bilinear, ``F.grid_sample``) plus an encoding of the box geometry -> ``RegionFeatures``."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.structures import RegionFeatures

__all__ = ["BEVRegionSampler", "box_geometry_encoding"]


def box_geometry_encoding(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 7) ``x, y, z, dx, dy, dz, yaw`` -> (..., 8) ``x, y, z, log dx, log dy, log dz, sin, cos``."""
    return torch.cat([boxes[..., 0:3], boxes[..., 3:6].clamp(min=1e-3).log(), boxes[..., 6:7].sin(), boxes[..., 6:7].cos()], dim=-1)


class BEVRegionSampler(nn.Module):
    """Args:
        in_channels: channels of the BEV map.
        out_channels: D, the region feature size.
        point_range: range of the BEV map (``x_min, y_min, z_min, x_max, y_max, z_max``).
        grid_points: g; each box is sampled on a g x g grid of cell centres (P = g * g tokens).

    ``forward(bev (B, C, H, W), boxes (B, R, >=7), scores (B, R), labels (B, R), mask (B, R))``
    -> ``RegionFeatures(kind="box")``: ``tokens`` (B, R, P, D) the projected grid samples,
    ``features`` (B, R, D) = MLP(mean and max of the tokens) + MLP(geometry encoding),
    ``geometry`` (B, R, 7) the boxes; ``extra["velocity"]`` (B, R, 2) when boxes carry one.
    Padded regions (mask False) get zero features and tokens.
    """

    def __init__(self, in_channels: int, out_channels: int, point_range: Sequence[float], grid_points: int = 7):
        super().__init__()
        self.point_range = tuple(float(v) for v in point_range)
        self.grid_points = grid_points
        self.in_channels, self.out_channels = in_channels, out_channels
        self.token_proj = nn.Linear(in_channels, out_channels)
        self.pool_mlp = nn.Sequential(nn.Linear(2 * out_channels, out_channels), nn.ReLU(inplace=True), nn.Linear(out_channels, out_channels))
        self.geometry_mlp = nn.Sequential(nn.Linear(8, out_channels), nn.ReLU(inplace=True), nn.Linear(out_channels, out_channels))
        g = (torch.arange(grid_points, dtype=torch.float32) + 0.5) / grid_points - 0.5  # cell centres in [-0.5, 0.5]
        gu, gv = torch.meshgrid(g, g, indexing="ij")
        self.register_buffer("unit_grid", torch.stack([gu.flatten(), gv.flatten()], dim=-1), persistent=False)  # (P, 2)

    def sample_points(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, R, >=7) -> (B, R, P, 2) BEV points of the sampling grid inside each rotated box."""
        local = self.unit_grid * boxes[..., None, 3:5]  # (B, R, P, 2) along / across the heading
        c, s = boxes[..., 6:7].cos(), boxes[..., 6:7].sin()  # (B, R, 1)
        x = boxes[..., None, 0] + c * local[..., 0] - s * local[..., 1]
        y = boxes[..., None, 1] + s * local[..., 0] + c * local[..., 1]
        return torch.stack([x, y], dim=-1)

    def forward(self, bev: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> RegionFeatures:
        B, R = boxes.shape[:2]
        P = self.grid_points**2
        x_min, y_min, _, x_max, y_max, _ = self.point_range
        dtype = torch.promote_types(bev.dtype, torch.float32)  # metres and scores: not in 16 bits under autocast
        pts = self.sample_points(boxes.to(dtype))
        # metres -> [-1, 1] over the map's extent (align_corners=False: -1 is the outer edge)
        gx = (pts[..., 0] - x_min) / (x_max - x_min) * 2 - 1
        gy = (pts[..., 1] - y_min) / (y_max - y_min) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1).view(B, R * P, 1, 2)  # (B, R, P, 2) -> (B, R * P, 1, 2)
        sampled = F.grid_sample(bev.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, R * P, 1)
        # (B, C, R * P, 1) -> (B, R * P, C) -> (B, R, P, C)
        sampled = sampled.squeeze(-1).transpose(1, 2).reshape(B, R, P, -1)
        tokens = self.token_proj(sampled)  # (B, R, P, D)
        pooled = torch.cat([tokens.mean(dim=2), tokens.amax(dim=2)], dim=-1)  # (B, R, 2D)
        geometry = boxes[..., :7].to(dtype)
        features = self.pool_mlp(pooled) + self.geometry_mlp(box_geometry_encoding(geometry))
        m = mask.to(dtype)
        extra = {"velocity": boxes[..., 7:9] * m[..., None]} if boxes.shape[-1] >= 9 else {}
        return RegionFeatures(
            kind="box",
            features=features * m[..., None],
            geometry=geometry * m[..., None],
            scores=scores.to(dtype) * m,
            labels=torch.where(mask, labels.long(), torch.full_like(labels.long(), -1)),
            mask=mask.bool(),
            tokens=tokens * m[..., None, None],
            extra=extra,
        )
