"""Video encoder: per-frame image backbone (the camera encoder's ``ResNetBackbone``) -> pooled
frame features at the frames' centres, resampled onto given times (the audio frames) by linear
interpolation between those centres.

A decoded frame's pts is the start of its display interval, which lasts one frame of the *video*
(1 / its native fps); the frame represents ``[pts, pts + 1 / native_fps)`` and its feature sits at
the interval's mid-time, ``pts + 0.5 / native_fps``, as ``TemporalFeatures.times`` are (PDVC's
features likewise cover equal slices of the clip). That holds however many frames a reader kept:
8 fps frames read at 2 fps are still 1/8 s frames, so frame 4 (pts 0.5) sits at 0.5625 s, not
half the 0.5 s gap between kept frames later (0.75 s: a 0.19 s video lag against the audio). The
native frame duration comes with the batch (``Batch.video_frame_duration``, from
``VideoFrames.frame_duration``, set by ``read_video_frames``). Clips without it (frames built by
user code) fall back to half the mean gap between their kept frames
(:func:`~dense3d.models.encoders.temporal.frame_centres`), right when every frame was kept, with
one warning per encoder. The synthetic clips render frame f at the instant f / fps, so their
frames sit 0.5 / native fps (1/16 s at 8 fps) after the instant shown whatever fps they are read
at; real video frames are exposed over (part of) their interval."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import ConfigError, VideoError
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.camera.encoder import IMAGENET_MEAN, IMAGENET_STD
from dense3d.models.encoders.temporal import TemporalFeatures, frame_centres

__all__ = ["VideoEncoder", "interpolate_in_time", "native_frame_centres"]


def native_frame_centres(starts: torch.Tensor, mask: torch.Tensor, frame_duration: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """(B, T) each real frame's mid-time ``start + frame_duration / 2`` from its start (pts)
    ``starts`` (B, T) and the video's own frame duration ``frame_duration`` (B,) seconds (1 /
    native fps; NaN or None: unknown). A clip whose duration is unknown falls back to half the
    mean gap between its kept frames (:func:`~dense3d.models.encoders.temporal.frame_centres`).
    Padded frames keep their value. Returns (centres, whether any clip fell back)."""
    fallback = frame_centres(starts, mask)  # (B, T), start + half the kept frames' mean gap
    if frame_duration is None:
        return fallback, bool(mask.any())
    known = torch.isfinite(frame_duration)  # (B,)
    half = torch.where(known, frame_duration, torch.zeros_like(frame_duration)).to(starts.dtype)[:, None] / 2  # (B,) -> (B, 1)
    native = torch.where(mask, starts + half, starts)  # (B, T)
    centres = torch.where(known[:, None], native, fallback)
    return centres, bool((~known & mask.any(dim=1)).any())


def interpolate_in_time(features: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of one clip's frame features (T, D) at ``timestamps`` (T,), using the
    frames where ``valid`` (T,), onto ``times`` (T',) -> (T', D); clamped at both ends."""
    f, ts = features[valid], timestamps[valid]
    if f.shape[0] == 0:
        return features.new_zeros(times.shape[0], features.shape[1])
    if f.shape[0] == 1:
        return f.expand(times.shape[0], -1)
    t = times.clamp(ts[0], ts[-1]).to(ts.dtype)
    hi = torch.searchsorted(ts.contiguous(), t.contiguous()).clamp(1, ts.shape[0] - 1)
    lo = hi - 1
    w = ((t - ts[lo]) / (ts[hi] - ts[lo])).to(f.dtype)[:, None]
    return f[lo] * (1 - w) + f[hi] * w


class VideoEncoder(nn.Module):
    """Args:
        backbone: ``ResNetBackbone`` (its last returned map is pooled).
        out_channels: D.
        normalize: apply the ImageNet mean / std to frames in [0, 1].
        frame_size: (H, W) the frames are resized to (bilinear, antialiased) before the backbone,
            or None to keep the data's size; small frames keep CPU training affordable.

    ``forward(batch, times=None, times_mask=None, timestamps="starts")`` reads ``batch.video``
    (B, T, 3, H, W), ``batch.video_timestamps`` (B, T), ``batch.video_mask`` (B, T).
    ``timestamps`` says what ``batch.video_timestamps`` mark: ``"starts"`` (the frames' pts, as
    ``dense3d.data.readers.read_video_frames`` gives them; each is moved to its frame's centre,
    start + half of ``batch.video_frame_duration``, the video's native frame duration, or where a
    clip lacks it half its kept frames' mean gap: :func:`native_frame_centres`) or ``"centres"``
    (used as they are). With ``times``
    (B, T') (e.g. the audio frames) it returns features at those times (mask ``times_mask``),
    else at the video frames' centres. Returns ``TemporalFeatures``.
    """

    def __init__(self, backbone: ResNetBackbone, out_channels: int = 128, normalize: bool = True,
                 frame_size: tuple[int, int] | None = None):
        super().__init__()
        self.frame_size = None if frame_size is None else (int(frame_size[0]), int(frame_size[1]))
        self.backbone = backbone
        self.proj = nn.Linear(backbone.out_channels[-1], out_channels)
        self.out_channels = out_channels
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._warned_fallback = False

    def frame_features(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T, D); padded frames are not run through the backbone."""
        B, T = video.shape[:2]
        out = video.new_zeros(B, T, self.out_channels)
        frames = video[mask]  # (n_valid, 3, H, W)
        if frames.shape[0]:
            if self.frame_size is not None and tuple(frames.shape[-2:]) != self.frame_size:
                frames = F.interpolate(frames, size=self.frame_size, mode="bilinear", align_corners=False, antialias=True)
            if self.normalize:
                frames = (frames - self.mean) / self.std
            pooled = self.backbone(frames)[-1].mean(dim=(2, 3))  # (n, C, h, w) -> (n, C)
            out[mask] = self.proj(pooled).to(out.dtype)  # bfloat16 under autocast
        return out

    def forward(self, batch, times: torch.Tensor | None = None, times_mask: torch.Tensor | None = None,
                timestamps: str = "starts") -> TemporalFeatures:
        if timestamps not in ("starts", "centres"):
            raise ConfigError("VideoEncoder", "timestamps", '"starts" or "centres"', got=timestamps)
        video = batch.video
        if video is None or video.dim() != 5 or video.shape[2] != 3:
            raise VideoError("Batch", "video", "a (B, T, 3, H, W) tensor", got=None if video is None else tuple(video.shape))
        if not video.is_floating_point():  # integer frames would be taken as values in [0, 255] and truncated
            raise VideoError("Batch", "video", "float frames in [0, 1] (the readers give them)", got=str(video.dtype))
        B, T = video.shape[:2]
        if batch.video_timestamps is None or tuple(batch.video_timestamps.shape) != (B, T):
            raise VideoError("Batch", "video_timestamps", f"shape ({B}, {T})", got=None if batch.video_timestamps is None else tuple(batch.video_timestamps.shape))
        mask = batch.video_mask if batch.video_mask is not None else torch.ones(B, T, dtype=torch.bool, device=video.device)
        feats = self.frame_features(video, mask)
        # features describe whole frames: they sit at the frames' mid-times (TemporalFeatures.times)
        if timestamps == "starts":
            duration = getattr(batch, "video_frame_duration", None)
            if duration is not None and tuple(duration.shape) != (B,):
                raise VideoError("Batch", "video_frame_duration", f"shape ({B},) (seconds per frame of each clip's video)", got=tuple(duration.shape))
            centres, fell_back = native_frame_centres(batch.video_timestamps, mask, duration)
            if fell_back and not self._warned_fallback:
                self._warned_fallback = True
                warnings.warn("VideoEncoder: clips without VideoFrames.frame_duration (1 / the video's native fps): their frames are "
                              "centred by half the gap between the kept frames, right only when every frame of the video was kept",
                              stacklevel=2)
        else:
            centres = batch.video_timestamps
        if times is None:
            return TemporalFeatures(feats, centres, mask)
        out = torch.stack([interpolate_in_time(feats[b], centres[b], mask[b], times[b]) for b in range(B)])
        tmask = times_mask if times_mask is not None else torch.ones(times.shape, dtype=torch.bool, device=times.device)
        return TemporalFeatures(out * tmask[..., None], times, tmask)
