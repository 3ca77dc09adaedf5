"""Point-cloud transforms: range filter and shuffle."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from dense3d.errors import ConfigError
from dense3d.structures import Sample

__all__ = ["ObjectRangeFilter", "PER_BOX_META", "PointRangeFilter", "PointShuffle", "select_boxes"]


class PointRangeFilter:
    """Keep the points inside ``point_range = [x_min, y_min, z_min, x_max, y_max, z_max]`` (metres,
    half-open ``[min, max)`` per axis, the voxelizer's cells; mmdet3d's ``in_range_3d`` excludes
    both ends, which differs only for a point exactly on a lower bound). Samples without points
    pass unchanged."""

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
    """Permute the points randomly. ``generator``: the sample's (``Compose`` hands one per sample
    in training, see ``dense3d.data.transforms.geometry``); without it ``seed`` fixes the sequence
    of permutations, else torch's global generator draws them."""

    reads = ("points",)
    writes = ("points",)
    draws_random = True  # Compose hands it a per-sample generator

    def __init__(self, seed: int | None = None):
        self.seed = None if seed is None else int(seed)
        self.generator = torch.Generator().manual_seed(self.seed) if seed is not None else None

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if sample.points is None:
            return sample
        perm = torch.randperm(len(sample.points), generator=generator if generator is not None else self.generator)
        return dataclasses.replace(sample, points=dataclasses.replace(sample.points, points=sample.points.points[perm]))


# ``sample.meta`` entries holding one value per box (lists or (K,) tensors) that follow the boxes.
PER_BOX_META = ("caption_schema", "box_valid", "object_names", "num_radar_pts")


def select_boxes(sample: Sample, keep: torch.Tensor) -> Sample:
    """Keep the boxes where ``keep`` (K,) bool is True, with their labels, captions, ids, point
    counts, per-box meta (``PER_BOX_META``), and re-index ``events.source_box`` (-1 when the
    emitting box is dropped)."""
    ann = sample.boxes
    if ann is None:
        return sample
    idx = keep.nonzero().flatten().tolist()
    new_ann = dataclasses.replace(
        ann,
        boxes=ann.boxes[keep],
        labels=ann.labels[keep],
        captions=[ann.captions[i] for i in idx] if ann.captions else [],
        object_ids=[ann.object_ids[i] for i in idx] if ann.object_ids else [],
        num_points=ann.num_points[keep] if ann.num_points is not None else None,
    )
    meta = dict(sample.meta)
    for key in PER_BOX_META:
        v = meta.get(key)
        if isinstance(v, torch.Tensor) and v.shape[:1] == (len(ann),):
            meta[key] = v[keep]
        elif isinstance(v, list) and len(v) == len(ann):
            meta[key] = [v[i] for i in idx]
    changes = {"boxes": new_ann, "meta": meta}
    if sample.events is not None and sample.events.source_box is not None:
        new_index = torch.full((len(ann) + 1,), -1, dtype=torch.long)  # slot K maps -1 -> -1
        new_index[torch.tensor(idx, dtype=torch.long)] = torch.arange(len(idx))
        src = sample.events.source_box.clone()
        src[src < 0] = len(ann)
        changes["events"] = dataclasses.replace(sample.events, source_box=new_index[src])
    return dataclasses.replace(sample, **changes)


class ObjectRangeFilter:
    """Drop the boxes whose centre (x, y) lies outside ``point_range``'s BEV extent
    ``[x_min, y_min, _, x_max, y_max, _]`` (as mmdet3d), with everything attached to them
    (see ``select_boxes``)."""

    reads = ("boxes", "events.source_box")
    writes = ("boxes", "events.source_box", "meta.caption_schema", "meta.box_valid", "meta.object_names", "meta.num_radar_pts")

    def __init__(self, point_range: Sequence[float]):
        self.point_range = PointRangeFilter(point_range).point_range

    def __call__(self, sample: Sample) -> Sample:
        if sample.boxes is None:
            return sample
        c = sample.boxes.boxes.center
        r = self.point_range.to(c)
        keep = (c[:, 0] >= r[0]) & (c[:, 0] < r[3]) & (c[:, 1] >= r[1]) & (c[:, 1] < r[4])  # (K,)
        return select_boxes(sample, keep)

    def __repr__(self) -> str:
        return f"ObjectRangeFilter({self.point_range.tolist()})"
