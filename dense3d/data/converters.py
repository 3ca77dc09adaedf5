"""Converters between the formats dense3d reads; every output is written atomically
(temporary file + rename: a failure leaves no partial file and an older output untouched)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from dense3d.data.datasets.tod3cap import parse_caption_entry
from dense3d.data.readers import load_json
from dense3d.errors import AnnotationError, PointCloudError
from dense3d.utils.io import atomic_write

__all__ = ["convert_tod3cap_captions", "write_points_bin"]


def convert_tod3cap_captions(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Rewrite a TOD3Cap caption JSON in the ``final_caption`` schema (composing the old
    ``*_caption`` fields where ``final_caption`` is missing; TOD3Cap's own code reads only
    ``final_caption``). Every entry is checked before anything is written.

    Returns how many entries had each schema: ``{"final_caption": n, "composed": m}``.
    """
    data = load_json(src)
    if not isinstance(data, dict):
        raise AnnotationError(src, "<root>", "an object keyed by sample_annotation token", got=type(data).__name__)
    out, counts = {}, {"final_caption": 0, "composed": 0}
    for token, entry in data.items():
        caps, schema = parse_caption_entry(entry, src, str(token))
        counts[schema] += 1
        out[str(token)] = dict(entry, final_caption=caps[0] if len(caps) == 1 else caps)
    with atomic_write(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return counts


def write_points_bin(path: str | os.PathLike, points: torch.Tensor | np.ndarray) -> Path:
    """Write (N, F) points as raw little-endian float32 (``.pcd.bin`` / mmdet3d ``.bin``)."""
    arr = np.asarray(points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else points, dtype="<f4")
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise PointCloudError(path, "points", "shape (N, 3 + C)", got=f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PointCloudError(path, "points", "finite values", got="nan or inf")
    with atomic_write(path, "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())
    return Path(path)
