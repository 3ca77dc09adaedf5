"""Box overlaps: rotated BEV / 3D IoU of dense3d boxes, axis-aligned 3D IoU and GIoU.

Boxes are dense3d's (N, 7) ``x, y, z, dx, dy, dz, yaw`` with ``z`` the gravity centre (see
:mod:`dense3d.structures.boxes`); extra columns (velocity) are ignored. The BEV intersection of
two rotated boxes is exact (Sutherland-Hodgman clipping of the two rectangles, shoelace area),
computed in float64 on both backends; results come back in the boxes' dtype, clamped to [0, 1].
Pairs whose union is 0 (two zero-size boxes) get IoU 0. The rotated IoUs are differentiable on
the torch backend only: boxes that require grad (with grad mode on) run it under
``backend="auto"`` and are refused by ``backend="ext"``.
"""
from __future__ import annotations

import torch

from dense3d.errors import OpInputError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._checks import check_iou_pair
from dense3d.ops._ref import box_iou as _ref_iou

__all__ = ["boxes_iou_bev", "boxes_iou_3d", "boxes_iou_3d_axis_aligned", "generalized_iou_3d_axis_aligned"]

_MODES = {"bev": 0, "3d": 1}


def _rotated(op: str, a, b, mode: str, backend: str) -> torch.Tensor:
    a, b = check_iou_pair(op, a, b)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        # the kernel has no backward: its IoU came back without a gradient where the
        # reference's had one (an IoU loss silently did not train); the reference is exact too
        if backend == "ext":
            raise OpInputError(op, "backend", "'auto' or 'torch' for boxes that require grad (the ext kernel has no backward)", got="'ext'")
        resolve_backend(backend, "box_iou_rotated", a, b)  # validates the name
        backend = "torch"
    if resolve_backend(backend, "box_iou_rotated", a, b) == "ext":
        iou = ext().box_iou_rotated(a[:, :7].contiguous(), b[:, :7].contiguous(), _MODES[mode])
    else:
        iou = _ref_iou.boxes_iou_rotated(a, b, mode)
    # both backends bound the intersection by the smaller box, so IoU <= 1 (NMS relies on it);
    # the clamp is only a guard
    return iou.clamp(0.0, 1.0).to(a.dtype)


def boxes_iou_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Rotated bird's-eye-view IoU: (N, 7) x (M, 7) -> (N, M), exact polygon intersection."""
    return _rotated("boxes_iou_bev", boxes_a, boxes_b, "bev", backend)


def boxes_iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Rotated 3D IoU: BEV intersection x height overlap / union volume, (N, 7) x (M, 7) -> (N, M)."""
    return _rotated("boxes_iou_3d", boxes_a, boxes_b, "3d", backend)


def _aa_bounds(b: torch.Tensor):
    return b[:, 0:3] - b[:, 3:6] / 2, b[:, 0:3] + b[:, 3:6] / 2  # (N, 3) min, (N, 3) max


def _aa_iou_and_enclosing(a: torch.Tensor, b: torch.Tensor):
    amin, amax = _aa_bounds(a)
    bmin, bmax = _aa_bounds(b)
    inter = (torch.minimum(amax[:, None], bmax[None]) - torch.maximum(amin[:, None], bmin[None])).clamp(min=0).prod(-1)  # (N, M)
    vol_a, vol_b = a[:, 3:6].prod(-1), b[:, 3:6].prod(-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))
    enclosing = (torch.maximum(amax[:, None], bmax[None]) - torch.minimum(amin[:, None], bmin[None])).prod(-1)  # (N, M)
    return iou, union, enclosing


def boxes_iou_3d_axis_aligned(boxes_a: torch.Tensor, boxes_b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Axis-aligned 3D IoU of ScanNet-style ``[cx, cy, cz, dx, dy, dz]`` boxes (N, 6|7) x (M, 6|7)
    -> (N, M); a 7th column (yaw) is ignored.

    Both backends run the same vectorized torch code (it is already a few fused elementwise
    ops, and it is differentiable, so it can serve as a loss); ``backend`` is only validated.
    """
    resolve_backend(backend if backend != "ext" else "torch", "boxes_iou_3d_axis_aligned")
    a, b = check_iou_pair("boxes_iou_3d_axis_aligned", boxes_a, boxes_b, 6, 7)
    return _aa_iou_and_enclosing(a, b)[0]


def generalized_iou_3d_axis_aligned(boxes_a: torch.Tensor, boxes_b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Generalized IoU ``IoU - (enclosing - union) / enclosing`` of axis-aligned boxes
    (N, 6|7) x (M, 6|7) -> (N, M) in [-1, 1] (as Scan2Cap / Vote2Cap-DETR matching uses).

    Differentiable; both backends run the same torch code (see :func:`boxes_iou_3d_axis_aligned`).
    Pairs with a zero enclosing volume get GIoU = IoU.
    """
    resolve_backend(backend if backend != "ext" else "torch", "generalized_iou_3d_axis_aligned")
    a, b = check_iou_pair("generalized_iou_3d_axis_aligned", boxes_a, boxes_b, 6, 7)
    iou, union, enclosing = _aa_iou_and_enclosing(a, b)
    penalty = torch.where(enclosing > 0, (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny), torch.zeros_like(enclosing))
    return iou - penalty
