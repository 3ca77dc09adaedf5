"""Review of the audio-visual branch: readers, datasets, collate, audio / video encoders."""
from __future__ import annotations

import math

import pytest
import torch

from dense3d.models.encoders.audio.encoder import AudioEncoder
from dense3d.structures import Batch, Sample
from dense3d.structures.sample import AudioClip

SR = 16000


def _audio_batch(waves) -> Batch:
    """Zero-padded (B, A, S_max) batch of (A, S_b) waveforms, as ``collate`` builds it."""
    S = max(w.shape[1] for w in waves)
    audio = torch.zeros(len(waves), waves[0].shape[0], S)
    for b, w in enumerate(waves):
        audio[b, :, : w.shape[1]] = w
    samples = [Sample(f"s{b}", audio=AudioClip(w, SR)) for b, w in enumerate(waves)]
    return Batch(samples, audio=audio, audio_lengths=torch.tensor([w.shape[1] for w in waves]), sample_rate=SR)


def _noise(channels: int, samples: int, seed: int) -> torch.Tensor:
    return 0.1 * torch.randn(channels, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("samples", [1, 100, 256])
def test_audio_encoder_takes_clips_shorter_than_half_an_fft(samples):
    """A clip of fewer than n_fft / 2 + 1 samples raised torch's 'Padding size should be less
    than the corresponding input dimension' from the STFT's reflect padding."""
    torch.manual_seed(0)
    enc = AudioEncoder(num_channels=2, max_lag=4, directions=8, mic_positions=[[0.1, 0, 0], [-0.1, 0, 0]]).eval()
    with torch.no_grad():
        out = enc(_audio_batch([_noise(2, samples, 0)]))
    assert out.features.shape == (1, 1, enc.out_channels) and out.mask.tolist() == [[True]]
    assert bool(torch.isfinite(out.features).all()) and bool(torch.isfinite(out.directions).all())
