"""Input checks shared by the geometry and voxelization ops: each raises a one-line
:class:`dense3d.errors.OpInputError` naming the op, the argument and what was expected."""
from __future__ import annotations

import torch

from dense3d.errors import OpInputError

__all__ = [
    "check_boxes",
    "check_points",
    "check_scores",
    "check_labels",
    "as_float_list",
    "check_iou_pair",
    "check_same_device",
    "check_threshold",
    "check_positive_int",
]

FLOAT_DTYPES = (torch.float32, torch.float64)


def _check_float(op: str, name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise OpInputError(op, name, "a torch.Tensor", got=type(t).__name__)
    if t.dtype not in FLOAT_DTYPES:
        raise OpInputError(op, name, "dtype float32 or float64", got=str(t.dtype))
    return t


def check_boxes(op: str, name: str, boxes: object, min_cols: int = 7, max_cols: int | None = None) -> torch.Tensor:
    """(N, >= min_cols) float boxes with finite values and sizes (columns 3:6) >= 0."""
    t = _check_float(op, name, boxes)
    cols = f"{min_cols}" if max_cols in (None, min_cols) else f"{min_cols}..{max_cols}"
    if t.dim() != 2 or t.shape[1] < min_cols or (max_cols is not None and t.shape[1] > max_cols):
        raise OpInputError(op, name, f"shape (N, {cols}{'+' if max_cols is None else ''})", got=f"shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        return t
    body = t[:, :min_cols]
    finite = torch.isfinite(body).all(1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise OpInputError(op, f"{name}[{bad}]", "finite numbers", got=body[bad].tolist())
    neg = (body[:, 3:6] < 0).any(1)
    if bool(neg.any()):
        bad = int(neg.nonzero()[0, 0])
        raise OpInputError(op, f"{name}[{bad}]", "sizes dx, dy, dz >= 0", got=body[bad, 3:6].tolist())
    return t


def check_points(op: str, name: str, points: object) -> torch.Tensor:
    """(P, 3+C) float points with finite coordinates."""
    t = _check_float(op, name, points)
    if t.dim() != 2 or t.shape[1] < 3:
        raise OpInputError(op, name, "shape (P, 3+C)", got=f"shape {tuple(t.shape)}")
    if t.shape[0] and not bool(torch.isfinite(t[:, :3]).all()):
        bad = int((~torch.isfinite(t[:, :3])).any(1).nonzero()[0, 0])
        raise OpInputError(op, f"{name}[{bad}]", "finite x, y, z", got=t[bad, :3].tolist())
    return t


def check_scores(op: str, scores: object, n: int) -> torch.Tensor:
    """(N,) finite float scores."""
    t = _check_float(op, "scores", scores)
    if t.dim() != 1 or t.shape[0] != n:
        raise OpInputError(op, "scores", f"shape ({n},) (one per box)", got=f"shape {tuple(t.shape)}")
    if n and not bool(torch.isfinite(t).all()):
        raise OpInputError(op, "scores", "finite numbers", got="NaN or inf")
    return t


def check_labels(op: str, labels: object, n: int) -> torch.Tensor:
    """(N,) integer labels."""
    if not isinstance(labels, torch.Tensor):
        raise OpInputError(op, "labels", "a torch.Tensor", got=type(labels).__name__)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1 or labels.shape[0] != n:
        raise OpInputError(op, "labels", f"integer tensor of shape ({n},)", got=f"{labels.dtype} {tuple(labels.shape)}")
    return labels


def as_float_list(op: str, name: str, value: object, n: int) -> list[float]:
    """A sequence / tensor of n numbers -> list of python floats."""
    try:
        vals = [float(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise OpInputError(op, name, f"{n} numbers", got=repr(value)) from None
    if len(vals) != n:
        raise OpInputError(op, name, f"{n} numbers", got=repr(value))
    return vals


def check_same_device(op: str, name: str, t: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    """``t`` (argument ``name``) on the device of ``like`` (argument ``like_name``); checked before
    any work, because torch's own error comes from deep inside and names neither argument."""
    if t.device != like.device:
        raise OpInputError(op, name, f"a tensor on {like.device} like {like_name}", got=str(t.device))


def check_iou_pair(op: str, a: object, b: object, min_cols: int = 7, max_cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    a = check_boxes(op, "boxes_a", a, min_cols, max_cols)
    b = check_boxes(op, "boxes_b", b, min_cols, max_cols)
    check_same_device(op, "boxes_b", b, "boxes_a", a)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def check_threshold(op: str, name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OpInputError(op, name, "a number in [0, 1]", got=repr(value)) from None
    if not (0.0 <= v <= 1.0):
        raise OpInputError(op, name, "a number in [0, 1]", got=v)
    return v


def check_positive_int(op: str, name: str, value: object, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OpInputError(op, name, "a positive int" + (" or None" if allow_none else ""), got=repr(value))
    return value

