"""Low-level file reading shared by the datasets: point files, matrices, images, audio, video, JSON.

Every reader raises a ``dense3d.errors`` subclass with one line naming the file and the
field on bad input; none of them knows about data sets.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dense3d.errors import AnnotationError, AudioError, CalibrationError, ImageError, PointCloudError, VideoError

__all__ = [
    "AUDIO_EXTENSIONS",
    "check_rigid",
    "find_audio_file",
    "load_json",
    "load_pickle",
    "read_audio",
    "read_audio_file",
    "read_image",
    "read_mp4_audio",
    "read_npy",
    "read_points_bin",
    "read_video_frames",
    "require",
    "to_matrix",
]

# Audio files looked up beside a clip, in this order.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3")


# ---------------------------------------------------------------- annotation files
def load_json(path: str | os.PathLike, error=AnnotationError):
    """Parse a JSON file; a missing or malformed file raises ``error`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise error(path, "<file>", "an existing JSON file", got="missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(path, "<file>", "valid JSON", got=f"{type(e).__name__} at {getattr(e, 'pos', '?')}") from None


def load_pickle(path: str | os.PathLike, error=AnnotationError):
    """Load a pickle (mmdet3d info files are plain pickled dicts, lists and arrays)."""
    path = Path(path)
    if not path.is_file():
        raise error(path, "<file>", "an existing pickle file", got="missing")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise error(path, "<file>", "a readable pickle", got=type(e).__name__) from None


def require(mapping, key: str, source, field: str, error=AnnotationError):
    """``mapping[key]``, or ``error(source, field.key, "present")`` when it is not a mapping holding it."""
    if not isinstance(mapping, dict) or key not in mapping:
        where = f"{field}.{key}" if field else key
        raise error(source, where, "a present field", got="missing")
    return mapping[key]


# ---------------------------------------------------------------- matrices
def to_matrix(value, source, field: str, shapes: Sequence[tuple[int, int]] = ((4, 4),)) -> torch.Tensor:
    """A nested list / array -> float64 tensor of one of ``shapes``; else ``CalibrationError``."""
    try:
        m = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise CalibrationError(source, field, "a numeric matrix", got=type(value).__name__) from None
    if tuple(m.shape) not in [tuple(s) for s in shapes]:
        want = " or ".join(f"{a}x{b}" for a, b in shapes)
        raise CalibrationError(source, field, f"a {want} matrix", got=f"shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise CalibrationError(source, field, "finite values", got="nan or inf")
    return m


def check_rigid(m: torch.Tensor, source, field: str, atol: float = 1e-3) -> torch.Tensor:
    """Check a (4, 4) matrix is a rigid transform: ``R^T R = I``, ``det R = +1``, last row
    ``[0, 0, 0, 1]``. Returns ``m``; raises ``CalibrationError`` naming the failed property."""
    m = to_matrix(m, source, field)
    r = m[:3, :3]
    if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype), atol=1e-6):
        raise CalibrationError(source, field, "last row [0, 0, 0, 1] (a rigid transform)", got=m[3].tolist())
    err = (r.T @ r - torch.eye(3, dtype=m.dtype)).abs().max().item()
    if err > atol:
        raise CalibrationError(source, field, "an orthonormal rotation (R^T R = I)", got=f"max |R^T R - I| = {err:.3g}")
    det = torch.linalg.det(r).item()
    if abs(det - 1.0) > atol:
        raise CalibrationError(source, field, "a proper rotation (det R = +1)", got=f"det {det:.4g}")
    return m


# ---------------------------------------------------------------- points
def read_points_bin(path: str | os.PathLike, num_feats: int, field: str = "points") -> torch.Tensor:
    """Read a raw little-endian float32 point file (nuScenes ``.pcd.bin``, mmdet3d ScanNet ``.bin``).

    Returns (N, num_feats) float32. Raises ``PointCloudError`` for ``num_feats`` < 3 (x, y, z
    come first), a missing file, a size that is not a multiple of ``4 * num_feats`` bytes
    (truncated) and NaN/inf values.
    """
    path = Path(path)
    if isinstance(num_feats, bool) or not isinstance(num_feats, (int, np.integer)) or num_feats < 3:
        raise PointCloudError(path, f"{field} features per point", "an integer >= 3 (x, y, z first)", got=repr(num_feats))
    if not path.is_file():
        raise PointCloudError(path, field, "an existing point file", got="missing")
    size = path.stat().st_size
    row = 4 * int(num_feats)
    if size % row:
        raise PointCloudError(
            path, field, f"a size that is a multiple of {row} bytes ({num_feats} float32 features per point)", got=f"{size} bytes"
        )
    pts = np.fromfile(path, dtype="<f4").reshape(-1, num_feats)  # (N * F,) -> (N, F)
    return _finite_points(torch.from_numpy(pts.astype(np.float32, copy=False)), path, field)


def read_npy(path: str | os.PathLike, field: str, ncols: int | None = None, error=PointCloudError) -> np.ndarray:
    """Read a 2-D ``.npy`` array, optionally with exactly / at least ``ncols`` columns."""
    path = Path(path)
    if not path.is_file():
        raise error(path, field, "an existing .npy file", got="missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(path, field, "a readable .npy array", got=type(e).__name__) from None
    if arr.ndim != 2 or (ncols is not None and arr.shape[1] < ncols) or (arr.size and not np.issubdtype(arr.dtype, np.number)):
        raise error(path, field, f"a numeric (N, {ncols if ncols is not None else 'C'}) array", got=f"shape {arr.shape} {arr.dtype}")
    return arr


def _finite_points(pts: torch.Tensor, path, field: str) -> torch.Tensor:
    bad = ~torch.isfinite(pts)
    if bool(bad.any()):
        i = int(bad.any(1).nonzero()[0, 0])
        raise PointCloudError(path, f"{field}[{i}]", "finite values", got=pts[i].tolist())
    return pts


# ---------------------------------------------------------------- images
def read_image(path: str | os.PathLike, field: str = "img_path") -> torch.Tensor:
    """Decode a JPEG/PNG to a (3, H, W) float tensor in [0, 1] (torchvision.io; 16-bit PNGs too)."""
    from torchvision.io import ImageReadMode, decode_image

    path = Path(path)
    if not path.is_file():
        raise ImageError(path, field, "an existing image file", got="missing")
    try:
        img = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8, uint16 for a 16-bit PNG
    except RuntimeError as e:
        raise ImageError(path, field, "a decodable JPEG/PNG image", got=str(e).splitlines()[0] if str(e) else "decode error") from None
    return img.to(torch.float32) / float(torch.iinfo(img.dtype).max)


# ---------------------------------------------------------------- audio
def find_audio_file(folder: str | os.PathLike, stem: str) -> Path | None:
    """The first of ``folder/stem.{wav,flac,mp3}`` that exists, or None."""
    for ext in AUDIO_EXTENSIONS:
        p = Path(folder) / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def read_audio_file(path: str | os.PathLike, expected_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read wav/flac/mp3 with soundfile -> ((A, S) float32 in [-1, 1], sample rate).

    ``expected_rate``: raise ``AudioError`` when the file's rate differs (None accepts any).
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio", "an existing audio file", got="missing")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, A)
    except (RuntimeError, sf.LibsndfileError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        why = why.split("': ", 1)[-1] if why.startswith("Error opening '") else why  # the path is named already
        if "does not exist" in why:  # libsndfile's words for MP3 data it cannot decode, the file being there
            why = f"data libsndfile cannot decode ({path.stat().st_size} bytes; libsndfile: {why})"
        raise AudioError(path, "audio", "a readable wav/flac/mp3 file", got=why) from None
    _check_rate(path, rate, expected_rate)
    if data.shape[0] == 0:
        raise AudioError(path, "audio", "at least one audio sample", got="0 frames (an empty or truncated file)")
    declared = _wav_declared_frames(path)
    if declared is not None and data.shape[0] < declared:
        raise AudioError(path, "data chunk", f"{declared} frames as the WAV header declares",
                         got=f"{data.shape[0]} frames (the file ends early: a truncated copy?)")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # (S, A) -> (A, S)
    return _finite_audio(wave, path), int(rate)


@contextlib.contextmanager
def _libav_silent():
    """No libav log lines (e.g. "moov atom not found") while a file is opened and decoded: a bad
    file is our one-line error, not that plus libav's. torchvision.io sets PyAV's level to ERROR
    process-wide when imported; the level in force before is restored afterwards."""
    import av.logging

    level = av.logging.get_level()
    av.logging.set_level(None)  # None: libav's messages are dropped
    try:
        yield
    finally:
        av.logging.set_level(level)


def read_mp4_audio(path: str | os.PathLike, expected_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of a video file with PyAV -> ((A, S) float32, rate)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio", "an existing media file", got="missing")
    try:
        with _libav_silent(), av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "streams.audio", "an audio stream", got="none")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate)
            _check_rate(path, rate, expected_rate)
            # Convert whatever the codec gives (packed s16, planar float, ...) to planar float32.
            resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())  # (A, n)
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray())
    except av.error.FFmpegError as e:
        raise AudioError(path, "audio", "a decodable audio stream", got=type(e).__name__) from None
    if not chunks:
        raise AudioError(path, "audio", "at least one audio sample", got="an empty stream")
    wave = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32))  # (A, S)
    return _finite_audio(wave, path), rate


def read_audio(audio_dir, media_file, stem: str, expected_rate: int | None) -> tuple[torch.Tensor, int, Path]:
    """Audio of a clip: ``audio_dir/stem.{wav,flac,mp3}`` if one exists, else the audio stream of
    ``media_file``. Returns (waveform (A, S), rate, the file read)."""
    found = find_audio_file(audio_dir, stem) if audio_dir is not None else None
    if found is not None:
        wave, rate = read_audio_file(found, expected_rate)
        return wave, rate, found
    if media_file is None or not Path(media_file).is_file():
        raise AudioError(
            Path(audio_dir or ".") / f"{stem}.wav", "audio", f"{stem}.wav/.flac/.mp3 or {stem}.mp4 with an audio stream", got="missing"
        )
    wave, rate = read_mp4_audio(media_file, expected_rate)
    return wave, rate, Path(media_file)


def _wav_declared_frames(path: Path) -> int | None:
    """The frame count a RIFF/RIFX WAV header declares (data chunk bytes // fmt block align), or
    None for other formats and for the "length unknown" sizes 0 and 0xFFFFFFFF of streamed WAVs.
    libsndfile shortens the data chunk to the bytes present without an error (it only logs
    "data : N (should be M)"), so a file cut short reads as a shorter clip unless checked here."""
    import struct

    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                body = f.read(min(size, 26))
                if len(body) < 14:
                    return None
                # fmt: format tag, channels, rate, bytes/s, block align (bytes per frame for the
                # fixed-size codings: PCM 1, float 3, A-law 6, mu-law 7; 0xFFFE names one at byte 24)
                tag, block_align = struct.unpack(order + "H", body[:2])[0], struct.unpack(order + "H", body[12:14])[0]
                if tag == 0xFFFE and len(body) == 26:
                    tag = struct.unpack(order + "H", body[24:26])[0]
                if tag not in (1, 3, 6, 7):
                    return None  # ADPCM and other block codings: a block holds many frames
                f.seek(size - len(body) + (size & 1), os.SEEK_CUR)
            elif chunk_id == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to an even length


def _check_rate(path, rate: int, expected: int | None) -> None:
    if expected is not None and int(rate) != int(expected):
        raise AudioError(path, "sample_rate", f"{int(expected)} Hz (resample in the pipeline instead)", got=f"{int(rate)} Hz")


def _finite_audio(wave: torch.Tensor, path) -> torch.Tensor:
    if not bool(torch.isfinite(wave).all()):
        raise AudioError(path, "waveform", "finite samples", got="nan or inf")
    return wave


# ---------------------------------------------------------------- video
def read_video_frames(
    path: str | os.PathLike, fps: float | None = None, max_frames: int | None = None, spread: bool = False,
    return_frame_duration: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, float | None]:
    """Decode a video's frames with PyAV.

    Args:
        fps: keep the first frame at or after each point of a ``1 / fps`` grid that starts at the
            first frame, so a 25 fps video read at ``fps=8`` gives 8 frames a second (a gap of at
            least ``1 / fps`` from the last kept frame gave 6.25); a video slower than ``fps``
            keeps every frame. None keeps every frame.
        max_frames: stop after this many kept frames.
        spread: spread the ``max_frames`` over the whole video (FAVDBench's frames: ``max_frames /
            duration`` frames a second, the duration from the stream or container), ``fps`` then
            the most kept a second; without it the first ``max_frames`` are kept.

        return_frame_duration: also return the seconds one frame of the video lasts (1 / its
            native fps; the ``VideoFrames.frame_duration`` the video encoder centres frames with).

    Returns:
        frames (T, 3, H, W) float in [0, 1], timestamps (T,) seconds (float32, from pts: each
        frame's start), and with ``return_frame_duration`` the frame duration: the median gap
        between the pts of consecutive *decoded* frames (kept or not), else 1 / the stream's
        average rate when fewer than two frames were decoded, else None.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "video", "an existing video file", got="missing")
    frames, times = [], []
    decoded = []  # pts of every decoded frame, kept or not: their gaps are the native frame duration
    stream_rate = None
    next_t, start = -float("inf"), None
    step = 1.0 / fps if fps else 0.0
    try:
        with _libav_silent(), av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "streams.video", "a video stream", got="none")
            stream = container.streams.video[0]
            stream_rate = float(stream.average_rate) if stream.average_rate else None
            if spread and max_frames is not None:
                if stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                elif container.duration:
                    seconds = container.duration / 1e6  # av.time_base: microseconds
                else:
                    raise VideoError(path, "duration", f"a stream or container duration to spread {max_frames} frames over", got="none")
                rate = max_frames / max(seconds, 1e-6)
                step = 1.0 / min(rate, fps) if fps else 1.0 / rate
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 1)
                decoded.append(t)
                if t + 1e-6 < next_t:
                    continue
                if step:  # the grid point after t: start + k * step, k = floor((t - start) / step) + 1
                    start = t if start is None else start
                    next_t = start + (math.floor((t - start) / step + 1e-6) + 1) * step
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))  # (H, W, 3) uint8
                times.append(t)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as e:
        raise VideoError(path, "video", "a decodable video stream", got=type(e).__name__) from None
    if not frames:
        raise VideoError(path, "frames", "at least one frame", got="none")
    video = torch.stack(frames).permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (T, H, W, 3) -> (T, 3, H, W)
    stamps = torch.tensor(times, dtype=torch.float32)
    if not return_frame_duration:
        return video, stamps
    if len(decoded) > 1:
        frame_duration = float(np.median(np.diff(decoded)))
    else:
        frame_duration = 1.0 / stream_rate if stream_rate else None
    if frame_duration is not None and not (math.isfinite(frame_duration) and frame_duration > 0):
        raise VideoError(path, "frame rate", "increasing frame pts (a positive frame duration)", got=f"{frame_duration:g} s between frames")
    return video, stamps, frame_duration
