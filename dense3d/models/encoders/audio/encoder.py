"""Audio encoder: multichannel waveform -> log-mel -> PANNs-like CNN -> frame features, plus
GCC-PHAT inter-channel cues so the direction of a source is learnable.

* log-mel: ``torchaudio.transforms.MelSpectrogram`` per microphone, ``log(x + 1e-6)``;
* CNN: PANNs' ``Cnn14``-style blocks (two 3x3 conv + BN + ReLU, then 2x2 average pooling;
  Kong et al. 2020), the microphones as input channels; the frequency axis is averaged at
  the end, the time axis keeps ``hop_length * time_pool`` samples per frame;
* GCC-PHAT (Knapp & Carter 1976): for each microphone pair, the inverse FFT of the
  phase-transformed cross-spectrum per STFT frame, lags ``-max_lag..max_lag`` samples; its
  peak sits at the pair's time difference of arrival, i.e. it encodes the azimuth. torch has
  no GCC-PHAT and torchaudio's is not public, so it is written here (a few lines of FFTs).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from dense3d.errors import AudioError, ConfigError
from dense3d.models.encoders.camera.backbone import load_state_dict_file
from dense3d.models.encoders.temporal import TemporalFeatures

__all__ = ["AudioEncoder", "gcc_phat"]


def gcc_phat(spec: torch.Tensor, pairs: Sequence[tuple[int, int]], n_fft: int, max_lag: int) -> torch.Tensor:
    """Generalised cross-correlation with phase transform.

    Args:
        spec: (B, A, F, T) complex STFT (F = n_fft // 2 + 1).
        pairs: microphone index pairs (i, j).
        max_lag: lags kept on each side, in samples.
    Returns:
        (B, P, 2 * max_lag + 1, T): correlation at lags ``-max_lag..max_lag`` (lag > 0: the
        sound reaches microphone j ``lag`` samples after microphone i).
    """
    i = torch.tensor([p[0] for p in pairs], device=spec.device)
    j = torch.tensor([p[1] for p in pairs], device=spec.device)
    cross = spec[:, j] * spec[:, i].conj()  # (B, P, F, T)
    cross = cross / cross.abs().clamp(min=1e-8)
    cc = torch.fft.irfft(cross, n=n_fft, dim=2)  # (B, P, n_fft, T), lag 0 at index 0
    return torch.cat([cc[:, :, n_fft - max_lag :], cc[:, :, : max_lag + 1]], dim=2)  # lags -L..L


def _cnn_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class AudioEncoder(nn.Module):
    """Args:
        num_channels: microphones A.
        sample_rate: the expected sample rate (batches at another rate raise ``AudioError``).
        n_fft, hop_length, n_mels: log-mel parameters (also the STFT of GCC-PHAT).
        cnn_channels: channels of the CNN blocks; each block halves frequency, the first
            ``log2(time_pool)`` blocks also halve time.
        time_pool: STFT frames per output frame (a power of two <= 2 ** len(cnn_channels)).
        out_channels: D, the frame feature size.
        max_lag: GCC-PHAT lags on each side (samples); 0 disables the inter-channel cues.
        weights_path: local state_dict of this module (e.g. from a pretrained run), or None.

    ``forward(batch)`` reads ``batch.audio`` (B, A, S), ``batch.audio_lengths`` (B,) and
    ``batch.sample_rate``; returns ``TemporalFeatures`` (B, T, D) with T = ceil(S / hop /
    time_pool) frames.
    """

    def __init__(
        self,
        num_channels: int = 4,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        cnn_channels: Sequence[int] = (32, 64, 128),
        time_pool: int = 4,
        out_channels: int = 128,
        max_lag: int = 16,
        weights_path: str | None = None,
    ):
        super().__init__()
        if time_pool & (time_pool - 1) or time_pool > 2 ** len(cnn_channels):
            raise ConfigError("AudioEncoder", "time_pool", f"a power of two <= {2 ** len(cnn_channels)}", got=time_pool)
        if max_lag >= n_fft // 2:
            raise ConfigError("AudioEncoder", "max_lag", f"fewer than n_fft / 2 = {n_fft // 2} samples", got=max_lag)
        self.num_channels = num_channels
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.time_pool = time_pool
        self.max_lag = max_lag
        self.out_channels = out_channels
        self.pairs = list(combinations(range(num_channels), 2)) if max_lag > 0 else []
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.input_bn = nn.BatchNorm2d(num_channels)
        blocks, cin = [], num_channels
        for c in cnn_channels:
            blocks.append(_cnn_block(cin, c))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.time_strides = [2 if 2**k < time_pool else 1 for k in range(len(cnn_channels))]
        gcc_dim = len(self.pairs) * (2 * max_lag + 1)
        self.gcc_proj = nn.Sequential(nn.Linear(gcc_dim, out_channels), nn.ReLU(inplace=True)) if gcc_dim else None
        self.out = nn.Linear(cin + (out_channels if gcc_dim else 0), out_channels)
        if weights_path:
            missing, unexpected = self.load_state_dict(load_state_dict_file(weights_path), strict=False)
            if missing:
                from dense3d.errors import CheckpointError

                raise CheckpointError(weights_path, "state_dict", "the AudioEncoder's keys", got=f"missing {missing[:3]}")

    def num_frames(self, num_samples: torch.Tensor | int):
        stft_frames = num_samples // self.hop_length + 1  # torch.stft(center=True)
        return (stft_frames + self.time_pool - 1) // self.time_pool

    def forward(self, batch) -> TemporalFeatures:
        audio = batch.audio
        if audio is None or audio.dim() != 3 or audio.shape[1] != self.num_channels:
            raise AudioError("Batch", "audio", f"a (B, {self.num_channels}, S) waveform", got=None if audio is None else tuple(audio.shape))
        if batch.sample_rate is not None and int(batch.sample_rate) != self.sample_rate:
            raise AudioError("Batch", "sample_rate", f"{self.sample_rate} Hz (resample in the data pipeline)", got=batch.sample_rate)
        B, A, S = audio.shape
        logmel = (self.mel(audio.flatten(0, 1)) + 1e-6).log()  # (B * A, S) -> (B * A, M, T_stft)
        x = self.input_bn(logmel.view(B, A, *logmel.shape[1:]))  # (B, A, M, T_stft)
        for block, ts in zip(self.blocks, self.time_strides):
            x = F.avg_pool2d(block(x), kernel_size=(2, ts), ceil_mode=True)
        x = x.mean(dim=2).transpose(1, 2)  # (B, C, M', T) -> (B, T, C)
        T = x.shape[1]
        parts = [x]
        if self.gcc_proj is not None:
            spec = torch.stft(audio.flatten(0, 1), self.n_fft, self.hop_length, window=self.window, return_complex=True)
            spec = spec.view(B, A, *spec.shape[1:])  # (B * A, F, T_stft) -> (B, A, F, T_stft)
            cc = gcc_phat(spec, self.pairs, self.n_fft, self.max_lag)  # (B, P, L, T_stft)
            # average each output frame's STFT frames: (B, P * L, T_stft) -> (B, P * L, T)
            cc = F.avg_pool1d(cc.flatten(1, 2), self.time_pool, ceil_mode=True)[..., :T]
            parts.append(self.gcc_proj(cc.transpose(1, 2)))  # (B, T, P * L) -> (B, T, D)
        feats = self.out(torch.cat(parts, dim=-1))
        frame = torch.arange(T, device=audio.device, dtype=audio.dtype)
        times = ((frame * self.time_pool + (self.time_pool - 1) / 2) * self.hop_length / self.sample_rate).expand(B, T)
        lengths = batch.audio_lengths if batch.audio_lengths is not None else torch.full((B,), S, device=audio.device)
        mask = frame[None] < self.num_frames(lengths.to(audio.device))[:, None]
        return TemporalFeatures(feats * mask[..., None], times, mask)
