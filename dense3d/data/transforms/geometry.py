"""Global augmentations of a 3D scene: rotation about +z, scaling, mirroring.

Each moves everything that lives in the LiDAR frame together: point coordinates, point normals
(the ``nx, ny, nz`` feature columns, e.g. ScanNet with ``use_normals``), boxes
(centres, sizes, yaw, velocity), microphone positions, event azimuths, and the camera
extrinsics: with the scene mapped by ``p' = A p``, ``lidar2cam' = lidar2cam @ A^-1``, so a
point projects to the same pixel before and after. ``lidar2cam`` is then no longer rigid when
the scene is scaled or mirrored (it stays a valid projection). The accumulated ``A`` (4x4) is
kept in ``sample.meta["lidar_aug"]`` so predictions can be mapped back.

Each turns, scales or mirrors about the origin, or about ``center``, ``p' = A (p - c) + c``:
(x, y) in the LiDAR frame, or ``"points"``, the middle of the sample's own points in x and y.
Outdoor scenes sit around the ego car at the origin; indoor scans (ScanNet, the synthetic rooms)
lie at x, y >= 0, where mirroring about the origin carries the room out of the detector's range
(``configs/data/scanrefer.yaml`` turns them about the room's middle, which keeps the room where
it was).

Randomness: each takes ``generator=`` in ``__call__``. In training the data module hands it one
per sample through ``Compose``, seeded by (data seed, epoch, sample index, step name), so a
sample's augmentation does not depend on the number of DataLoader workers nor on a resume (see
``dense3d.data.transforms.compose.SampleKey``); a step's own ``seed`` then replaces the data seed.
Called without a generator: a fixed ``seed`` gives a reproducible sequence in one process (the
same sequence in every worker), ``seed=None`` draws from torch's global generator.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from dense3d.errors import ConfigError
from dense3d.structures import Boxes3D, Sample, limit_period

__all__ = ["GlobalFlip", "GlobalRotate", "GlobalScale", "apply_global_transform"]

_READS = ("points", "boxes", "cameras", "audio", "events")
# Point feature columns holding a surface normal: turned with the scene, their length kept.
NORMAL_FEATURES = ("nx", "ny", "nz")


def apply_global_transform(
    sample: Sample,
    matrix: torch.Tensor,
    boxes_fn: Callable[[Boxes3D], Boxes3D],
    azimuth_fn: Callable[[torch.Tensor], torch.Tensor],
    center: Sequence[float] | str | None = None,
) -> Sample:
    """Map the scene by the (3, 3) linear ``matrix`` about ``center`` ((x, y), ``"points"``: the
    middle of the sample's points' x-y extent, else of its boxes' centres; the origin when None):
    ``p' = A (p - c) + c``. ``boxes_fn`` / ``azimuth_fn`` do the same to boxes (about the origin:
    they are moved to it and back) and event azimuths (directions: a shift leaves them alone);
    boxes carry yaw, which a matrix alone does not update."""
    c = torch.zeros(3, dtype=torch.float64)
    if center == "points":
        c[:2] = _middle(sample)
    elif center is not None:
        c[:2] = torch.as_tensor([float(v) for v in center], dtype=torch.float64)
    a4 = torch.eye(4, dtype=torch.float64)
    a4[:3, :3] = matrix.to(torch.float64)
    a4[:3, 3] = c - matrix.to(torch.float64) @ c  # A (p - c) + c = A p + (c - A c)

    def affine(xyz: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N, 3)
        out = xyz @ a4[:3, :3].to(xyz.dtype).T  # (N, 3) @ (3, 3)^T
        return out if center is None else out + a4[:3, 3].to(xyz.dtype)

    changes = {}
    if sample.points is not None:
        pts = sample.points.points.clone()
        pts[:, :3] = affine(pts[:, :3])
        names = sample.points.feature_names
        if all(n in names for n in NORMAL_FEATURES):
            cols = [names.index(n) for n in NORMAL_FEATURES]
            normals = pts[:, cols]  # (N, 3)
            # normals map by A^-T (rows: n @ A^-1), then get their old length back
            turned = normals @ torch.linalg.inv(matrix).to(pts.dtype)  # (N, 3) @ (3, 3)
            scale = normals.norm(dim=1, keepdim=True) / turned.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (N, 1)
            pts[:, cols] = turned * scale
        changes["points"] = dataclasses.replace(sample.points, points=pts)
    if sample.boxes is not None:
        boxes = sample.boxes.boxes
        boxes = boxes_fn(boxes) if center is None else boxes_fn(boxes.translate((-c).tolist())).translate(c.tolist())
        changes["boxes"] = dataclasses.replace(sample.boxes, boxes=boxes)
    if sample.cameras is not None:
        inv = torch.linalg.inv(a4).to(sample.cameras.lidar2cam.dtype)
        changes["cameras"] = dataclasses.replace(sample.cameras, lidar2cam=sample.cameras.lidar2cam @ inv)  # (V, 4, 4)
    if sample.audio is not None and sample.audio.mic_positions is not None:
        mics = affine(sample.audio.mic_positions)  # (A, 3)
        changes["audio"] = dataclasses.replace(sample.audio, mic_positions=mics)
    if sample.events is not None and sample.events.azimuth is not None:
        changes["events"] = dataclasses.replace(sample.events, azimuth=limit_period(azimuth_fn(sample.events.azimuth)))
    meta = dict(sample.meta)
    meta["lidar_aug"] = a4.float() @ meta.get("lidar_aug", torch.eye(4))
    return dataclasses.replace(sample, meta=meta, **changes)


def _middle(sample: Sample) -> torch.Tensor:
    """(2,) float64: the middle of the x-y extent of the sample's points, else of its boxes'
    centres, else the origin."""
    if sample.points is not None and sample.points.points.shape[0] > 0:
        xy = sample.points.points[:, :2]
    elif sample.boxes is not None and len(sample.boxes.boxes) > 0:
        xy = sample.boxes.boxes.center[:, :2]
    else:
        return torch.zeros(2, dtype=torch.float64)
    return ((xy.min(0).values + xy.max(0).values) / 2).to(torch.float64)


def _center(owner: str, center: Sequence[float] | str | None) -> tuple[float, float] | str | None:
    if center is None or center == "points":
        return center
    values = list(center) if isinstance(center, Sequence) and not isinstance(center, str) else None
    if values is None or len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ConfigError(owner, "center", "null, 'points' or [x, y] in metres (LiDAR frame)", got=center)
    return float(values[0]), float(values[1])


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(int(seed)) if seed is not None else None


def _uniform(lo: float, hi: float, generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


class GlobalRotate:
    """Rotate the scene about +z (through ``center``: (x, y), ``"points"`` or None, the origin; see
    the module docstring) by an angle drawn uniformly from ``angle_range`` (radians)."""

    reads = _READS
    writes = _READS + ("meta.lidar_aug",)
    draws_random = True  # Compose hands it a per-sample generator

    def __init__(self, angle_range: Sequence[float] = (-math.pi / 4, math.pi / 4), seed: int | None = None,
                 center: Sequence[float] | str | None = None):
        self.angle_range = (float(angle_range[0]), float(angle_range[1]))
        self.center = _center("GlobalRotate", center)
        if self.angle_range[0] > self.angle_range[1]:
            raise ConfigError("GlobalRotate", "angle_range", "[low, high] with low <= high", got=list(self.angle_range))
        self.seed = None if seed is None else int(seed)
        self.generator = _generator(seed)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        angle = _uniform(*self.angle_range, generator if generator is not None else self.generator)
        return self.rotate(sample, angle, self.center)

    @staticmethod
    def rotate(sample: Sample, angle: float, center: Sequence[float] | str | None = None) -> Sample:
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        return apply_global_transform(sample, rot, lambda b: b.rotate(angle), lambda az: az + angle, center)


class GlobalScale:
    """Scale the scene about ``center`` ((x, y), ``"points"`` or None, the origin) by a factor drawn
    uniformly from ``scale_range``."""

    reads = _READS
    writes = _READS + ("meta.lidar_aug",)
    draws_random = True  # Compose hands it a per-sample generator

    def __init__(self, scale_range: Sequence[float] = (0.95, 1.05), seed: int | None = None,
                 center: Sequence[float] | str | None = None):
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.center = _center("GlobalScale", center)
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError("GlobalScale", "scale_range", "[low, high] with 0 < low <= high", got=list(self.scale_range))
        self.seed = None if seed is None else int(seed)
        self.generator = _generator(seed)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        factor = _uniform(*self.scale_range, generator if generator is not None else self.generator)
        return apply_global_transform(sample, torch.eye(3, dtype=torch.float64) * factor, lambda b: b.scale(factor), lambda az: az,
                                      self.center)


class GlobalFlip:
    """Mirror the scene: y -> -y with probability ``flip_y_prob`` (left/right swap), then
    x -> -x with probability ``flip_x_prob`` (front/back swap); across the lines through ``center``
    ((x, y), ``"points"`` or None, the origin): y -> 2 c_y - y, x -> 2 c_x - x."""

    reads = _READS
    writes = _READS + ("meta.lidar_aug",)
    draws_random = True  # Compose hands it a per-sample generator

    def __init__(self, flip_y_prob: float = 0.5, flip_x_prob: float = 0.0, seed: int | None = None,
                 center: Sequence[float] | str | None = None):
        for name, p in (("flip_y_prob", flip_y_prob), ("flip_x_prob", flip_x_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ConfigError("GlobalFlip", name, "a probability in [0, 1]", got=p)
        self.flip_y_prob, self.flip_x_prob = float(flip_y_prob), float(flip_x_prob)
        self.center = _center("GlobalFlip", center)
        self.seed = None if seed is None else int(seed)
        self.generator = _generator(seed)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        generator = generator if generator is not None else self.generator
        if float(torch.rand((), generator=generator)) < self.flip_y_prob:
            sample = self.flip(sample, "y", self.center)
        if float(torch.rand((), generator=generator)) < self.flip_x_prob:
            sample = self.flip(sample, "x", self.center)
        return sample

    @staticmethod
    def flip(sample: Sample, axis: str, center: Sequence[float] | str | None = None) -> Sample:
        if axis == "y":
            m, az_fn = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)), (lambda az: -az)
        else:
            m, az_fn = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)), (lambda az: math.pi - az)
        return apply_global_transform(sample, m, lambda b: b.flip(axis), az_fn, center)
