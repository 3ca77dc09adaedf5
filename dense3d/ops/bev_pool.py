"""BEV pooling: the splat step of Lift-Splat-Shoot (sum of frustum-point features per cell).

``bev_pool(features, coords, batch_size, grid_size)`` sums the (N, C) features of points
whose integer BEV coordinates ``(b, y, x)`` coincide, into a (B, C, H, W) map. The kernels of
``dense3d._C`` sum without atomics (deterministic: each cell adds its points in input order;
see ``csrc/bev_pool/bev_pool.h``) and the backward is a gather. ``backend="torch"`` uses
``index_add`` (``dense3d/ops/_ref/bev_pool.py``).
"""
from __future__ import annotations

import operator

import torch

from dense3d.errors import OpInputError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._ref.bev_pool import bev_pool_ref

__all__ = ["bev_pool", "bev_pool_cells"]


def bev_pool_cells(coords: torch.Tensor, batch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """(N, 3) long ``(b, y, x)`` -> (N,) long flat cell ``(b * H + y) * W + x``; -1 outside the grid."""
    H, W = int(grid_size[0]), int(grid_size[1])
    b, y, x = coords.unbind(1)
    inside = (b >= 0) & (b < batch_size) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    flat = (b * H + y) * W + x
    return torch.where(inside, flat, torch.full_like(flat, -1))


def _whole_numbers(values) -> list[int] | None:
    """``values`` as python ints when each is an integer (int, numpy or 0-d integer tensor; not
    bool, not float), else None."""
    if isinstance(values, (str, bytes)):
        return None
    try:
        if any(isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool) for v in values):
            return None
        return [operator.index(v) for v in values]
    except TypeError:  # not a sequence, or an element that is no integer
        return None


class _BevPoolExt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, coords, batch_size, height, width):
        ctx.save_for_backward(coords)
        ctx.grid = (batch_size, height, width)
        return ext().bev_pool_forward(features, coords, batch_size, height, width)

    @staticmethod
    def backward(ctx, grad_out):
        (coords,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: the ext gather is not differentiable and its gradient came back
            # cut from the graph (second-order terms silently lost); the same gather in torch is
            cells = bev_pool_cells(coords, ctx.grid[0], ctx.grid[1:])  # (N,) -1 outside
            rows = (cells >= 0).nonzero()[:, 0]  # (N_in,) points inside the grid
            grad = grad_out.new_zeros(coords.shape[0], grad_out.shape[1])
            return grad.index_put((rows,), grad_out.index_select(0, cells[rows])), None, None, None, None
        return ext().bev_pool_backward(grad_out.contiguous(), coords, *ctx.grid), None, None, None, None


def bev_pool(
    features: torch.Tensor,
    coords: torch.Tensor,
    batch_size: int,
    grid_size: tuple[int, int],
    backend: str = "auto",
) -> torch.Tensor:
    """Sum point features into a bird's-eye-view grid.

    Args:
        features: (N, C) float point features (float16 / bfloat16 are pooled in float32).
        coords: (N, 3) integer ``(b, y, x)`` cell of each point; points outside
            ``[0, B) x [0, H) x [0, W)`` are dropped.
        batch_size: B.
        grid_size: (H, W) cells.
        backend: ``"auto" | "ext" | "torch"`` (see ``dense3d.ops._backend``).

    Returns:
        (B, C, H, W) sums (zeros in empty cells), float32 for 16-bit features.
    """
    src = "bev_pool"
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        got = f"{features.dtype} {tuple(features.shape)}" if isinstance(features, torch.Tensor) else type(features).__name__
        raise OpInputError(src, "features", "a float tensor of shape (N, C)", got=got)
    if (
        not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 3 or coords.shape[0] != features.shape[0]
        or coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool
    ):
        got = f"{coords.dtype} {tuple(coords.shape)}" if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise OpInputError(src, "coords", f"an integer tensor of shape ({features.shape[0]}, 3)", got=got)
    if coords.device != features.device:  # the kernels would read one device's memory from the other
        raise OpInputError(src, "coords", f"a tensor on {features.device} like features", got=str(coords.device))
    # whole numbers only: (B, H, W) or (4.7, 5) were cut to (B, H) and (4, 5) without a word
    # and the map came back in another shape than asked for
    hw, b = _whole_numbers(grid_size), _whole_numbers([batch_size])
    if hw is None or len(hw) != 2 or min(hw) < 0:
        raise OpInputError(src, "grid_size", "(H, W): two ints >= 0", got=repr(grid_size))
    if b is None or b[0] < 0:
        raise OpInputError(src, "batch_size", "an int >= 0", got=repr(batch_size))
    H, W = hw
    batch_size = b[0]
    num_cells = int(batch_size) * H * W
    coords = coords.long().contiguous()
    if features.dtype in (torch.float16, torch.bfloat16):
        # sums of many points in 16 bits lose precision (autocast runs sums in float32 for the
        # same reason): pool in float32 and return float32
        features = features.float()
    if resolve_backend(backend, "bev_pool_forward", features) == "ext" and features.dtype in (torch.float32, torch.float64):
        out = _BevPoolExt.apply(features, coords, int(batch_size), H, W)
    else:
        out = bev_pool_ref(features, bev_pool_cells(coords, int(batch_size), (H, W)), num_cells)
    C = features.shape[1]
    # (B * H * W, C) -> (B, H, W, C) -> (B, C, H, W)
    return out.view(int(batch_size), H, W, C).permute(0, 3, 1, 2).contiguous()
