"""2D BEV backbone + FPN-style neck (SECOND's RPN): strided conv stages, each upsampled back
to the first stage's resolution and concatenated."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dense3d.errors import ConfigError

__all__ = ["BEVBackbone"]


def _conv(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]


class BEVBackbone(nn.Module):
    """Args:
        in_channels: channels of the input BEV map.
        layer_channels: channels of each stage, e.g. ``(128, 256)``.
        layer_nums: extra 3x3 convs per stage.
        layer_strides: stride of each stage's first conv, e.g. ``(1, 2)``.
        upsample_channels: channels of each stage after upsampling to stage 0's resolution.

    (B, in_channels, H, W) -> (B, sum(upsample_channels), H / layer_strides[0], W / layer_strides[0]).
    """

    def __init__(self, in_channels: int, layer_channels: Sequence[int] = (128, 256), layer_nums: Sequence[int] = (3, 3), layer_strides: Sequence[int] = (1, 2), upsample_channels: Sequence[int] = (128, 128)):
        super().__init__()
        if not (len(layer_channels) == len(layer_nums) == len(layer_strides) == len(upsample_channels)):
            raise ConfigError("BEVBackbone", "layer_channels/layer_nums/layer_strides/upsample_channels", "lists of one length")
        self.in_channels = in_channels
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        cin = in_channels
        total = 1
        for i, (c, n, s, u) in enumerate(zip(layer_channels, layer_nums, layer_strides, upsample_channels)):
            layers = _conv(cin, c, s)
            for _ in range(n):
                layers += _conv(c, c)
            self.blocks.append(nn.Sequential(*layers))
            total *= s if i > 0 else 1
            up = nn.ConvTranspose2d(c, u, total, stride=total, bias=False) if total > 1 else nn.Conv2d(c, u, 1, bias=False)
            self.ups.append(nn.Sequential(up, nn.BatchNorm2d(u, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)))
            cin = c
        self.out_channels = sum(upsample_channels)
        self.layer_strides = tuple(int(s) for s in layer_strides)
        self.stride = layer_strides[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for block, up in zip(self.blocks, self.ups):
            x = block(x)
            outs.append(up(x))
        return torch.cat(outs, dim=1)  # FPN-style: every level at stage 0's resolution
