"""Dynamic voxelization + voxel feature encoder (mean of the points + a learned point MLP).

Every point of a voxel is kept (dynamic voxelization, Zhou et al. 2019 "End-to-end
multi-view fusion"); a voxel's feature concatenates the mean of its points with the max over
its points of an MLP applied to each point augmented with its offset from that mean and from
the voxel centre (PointPillars / DynamicVFE style).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dense3d.errors import PointCloudError
from dense3d.ops import voxel_grid_size, voxelize_batch
from dense3d.ops.sparse.conv import uses_batch_statistics

__all__ = ["DynamicVoxelEncoder", "split_batch_points"]


def split_batch_points(points: torch.Tensor, batch_size: int, source: str = "Batch") -> list[torch.Tensor]:
    """(sum N_b, 1 + 3 + C) with the sample index in column 0 -> B tensors (N_b, 3 + C)."""
    if points.dim() != 2 or points.shape[1] < 4:
        raise PointCloudError(source, "points", "shape (sum N, 1 + 3 + C) with the sample index in column 0", got=tuple(points.shape))
    b = points[:, 0].long()
    return [points[b == i, 1:] for i in range(batch_size)]


class DynamicVoxelEncoder(nn.Module):
    """Args:
        in_channels: point features 3 + C (``x, y, z`` first).
        voxel_size: ``(vx, vy, vz)`` metres.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
        out_channels: voxel feature size.
        hidden_channels: width of the point MLP.
        backend: voxelization backend.

    ``forward(points_list)`` -> ``(features (M, out_channels), coords (M, 4) int32 [b, z, y, x])``.
    """

    def __init__(self, in_channels: int, voxel_size: Sequence[float], point_range: Sequence[float], out_channels: int = 32, hidden_channels: int = 32, backend: str = "auto"):
        super().__init__()
        self.in_channels = in_channels
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_range = tuple(float(v) for v in point_range)
        self.grid = voxel_grid_size(self.voxel_size, self.point_range, "DynamicVoxelEncoder")  # [nx, ny, nz]
        self.out_channels = out_channels
        self.backend = backend
        # point + offset from the voxel mean (3) + offset from the voxel centre (3)
        self.point_mlp = nn.Sequential(nn.Linear(in_channels + 6, hidden_channels, bias=False), nn.BatchNorm1d(hidden_channels), nn.ReLU(inplace=True))
        self.out = nn.Sequential(nn.Linear(hidden_channels + in_channels, out_channels, bias=False), nn.BatchNorm1d(out_channels), nn.ReLU(inplace=True))

    @property
    def sparse_shape(self) -> list[int]:
        """Voxel grid ``[nz, ny, nx]`` (spconv order)."""
        return self.grid[::-1]

    def forward(self, points_list: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for i, p in enumerate(points_list):
            if p.shape[1] != self.in_channels:
                raise PointCloudError("Batch", f"points[{i}]", f"{self.in_channels} columns (x, y, z + features)", got=p.shape[1])
        mean, coords, p2v = voxelize_batch(points_list, self.voxel_size, self.point_range, mode="dynamic", backend=self.backend)
        if mean.shape[0] == 1 and uses_batch_statistics(self.out[1]):  # (a SyncBatchNorm, trainer=ddp, pools every process's rows)
            raise PointCloudError("Batch", "points", "at least 2 occupied voxels in a training batch (BatchNorm1d normalises each "
                                  "channel over the batch's voxels): a larger batch_size or crop",
                                  got=f"1 voxel from {int((p2v >= 0).sum())} point(s) in point_range, {len(points_list)} sample(s)")
        points = torch.cat(list(points_list), dim=0)
        keep = p2v >= 0
        points, p2v = points[keep], p2v[keep]
        vs = points.new_tensor(self.voxel_size)
        lo = points.new_tensor(self.point_range[:3])
        centre = (coords[:, 1:].flip(1).to(points.dtype) + 0.5) * vs + lo  # (M, 3) x, y, z from [z, y, x]
        aug = torch.cat([points, points[:, :3] - mean[p2v, :3], points[:, :3] - centre[p2v]], dim=1)  # (N, C + 6)
        h = self.point_mlp(aug)
        # max over each voxel's points (torch's scatter_reduce: no hand-written scatter)
        pooled = h.new_full((mean.shape[0], h.shape[1]), float("-inf")).scatter_reduce(0, p2v[:, None].expand_as(h), h, "amax", include_self=True)
        return self.out(torch.cat([mean, pooled], dim=1)), coords
