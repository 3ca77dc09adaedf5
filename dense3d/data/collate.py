"""Collate samples into a ``Batch``: padding per sensor, exactly as ``Batch`` documents."""
from __future__ import annotations

from typing import Sequence

import torch

from dense3d.errors import AudioError, ImageError, PointCloudError, VideoError
from dense3d.structures import Batch, Sample

__all__ = ["collate"]


def _common(values: list, err, source: str, field: str, origins: list[str] | None = None):
    """The one value of ``values`` (one per sample); else ``err`` naming the samples (and their
    files, ``origins``) that disagree."""
    first = values[0]
    for i, v in enumerate(values[1:], start=1):
        if v != first:
            where = (lambda k: f" in {origins[k]}") if origins is not None else (lambda k: "")
            raise err(source, field, f"the same value in every sample of the batch ({first}{where(0)})", got=f"{v}{where(i)}")
    return first


def _origin(sample: Sample, part) -> str:
    """'<sample_id> (<file>)' for error messages."""
    return f"{sample.sample_id} ({getattr(part, 'source', '<memory>')})"


def collate(samples: Sequence[Sample]) -> Batch:
    """B samples -> ``Batch`` (use as a DataLoader's ``collate_fn``).

    * points: (sum N_b, 1 + 3 + C), column 0 the sample index b (samples without points add
      no rows); every sample must have the same feature names.
    * images (B, V, 3, H, W), ``cam2img`` / ``lidar2cam`` / ``lidar2img`` (B, V, 4, 4),
      ``camera_mask`` (B,): samples without cameras get zero images and identity matrices.
    * audio (B, A, S_max) zero-padded, ``audio_lengths`` (B,) (0 without audio); one channel
      count and one sample rate per batch.
    * video (B, T_max, 3, H, W) zero-padded, ``video_timestamps`` (B, T_max), ``video_mask`` (B, T_max),
      ``video_frame_duration`` (B,) each clip's ``VideoFrames.frame_duration`` (NaN: not given).

    A field no sample has stays None. Mismatches raise the sensor's ``dense3d.errors`` class.
    """
    samples = list(samples)
    B = len(samples)
    batch = Batch(samples=samples)
    if B == 0:
        return batch
    where = "collate"

    with_points = [(b, s.points) for b, s in enumerate(samples) if s.points is not None]
    if with_points:
        _common([p.feature_names for _, p in with_points], PointCloudError, where, "points.feature_names",
                [_origin(samples[b], p) for b, p in with_points])
        rows = []
        for b, p in with_points:
            idx = torch.full((len(p), 1), float(b), dtype=p.points.dtype)
            rows.append(torch.cat([idx, p.points], 1))  # (N_b, C) -> (N_b, 1 + C)
        batch.points = torch.cat(rows, 0)

    with_cams = [(b, s.cameras) for b, s in enumerate(samples) if s.cameras is not None]
    if with_cams:
        V, _, H, W = _common([tuple(c.images.shape) for _, c in with_cams], ImageError, where, "cameras.images shape (V, 3, H, W)",
                             [_origin(samples[b], c) for b, c in with_cams])
        ref = with_cams[0][1]
        batch.images = torch.zeros(B, V, 3, H, W, dtype=ref.images.dtype)
        batch.cam2img = torch.eye(4, dtype=ref.cam2img.dtype).repeat(B, V, 1, 1)  # (B, V, 4, 4)
        batch.lidar2cam = torch.eye(4, dtype=ref.lidar2cam.dtype).repeat(B, V, 1, 1)
        batch.camera_mask = torch.zeros(B, dtype=torch.bool)
        for b, c in with_cams:
            batch.images[b], batch.cam2img[b], batch.lidar2cam[b] = c.images, c.cam2img, c.lidar2cam
            batch.camera_mask[b] = True
        batch.lidar2img = batch.cam2img @ batch.lidar2cam  # (B, V, 4, 4)

    with_audio = [(b, s.audio) for b, s in enumerate(samples) if s.audio is not None]
    if with_audio:
        origins = [_origin(samples[b], a) for b, a in with_audio]
        batch.sample_rate = int(_common([int(a.sample_rate) for _, a in with_audio], AudioError, where, "audio.sample_rate", origins))
        A = _common([a.waveform.shape[0] for _, a in with_audio], AudioError, where, "audio channels", origins)
        S = max(a.waveform.shape[1] for _, a in with_audio)
        batch.audio = torch.zeros(B, A, S, dtype=with_audio[0][1].waveform.dtype)
        batch.audio_lengths = torch.zeros(B, dtype=torch.long)
        for b, a in with_audio:
            batch.audio[b, :, : a.waveform.shape[1]] = a.waveform
            batch.audio_lengths[b] = a.waveform.shape[1]

    with_video = [(b, s.video) for b, s in enumerate(samples) if s.video is not None]
    if with_video:
        _, _, H, W = _common([(0,) + tuple(v.frames.shape[1:]) for _, v in with_video], VideoError, where, "video frame shape (3, H, W)",
                             [_origin(samples[b], v) for b, v in with_video])
        T = max(v.frames.shape[0] for _, v in with_video)
        batch.video = torch.zeros(B, T, 3, H, W, dtype=with_video[0][1].frames.dtype)
        batch.video_timestamps = torch.zeros(B, T, dtype=with_video[0][1].timestamps.dtype)
        batch.video_mask = torch.zeros(B, T, dtype=torch.bool)
        batch.video_frame_duration = torch.full((B,), float("nan"), dtype=torch.float32)  # NaN: unknown (the encoder falls back)
        for b, v in with_video:
            t = v.frames.shape[0]
            batch.video[b, :t], batch.video_timestamps[b, :t] = v.frames, v.timestamps
            batch.video_mask[b, :t] = True
            if v.frame_duration is not None:
                batch.video_frame_duration[b] = v.frame_duration
    return batch
