"""Audio transforms: channel count, resampling and log-mel spectrograms (torchaudio.transforms)."""
from __future__ import annotations

import dataclasses

import torch

from dense3d.errors import AudioError, ConfigError
from dense3d.structures import Sample

__all__ = ["AudioChannels", "AudioResample", "LogMelSpectrogram"]


class AudioChannels:
    """Give every clip the ``num_channels`` the audio encoder declares (its ``num_channels``).

    * a clip with ``num_channels`` channels is left as it is;
    * ``num_channels=1``: a clip of several channels (a stereo mp3) becomes mono: ``mode="mean"``
      averages them (ffmpeg's ``-ac 1`` downmix), ``mode="first"`` keeps channel 0; its
      ``mic_positions`` are dropped (one channel is no array);
    * any other count raises ``AudioError`` naming the file: channels of a microphone array are
      not made up from fewer (a copied channel gives GCC-PHAT a fake zero delay) nor picked from
      a recording of another layout.

    FAVDBench's audio (YouTube soundtracks, mono or stereo) is not a microphone array:
    ``configs/data/favdbench.yaml`` downmixes it to mono for ``configs/model/audio/mono.yaml``.
    """

    reads = ("audio",)
    writes = ("audio.waveform", "audio.mic_positions")
    MODES = ("mean", "first")

    def __init__(self, num_channels: int = 1, mode: str = "mean"):
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ConfigError("AudioChannels", "num_channels", "an integer >= 1 (the audio encoder's num_channels)", got=repr(num_channels))
        if mode not in self.MODES:
            raise ConfigError("AudioChannels", "mode", " or ".join(f'"{m}"' for m in self.MODES), got=repr(mode))
        self.num_channels = num_channels
        self.mode = mode

    def __call__(self, sample: Sample) -> Sample:
        audio = sample.audio
        if audio is None or audio.waveform.shape[0] == self.num_channels:
            return sample
        A = audio.waveform.shape[0]
        if self.num_channels != 1:
            raise AudioError(audio.source, "audio channels", f"{self.num_channels} channels (the audio encoder's num_channels; "
                             "only a downmix to 1 channel is made)", got=f"{A} channel{'s' if A != 1 else ''}")
        if self.mode == "mean":
            wave = audio.waveform.mean(dim=0, keepdim=True)  # (A, S) -> (1, S)
        else:
            wave = audio.waveform[:1]  # (A, S) -> (1, S)
        return dataclasses.replace(sample, audio=dataclasses.replace(audio, waveform=wave, mic_positions=None))


class AudioResample:
    """Resample the waveform to ``sample_rate`` (torchaudio's windowed-sinc ``Resample``)."""

    reads = ("audio",)
    writes = ("audio.waveform", "audio.sample_rate")

    def __init__(self, sample_rate: int = 16000):
        if int(sample_rate) <= 0:
            raise ConfigError("AudioResample", "sample_rate", "a positive rate in Hz", got=sample_rate)
        self.sample_rate = int(sample_rate)
        self._resamplers: dict[int, torch.nn.Module] = {}

    def __call__(self, sample: Sample) -> Sample:
        import torchaudio

        audio = sample.audio
        if audio is None or int(audio.sample_rate) == self.sample_rate:
            return sample
        rate = int(audio.sample_rate)
        if rate not in self._resamplers:
            self._resamplers[rate] = torchaudio.transforms.Resample(rate, self.sample_rate)
        wave = self._resamplers[rate](audio.waveform)  # (A, S) -> (A, S * new / old)
        return dataclasses.replace(sample, audio=dataclasses.replace(audio, waveform=wave, sample_rate=self.sample_rate))


class LogMelSpectrogram:
    """Log-mel spectrogram ``log(mel + eps)`` of every channel -> ``sample.meta["log_mel"]``
    (A, n_mels, frames). The waveform stays (collate pads it); ``spectrogram(wave)`` computes the
    same features on any (..., S) tensor, e.g. a collated (B, A, S) batch inside a model.

    Raises ``AudioError`` via the sample when its rate differs from ``sample_rate`` (put
    ``AudioResample`` first)."""

    reads = ("audio",)
    writes = ("meta.log_mel",)

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64, eps: float = 1e-6):
        import torchaudio

        if min(int(sample_rate), int(n_fft), int(hop_length), int(n_mels)) <= 0:
            raise ConfigError("LogMelSpectrogram", "sample_rate/n_fft/hop_length/n_mels", "positive integers", got=[sample_rate, n_fft, hop_length, n_mels])
        self.sample_rate = int(sample_rate)
        self.eps = float(eps)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=int(n_fft), hop_length=int(hop_length), n_mels=int(n_mels)
        )

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(..., S) -> (..., n_mels, frames)."""
        return torch.log(self.mel.to(waveform.device)(waveform) + self.eps)

    def __call__(self, sample: Sample) -> Sample:
        audio = sample.audio
        if audio is None:
            return sample
        if int(audio.sample_rate) != self.sample_rate:
            raise AudioError(audio.source, "sample_rate", f"{self.sample_rate} Hz (add AudioResample before LogMelSpectrogram)", got=f"{audio.sample_rate} Hz")
        meta = dict(sample.meta)
        meta["log_mel"] = self.spectrogram(audio.waveform)
        return dataclasses.replace(sample, meta=meta)
