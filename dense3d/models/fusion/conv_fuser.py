"""BEV fusion: concatenate the BEV maps of the present sensors and mix them with a conv.

A missing sensor (not in the batch, or dropped) contributes zeros, so one fuser serves any
subset of {LiDAR, camera}. During training, ``modality_dropout`` zeroes each sensor of each
sample with that probability (never all sensors of a sample), so the model learns to work
when a sensor is missing at test time (as in BEVFusion's robustness training).
"""
from __future__ import annotations

import torch
from torch import nn

from dense3d.errors import ConfigError

__all__ = ["ConvFuser"]


class ConvFuser(nn.Module):
    """Args:
        in_channels: channels per sensor, e.g. ``{"lidar": 256, "camera": 80}`` (the order is
            the concatenation order).
        out_channels: channels of the fused map.
        modality_dropout: per-sample probability of dropping a sensor in training.

    ``forward({"lidar": (B, C_l, H, W) | None, "camera": (B, C_c, H, W) | None}, present=None)``
    -> (B, out, H, W). ``present`` (optional) maps a sensor to a (B,) bool: False where that
    sample has no data of the sensor although the batch has a map (e.g. a sample without cameras
    in a batch with cameras: its camera map is zeros). Dropout never drops the last sensor a
    sample really has.
    """

    def __init__(self, in_channels: dict[str, int], out_channels: int = 256, modality_dropout: float = 0.0):
        super().__init__()
        if not in_channels:
            raise ConfigError("ConvFuser", "in_channels", "at least one sensor with its channels")
        if not 0.0 <= modality_dropout < 1.0:
            raise ConfigError("ConvFuser", "modality_dropout", "a probability in [0, 1)", got=modality_dropout)
        self.sensors = tuple(in_channels)
        self.in_channels = {k: int(v) for k, v in in_channels.items()}
        self.out_channels = out_channels
        self.modality_dropout = modality_dropout
        self.fuse = nn.Sequential(
            nn.Conv2d(sum(self.in_channels.values()), out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, maps: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        given = [maps.get(k) for k in self.sensors if maps.get(k) is not None]
        unknown = set(k for k, v in maps.items() if v is not None) - set(self.sensors)
        if not given or unknown:
            raise ConfigError("ConvFuser", "maps", f"BEV maps of a subset of {list(self.sensors)}", got=sorted(k for k, v in maps.items() if v is not None))
        present = {k: v for k, v in (present or {}).items() if v is not None}
        ref = given[0]
        B, H, W = ref.shape[0], ref.shape[-2], ref.shape[-1]
        keep = torch.ones(B, len(self.sensors), dtype=torch.bool, device=ref.device)
        if self.training and self.modality_dropout > 0 and len(given) > 1:
            # (B, S): the sensors each sample really has (a map in the batch, and not marked absent)
            has = torch.zeros(B, len(self.sensors), dtype=torch.bool, device=ref.device)
            for i, name in enumerate(self.sensors):
                if maps.get(name) is not None:
                    has[:, i] = present[name].to(device=ref.device, dtype=torch.bool).view(B) if name in present else True
            drop = torch.rand(B, len(self.sensors), device=ref.device) < self.modality_dropout
            all_dropped = (has & ~drop).sum(dim=1, keepdim=True) == 0
            keep = ~drop | all_dropped  # never drop every sensor a sample has
        parts = []
        for i, name in enumerate(self.sensors):
            m = maps.get(name)
            if m is None:
                m = ref.new_zeros(B, self.in_channels[name], H, W)
            elif m.shape[1] != self.in_channels[name] or m.shape[-2:] != (H, W):
                raise ConfigError("ConvFuser", name, f"a (B, {self.in_channels[name]}, {H}, {W}) map", got=tuple(m.shape))
            parts.append(m * keep[:, i].to(m.dtype).view(B, 1, 1, 1))
        return self.fuse(torch.cat(parts, dim=1))  # (B, sum C, H, W) -> (B, out, H, W)
