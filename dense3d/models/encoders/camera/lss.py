"""Lift-Splat-Shoot view transform: image features -> BEV map (Philion & Fidler, ECCV 2020).

Lift: a 1x1 conv predicts, for every feature pixel, a distribution over ``D`` depth bins and a
context vector; their outer product places the context along the pixel's ray.
Splat: each (pixel, depth) frustum point is mapped through the camera calibration to the
LiDAR frame and its feature summed into its BEV cell with ``dense3d.ops.bev_pool`` (all
heights of a cell fall in one cell, as in BEVFusion).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.encoders.bev_grid import bev_grid_shape
from dense3d.ops import bev_pool

__all__ = ["LSSViewTransform"]


class LSSViewTransform(nn.Module):
    """Args:
        in_channels: channels of the image feature map.
        out_channels: channels of the BEV map.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` of the BEV grid (LiDAR frame).
        cell_size: BEV cell size in metres.
        depth_bins: ``(d_min, d_max, step)`` metres along the optical axis.
        backend: ``bev_pool`` backend.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        point_range: Sequence[float],
        cell_size: float,
        depth_bins: Sequence[float] = (1.0, 60.0, 1.0),
        backend: str = "auto",
    ):
        super().__init__()
        self.point_range = tuple(float(v) for v in point_range)
        self.cell_size = float(cell_size)
        self.grid_size = bev_grid_shape(self.point_range, self.cell_size, "LSSViewTransform")
        if len(depth_bins) != 3 or not 0 <= float(depth_bins[0]) < float(depth_bins[1]) or float(depth_bins[2]) <= 0:
            raise ConfigError("LSSViewTransform", "depth_bins", "(d_min, d_max, step) metres with 0 <= d_min < d_max and step > 0",
                              got=list(depth_bins))
        d0, d1, step = (float(v) for v in depth_bins)
        self.register_buffer("depths", torch.arange(d0, d1, step) + step / 2, persistent=False)  # (D,) bin centres
        self.in_channels, self.out_channels = in_channels, out_channels
        self.backend = backend
        self.depth_net = nn.Conv2d(in_channels, len(self.depths) + out_channels, kernel_size=1)

    @property
    def num_depth_bins(self) -> int:
        return self.depths.numel()

    def frustum_points(self, feature_size: tuple[int, int], image_size: tuple[int, int], lidar2img: torch.Tensor) -> torch.Tensor:
        """LiDAR-frame points of every (view, depth, row, col) frustum cell.

        ``lidar2img`` (B, V, 4, 4) maps the images as given (after any resize), so the pixel
        centre of feature cell (i, j) is ``((j + 0.5) * W / fW, (i + 0.5) * H / fH)``.
        Returns (B, V, D, fH, fW, 3).
        """
        fH, fW = feature_size
        H, W = image_size
        dev, dt = lidar2img.device, lidar2img.dtype
        v = (torch.arange(fH, device=dev, dtype=dt) + 0.5) * (H / fH)
        u = (torch.arange(fW, device=dev, dtype=dt) + 0.5) * (W / fW)
        d = self.depths.to(dt)
        dd, vv, uu = torch.meshgrid(d, v, u, indexing="ij")  # (D, fH, fW) each
        # homogeneous "pixels times depth": (D, fH, fW, 4)
        pix = torch.stack([uu * dd, vv * dd, dd, torch.ones_like(dd)], dim=-1)
        img2lidar = torch.linalg.inv(lidar2img)  # (B, V, 4, 4)
        # (B, V, 1, 1, 1, 4, 4) @ (D, fH, fW, 4, 1) -> (B, V, D, fH, fW, 4, 1)
        pts = img2lidar[:, :, None, None, None] @ pix[..., None]
        return pts[..., :3, 0]

    def forward(self, features: torch.Tensor, lidar2img: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """features (B, V, C, fH, fW), lidar2img (B, V, 4, 4) -> BEV map (B, out_channels, H, W)."""
        B, V, C, fH, fW = features.shape
        D = self.num_depth_bins
        x = self.depth_net(features.flatten(0, 1))  # (B * V, D + C_out, fH, fW)
        depth = x[:, :D].softmax(dim=1)
        context = x[:, D:]
        # outer product: (BV, D, 1, fH, fW) * (BV, 1, C_out, fH, fW) -> (BV, D, C_out, fH, fW)
        lifted = depth[:, :, None] * context[:, None]
        # (BV, D, C_out, fH, fW) -> (B, V, D, fH, fW, C_out) -> (N, C_out)
        lifted = lifted.view(B, V, D, self.out_channels, fH, fW).permute(0, 1, 2, 4, 5, 3).reshape(-1, self.out_channels)

        with torch.no_grad():
            pts = self.frustum_points((fH, fW), image_size, lidar2img.float())  # (B, V, D, fH, fW, 3)
            x_min, y_min, z_min, _, _, z_max = self.point_range
            ix = ((pts[..., 0] - x_min) / self.cell_size).floor().long()
            iy = ((pts[..., 1] - y_min) / self.cell_size).floor().long()
            outside_z = (pts[..., 2] < z_min) | (pts[..., 2] >= z_max)
            iy = torch.where(outside_z, torch.full_like(iy, -1), iy)  # dropped by bev_pool
            b = torch.arange(B, device=pts.device).view(B, 1, 1, 1, 1).expand_as(ix)
            coords = torch.stack([b, iy, ix], dim=-1).view(-1, 3)  # (N, 3) (b, y, x)
        return bev_pool(lifted, coords, B, self.grid_size, backend=self.backend)
