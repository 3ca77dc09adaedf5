"""Point-cloud transforms: range filter and shuffle."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from dense3d.errors import ConfigError
from dense3d.structures import Sample

__all__ = ["PointRangeFilter", "PointShuffle"]


class PointRangeFilter:
    """Keep the points inside ``point_range = [x_min, y_min, z_min, x_max, y_max, z_max]`` (metres,
    half-open ``[min, max)`` per axis, as mmdet3d). Samples without points pass unchanged."""

    reads = ("points",)
    writes = ("points",)

    def __init__(self, point_range: Sequence[float]):
        r = [float(v) for v in point_range]
        if len(r) != 6 or any(r[i] >= r[i + 3] for i in range(3)):
            raise ConfigError("PointRangeFilter", "point_range", "[x_min, y_min, z_min, x_max, y_max, z_max] with min < max", got=r)
        self.point_range = torch.tensor(r)

    def __call__(self, sample: Sample) -> Sample:
        if sample.points is None:
            return sample
        xyz = sample.points.xyz
        lo, hi = self.point_range[:3].to(xyz), self.point_range[3:].to(xyz)
        keep = ((xyz >= lo) & (xyz < hi)).all(1)  # (N,)
        return dataclasses.replace(sample, points=dataclasses.replace(sample.points, points=sample.points.points[keep]))

    def __repr__(self) -> str:
        return f"PointRangeFilter({self.point_range.tolist()})"


class PointShuffle:
    """Permute the points randomly (``seed`` fixes the sequence of permutations)."""

    reads = ("points",)
    writes = ("points",)

    def __init__(self, seed: int | None = None):
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    def __call__(self, sample: Sample) -> Sample:
        if sample.points is None:
            return sample
        perm = torch.randperm(len(sample.points), generator=self.generator)
        return dataclasses.replace(sample, points=dataclasses.replace(sample.points, points=sample.points.points[perm]))
