"""Synthetic audio-visual clips for the model tests: a 4-microphone square array hears a
delayed tone burst from a known azimuth while a bright square shows in the video."""
from __future__ import annotations

import math

import torch

from dense3d.structures import Batch, EventAnnotations, Events, Sample
from dense3d.structures.sample import AudioClip, VideoFrames

SR = 16000
SPEED_OF_SOUND = 343.0
MICS = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [-0.1, 0.0, 0.0], [0.0, -0.1, 0.0]])


def tone_burst_clip(azimuth: float, t0: float, t1: float, duration: float = 2.0, freq: float = 1000.0, seed: int = 0, frames: int = 8, size: int = 64, noise: float = 0.01):
    """(waveform (4, S), video (T, 3, size, size), timestamps (T,)) of one plane wave event.

    The timestamps are frame starts (0, 1/f, ...), as ``read_video_frames`` gives them (pts);
    a frame shows the event when its centre (start + half a frame) lies inside the event.

    The plane wave from direction ``azimuth`` reaches microphone m ``-(pos_m . dir) / c``
    seconds after the array centre; the delays are applied exactly with an FFT phase shift.
    """
    g = torch.Generator().manual_seed(seed)
    S = int(duration * SR)
    t = torch.arange(S) / SR
    env = ((t >= t0) & (t < t1)).float()
    src = torch.sin(2 * math.pi * freq * t) * env + 0.3 * torch.randn(S, generator=g) * env  # tone + broadband
    direction = torch.tensor([math.cos(azimuth), math.sin(azimuth), 0.0])
    delays = -(MICS @ direction) / SPEED_OF_SOUND  # (4,) seconds
    spec = torch.fft.rfft(src)
    f = torch.fft.rfftfreq(S, 1 / SR)
    wave = torch.fft.irfft(spec[None] * torch.exp(-2j * math.pi * f[None] * delays[:, None]), n=S)
    wave = 0.5 * wave + noise * torch.randn(4, S, generator=g)
    ts = torch.arange(frames) * duration / frames  # (T,) frame starts
    centres = ts + duration / frames / 2
    video = 0.1 * torch.rand(frames, 3, size, size, generator=g)
    on = (centres >= t0) & (centres < t1)
    video[on, :, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    return wave.clamp(-1, 1), video, ts


def av_batch(specs, duration: float = 2.0, with_video: bool = True, size: int = 64, frames: int = 8) -> Batch:
    """Batch of clips from ``specs`` = [(azimuth, t0, t1, label), ...] (one event each)."""
    samples, waves, videos, stamps = [], [], [], []
    for i, (az, t0, t1, label) in enumerate(specs):
        wave, video, ts = tone_burst_clip(az, t0, t1, duration, seed=i, size=size, frames=frames)
        ev = EventAnnotations(Events(torch.tensor([[t0, t1]])), torch.tensor([label]), ("tone", "other"), azimuth=torch.tensor([az]))
        samples.append(Sample(f"clip{i}", audio=AudioClip(wave, SR, MICS.clone()), video=VideoFrames(video, ts), events=ev))
        waves.append(wave)
        videos.append(video)
        stamps.append(ts)
    B = len(specs)
    batch = Batch(samples, audio=torch.stack(waves), audio_lengths=torch.full((B,), waves[0].shape[1]), sample_rate=SR)
    if with_video:
        batch.video = torch.stack(videos)
        batch.video_timestamps = torch.stack(stamps)
        batch.video_mask = torch.ones(B, videos[0].shape[0], dtype=torch.bool)
    return batch


def audio_batch(waves) -> Batch:
    """Zero-padded (B, A, S_max) batch of (A, S_b) waveforms at SR, as ``collate`` builds it."""
    S = max(w.shape[1] for w in waves)
    audio = torch.zeros(len(waves), waves[0].shape[0], S)  # (B, A, S_max)
    for b, w in enumerate(waves):
        audio[b, :, : w.shape[1]] = w
    samples = [Sample(f"s{b}", audio=AudioClip(w, SR)) for b, w in enumerate(waves)]
    return Batch(samples, audio=audio, audio_lengths=torch.tensor([w.shape[1] for w in waves]), sample_rate=SR)


def noise(channels: int, samples: int, seed: int) -> torch.Tensor:
    """(channels, samples) seeded white noise of standard deviation 0.1."""
    return 0.1 * torch.randn(channels, samples, generator=torch.Generator().manual_seed(seed))
