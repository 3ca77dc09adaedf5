"""Pairwise box overlaps the protocols need, in float64.

The axis-aligned IoU / GIoU and nuScenes' size-only ``scale_iou`` are a few lines of
broadcast numpy here rather than ``dense3d.ops`` calls on purpose: the protocols compare them
with thresholds (``> 0.5``, ``>= 0.5``), so they are computed in float64 with exactly the
anchors' formulas (Vote2Cap-DETR adds 1e-8 to the union; Scan2Cap's benchmark does not).
Rotated 3D and BEV IoU come from ``dense3d.ops`` (``boxes_iou_3d``, ``boxes_iou_bev``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["iou_aa", "giou_aa", "scale_iou", "iou_rotated", "centre_distance_xy"]


def _volumes(aa: np.ndarray) -> np.ndarray:
    return np.prod(aa[:, 3:] - aa[:, :3], axis=1)


def iou_aa(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """(N, 6), (M, 6) ``[min xyz, max xyz]`` -> (N, M) axis-aligned 3D IoU,
    ``inter / (vol_a + vol_b - inter + eps)``; 0 where the union is 0."""
    a = np.asarray(a, np.float64).reshape(-1, 6)
    b = np.asarray(b, np.float64).reshape(-1, 6)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])  # (N, M, 3)
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])  # (N, M, 3)
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)  # (N, M)
    union = _volumes(a)[:, None] + _volumes(b)[None, :] - inter + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def giou_aa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 6), (M, 6) -> (N, M) generalised IoU: ``IoU - (C - U) / C`` with C the enclosing box."""
    a = np.asarray(a, np.float64).reshape(-1, 6)
    b = np.asarray(b, np.float64).reshape(-1, 6)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    union = _volumes(a)[:, None] + _volumes(b)[None, :] - inter
    clo = np.minimum(a[:, None, :3], b[None, :, :3])
    chi = np.maximum(a[:, None, 3:], b[None, :, 3:])
    hull = np.prod(chi - clo, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        return iou - np.where(hull > 0, (hull - union) / np.where(hull > 0, hull, 1.0), 0.0)


def scale_iou(a_sizes: np.ndarray, b_sizes: np.ndarray) -> np.ndarray:
    """nuScenes' ``scale_iou``: the IoU of two boxes moved to one centre and one yaw, i.e.
    ``prod(min(size_a, size_b)) / (vol_a + vol_b - that)``. (N, 3), (M, 3) -> (N, M)."""
    a = np.asarray(a_sizes, np.float64).reshape(-1, 3)
    b = np.asarray(b_sizes, np.float64).reshape(-1, 3)
    inter = np.prod(np.minimum(a[:, None, :], b[None, :, :]), axis=2)
    union = np.prod(a, 1)[:, None] + np.prod(b, 1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_rotated(a_params: np.ndarray, b_params: np.ndarray, bev: bool = False) -> np.ndarray:
    """(N, 7), (M, 7) dense3d boxes -> (N, M) rotated 3D IoU (or BEV IoU), via ``dense3d.ops``."""
    import torch

    from dense3d import ops

    a = torch.as_tensor(np.asarray(a_params, np.float64).reshape(-1, 7))
    b = torch.as_tensor(np.asarray(b_params, np.float64).reshape(-1, 7))
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    fn = ops.boxes_iou_bev if bev else ops.boxes_iou_3d
    return fn(a, b).double().cpu().numpy()


def centre_distance_xy(a_params: np.ndarray, b_params: np.ndarray) -> np.ndarray:
    """(N, >=2), (M, >=2) -> (N, M) BEV centre distance (nuScenes' ``center_distance``)."""
    a = np.asarray(a_params, np.float64)[:, :2]
    b = np.asarray(b_params, np.float64)[:, :2]
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
