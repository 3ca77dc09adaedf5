"""Pure-torch reference of sparse convolution: kernel map by sorting + ``searchsorted``, compute
by gather, ``mm`` and ``index_add`` per kernel offset (autograd does the backward).

It builds exactly the map ``dense3d._C.sparse_conv_kernel_map`` builds (same output order, same
pair order), so the two backends can be compared pair for pair. See
``dense3d/ops/csrc/sparse_conv/sparse_conv.h`` for the conventions.
"""
from __future__ import annotations

import torch

__all__ = ["kernel_map_ref", "sparse_conv_ref", "kernel_offsets"]


def kernel_offsets(kernel: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(K, 3) int64 offsets (kz, ky, kx), z-major: k = (kz * KH + ky) * KW + kx."""
    grids = torch.meshgrid(*[torch.arange(k, device=device) for k in kernel], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)  # 3 x (KD, KH, KW) -> (K, 3)


def _linear(batch: torch.Tensor, zyx: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    d, h, w = shape
    return ((batch * d + zyx[..., 0]) * h + zyx[..., 1]) * w + zyx[..., 2]


def kernel_map_ref(indices, in_shape, out_shape, kernel, stride, padding, dilation, subm):
    """Same contract as ``dense3d._C.sparse_conv_kernel_map`` (3-D geometry, (N, 4) int32 indices).

    Returns [out_indices (M, 4) int32, in_idx (P,) int32, out_idx (P,) int32, offsets (K+1,) int64
    on the CPU, stats [n_duplicates, identity_k] int64 on the CPU, out_rowptr (M+1,), out_perm,
    in_rowptr (N+1,), in_perm, out_order, in_order] (int32 pair positions per output / input row,
    and each offset's pairs sorted by output / input row).
    """
    dev = indices.device
    idx = indices.long()
    n = idx.shape[0]
    s = torch.tensor(stride, device=dev)
    p = torch.tensor(padding, device=dev)
    d = torch.tensor(dilation, device=dev)
    koff = kernel_offsets(tuple(kernel), dev) * d  # (K, 3) k * dilation
    keys = _linear(idx[:, 0], idx[:, 1:], tuple(in_shape))
    sorted_keys, order = keys.sort(stable=True)
    n_dup = int((sorted_keys[1:] == sorted_keys[:-1]).sum()) if n > 1 else 0

    if subm:
        out_indices = indices
    else:
        num = idx[:, None, 1:] + p - koff  # (N, 1, 3) + (K, 3) -> (N, K, 3)
        o = torch.div(num, s, rounding_mode="floor")
        oshape = torch.tensor(out_shape, device=dev)
        valid = ((num >= 0) & (num % s == 0) & (o < oshape)).all(-1)  # (N, K)
        b = idx[:, None, 0].expand(-1, koff.shape[0])  # (N, K)
        okeys = torch.unique(_linear(b[valid], o[valid], tuple(out_shape)))  # sorted
        od, oh, ow = out_shape
        out_indices = torch.stack(
            [okeys // (od * oh * ow), okeys // (oh * ow) % od, okeys // ow % oh, okeys % ow], dim=1
        ).to(torch.int32)
    m = out_indices.shape[0]
    oidx = out_indices.long()
    q = oidx[:, None, 1:] * s - p + koff  # (M, 1, 3) + (K, 3) -> (M, K, 3)
    inside = ((q >= 0) & (q < torch.tensor(in_shape, device=dev))).all(-1)  # (M, K)
    qkeys = _linear(oidx[:, None, 0], q, tuple(in_shape))  # (M, K)
    if n > 0:
        pos = torch.searchsorted(sorted_keys, qkeys).clamp(max=n - 1)
        found = inside & (sorted_keys[pos] == qkeys)
        nbr = torch.where(found, order[pos], torch.full_like(pos, -1))  # (M, K)
    else:
        nbr = torch.full_like(qkeys, -1)
    nbr = nbr.t().reshape(-1)  # (M, K) -> (K, M) -> (K * M,)
    sel = (nbr >= 0).nonzero().squeeze(1)  # sorted: grouped by offset, outputs ascending
    counts = torch.bincount(torch.div(sel, max(m, 1), rounding_mode="floor"), minlength=koff.shape[0])
    offsets = torch.zeros(koff.shape[0] + 1, dtype=torch.long)
    offsets[1:] = counts.cpu().cumsum(0)
    in_idx = nbr[sel].to(torch.int32)
    out_idx = (sel % max(m, 1)).to(torch.int32)
    kc = koff.shape[0] // 2
    identity_k = kc if subm and n_dup == 0 else -1
    keep = torch.ones(in_idx.shape[0], dtype=torch.bool, device=dev)
    if identity_k >= 0:
        keep[int(offsets[kc]) : int(offsets[kc + 1])] = False
    out_rowptr, out_perm = _rows(out_idx, keep, m)
    in_rowptr, in_perm = _rows(in_idx, keep, n)
    # each offset's pairs by output row (already so) and by input row
    k_of = torch.repeat_interleave(torch.arange(koff.shape[0], device=dev), counts)
    out_order = torch.arange(in_idx.shape[0], dtype=torch.int32, device=dev)
    in_order = torch.argsort(k_of * max(n, 1) + in_idx.long(), stable=True).to(torch.int32)
    return [
        out_indices, in_idx, out_idx, offsets, torch.tensor([n_dup, identity_k]), out_rowptr, out_perm, in_rowptr, in_perm,
        out_order, in_order,
    ]


def _rows(rows: torch.Tensor, keep: torch.Tensor, n_rows: int):
    """CSR of pair positions by row (stable: ascending offset within a row), ``keep`` pairs only."""
    pos = keep.nonzero().squeeze(1)
    r = rows[pos].long()
    perm = pos[torch.argsort(r, stable=True)].to(torch.int32)
    rowptr = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    rowptr[1:] = torch.bincount(r, minlength=n_rows).cumsum(0)
    return rowptr.to(torch.int32), perm


def sparse_conv_ref(features, weight, bias, in_idx, out_idx, offsets, n_out):
    """out (n_out, C_out) = bias + sum_k index_add(out_idx_k, features[in_idx_k] @ weight[k])."""
    out = features.new_zeros(n_out, weight.shape[2])
    off = offsets.tolist()
    for k in range(weight.shape[0]):
        a, b = off[k], off[k + 1]  # empty offsets too: keeps features and weight in the graph when N = 0
        contrib = features[in_idx[a:b].long()] @ weight[k]  # (n, C_in) @ (C_in, C_out)
        out = out.index_add(0, out_idx[a:b].long(), contrib)
    if bias is not None:
        out = out + bias
    return out
