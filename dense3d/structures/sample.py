"""Samples and batches: what the data loaders return and the models consume.

Every field documents its shape. A sample carries any subset of sensors (``None`` for a
missing one): LiDAR only, LiDAR + cameras, audio + video, or all of them.

Symbols: N points, C extra point features, V camera views, H x W image size, A audio
channels, S audio samples, T video frames, K annotated boxes, E annotated events,
B samples in a batch, R regions (proposals).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

from dense3d.errors import AudioError, CalibrationError, ImageError, PointCloudError, VideoError
from dense3d.structures.boxes import Boxes3D
from dense3d.structures.events import Events

__all__ = [
    "PointCloud",
    "CameraImages",
    "AudioClip",
    "VideoFrames",
    "BoxAnnotations",
    "EventAnnotations",
    "Sample",
    "Batch",
    "RegionFeatures",
]


def _check_finite(t: torch.Tensor, err, source: str, name: str):
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero()[0, 0])
        raise err(source, f"{name}[{bad}]", "finite values", got="nan or inf")


@dataclass
class PointCloud:
    """A LiDAR sweep (or an indoor scan) in the sensor frame.

    Attributes:
        points: (N, 3 + C) float; columns ``x, y, z`` then ``feature_names[3:]``.
        feature_names: one name per column, e.g. ``("x", "y", "z", "intensity", "ring")``
            for nuScenes, ``("x", "y", "z", "r", "g", "b")`` for ScanNet.
        source: the file the points came from (for error messages).
    """

    points: torch.Tensor
    feature_names: tuple[str, ...] = ("x", "y", "z")
    source: str = "<memory>"

    def __post_init__(self):
        if self.points.dim() != 2 or self.points.shape[1] < 3:
            raise PointCloudError(self.source, "points", "shape (N, 3 + C)", got=f"shape {tuple(self.points.shape)}")
        if len(self.feature_names) != self.points.shape[1]:
            raise PointCloudError(
                self.source, "feature_names", f"{self.points.shape[1]} names", got=len(self.feature_names)
            )
        _check_finite(self.points, PointCloudError, self.source, "points")

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def xyz(self) -> torch.Tensor:
        """(N, 3) coordinates."""
        return self.points[:, 0:3]


@dataclass
class CameraImages:
    """V calibrated camera images of one instant.

    Attributes:
        images: (V, 3, H, W) float in [0, 1] (or normalised after the normalise transform).
        cam2img: (V, 4, 4) intrinsics, 3x3 pinhole matrix in the top-left block.
        lidar2cam: (V, 4, 4) rigid transforms from the LiDAR frame to each camera frame
            (camera frame: x right, y down, z forward).
        names: V camera names (``"CAM_FRONT"``, ...).
        source: where the images came from.

    ``lidar2img`` = ``cam2img @ lidar2cam``: (V, 4, 4), maps homogeneous LiDAR points to
    ``(u * d, v * d, d, 1)`` pixels times depth.
    """

    images: torch.Tensor
    cam2img: torch.Tensor
    lidar2cam: torch.Tensor
    names: tuple[str, ...] = ()
    source: str = "<memory>"

    def __post_init__(self):
        V = self.images.shape[0] if self.images.dim() == 4 else -1
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ImageError(self.source, "images", "shape (V, 3, H, W)", got=f"shape {tuple(self.images.shape)}")
        for name in ("cam2img", "lidar2cam"):
            m = getattr(self, name)
            if tuple(m.shape) != (V, 4, 4):
                raise CalibrationError(self.source, name, f"shape ({V}, 4, 4)", got=f"shape {tuple(m.shape)}")
            _check_finite(m, CalibrationError, self.source, name)
        if self.names and len(self.names) != V:
            raise ImageError(self.source, "names", f"{V} camera names", got=len(self.names))

    @property
    def lidar2img(self) -> torch.Tensor:
        """(V, 4, 4) projection from the LiDAR frame to pixels."""
        return self.cam2img @ self.lidar2cam


@dataclass
class AudioClip:
    """A multichannel recording.

    Attributes:
        waveform: (A, S) float in [-1, 1].
        sample_rate: samples per second.
        mic_positions: (A, 3) microphone positions in metres in the ego / LiDAR frame, or None.
        source: where the audio came from.
    """

    waveform: torch.Tensor
    sample_rate: int
    mic_positions: torch.Tensor | None = None
    source: str = "<memory>"

    def __post_init__(self):
        if self.waveform.dim() != 2:
            raise AudioError(self.source, "waveform", "shape (channels, samples)", got=f"shape {tuple(self.waveform.shape)}")
        if int(self.sample_rate) <= 0:
            raise AudioError(self.source, "sample_rate", "a positive integer", got=self.sample_rate)
        _check_finite(self.waveform, AudioError, self.source, "waveform")
        if self.mic_positions is not None and tuple(self.mic_positions.shape) != (self.waveform.shape[0], 3):
            raise AudioError(
                self.source, "mic_positions", f"shape ({self.waveform.shape[0]}, 3)", got=f"shape {tuple(self.mic_positions.shape)}"
            )

    @property
    def duration(self) -> float:
        return self.waveform.shape[1] / self.sample_rate


@dataclass
class VideoFrames:
    """Frames of a video with their times.

    Attributes:
        frames: (T, 3, H, W) float in [0, 1].
        timestamps: (T,) seconds, strictly increasing: each frame's start (its pts, as
            ``dense3d.data.readers.read_video_frames`` gives them).
        source: where the frames came from.
        frame_duration: seconds one frame of the *video* lasts (1 / its native fps), or None when
            unknown. A frame shows the interval ``[t, t + frame_duration)``: the video encoder
            places its features at ``t + frame_duration / 2``, however many frames were kept
            (8 fps frames read at 2 fps are still 1/8 s long). None (e.g. frames built by user
            code): the encoder falls back to half the mean gap between the kept frames, which is
            right only when every frame of the video was kept, and warns once.
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    source: str = "<memory>"
    frame_duration: float | None = None

    def __post_init__(self):
        if self.frames.dim() != 4 or self.frames.shape[1] != 3:
            raise VideoError(self.source, "frames", "shape (T, 3, H, W)", got=f"shape {tuple(self.frames.shape)}")
        if tuple(self.timestamps.shape) != (self.frames.shape[0],):
            raise VideoError(
                self.source, "timestamps", f"shape ({self.frames.shape[0]},)", got=f"shape {tuple(self.timestamps.shape)}"
            )
        if self.timestamps.numel() > 1 and not bool((self.timestamps.diff() > 0).all()):
            raise VideoError(self.source, "timestamps", "strictly increasing times")
        if self.frame_duration is not None:
            d = self.frame_duration
            ok = not isinstance(d, bool) and isinstance(d, numbers.Real) and math.isfinite(d) and d > 0
            if not ok:
                raise VideoError(self.source, "frame_duration", "seconds > 0 (1 / the video's native fps) or None", got=repr(d))
            self.frame_duration = float(d)


@dataclass
class BoxAnnotations:
    """Ground truth of the K objects of a 3D scene.

    Attributes:
        boxes: K boxes (``Boxes3D``).
        labels: (K,) long class indices into ``class_names``.
        class_names: the data set's class list.
        captions: K lists of reference captions (several per object; an empty list marks an
            object without a caption — never a made-up one).
        object_ids: K data-set ids (ScanNet object id, nuScenes annotation token, ...).
        num_points: (K,) long LiDAR points inside each box, or None.
    """

    boxes: Boxes3D
    labels: torch.Tensor
    class_names: tuple[str, ...]
    captions: list[list[str]] = field(default_factory=list)
    object_ids: list[str] = field(default_factory=list)
    num_points: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class EventAnnotations:
    """Ground truth of the E events of a recording.

    Attributes:
        events: E spans (``Events``).
        labels: (E,) long class indices into ``class_names``.
        class_names: the event classes (``"horn"``, ``"siren"``, ...).
        captions: E lists of reference captions.
        azimuth: (E,) radians, direction of the source seen from the microphones (CCW from +x),
            or None.
        source_box: (E,) long index of the emitting object in the scene's ``BoxAnnotations``
            (-1 when no box emits it), or None.
    """

    events: Events
    labels: torch.Tensor
    class_names: tuple[str, ...]
    captions: list[list[str]] = field(default_factory=list)
    azimuth: torch.Tensor | None = None
    source_box: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.events)


@dataclass
class Sample:
    """One scene or clip: any subset of sensors plus its annotations."""

    sample_id: str
    points: PointCloud | None = None
    cameras: CameraImages | None = None
    audio: AudioClip | None = None
    video: VideoFrames | None = None
    boxes: BoxAnnotations | None = None
    events: EventAnnotations | None = None
    paragraph: str | None = None  # a clip-level description (FAVDBench)
    meta: dict = field(default_factory=dict)

    @property
    def sensors(self) -> tuple[str, ...]:
        """The sensors present, in a fixed order."""
        return tuple(s for s in ("points", "cameras", "audio", "video") if getattr(self, s) is not None)


@dataclass
class Batch:
    """B samples collated for a model (padding per sensor; ``None`` where no sample has it).

    Attributes:
        samples: the B samples (annotations stay per sample: ragged).
        points: (sum N_b, 1 + 3 + C) float; column 0 is the sample index b.
        images: (B, V, 3, H, W); ``lidar2img``, ``cam2img``, ``lidar2cam``: (B, V, 4, 4).
        camera_mask: (B,) bool, True where the sample has cameras.
        audio: (B, A, S_max) zero-padded; ``audio_lengths``: (B,) long valid samples.
        sample_rate: the batch's one audio sample rate.
        video: (B, T_max, 3, H, W) zero-padded; ``video_timestamps``: (B, T_max) frame starts;
            ``video_mask``: (B, T_max) bool, True at real frames; ``video_frame_duration``: (B,)
            seconds one frame of each clip's video lasts (``VideoFrames.frame_duration``), NaN
            where a sample did not give it.
    """

    samples: list[Sample]
    points: torch.Tensor | None = None
    images: torch.Tensor | None = None
    lidar2img: torch.Tensor | None = None
    cam2img: torch.Tensor | None = None
    lidar2cam: torch.Tensor | None = None
    camera_mask: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None
    sample_rate: int | None = None
    video: torch.Tensor | None = None
    video_timestamps: torch.Tensor | None = None
    video_mask: torch.Tensor | None = None
    video_frame_duration: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def to(self, device) -> "Batch":
        """Move every tensor field to ``device`` (annotations stay where they are)."""
        out = Batch(samples=self.samples, sample_rate=self.sample_rate)
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if isinstance(v, torch.Tensor):
                setattr(out, name, v.to(device))
        return out


@dataclass
class RegionFeatures:
    """Proposals of one kind (boxes or events) with their features: the perception models'
    output and the captioner's input.

    Attributes:
        kind: ``"box"`` or ``"event"``.
        features: (B, R, D) pooled region features (padded).
        geometry: (B, R, 7) boxes ``x, y, z, dx, dy, dz, yaw`` or (B, R, 2) spans ``t0, t1``.
        scores: (B, R) confidences in [0, 1].
        labels: (B, R) long predicted classes.
        mask: (B, R) bool, True at real regions.
        tokens: (B, R, P, D) per-region point/grid tokens (e.g. a BEV grid sampled inside the
            box), or None.
        extra: named (B, R, ...) tensors a kind adds (``"azimuth"`` for events, ...).
    """

    kind: str
    features: torch.Tensor
    geometry: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    tokens: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_regions(self) -> int:
        return self.features.shape[1]
