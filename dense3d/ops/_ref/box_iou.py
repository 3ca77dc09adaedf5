"""Pure-torch rotated box overlaps (the reference of ``dense3d._C.box_iou_rotated``).

The bird's-eye-view intersection of two rotated rectangles is computed exactly: box A's
four corners (counter-clockwise) are clipped by the four edges of box B (Sutherland-Hodgman;
a vertex on an edge counts as inside), and the area of what is left comes from the shoelace
formula. Everything is computed in float64, vectorized over pairs in chunks.
"""
from __future__ import annotations

import torch

from dense3d.structures.boxes import Boxes3D

__all__ = ["bev_corners", "bev_intersection_pairs", "boxes_iou_rotated", "points_in_boxes"]

_MAX_VERTS = 8  # a rectangle clipped by 4 half-planes keeps at most 4 + 4 vertices
_CHUNK = 1 << 16  # pairs per vectorized chunk


def bev_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(K, 7+) boxes -> (K, 4, 2) BEV corners, counter-clockwise (Boxes3D's corners 0..3)."""
    return Boxes3D._wrap(boxes[:, :7]).bev_corners()


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _clip(poly: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """Clip polygons (K, W, 2) with n (K,) vertices by the half-plane left of a -> b (K, 2)."""
    k, w = poly.shape[:2]
    i = torch.arange(w, device=poly.device)
    valid = i[None, :] < n[:, None]  # (K, W)
    nxt = poly.gather(1, ((i[None, :] + 1) % n.clamp(min=1)[:, None])[..., None].expand(k, w, 2))  # (K, W, 2)
    ex, ey = (b - a).unbind(-1)  # (K,)
    d_cur = _cross(ex[:, None], ey[:, None], poly[..., 0] - a[:, None, 0], poly[..., 1] - a[:, None, 1])  # (K, W)
    d_nxt = _cross(ex[:, None], ey[:, None], nxt[..., 0] - a[:, None, 0], nxt[..., 1] - a[:, None, 1])
    in_cur, in_nxt = d_cur >= 0, d_nxt >= 0
    crossing = valid & (in_cur != in_nxt)
    denom = torch.where(crossing, d_cur - d_nxt, torch.ones_like(d_cur))
    t = (d_cur / denom)[..., None]
    inter = poly + t * (nxt - poly)  # (K, W, 2)
    cand = torch.stack([poly, inter], 2).reshape(k, 2 * w, 2)  # (K, W, 2, 2) -> (K, 2W, 2)
    keep = torch.stack([valid & in_cur, crossing], 2).reshape(k, 2 * w)  # (K, 2W)
    # compact the kept candidates to the front, in order; the ones past W (never for convex
    # input) and the dropped ones land in a spare column W that is cut off
    slot = torch.where(keep, keep.long().cumsum(1) - 1, w).clamp(max=w)  # (K, 2W)
    out = poly.new_zeros(k, w + 1, 2).scatter_(1, slot[..., None].expand(k, 2 * w, 2), cand)
    return out[:, :w], keep.sum(1).clamp(max=w)


def _area(poly: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Shoelace area of polygons (K, W, 2) with n (K,) vertices (0 for n < 3)."""
    k, w = poly.shape[:2]
    i = torch.arange(w, device=poly.device)
    nxt = poly.gather(1, ((i[None, :] + 1) % n.clamp(min=1)[:, None])[..., None].expand(k, w, 2))
    terms = _cross(poly[..., 0], poly[..., 1], nxt[..., 0], nxt[..., 1]) * (i[None, :] < n[:, None])
    return (0.5 * terms.sum(1)).abs() * (n >= 3)


def bev_intersection_pairs(ca: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Intersection areas of K pairs of convex CCW quadrilaterals (K, 4, 2) x (K, 4, 2) -> (K,).

    Both are first moved so that A's corner 0 is the origin (far from the origin the shoelace
    sums would cancel catastrophically), as the C++/CUDA kernel does."""
    k = ca.shape[0]
    origin = ca[:, :1].clone()  # (K, 1, 2)
    ca, cb = ca - origin, cb - origin
    poly = ca.new_zeros(k, _MAX_VERTS, 2)
    poly[:, :4] = ca
    n = torch.full((k,), 4, dtype=torch.long, device=ca.device)
    for e in range(4):
        poly, n = _clip(poly, n, cb[:, e], cb[:, (e + 1) % 4])
    return _area(poly, n)


def boxes_iou_rotated(a: torch.Tensor, b: torch.Tensor, mode: str = "bev") -> torch.Tensor:
    """(N, 7+) x (M, 7+) -> (N, M) float64 IoU, ``mode`` "bev" (rotated BEV) or "3d"."""
    a, b = a[:, :7].double(), b[:, :7].double()
    n, m = a.shape[0], b.shape[0]
    out = a.new_zeros(n, m)
    if n == 0 or m == 0:
        return out
    ca, cb = bev_corners(a), bev_corners(b)  # (N, 4, 2), (M, 4, 2)
    # only pairs whose corner circles meet can intersect (the C++ kernel skips the others too)
    ra, rb = 0.5 * a[:, 3:5].norm(dim=1), 0.5 * b[:, 3:5].norm(dim=1)  # (N,), (M,)
    reach = (ra[:, None] + rb[None, :]) * (1 + 1e-9) + 1e-12  # (N, M)
    near = (a[:, None, 0:2] - b[None, :, 0:2]).square().sum(-1) <= reach.square()  # (N, M)
    # a box with no BEV area overlaps nothing: its edges have no direction, so clipping by them
    # would keep all of the other box (and the union's rounding would then decide the IoU)
    has_area_a, has_area_b = a[:, 3] * a[:, 4] > 0, b[:, 3] * b[:, 4] > 0  # (N,), (M,); an underflowing product is no area
    near &= has_area_a[:, None] & has_area_b[None, :]
    ii, jj = near.nonzero(as_tuple=True)
    for p0 in range(0, ii.shape[0], _CHUNK):
        i, j = ii[p0 : p0 + _CHUNK], jj[p0 : p0 + _CHUNK]
        out[i, j] = bev_intersection_pairs(ca[i], cb[j])
    if mode == "bev":
        area_a, area_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
        inter = out
    else:
        lo = torch.maximum(a[:, None, 2] - a[:, None, 5] / 2, b[None, :, 2] - b[None, :, 5] / 2)  # (N, M)
        hi = torch.minimum(a[:, None, 2] + a[:, None, 5] / 2, b[None, :, 2] + b[None, :, 5] / 2)
        inter = out * (hi - lo).clamp(min=0)
        area_a, area_b = a[:, 3] * a[:, 4] * a[:, 5], b[:, 3] * b[:, 4] * b[:, 5]
    # no overlap exceeds the smaller box (the clipped polygon's rounding gave identical rotated
    # boxes IoU a little above 1): IoU <= 1, = 1 for identical boxes, as the C++/CUDA kernel
    inter = torch.minimum(inter, torch.minimum(area_a[:, None], area_b[None, :]))
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(P, 3+) x (N, 7+) -> (P, N) bool (faces included); :meth:`Boxes3D.points_in_boxes`."""
    return Boxes3D._wrap(boxes[:, :7]).points_in_boxes(points)
