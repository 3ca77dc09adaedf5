"""Match proposals to ground-truth regions (Hungarian, IoU-gated) and assign captions.

The IoU of boxes is the rotated 3D IoU of ``dense3d.ops.boxes_iou_3d``; events use
``Events.pairwise_iou``.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from dense3d.errors import AnnotationError
from dense3d.ops import boxes_iou_3d
from dense3d.structures.events import Events
from dense3d.structures.sample import RegionFeatures

__all__ = ["region_iou", "hungarian_match", "assign_captions"]


def region_iou(kind: str, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(N, 7|2) predicted and (M, 7|2) ground-truth geometry -> (N, M) IoU (3D or temporal)."""
    if kind == "box":
        return boxes_iou_3d(pred.detach(), gt.detach())
    return Events(pred.detach()).pairwise_iou(Events(gt.detach()))


def hungarian_match(iou: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching maximising total IoU (scipy's Hungarian), then gated.

    Args:
        iou: (N, M) IoU of N proposals and M ground-truth regions.
        threshold: pairs with IoU below it are dropped.
    Returns:
        (pred_idx, gt_idx): two (n,) long tensors of matched pairs.
    """
    if iou.numel() == 0:
        e = torch.zeros(0, dtype=torch.long)
        return e, e
    rows, cols = linear_sum_assignment(-iou.detach().cpu().double().numpy())
    rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    keep = iou.detach().cpu()[rows, cols] >= threshold
    return rows[keep], cols[keep]


def assign_captions(regions: RegionFeatures, gt_geometry: Sequence[torch.Tensor],
                    gt_captions: Sequence[Sequence[Sequence[str]]], iou_threshold: float = 0.25,
                    max_per_scene: int | None = None, seed: int | None = None) -> list[list[str | None]]:
    """A training caption for each proposal: that of its matched ground-truth region.

    Args:
        regions: B scenes of proposals (geometry (B, R, 7|2), mask (B, R)).
        gt_geometry: B tensors (K_b, 7|2) of ground-truth boxes / spans.
        gt_captions: B lists of K_b lists of reference captions (an empty list: no caption).
        iou_threshold: minimum IoU of a match.
        max_per_scene: keep at most this many captioned proposals per scene (random choice).
        seed: seed of that choice and of the reference picked among several (None: Python's
            global ``random``).
    Returns:
        B lists of R entries: a caption string, or None (unmatched, padded, uncaptioned).
    """
    B, R = regions.mask.shape
    if len(gt_geometry) != B or len(gt_captions) != B:
        raise AnnotationError("assign_captions", "gt_geometry/gt_captions", f"{B} scenes",
                              got=(len(gt_geometry), len(gt_captions)))
    rng = random.Random(seed) if seed is not None else random
    out: list[list[str | None]] = []
    for b in range(B):
        caps: list[str | None] = [None] * R
        real = regions.mask[b].bool().nonzero().flatten().cpu()
        gt = gt_geometry[b]
        if len(gt_captions[b]) != len(gt):
            raise AnnotationError("assign_captions", f"gt_captions[{b}]", f"{len(gt)} lists", got=len(gt_captions[b]))
        if len(real) and len(gt):
            iou = region_iou(regions.kind, regions.geometry[b][real].float(), gt.float())  # (n, K)
            pi, gi = hungarian_match(iou, iou_threshold)
            pairs = [(int(real[p]), int(g)) for p, g in zip(pi, gi) if len(gt_captions[b][int(g)]) > 0]
            if max_per_scene is not None and len(pairs) > max_per_scene:
                pairs = rng.sample(pairs, max_per_scene)
            for r, g in pairs:
                caps[r] = rng.choice(list(gt_captions[b][g]))
        out.append(caps)
    return out
