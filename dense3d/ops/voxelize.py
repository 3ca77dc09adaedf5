"""Voxelization of point clouds: hard (mmcv / mmdet3d ``Voxelization``) and dynamic (mean).

Conventions (same for both backends and both modes):

* voxel ``(x, y, z)`` of a point is ``floor((p - range_min) / voxel_size)`` computed in the
  points' dtype; the grid has ``round((range_max - range_min) / voxel_size)`` voxels per axis
  and a point with any index outside ``[0, grid)`` is dropped;
* ``coords`` are int32 ``[z, y, x]`` (spconv / mmdet3d order);
* voxels come in **first-seen order**: voxel 0 holds the first in-range point of the input,
  voxel 1 the next point that falls in another voxel, ... Inside a hard voxel the points keep
  their input order. So the output is deterministic on CPU and CUDA alike.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from dense3d.errors import OpInputError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._checks import as_float_list, check_points, check_positive_int, check_same_device
from dense3d.ops._ref import voxelize as _ref_vox

__all__ = ["voxelize", "voxelize_batch", "voxel_grid_size"]


class _VoxelizeHardExt(torch.autograd.Function):
    """``dense3d._C.voxelize_hard`` with a backward: each kept point gets the gradient of its
    slot ``voxels[v, s]`` (dropped points 0). The kernel has no backward of its own, so the
    slots come from the reference's numbering, which is the kernel's (first-seen order)."""

    @staticmethod
    def forward(ctx, points, vs, lo, grid, max_points, max_voxels):
        voxels, coords, num = ext().voxelize_hard(points, vs, lo, grid, max_points, max_voxels)
        ctx.save_for_backward(points)
        ctx.args = (vs, lo, grid, max_points, max_voxels)
        ctx.mark_non_differentiable(coords, num)
        return voxels, coords, num

    @staticmethod
    def backward(ctx, grad_voxels, _grad_coords, _grad_num):
        (points,) = ctx.saved_tensors
        idx, vid, pos, keep, _, _ = _ref_vox.hard_slots(points.detach(), *ctx.args)
        grad = torch.zeros_like(points)
        grad[idx[keep]] = grad_voxels[vid[keep], pos[keep]]  # (V_kept, D) from (M, max_points, D)
        return grad, None, None, None, None, None


class _VoxelizeDynamicExt(torch.autograd.Function):
    """``dense3d._C.voxelize_dynamic`` with a backward: d mean / d point = 1 / (points in the
    voxel) for each point of the voxel, 0 for points outside the range."""

    @staticmethod
    def forward(ctx, points, vs, lo, grid):
        feats, coords, p2v = ext().voxelize_dynamic(points, vs, lo, grid)
        ctx.save_for_backward(p2v)
        ctx.num_voxels = feats.shape[0]
        ctx.mark_non_differentiable(coords, p2v)
        return feats, coords, p2v

    @staticmethod
    def backward(ctx, grad_feats, _grad_coords, _grad_p2v):
        (p2v,) = ctx.saved_tensors
        inside = p2v >= 0  # (N,)
        counts = torch.bincount(p2v[inside], minlength=ctx.num_voxels).to(grad_feats.dtype)  # (M,)
        grad = torch.zeros(p2v.shape[0], grad_feats.shape[1], dtype=grad_feats.dtype, device=grad_feats.device)
        grad[inside] = grad_feats[p2v[inside]] / counts[p2v[inside], None]  # (N_in, D)
        return grad, None, None, None


def voxel_grid_size(voxel_size, point_range, op: str = "voxelize") -> list[int]:
    """Voxels per axis ``[nx, ny, nz]`` for ``voxel_size`` (3,) and ``point_range`` (6,)."""
    vs = as_float_list(op, "voxel_size", voxel_size, 3)
    pr = as_float_list(op, "point_range", point_range, 6)
    if any(not (v > 0 and math.isfinite(v)) for v in vs):
        raise OpInputError(op, "voxel_size", "3 finite numbers > 0", got=vs)
    if not all(math.isfinite(v) for v in pr):
        raise OpInputError(op, "point_range", "6 finite numbers", got=pr)
    quot = [(pr[i + 3] - pr[i]) / vs[i] for i in range(3)]
    grid = [round(q) if abs(q) < 2**62 else int(math.copysign(2**62, q)) for q in quot]  # also for an overflowing quotient
    if any(g <= 0 for g in grid):
        raise OpInputError(op, "point_range", "[x0, y0, z0, x1, y1, z1] with x1 > x0, y1 > y0, z1 > z0 (at least one voxel)", got=pr)
    if any(g >= 2**31 for g in grid) or grid[0] * grid[1] * grid[2] >= 2**62:
        # coords are int32, linear voxel keys int64
        raise OpInputError(op, "voxel_size", "a grid of fewer than 2**31 voxels per axis and 2**62 in all", got=grid)
    return grid


def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    mode: str = "hard",
    max_points: int = 32,
    max_voxels: int = 20000,
    backend: str = "auto",
):
    """Group points (N, 3+C) into voxels.

    Args:
        points: (N, 3+C) float32/float64, ``x, y, z`` first; any device.
        voxel_size: (3,) ``[vx, vy, vz]`` > 0.
        point_range: (6,) ``[x0, y0, z0, x1, y1, z1]``.
        mode: ``"hard"`` or ``"dynamic"``.
        max_points, max_voxels: hard mode only: points of a voxel beyond ``max_points`` are
            dropped (in input order), voxels beyond ``max_voxels`` are dropped (in first-seen
            order), exactly as mmcv's hard voxelization.
        backend: ``"auto" | "ext" | "torch"``.

    Returns:
        hard: ``voxels`` (M, max_points, 3+C) zero-padded, ``coords`` (M, 3) int32 ``[z, y, x]``,
        ``num_points`` (M,) int32.
        dynamic: ``features`` (M, 3+C) mean of each voxel's points, ``coords`` (M, 3) int32
        ``[z, y, x]``, ``point2voxel`` (N,) long (-1 for points outside the range).
        ``voxels`` / ``features`` are differentiable with respect to ``points`` on every backend.
    """
    op = "voxelize"
    points = check_points(op, "points", points)
    grid = voxel_grid_size(voxel_size, point_range, op)
    vs = as_float_list(op, "voxel_size", voxel_size, 3)
    lo = as_float_list(op, "point_range", point_range, 6)[:3]
    if mode not in ("hard", "dynamic"):
        raise OpInputError(op, "mode", "'hard' or 'dynamic'", got=repr(mode))
    points = points.contiguous()
    if mode == "hard":
        max_points = check_positive_int(op, "max_points", max_points)
        max_voxels = check_positive_int(op, "max_voxels", max_voxels)
        # through autograd Functions: the kernels alone returned voxels without a gradient
        # where the torch reference had one (points with learned features lost it silently)
        if resolve_backend(backend, "voxelize_hard", points) == "ext":
            return tuple(_VoxelizeHardExt.apply(points, vs, lo, grid, max_points, max_voxels))
        return _ref_vox.voxelize_hard(points, vs, lo, grid, max_points, max_voxels)
    if resolve_backend(backend, "voxelize_dynamic", points) == "ext":
        return tuple(_VoxelizeDynamicExt.apply(points, vs, lo, grid))
    return _ref_vox.voxelize_dynamic(points, vs, lo, grid)


def voxelize_batch(
    points_list: Sequence[torch.Tensor],
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    mode: str = "hard",
    max_points: int = 32,
    max_voxels: int = 20000,
    backend: str = "auto",
):
    """:func:`voxelize` each cloud of a batch and concatenate, for a sparse tensor.

    ``max_voxels`` applies per cloud. Returns the same as :func:`voxelize` but with ``coords``
    (M, 4) int32 ``[batch, z, y, x]`` (clouds in list order); in dynamic mode ``point2voxel``
    is the concatenation over clouds of indices into the concatenated voxels (-1 outside).
    """
    if len(points_list) == 0:
        raise OpInputError("voxelize_batch", "points_list", "at least one point cloud", got="[]")
    # all clouds on one device, checked before voxelizing any: else torch.cat fails at the end
    # (or a meta / other-device cloud fails inside voxelize) without naming the cloud
    for i, p in enumerate(points_list):
        if isinstance(p, torch.Tensor) and isinstance(points_list[0], torch.Tensor):
            check_same_device("voxelize_batch", f"points_list[{i}]", p, "points_list[0]", points_list[0])
    outs = [voxelize(p, voxel_size, point_range, mode, max_points, max_voxels, backend) for p in points_list]
    coords = [
        torch.cat([torch.full_like(o[1][:, :1], b), o[1]], 1)  # (M_b, 3) -> (M_b, 4)
        for b, o in enumerate(outs)
    ]
    first = torch.cat([o[0] for o in outs], 0)
    if mode == "hard":
        return first, torch.cat(coords, 0), torch.cat([o[2] for o in outs], 0)
    p2v, offset = [], 0
    for o in outs:
        p2v.append(torch.where(o[2] >= 0, o[2] + offset, o[2]))
        offset += o[0].shape[0]
    return first, torch.cat(coords, 0), torch.cat(p2v, 0)


