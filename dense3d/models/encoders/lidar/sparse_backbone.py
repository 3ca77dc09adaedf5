"""SECOND-style sparse 3D backbone (Yan et al., Sensors 2018): submanifold blocks with strided
sparse downsampling, then a height-collapsing conv; built on ``dense3d.ops``' sparse conv
(spconv-shaped API)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dense3d.errors import ConfigError

__all__ = ["SparseEncoder"]


def _sparse():
    from dense3d.ops import SparseConv3d, SparseSequential, SparseTensor, SubMConv3d

    return SparseTensor, SubMConv3d, SparseConv3d, SparseSequential


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class SparseEncoder(nn.Module):
    """Args:
        in_channels: voxel feature size.
        sparse_shape: voxel grid ``[nz, ny, nx]``.
        stage_channels: channels of each stage; stage 0 keeps the resolution, every later stage
            starts with a stride-2 sparse conv (so the BEV stride is ``2 ** (len - 1)``).
        blocks_per_stage: submanifold convs per stage.
        out_channels: channels of the final height-reducing conv (kernel 3 x 1 x 1, stride 2 in z).

    ``forward(features (M, C), coords (M, 4) int32 [b, z, y, x], batch_size)`` -> BEV map
    (B, out_channels * out_depth, ny / stride, nx / stride) (height collapsed into channels).
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], stage_channels: Sequence[int] = (16, 32, 64, 64), blocks_per_stage: int = 1, out_channels: int = 128):
        super().__init__()
        SparseTensor, SubMConv3d, SparseConv3d, SparseSequential = _sparse()
        self.sparse_shape = [int(v) for v in sparse_shape]
        if len(self.sparse_shape) != 3:
            raise ConfigError("SparseEncoder", "sparse_shape", "[nz, ny, nx]", got=list(sparse_shape))
        stride = 2 ** (len(stage_channels) - 1)
        if self.sparse_shape[1] % stride or self.sparse_shape[2] % stride:
            raise ConfigError("SparseEncoder", "sparse_shape", f"ny, nx divisible by the BEV stride {stride}", got=self.sparse_shape)
        self._tensor_cls = SparseTensor
        self.in_channels = in_channels

        def bn_relu(c):
            return [nn.BatchNorm1d(c, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]

        stages = []
        cin = in_channels
        nz = self.sparse_shape[0]
        for i, c in enumerate(stage_channels):
            layers = []
            if i == 0:
                layers += [SubMConv3d(cin, c, 3, padding=1, bias=False, indice_key=f"subm{i}"), *bn_relu(c)]
            else:
                layers += [SparseConv3d(cin, c, 3, stride=2, padding=1, bias=False, indice_key=f"down{i}"), *bn_relu(c)]
                nz = _out_size(nz, 3, 2, 1)
            for _ in range(blocks_per_stage):
                layers += [SubMConv3d(c, c, 3, padding=1, bias=False, indice_key=f"subm{i}"), *bn_relu(c)]
            stages.append(SparseSequential(*layers))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.conv_out = SparseSequential(SparseConv3d(cin, out_channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False, indice_key="out"), *bn_relu(out_channels))
        self.out_depth = _out_size(nz, 3, 2, 0)
        if self.out_depth < 1:
            raise ConfigError("SparseEncoder", "sparse_shape", "enough z voxels for the downsampling", got=self.sparse_shape)
        self.stride = stride
        self.out_channels = out_channels * self.out_depth

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = self._tensor_cls(features, coords.int(), self.sparse_shape, batch_size)
        for stage in self.stages:
            x = stage(x)
        x = self.conv_out(x)
        dense = x.dense()  # (B, C, D, H, W)
        B, C, D, H, W = dense.shape
        return dense.reshape(B, C * D, H, W)  # height collapse: (B, C, D, H, W) -> (B, C * D, H, W)
