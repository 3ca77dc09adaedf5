"""Temporal fuser: a transformer encoder over time on concatenated audio + video frame features.

A missing stream (no audio or no video in the batch) contributes zeros; in training,
``modality_dropout`` zeroes one stream of a sample with that probability (never both).
Positions are sinusoidal encodings of the frame times in seconds, so clips of any length and
frame rate share one encoding.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dense3d.errors import ConfigError

__all__ = ["TemporalFuser", "time_encoding"]


def time_encoding(times: torch.Tensor, dim: int, max_period: float = 1000.0, scale: float = 10.0) -> torch.Tensor:
    """(B, T) seconds -> (B, T, dim) sinusoids of ``times * scale`` (periods up to ``max_period``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=times.device, dtype=torch.float32) / half)
    ang = times.float()[..., None] * scale * freqs  # (B, T, half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class TemporalFuser(nn.Module):
    """Args:
        audio_channels, video_channels: input feature sizes (0 for a stream never used).
        d_model, num_layers, num_heads, dropout: the ``nn.TransformerEncoder``.
        modality_dropout: per-sample probability of dropping one stream in training.

    ``forward(audio (B, T, Da) | None, video (B, T, Dv) | None, times (B, T), mask (B, T))``
    -> (B, T, d_model).
    """

    def __init__(self, audio_channels: int, video_channels: int, d_model: int = 128, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1, modality_dropout: float = 0.0):
        super().__init__()
        if audio_channels + video_channels <= 0:
            raise ConfigError("TemporalFuser", "audio_channels/video_channels", "at least one stream")
        self.audio_channels = audio_channels
        self.video_channels = video_channels
        self.d_model = d_model
        self.modality_dropout = modality_dropout
        self.inp = nn.Linear(audio_channels + video_channels, d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, audio: torch.Tensor | None, video: torch.Tensor | None, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T = times.shape
        ref = audio if audio is not None else video
        if ref is None:
            raise ConfigError("TemporalFuser", "audio/video", "at least one stream")
        a = audio if audio is not None else ref.new_zeros(B, T, self.audio_channels)
        v = video if video is not None else ref.new_zeros(B, T, self.video_channels)
        if self.training and self.modality_dropout > 0 and audio is not None and video is not None:
            drop = torch.rand(B, device=ref.device) < self.modality_dropout
            which = torch.rand(B, device=ref.device) < 0.5  # True: drop audio, False: drop video
            a = a * (~(drop & which)).to(a.dtype).view(B, 1, 1)
            v = v * (~(drop & ~which)).to(v.dtype).view(B, 1, 1)
        x = self.inp(torch.cat([a, v], dim=-1)) + time_encoding(times, self.d_model).to(ref.dtype)
        x = self.encoder(x, src_key_padding_mask=~mask)
        return self.norm(x) * mask[..., None].to(x.dtype)
