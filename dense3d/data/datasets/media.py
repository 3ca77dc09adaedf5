"""Reading a clip's audio and video (shared by FAVDBench and dense-event data sets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dense3d.data.readers import read_audio, read_video_frames
from dense3d.errors import AudioError, ConfigError, VideoError
from dense3d.structures import AudioClip, VideoFrames

__all__ = ["load_clip", "check_frame_options", "AUDIO_MIN_FRACTION"]

# Audio (or video) shorter than this share of the annotated duration is a broken (truncated) file. Real
# sets' durations come from the video's metadata and often differ from the audio by seconds
# (ActivityNet), so only a gross shortfall is refused.
AUDIO_MIN_FRACTION = 0.5


def check_frame_options(source: str, fps, max_frames, spread_frames: bool = False) -> tuple[float | None, int | None]:
    """The video options of a data set: ``fps`` a number > 0 or None / 0 (every frame),
    ``max_frames`` an integer >= 1 or None, ``spread_frames`` a bool (true needs ``max_frames``);
    else ``ConfigError`` naming the option."""
    if not isinstance(spread_frames, bool) or (spread_frames and max_frames is None):
        raise ConfigError(source, "spread_frames", "true (with max_frames) or false", got=f"{spread_frames!r} with max_frames {max_frames!r}")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not np.isfinite(fps) or fps < 0:
            raise ConfigError(source, "fps", "a number of frames per second > 0, or null for every frame", got=repr(fps))
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
            raise ConfigError(source, "max_frames", "an integer >= 1, or null for no limit", got=repr(max_frames))
    return (float(fps) if fps else None), (int(max_frames) if max_frames is not None else None)


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
    duration: float | None = None,
    spread_frames: bool = False,
) -> tuple[AudioClip | None, VideoFrames | None]:
    """Audio from ``audio_dir/clip_id.{wav,flac,mp3}`` (else the mp4's audio stream) and frames
    from ``media_dir/clip_id.mp4``, each only when ``sensors`` asks for it.

    ``duration``: the annotated clip length in seconds; audio or video shorter than half of it (a
    truncated file) raises ``AudioError`` / ``VideoError`` naming the file (video cut by
    ``max_frames`` is not checked: that cut is asked for). ``spread_frames``: the ``max_frames``
    spread over the whole video (``read_video_frames(spread=True)``), not its first ones.
    """
    mp4 = media_dir / f"{clip_id}.mp4"
    audio = video = None
    if "audio" in sensors:
        wave, rate, src = read_audio(audio_dir if audio_dir is not None else media_dir, mp4, clip_id, sample_rate)
        if duration is not None:
            seconds = wave.shape[1] / float(rate)
            if seconds < AUDIO_MIN_FRACTION * duration:
                where = f" in {annotation_source}" if annotation_source is not None else ""
                raise AudioError(src, "audio", f"at least half of {clip_id}.duration = {duration:g} s of audio (the annotation{where}); truncated file?",
                                 got=f"{seconds:.3f} s")
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
        frames, times, frame_duration = read_video_frames(mp4, fps=fps, max_frames=max_frames, spread=spread_frames, return_frame_duration=True)
        cut = max_frames is not None and len(times) >= max_frames and not spread_frames  # stopped by max_frames on purpose
        if duration is not None and not cut:
            # the frames cover from the first start to the last start plus one (mean) frame gap
            gap = float(times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else (1.0 / fps if fps else 0.0)
            seconds = float(times[-1]) + gap
            if seconds < AUDIO_MIN_FRACTION * duration:
                where = f" in {annotation_source}" if annotation_source is not None else ""
                raise VideoError(mp4, "frames", f"at least half of {clip_id}.duration = {duration:g} s of video (the annotation{where}); truncated file?",
                                 got=f"{len(times)} frames up to {seconds:.3f} s")
        # frame_duration: the video's own (1 / native fps), whatever fps the frames were kept at
        video = VideoFrames(frames=frames, timestamps=times, source=str(mp4), frame_duration=frame_duration)
    return audio, video
