"""Pure-torch greedy rotated NMS (the reference of ``dense3d._C.nms_bev``)."""
from __future__ import annotations

import torch

from dense3d.ops._ref.box_iou import boxes_iou_rotated

__all__ = ["nms_bev_sorted"]


def nms_bev_sorted(boxes: torch.Tensor, iou_threshold: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy NMS over boxes already sorted by descending score.

    Box i is kept unless an earlier kept box (of the same label, when ``labels`` is given)
    overlaps it with BEV IoU > ``iou_threshold``. Returns kept positions (K,) long, ascending.
    """
    k = boxes.shape[0]
    iou = boxes_iou_rotated(boxes, boxes, "bev").cpu()  # (K, K) float64
    if labels is not None:
        lab = labels.cpu()
        iou = iou * (lab[:, None] == lab[None, :])
    over = iou > iou_threshold
    suppressed = torch.zeros(k, dtype=torch.bool)
    keep = []
    for i in range(k):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)
