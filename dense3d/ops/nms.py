"""Rotated (BEV) non-maximum suppression, plain and class-aware.

Boxes are sorted by descending score with a stable sort (equal scores keep index order);
a box is suppressed when an already kept box (of the same label, for the class-aware form)
overlaps it with rotated BEV IoU **strictly greater** than ``iou_threshold`` (mmcv's rule).
The returned indices point into the input and come in that sorted order.
"""
from __future__ import annotations

import torch

from dense3d.errors import OpInputError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._checks import check_boxes, check_labels, check_positive_int, check_scores, check_threshold
from dense3d.ops._ref import nms as _ref_nms

__all__ = ["nms_bev", "batched_nms_bev"]


def _nms(op, boxes, scores, labels, iou_threshold, pre_max, post_max, backend) -> torch.Tensor:
    boxes = check_boxes(op, "boxes", boxes)
    scores = check_scores(op, scores, boxes.shape[0])
    if labels is not None:
        labels = check_labels(op, labels, boxes.shape[0]).to(torch.long)
    for name, t in (("scores", scores), ("labels", labels)):
        if t is not None and t.device != boxes.device:  # indexing one by the other's order would fail deep inside
            raise OpInputError(op, name, f"a tensor on {boxes.device} like boxes", got=str(t.device))
    thr = check_threshold(op, "iou_threshold", iou_threshold)
    pre_max = check_positive_int(op, "pre_max", pre_max, allow_none=True)
    post_max = check_positive_int(op, "post_max", post_max, allow_none=True)
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,) ties keep index order
    if pre_max is not None:
        order = order[:pre_max]
    sorted_boxes = boxes[order, :7].contiguous()
    sorted_labels = labels[order].contiguous() if labels is not None else None
    if resolve_backend(backend, "nms_bev", boxes) == "ext":
        lab = sorted_labels if sorted_labels is not None else torch.empty(0, dtype=torch.long, device=boxes.device)
        keep = ext().nms_bev(sorted_boxes, thr, lab)
    else:
        keep = _ref_nms.nms_bev_sorted(sorted_boxes, thr, sorted_labels)
    keep = order[keep]
    return keep[:post_max] if post_max is not None else keep


def nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    pre_max: int | None = None,
    post_max: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Rotated BEV NMS of boxes (N, 7+) with scores (N,) -> kept indices (K,) long.

    ``pre_max`` keeps only the ``pre_max`` best-scored boxes before NMS, ``post_max`` at most
    that many kept boxes after it.
    """
    return _nms("nms_bev", boxes, scores, None, iou_threshold, pre_max, post_max, backend)


def batched_nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    pre_max: int | None = None,
    post_max: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Class-aware rotated BEV NMS: boxes only suppress boxes with the same integer label.

    Returns kept indices (K,) long over all classes, in descending score order (ties by index).
    """
    return _nms("batched_nms_bev", boxes, scores, labels, iou_threshold, pre_max, post_max, backend)
