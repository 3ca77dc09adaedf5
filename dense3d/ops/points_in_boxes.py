"""Which points lie inside which rotated boxes (faces included), as
:meth:`dense3d.structures.Boxes3D.points_in_boxes` but with a C++/CUDA kernel for big inputs."""
from __future__ import annotations

import torch

from dense3d.errors import OpInputError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._checks import check_boxes, check_points
from dense3d.ops._ref import box_iou as _ref_iou

__all__ = ["points_in_boxes", "points_in_boxes_first"]


def _check(op, points, boxes):
    points = check_points(op, "points", points)
    boxes = check_boxes(op, "boxes", boxes)
    if points.device != boxes.device:
        raise OpInputError(op, "boxes", f"a tensor on {points.device} like points", got=str(boxes.device))
    return points, boxes[:, :7].to(points.dtype).contiguous()


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """(P, 3+C) points x (N, 7+) boxes -> (P, N) bool, True where point p is inside box n.

    The test is done in the points' dtype exactly as :meth:`Boxes3D.points_in_boxes`
    (rotate the offset by -yaw, compare with half sizes), so both backends agree bit for bit.
    """
    points, boxes = _check("points_in_boxes", points, boxes)
    if resolve_backend(backend, "points_in_boxes", points, boxes) == "ext":
        return ext().points_in_boxes(points[:, :3].contiguous(), boxes)
    return _ref_iou.points_in_boxes(points, boxes)


def points_in_boxes_first(points: torch.Tensor, boxes: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """(P, 3+C) x (N, 7+) -> (P,) long: the lowest index of a box holding each point, -1 for none
    (mmcv's ``points_in_boxes_part``; memory O(P) instead of O(P N) on the ext backend)."""
    points, boxes = _check("points_in_boxes_first", points, boxes)
    if resolve_backend(backend, "points_in_boxes_first", points, boxes) == "ext":
        return ext().points_in_boxes_first(points[:, :3].contiguous(), boxes)
    inside = _ref_iou.points_in_boxes(points, boxes)  # (P, N)
    n = boxes.shape[0]
    idx = torch.where(inside, torch.arange(n, device=points.device)[None, :], n).amin(1) if n else torch.full((points.shape[0],), n, device=points.device)
    return torch.where(idx < n, idx, -1).long()
