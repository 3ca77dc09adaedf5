"""Pure-torch voxelization (the reference of ``dense3d._C.voxelize_*``).

Voxel ``(x, y, z)`` of a point is ``floor((p - range_min) / voxel_size)``, computed in the
points' dtype; a point is outside when any index is < 0 or >= the grid size
``round((range_max - range_min) / voxel_size)``. Voxels are numbered in **first-seen order**:
voxel 0 holds the first in-range point of the input, voxel 1 the first point that falls in
another voxel, and so on (mmcv's hard voxelization order, used for both modes here).
"""
from __future__ import annotations

import torch

__all__ = ["point_voxel_ids", "hard_slots", "voxelize_hard", "voxelize_dynamic"]


def point_voxel_ids(points: torch.Tensor, voxel_size: list[float], range_min: list[float], grid: list[int]):
    """Number the voxels of ``points`` (N, 3+C) in first-seen order.

    Returns:
        idx: (V,) long, indices of the in-range points, ascending.
        vid: (V,) long, voxel id of each of those points (first-seen order).
        xyz: (U, 3) long, ``[x, y, z]`` voxel indices of voxel 0..U-1.
        counts: (U,) long, points per voxel.
    """
    dev = points.device
    vs = torch.tensor(voxel_size, dtype=points.dtype, device=dev)
    lo = torch.tensor(range_min, dtype=points.dtype, device=dev)
    g = torch.tensor(grid, dtype=torch.long, device=dev)
    c = torch.floor((points[:, 0:3] - lo) / vs)  # (N, 3) [x, y, z], still float
    valid = ((c >= 0) & (c < g.to(c.dtype))).all(1)  # (N,)
    idx = valid.nonzero()[:, 0]  # (V,)
    c = c[idx].long()  # (V, 3)
    lin = (c[:, 2] * grid[1] + c[:, 1]) * grid[0] + c[:, 0]  # (V,) linear index z-major
    uniq, inv = torch.unique(lin, return_inverse=True)  # uniq sorted, inv (V,)
    n_vox = uniq.shape[0]
    first = torch.full((n_vox,), points.shape[0], dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inv, idx, reduce="amin")  # (U,) first point of each voxel
    order = torch.argsort(first)  # first-seen order (the `first` values are distinct)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_vox, device=dev)
    vid = rank[inv]  # (V,)
    xyz = c[torch.searchsorted(idx, first[order])]  # (U, 3)
    counts = torch.bincount(vid, minlength=n_vox)  # (U,)
    return idx, vid, xyz, counts


def hard_slots(points, voxel_size, range_min, grid, max_points: int, max_voxels: int):
    """Where hard voxelization puts each point: ``voxels[vid[keep], pos[keep]] = points[idx[keep]]``.

    Returns ``idx, vid, pos, keep`` (V,) over the in-range points (see :func:`point_voxel_ids`;
    ``pos`` is the point's rank among the earlier points of its voxel, ``keep`` leaves out the
    points beyond ``max_points`` and the voxels beyond ``max_voxels``), ``xyz`` (U, 3) and
    ``counts`` (U,).
    """
    dev = points.device
    idx, vid, xyz, counts = point_voxel_ids(points, voxel_size, range_min, grid)
    # slot of each point inside its voxel: its rank among the earlier points of that voxel
    sorted_vid, perm = torch.sort(vid, stable=True)  # groups points by voxel, input order kept
    starts = torch.cumsum(counts, 0) - counts  # (U,)
    pos = torch.empty_like(vid)
    pos[perm] = torch.arange(vid.shape[0], device=dev) - starts[sorted_vid]
    keep = (vid < max_voxels) & (pos < max_points)
    return idx, vid, pos, keep, xyz, counts


def voxelize_hard(points, voxel_size, range_min, grid, max_points: int, max_voxels: int):
    """See :func:`dense3d.ops.voxelize` (``mode="hard"``)."""
    idx, vid, pos, keep, xyz, counts = hard_slots(points, voxel_size, range_min, grid, max_points, max_voxels)
    m = min(xyz.shape[0], max_voxels)
    voxels = points.new_zeros(m, max_points, points.shape[1])
    voxels[vid[keep], pos[keep]] = points[idx[keep]]
    coords = xyz[:m].flip(1).to(torch.int32)  # (M, 3) [x, y, z] -> [z, y, x]
    num_points = counts[:m].clamp(max=max_points).to(torch.int32)
    return voxels, coords, num_points


def voxelize_dynamic(points, voxel_size, range_min, grid):
    """See :func:`dense3d.ops.voxelize` (``mode="dynamic"``)."""
    idx, vid, xyz, counts = point_voxel_ids(points, voxel_size, range_min, grid)
    sums = points.new_zeros(xyz.shape[0], points.shape[1]).index_add_(0, vid, points[idx])
    features = sums / counts[:, None].to(points.dtype)  # (M, 3+C) mean of the voxel's points
    point2voxel = torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device)
    point2voxel[idx] = vid
    return features, xyz.flip(1).to(torch.int32), point2voxel
