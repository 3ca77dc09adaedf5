"""Pure-torch reference of BEV pooling (sum of point features per BEV cell)."""
from __future__ import annotations

import torch

__all__ = ["bev_pool_ref"]


def bev_pool_ref(features: torch.Tensor, cells: torch.Tensor, num_cells: int) -> torch.Tensor:
    """Sum ``features`` (N, C) into ``num_cells`` rows by ``cells`` (N,) long (-1 = dropped).

    Returns (num_cells, C); differentiable through autograd (``index_add`` backward is a gather).
    """
    keep = cells >= 0
    out = features.new_zeros(num_cells, features.shape[1])
    return out.index_add(0, cells[keep], features[keep])
