"""LiDAR encoder: points -> dynamic voxels -> sparse 3D backbone -> height collapse -> 2D BEV
backbone + neck -> BEV map (B, C, H, W) on the grid ``point_range`` / ``cell_size``."""
from __future__ import annotations

import torch
from torch import nn

from dense3d.errors import ConfigError, PointCloudError
from dense3d.models.encoders.lidar.bev_backbone import BEVBackbone
from dense3d.models.encoders.lidar.sparse_backbone import SparseEncoder
from dense3d.models.encoders.lidar.voxel_encoder import DynamicVoxelEncoder, split_batch_points

__all__ = ["LidarEncoder"]


class LidarEncoder(nn.Module):
    """Args:
        voxel_encoder: ``DynamicVoxelEncoder``.
        sparse_encoder: ``SparseEncoder`` whose ``sparse_shape`` is the voxel encoder's.
        bev_backbone: ``BEVBackbone`` taking ``sparse_encoder.out_channels``.

    ``forward(batch)`` reads ``batch.points`` (sum N, 1 + 3 + C) and returns (B, C_out, H, W);
    the BEV cell is ``voxel_size[0] * sparse_encoder.stride * bev_backbone.stride`` metres.
    """

    def __init__(self, voxel_encoder: DynamicVoxelEncoder, sparse_encoder: SparseEncoder, bev_backbone: BEVBackbone):
        super().__init__()
        if list(sparse_encoder.sparse_shape) != list(voxel_encoder.sparse_shape):
            raise ConfigError("LidarEncoder", "sparse_encoder.sparse_shape", f"the voxel grid {voxel_encoder.sparse_shape}", got=sparse_encoder.sparse_shape)
        if sparse_encoder.in_channels != voxel_encoder.out_channels:
            raise ConfigError("LidarEncoder", "sparse_encoder.in_channels",
                              f"the voxel features' {voxel_encoder.out_channels} channels (voxel_encoder.out_channels)",
                              got=sparse_encoder.in_channels)
        if bev_backbone.in_channels != sparse_encoder.out_channels:
            raise ConfigError("LidarEncoder", "bev_backbone.in_channels",
                              f"the sparse encoder's {sparse_encoder.out_channels} BEV channels (its out_channels "
                              f"{sparse_encoder.out_channels // sparse_encoder.out_depth} x {sparse_encoder.out_depth} z-cells)",
                              got=bev_backbone.in_channels)
        vx, vy = voxel_encoder.voxel_size[:2]
        if abs(vx - vy) > 1e-9 * max(vx, vy):
            # the BEV map has one cell size for x and y (the box head's ``cell_size``): with other
            # voxels its rows would be read as cells of the x size
            raise ConfigError("LidarEncoder", "voxel_encoder.voxel_size", "equal x and y sizes (square BEV cells)",
                              got=list(voxel_encoder.voxel_size))
        self._check_bev_strides(sparse_encoder, bev_backbone)
        self.voxel_encoder = voxel_encoder
        self.sparse_encoder = sparse_encoder
        self.bev_backbone = bev_backbone

    @staticmethod
    def _check_bev_strides(sparse_encoder: SparseEncoder, bev_backbone: BEVBackbone) -> None:
        """Every stage of the BEV backbone, upsampled back, has stage 0's size: a strided 3x3
        conv (padding 1) rounds an odd size up, and the concatenation would fail on it."""
        strides = [int(s) for s in bev_backbone.layer_strides]
        for axis, n in (("ny", sparse_encoder.sparse_shape[1]), ("nx", sparse_encoder.sparse_shape[2])):
            size = n // sparse_encoder.stride
            sizes = []
            for s in strides:
                size = (size + 2 - 3) // s + 1  # a 3x3 conv of stride s, padding 1
                sizes.append(size)
            factor = 1
            for i, s in enumerate(strides[1:], start=1):
                factor *= s
                if sizes[i] * factor != sizes[0]:
                    raise ConfigError("LidarEncoder", "bev_backbone.layer_strides",
                                      f"strides whose product {factor} after the first divides the BEV map's "
                                      f"{sizes[0]} cells along {axis[1]} (point_range / voxel_size / strides)", got=strides)

    @property
    def out_channels(self) -> int:
        return self.bev_backbone.out_channels

    @property
    def cell_size(self) -> float:
        return self.voxel_encoder.voxel_size[0] * self.sparse_encoder.stride * self.bev_backbone.stride

    def forward(self, batch) -> torch.Tensor:
        if batch.points is None:
            raise PointCloudError("Batch", "points", "a (sum N, 1 + 3 + C) tensor")
        B = len(batch)
        feats, coords = self.voxel_encoder(split_batch_points(batch.points, B))
        bev = self.sparse_encoder(feats, coords, B)
        return self.bev_backbone(bev)
