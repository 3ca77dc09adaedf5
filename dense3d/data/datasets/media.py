"""Reading a clip's audio and video (shared by FAVDBench and dense-event data sets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dense3d.data.readers import read_audio, read_video_frames
from dense3d.errors import AudioError
from dense3d.structures import AudioClip, VideoFrames

__all__ = ["load_clip"]


def load_clip(
    media_dir: Path,
    audio_dir: Path | None,
    clip_id: str,
    sensors: tuple[str, ...],
    sample_rate: int | None,
    fps: float | None,
    max_frames: int | None,
    mic_positions=None,
    annotation_source=None,
) -> tuple[AudioClip | None, VideoFrames | None]:
    """Audio from ``audio_dir/clip_id.{wav,flac,mp3}`` (else the mp4's audio stream) and frames
    from ``media_dir/clip_id.mp4``, each only when ``sensors`` asks for it."""
    mp4 = media_dir / f"{clip_id}.mp4"
    audio = video = None
    if "audio" in sensors:
        wave, rate, src = read_audio(audio_dir if audio_dir is not None else media_dir, mp4, clip_id, sample_rate)
        mics = None
        if mic_positions is not None:
            try:
                mics = torch.as_tensor(np.asarray(mic_positions, dtype=np.float32))
            except (TypeError, ValueError):
                mics = None
            if mics is None or tuple(mics.shape) != (wave.shape[0], 3) or not bool(torch.isfinite(mics).all()):
                raise AudioError(annotation_source, f"{clip_id}.mic_positions", f"{wave.shape[0]} finite [x, y, z] (one per channel of {src.name})", got=mic_positions)
        audio = AudioClip(waveform=wave, sample_rate=rate, mic_positions=mics, source=str(src))
    if "video" in sensors:
        frames, times = read_video_frames(mp4, fps=fps, max_frames=max_frames)
        video = VideoFrames(frames=frames, timestamps=times, source=str(mp4))
    return audio, video
