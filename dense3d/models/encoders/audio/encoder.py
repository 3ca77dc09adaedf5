"""Audio encoder: multichannel waveform -> log-mel -> PANNs-like CNN -> frame features, plus
GCC-PHAT inter-channel cues so the direction of a source is learnable.

* log-mel: ``torchaudio.transforms.MelSpectrogram``'s filter bank per microphone on the power
  STFT, ``log(x + 1e-6)``;
* padding: a clip's frames do not depend on the batch it is in: each clip is reflect-padded at
  its own ends for the STFT, BatchNorms see (and keep statistics of) real frames only, padded
  frames are 0 between layers and pooling windows average real frames only;
* CNN: PANNs' ``Cnn14``-style blocks (two 3x3 conv + BN + ReLU, then 2x2 average pooling;
  Kong et al. 2020), the microphones as input channels; the frequency axis is averaged at
  the end, the time axis keeps ``hop_length * time_pool`` samples per frame;
* GCC-PHAT (Knapp & Carter 1976): for each microphone pair, the inverse FFT of the
  phase-transformed cross-spectrum per STFT frame, lags ``-max_lag..max_lag`` samples; its
  peak sits at the pair's time difference of arrival, i.e. it encodes the azimuth. torch has
  no GCC-PHAT and torchaudio's is not public, so it is written here (a few lines of FFTs);
* SRP-PHAT (steered response power, DiBiase et al. 2001), optional (``directions > 0``): the
  GCC-PHAT of every pair read at the exact (fractional) lag a far-field source at each of N
  horizontal azimuths would give, summed over pairs: an (N,) map per frame whose peak is the
  source's azimuth for any microphone layout (positions from the samples, else from the
  config). The map is not learned; the event head pools it inside each event's span (an
  event-long average of the map recovers the synthetic clips' azimuths to about 1 deg).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from dense3d.errors import AudioError, ConfigError
from dense3d.models.encoders.camera.backbone import load_state_dict_file
from dense3d.models.encoders.temporal import TemporalFeatures

__all__ = ["AudioEncoder", "azimuth_bins", "gcc_phat", "pair_delays", "phat_cross_spectrum", "srp_phat"]


def phat_cross_spectrum(spec: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(B, A, F, T) complex STFT -> (B, P, F, T) cross-spectra ``X_j conj(X_i)`` of the pairs,
    each bin scaled to unit magnitude (the phase transform)."""
    i = torch.tensor([p[0] for p in pairs], device=spec.device)
    j = torch.tensor([p[1] for p in pairs], device=spec.device)
    cross = spec[:, j] * spec[:, i].conj()  # (B, P, F, T)
    return cross / cross.abs().clamp(min=1e-8)


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
    cc = torch.fft.irfft(phat_cross_spectrum(spec, pairs), n=n_fft, dim=2)  # (B, P, n_fft, T), lag 0 at index 0
    return torch.cat([cc[:, :, n_fft - max_lag :], cc[:, :, : max_lag + 1]], dim=2)  # lags -L..L


def azimuth_bins(num: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(N,) azimuths (radians, CCW from +x) of the SRP map's bins: ``-pi + 2 pi k / N``."""
    return -math.pi + 2 * math.pi * torch.arange(num, device=device, dtype=dtype) / num


def pair_delays(mics: torch.Tensor, pairs: Sequence[tuple[int, int]], azimuths: torch.Tensor, speed_of_sound: float = 343.0) -> torch.Tensor:
    """Far-field time differences of arrival ``t_j - t_i`` (seconds) of each pair for a plane
    wave from each horizontal azimuth: (..., A, 3) metres, P pairs, (N,) -> (..., P, N).

    A plane wave from unit direction u reaches microphone m ``-(m . u) / c`` after the array
    centre, so ``t_j - t_i = -(m_j - m_i) . u / c``."""
    u = torch.stack([azimuths.cos(), azimuths.sin(), torch.zeros_like(azimuths)], dim=-1).to(mics.dtype)  # (N, 3)
    i = torch.tensor([p[0] for p in pairs], device=mics.device)
    j = torch.tensor([p[1] for p in pairs], device=mics.device)
    baseline = mics[..., j, :] - mics[..., i, :]  # (..., P, 3)
    return -(baseline @ u.T) / speed_of_sound  # (..., P, N)


def srp_phat(cross: torch.Tensor, delays: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Steered response power: the GCC-PHAT of every pair at fractional lags, summed over pairs.

    Args:
        cross: (B, P, F, T) phase-transformed cross-spectra (``phat_cross_spectrum``).
        delays: (B, P, N) lags in samples (``pair_delays * sample_rate``).
    Returns:
        (B, N, T): ``sum_p gcc_p(delay_pN) / P`` in [-1, 1]; the GCC at a fractional lag is the
        band-limited interpolation ``(1 / n_fft) sum_k w_k Re(X_k exp(2 pi i k lag / n_fft))``
        (``w_k`` = 1 at DC and Nyquist, else 2), what ``irfft`` gives at integer lags.
    """
    F_ = cross.shape[2]
    k = torch.arange(F_, device=cross.device, dtype=delays.dtype)
    w = torch.full((F_,), 2.0, device=cross.device, dtype=delays.dtype)
    w[0] = 1.0
    if n_fft % 2 == 0:
        w[-1] = 1.0
    phase = 2 * math.pi * k[None, None, :, None] * delays[:, :, None, :] / n_fft  # (B, P, F, N)
    steer = torch.polar(w[None, None, :, None] / (n_fft * delays.shape[1]), phase)  # (B, P, F, N)
    B, P, _, T = cross.shape
    # sum over pairs and bins as one matmul: (B, N, P * F) @ (B, P * F, T) -> (B, N, T)
    steer = steer.reshape(B, P * F_, -1).transpose(1, 2)  # (B, P, F, N) -> (B, N, P * F)
    return torch.bmm(steer.to(cross.dtype), cross.reshape(B, P * F_, T)).real


def _mean_pool_time(x: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(..., T) -> (..., ceil(T / k)) means of k consecutive frames (the last of fewer), for
    complex tensors too (``avg_pool1d(ceil_mode=True)`` is real only). With ``mask`` (B, T) (x
    (B, ..., T)) a mean counts only each clip's real frames (0 where a window has none)."""
    T = x.shape[-1]
    n = -(-T // k)
    pad = n * k - T
    if mask is None:
        count = torch.full((n,), float(k), device=x.device)
        count[-1] = k - pad
    else:
        m = mask.to(x.real.dtype)
        m = torch.cat([m, m.new_zeros(m.shape[0], pad)], dim=-1) if pad else m
        count = m.unflatten(-1, (n, k)).sum(-1).clamp(min=1).view(m.shape[0], *[1] * (x.dim() - 2), n)  # (B, 1.., n)
        x = x * mask.view(mask.shape[0], *[1] * (x.dim() - 2), T).to(x.real.dtype)
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], dim=-1)
    return x.unflatten(-1, (n, k)).sum(-1) / count


def _valid_frames(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) real frames per clip -> (B, T) bool, True at each clip's first ``lengths[b]`` frames."""
    return torch.arange(T, device=lengths.device)[None] < lengths[:, None]


def _masked_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``bn`` over each clip's real time frames only: x (B, C, M, T), lengths (B,) real frames.

    The real frames of every clip are packed side by side into one (1, C, M, sum lengths) map,
    so training statistics (and the running ones) come from real frames only, not from the
    padding of clips shorter than the batch's longest; padded frames come out as 0 (what the
    next convolution's own zero padding reads for a clip alone). Without padding: ``bn(x)``;
    in eval mode (running statistics, the same for every frame) ``bn(x)`` with padded frames
    set to 0, which is about 5 x cheaper than packing."""
    B, C, M, T = x.shape
    if bool((lengths >= T).all()):
        return bn(x)
    if not bn.training and bn.running_mean is not None:
        return bn(x) * _valid_frames(lengths, T).to(x.dtype)[:, None, None]  # (B, 1, 1, T) real frames
    n = [int(v) for v in lengths.clamp(max=T)]
    packed = torch.cat([x[b, :, :, : n[b]] for b in range(B)], dim=-1)[None]  # (B, C, M, T) -> (1, C, M, sum n)
    normed = bn(packed)[0].split(n, dim=-1)  # (C, M, n_b) each
    out = x.new_zeros(B, C, M, T)
    for b in range(B):
        out[b, :, :, : n[b]] = normed[b]
    return out


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
        directions: N azimuth bins of the SRP-PHAT map (0: none).
        mic_positions: (A, 3) metres, the array used when a sample has no ``mic_positions``.
        speed_of_sound: m/s, for the SRP-PHAT steering delays.
        weights_path: local state_dict of this module (e.g. from a pretrained run), or None.

    ``forward(batch)`` reads ``batch.audio`` (B, A, S), ``batch.audio_lengths`` (B,) and
    ``batch.sample_rate``; returns ``TemporalFeatures`` (B, T, D) with T = ceil(stft_frames(S) /
    time_pool) frames, ``stft_frames(S)`` = S // hop + 1 for an even n_fft ((S - 1) // hop + 1 for
    an odd one) (a clip's own: ``num_frames(audio_lengths)``, the rest masked).
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
        directions: int = 0,
        mic_positions: Sequence[Sequence[float]] | None = None,
        speed_of_sound: float = 343.0,
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
        if directions < 0 or (directions and num_channels < 2):
            raise ConfigError("AudioEncoder", "directions", "0, or N > 0 azimuth bins with >= 2 microphones", got=directions)
        self.directions = int(directions)
        self.speed_of_sound = float(speed_of_sound)
        self.pairs = list(combinations(range(num_channels), 2)) if max_lag > 0 else []
        self.srp_pairs = list(combinations(range(num_channels), 2))
        if mic_positions is not None:
            mics = torch.as_tensor(mic_positions, dtype=torch.float32)
            if tuple(mics.shape) != (num_channels, 3):
                raise ConfigError("AudioEncoder", "mic_positions", f"({num_channels}, 3) metres", got=list(mics.shape))
            self.register_buffer("mic_positions", mics, persistent=False)
        else:
            self.mic_positions = None
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

    def stft(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, A, S) zero-padded waveforms, (B,) real samples -> (B, A, F, stft_frames(S)) complex
        STFT (Hann window of n_fft, MelSpectrogram's). Each clip is reflect-padded by n_fft / 2
        at its own start and end (``center=True``, as a clip alone; a clip of n_fft / 2 samples
        or fewer, too short to reflect, is padded with zeros), not at the end of the batch's padding."""
        B, A, S = audio.shape
        half = self.n_fft // 2
        rows = []
        for b in range(B):
            n = int(lengths[b])
            clip = audio[b : b + 1, :, :n]  # (1, A, n)
            clip = F.pad(clip, (half, half), mode="reflect" if n > half else "constant")  # (1, A, n + 2 half)
            rows.append(F.pad(clip, (0, S - n)))  # (1, A, S + 2 half)
        padded = torch.cat(rows).flatten(0, 1)  # (B, A, S + 2 half) -> (B * A, S + 2 half)
        spec = torch.stft(padded, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True)
        return spec.view(B, A, *spec.shape[1:])  # (B * A, F, T_stft) -> (B, A, F, T_stft)

    def stft_frames(self, num_samples: torch.Tensor | int):
        """STFT frames of a clip of ``num_samples`` padded by n_fft // 2 at each end (torch.stft(center=True)):
        S // hop + 1 for an even n_fft, (S - 1) // hop + 1 for an odd one."""
        return (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length + 1

    def num_frames(self, num_samples: torch.Tensor | int):
        return (self.stft_frames(num_samples) + self.time_pool - 1) // self.time_pool

    def forward(self, batch) -> TemporalFeatures:
        audio = batch.audio
        if audio is None or audio.dim() != 3:
            raise AudioError("Batch", "audio", f"a (B, {self.num_channels}, S) waveform", got=None if audio is None else tuple(audio.shape))
        if audio.shape[1] != self.num_channels:  # name the file: a stereo soundtrack for a 4-microphone encoder, say
            clips = [getattr(s, "audio", None) for s in getattr(batch, "samples", None) or []]
            source = next((c.source for c in clips if c is not None), "Batch")
            raise AudioError(source, "audio channels", f"{self.num_channels} (this audio encoder's num_channels; a mono or stereo "
                             "soundtrack: configs/model/audio/mono.yaml with AudioChannels(num_channels=1))", got=int(audio.shape[1]))
        if batch.sample_rate is not None and int(batch.sample_rate) != self.sample_rate:
            raise AudioError("Batch", "sample_rate", f"{self.sample_rate} Hz (resample in the data pipeline)", got=batch.sample_rate)
        if not audio.is_floating_point():  # int16 PCM taken as it is would be 32768 x too loud (and torch.stft refuses it)
            raise AudioError("Batch", "audio", "float samples in [-1, 1] (the readers give float32)", got=str(audio.dtype))
        audio = audio.to(self.window.dtype)  # float64 / float16 input -> the module's precision (the STFT window's)
        B, A, S = audio.shape
        lengths = batch.audio_lengths if batch.audio_lengths is not None else torch.full((B,), S)
        lengths = lengths.to(audio.device).long().clamp(max=S)  # (B,) real samples per clip
        # One STFT for the log-mel and GCC-PHAT, each clip padded at its own ends: a clip's frames
        # are the same alone and beside a longer clip (padded frames masked below).
        spec = self.stft(audio, lengths)  # (B, A, F, T_stft)
        n = self.stft_frames(lengths)  # (B,) real STFT frames per clip
        power = spec.abs().pow(2)  # (B, A, F, T_stft), MelSpectrogram(power=2)
        logmel = (self.mel.mel_scale(power) + 1e-6).log()  # (B, A, M, T_stft)
        x = _masked_batch_norm(self.input_bn, logmel, n)  # padded frames: 0
        for block, ts in zip(self.blocks, self.time_strides):
            for layer in block:  # conv, BN, ReLU, conv, BN, ReLU; BN over real frames only
                # _BatchNorm: also the SyncBatchNorm that DDP's sync_batchnorm puts in place of BatchNorm2d
                x = _masked_batch_norm(layer, x, n) if isinstance(layer, nn.modules.batchnorm._BatchNorm) else layer(x)
            # mean of each 2 x ts window over its real frames (the ceil_mode window of a clip alone)
            real = _valid_frames(n, x.shape[-1]).to(x.dtype)[:, None, None]  # (B, 1, 1, T)
            share = F.avg_pool2d(real, kernel_size=(1, ts), ceil_mode=True)  # (B, 1, 1, T') real share of each window
            x = F.avg_pool2d(x, kernel_size=(2, ts), ceil_mode=True) / share.clamp(min=1e-6) * (share > 0)
            n = -(-n // ts)  # real frames after pooling: ceil(n / ts)
        x = x.mean(dim=2).transpose(1, 2)  # (B, C, M', T) -> (B, T, C)
        T = x.shape[1]
        parts = [x]
        directions = None
        if self.gcc_proj is not None or self.directions:
            # GCC and SRP are linear in the cross-spectrum: average each output frame's STFT
            # frames first (the same as averaging their correlations, time_pool x less work),
            # each clip's real STFT frames only
            real = _valid_frames(self.stft_frames(lengths), spec.shape[-1])  # (B, T_stft)
            cross = _mean_pool_time(phat_cross_spectrum(spec, self.srp_pairs), self.time_pool, real)[..., :T]  # (B, P, F, T)
            if self.gcc_proj is not None:
                cc = torch.fft.irfft(cross, n=self.n_fft, dim=2)  # (B, P, n_fft, T), lag 0 at index 0
                cc = torch.cat([cc[:, :, self.n_fft - self.max_lag :], cc[:, :, : self.max_lag + 1]], dim=2)  # lags -L..L
                parts.append(self.gcc_proj(cc.flatten(1, 2).transpose(1, 2)))  # (B, P * L, T) -> (B, T, P * L) -> (B, T, D)
            if self.directions:
                directions = self.direction_map(cross.detach(), self.batch_mics(batch))
        feats = self.out(torch.cat(parts, dim=-1))
        frame = torch.arange(T, device=audio.device, dtype=audio.dtype)
        times = ((frame * self.time_pool + (self.time_pool - 1) / 2) * self.hop_length / self.sample_rate).expand(B, T)
        mask = frame[None] < self.num_frames(lengths)[:, None]
        return TemporalFeatures(feats * mask[..., None], times, mask,
                                directions * mask[..., None] if directions is not None else None)

    def batch_mics(self, batch) -> torch.Tensor:
        """(B, A, 3) microphone positions: each sample's own, else the configured array."""
        rows = []
        for i, s in enumerate(batch.samples):
            m = s.audio.mic_positions if s.audio is not None and s.audio.mic_positions is not None else self.mic_positions
            if m is None:
                raise ConfigError("AudioEncoder", "mic_positions", f"microphone positions for the direction map (sample {i} has none)")
            rows.append(torch.as_tensor(m, dtype=torch.float32, device=batch.audio.device))
        return torch.stack(rows)

    @torch.no_grad()
    def direction_map(self, cross: torch.Tensor, mics: torch.Tensor) -> torch.Tensor:
        """(B, P, F, T) phase-transformed cross-spectra of all pairs, (B, A, 3) microphones ->
        (B, T, N) SRP-PHAT map over ``azimuth_bins(N)``."""
        az = azimuth_bins(self.directions, device=cross.device)
        delays = pair_delays(mics, self.srp_pairs, az, self.speed_of_sound) * self.sample_rate  # (B, P, N) samples
        return srp_phat(cross, delays, self.n_fft).transpose(1, 2)  # (B, N, T) -> (B, T, N)
