"""Review of the audio-visual branch: readers, datasets, collate, audio / video encoders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dense3d.data.converters import write_wav
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


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _dataset_from_config(name: str, **fields):
    """Instantiate ``configs/data/<name>.yaml`` (a data set config) with ``fields`` set."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / "data" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg, fields))


def test_dense_events_config_resamples_other_rates(tmp_path):
    """configs/data/dense_events.yaml asked for exactly 16000 Hz *and* resampled to 16 kHz: a
    22.05 kHz file raised 'expected 16000 Hz (resample in the pipeline instead)' before its
    AudioResample could run."""
    rate = 22050
    write_wav(tmp_path / "v.wav", _noise(2, 2 * rate, 0), rate)
    (tmp_path / "ev_train.json").write_text(json.dumps({"v": {"duration": 2.0, "timestamps": [[0.5, 1.0]], "sentences": ["A horn."]}}))
    ds = _dataset_from_config("dense_events", annotation_file=str(tmp_path / "ev_{split}.json"), media_dir=str(tmp_path), sensors=["audio"])
    audio = ds[0].audio
    assert audio.sample_rate == SR and audio.waveform.shape == (2, 2 * SR)
