"""Where each box stands in its room: the gaps from its footprint to the room's four walls.

Indoor descriptions place objects by the walls ("in the corner", "against the wall", "in the
middle of the room", ScanRefer). Neither a box's own features nor BiCA's BEV contexts hold how far
the walls are: with them only, the place in the room was right in 77 % of the synthetic rooms'
captions (docs/results.md). The room is taken as the axis-aligned extent of the scene's points
(ScanNet scans are axis-aligned, their walls the outermost points), robust to stray points
through quantiles.
"""
from __future__ import annotations

import torch

__all__ = ["wall_gaps", "room_extent"]


def room_extent(xy: torch.Tensor, quantile: float = 0.002) -> torch.Tensor:
    """(N, 2) points seen from above -> (4,) ``x_min, x_max, y_min, y_max`` (the ``quantile`` and
    ``1 - quantile`` of each axis; zeros for no points)."""
    if xy.shape[0] == 0:
        return xy.new_zeros(4)
    q = torch.tensor([quantile, 1.0 - quantile], dtype=xy.dtype, device=xy.device)
    # torch.quantile refuses inputs over 2**24 values: every k-th point keeps its estimate (a
    # strided subset, not a random one: the same scene gives the same layout, and the global RNG
    # that training draws from is left alone)
    if xy.shape[0] > 1_000_000:
        xy = xy[:: -(-xy.shape[0] // 1_000_000)]  # (N, 2) -> (<= 1e6, 2)
    lo_hi = torch.quantile(xy, q, dim=0)  # (2, 2): rows quantiles, columns x / y
    return torch.stack([lo_hi[0, 0], lo_hi[1, 0], lo_hi[0, 1], lo_hi[1, 1]])


def wall_gaps(points: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor, quantile: float = 0.002) -> torch.Tensor:
    """Gaps from each box's footprint to the room's walls.

    Args:
        points: (sum N_b, 1 + 3 + C) batch points, column 0 the sample index (``Batch.points``).
        boxes: (B, R, >=7) ``x, y, z, dx, dy, dz, yaw``.
        mask: (B, R) True at real boxes.
    Returns:
        (B, R, 4) metres to the walls at ``x_min``, ``x_max``, ``y_min``, ``y_max`` (negative where
        the footprint pokes through); zeros at padded boxes and in samples without points.
    """
    B, R = mask.shape
    x, y, dx, dy, yaw = boxes[..., 0], boxes[..., 1], boxes[..., 3], boxes[..., 4], boxes[..., 6]
    c, s = torch.cos(yaw).abs(), torch.sin(yaw).abs()
    hx = 0.5 * (dx * c + dy * s)  # (B, R) half extent of the rotated footprint along x
    hy = 0.5 * (dx * s + dy * c)
    out = boxes.new_zeros(B, R, 4)
    sample = points[:, 0].long()
    for b in range(B):
        xy = points[sample == b, 1:3].to(boxes.dtype)  # (N_b, 2)
        if xy.shape[0] == 0:
            continue
        x0, x1, y0, y1 = room_extent(xy, quantile)
        out[b] = torch.stack([x[b] - hx[b] - x0, x1 - x[b] - hx[b], y[b] - hy[b] - y0, y1 - y[b] - hy[b]], -1)
    return out * mask[..., None].to(out.dtype)
