"""Kernel maps (rulebooks): which input row feeds which output row through which weight.

The map is built once per ``indice_key`` (C++/CUDA hash of linear site keys in ``dense3d._C``,
or sorting + ``searchsorted`` in ``dense3d/ops/_ref/sparse_conv.py``; both give the same map)
and cached in the tensor's ``indice_dict``. Algorithm (``csrc/sparse_conv/sparse_conv_cpu.cpp``):

1. hash every input site ``key = ((b*D + z)*H + y)*W + x -> row`` (open addressing, linear
   probing, load <= 1/2);
2. output sites: the inputs (submanifold), or for strided convs every
   ``o = (i + padding - k*dilation) / stride`` that is integral and inside the output grid,
   deduplicated in a second hash and sorted by key (so the output order is deterministic);
3. for every output site and offset look up ``o*stride - padding + k*dilation`` in the hash;
4. compact the hits into pair lists grouped by offset (``offsets`` are the group bounds).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from dense3d.errors import SparseTensorError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._ref.sparse_conv import kernel_map_ref

__all__ = ["KernelMap", "build_kernel_map", "conv_output_shape"]


@dataclass(frozen=True)
class KernelMap:
    """A rulebook. Pairs ``offsets[k] .. offsets[k+1]-1`` of (``in_idx``, ``out_idx``) use weight[k]."""

    in_idx: torch.Tensor  # (P,) int32 rows of the input features
    out_idx: torch.Tensor  # (P,) int32 rows of the output features
    offsets: torch.Tensor  # (K + 1,) int64, CPU
    in_indices: torch.Tensor  # (N_in, 1 + ndim) int32 sites of the input
    out_indices: torch.Tensor  # (N_out, 1 + ndim) int32 sites of the output
    in_shape: tuple  # spatial shape of the input grid
    out_shape: tuple  # spatial shape of the output grid
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    subm: bool
    identity_k: int  # an offset whose pairs are (r, r) for all rows (submanifold centre), or -1
    out_rowptr: torch.Tensor  # (N_out + 1,) int32: out_perm[out_rowptr[o]:out_rowptr[o+1]] = pairs writing row o
    out_perm: torch.Tensor  # int32 pair positions by output row (identity pairs left out)
    in_rowptr: torch.Tensor  # (N_in + 1,) int32, the same by input row (backward)
    in_perm: torch.Tensor
    out_order: torch.Tensor  # (P,) int32: each offset's pair positions sorted by output row
    in_order: torch.Tensor  # (P,) int32: ... sorted by input row

    @property
    def num_in(self) -> int:
        return int(self.in_indices.shape[0])

    @property
    def num_out(self) -> int:
        return int(self.out_indices.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.offsets[-1])

    def inverse(self) -> "KernelMap":
        """The transposed map (for ``SparseInverseConv3d``): outputs become inputs and back."""
        return replace(
            self, in_idx=self.out_idx, out_idx=self.in_idx, in_indices=self.out_indices, out_indices=self.in_indices,
            in_shape=self.out_shape, out_shape=self.in_shape, out_rowptr=self.in_rowptr, out_perm=self.in_perm,
            in_rowptr=self.out_rowptr, in_perm=self.out_perm, out_order=self.in_order, in_order=self.out_order,
        )


def conv_output_shape(in_shape: Sequence[int], kernel_size, stride, padding, dilation) -> tuple:
    """``floor((n + 2p - d(k-1) - 1) / s) + 1`` per axis, like ``torch.nn.Conv3d``."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(in_shape, kernel_size, stride, padding, dilation))


def _to3(values: Sequence[int], ndim: int, fill: int) -> list[int]:
    return [fill, *values] if ndim == 2 else list(values)


def _check_sites(src: str, indices: torch.Tensor, spatial_shape: Sequence[int]) -> None:
    """The sites as both backends read them, checked before either runs: the C++ kernels refused
    other dtypes and widths with RuntimeError, the torch reference with IndexError or not at all
    (int64 or float indices ran), and sites outside the grid aliased other sites' keys on both."""
    ndim = len(spatial_shape)
    if ndim not in (2, 3) or not all(isinstance(v, numbers.Integral) and v >= 1 for v in spatial_shape):
        raise SparseTensorError(src, "spatial_shape", "2 or 3 positive sizes", got=list(spatial_shape))
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int32 or indices.dim() != 2 or indices.shape[1] != ndim + 1:
        got = f"{tuple(indices.shape)} {indices.dtype}" if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise SparseTensorError(src, "indices", f"an int32 (N, {ndim + 1}) tensor [batch, {'z, ' if ndim == 3 else ''}y, x]", got=got)
    if indices.shape[0] == 0:
        return
    hi = torch.tensor([torch.iinfo(torch.int32).max, *spatial_shape], device=indices.device)  # no upper bound on the batch
    bad = ((indices < 0) | (indices >= hi)).any(1)  # (N,)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise SparseTensorError(src, f"indices[{row}]", f"a batch index >= 0 and a site inside spatial_shape {list(spatial_shape)}",
                                got=indices[row].tolist())


# Pair positions, CSR row pointers and orders are int32 (both backends); site keys
# ``b * volume + linear cell`` are int64.
MAX_PAIRS = 2**31 - 1
MAX_SITE_KEY = 2**63 - 1


def _check_key_range(src: str, indices: torch.Tensor, spatial_shape: Sequence[int], out_shape: Sequence[int]) -> None:
    """Site keys of every sample must fit int64: past it keys of different sites alias (wrong pairs)."""
    volume = max(math.prod(spatial_shape), math.prod(out_shape))
    if indices.shape[0] == 0 or (2**31) * volume <= MAX_SITE_KEY + 1:
        return  # no int32 batch index can reach the limit (the usual case: no device sync)
    batch_size = int(indices[:, 0].max()) + 1
    if batch_size * volume > MAX_SITE_KEY + 1:  # keys run 0 .. batch_size * volume - 1
        raise SparseTensorError(src, "spatial_shape", "batch size x grid volume <= 2**63 - 1 (int64 site keys)",
                                got=f"{batch_size} samples x {volume} cells")


def _too_many_pairs(src: str, num_pairs: int) -> SparseTensorError:
    return SparseTensorError(src, "indices", f"a kernel map of at most {MAX_PAIRS} pairs (int32 pair positions); "
                             "split the batch or use a coarser grid", got=f"{num_pairs} pairs")


def _check_num_pairs(src: str, num_pairs: int) -> None:
    """Pair positions are int32: a map of more pairs would index the wrong pairs."""
    if num_pairs > MAX_PAIRS:
        raise _too_many_pairs(src, num_pairs)


def build_kernel_map(
    indices: torch.Tensor,
    spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    subm: bool,
    backend: str = "auto",
) -> KernelMap:
    """Build the rulebook of one conv on the sites ``indices`` ((N, 1 + ndim) int32).

    For a submanifold conv ``padding`` is ignored: it is ``dilation * (kernel - 1) / 2`` (odd
    kernels only), the output sites are the input sites.
    """
    ndim = len(spatial_shape)
    ks, st, dl = tuple(kernel_size), tuple(stride), tuple(dilation)
    src = "SubMConv" if subm else "SparseConv"
    _check_sites(src, indices, spatial_shape)
    for name, vals, lo, hi in (("kernel_size", ks, 1, 64), ("stride", st, 1, None), ("dilation", dl, 1, None), ("padding", tuple(padding), 0, None)):
        if subm and name in ("stride", "padding"):
            continue  # ignored by a submanifold conv
        ok = len(vals) == ndim and all(isinstance(v, numbers.Integral) and v >= lo and (hi is None or v <= hi) for v in vals)
        if not ok:  # the C++ kernels take kernels of at most 64 per axis
            want = f"{ndim} ints >= {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise SparseTensorError(src, name, want, got=vals)
    if subm:
        if any(k % 2 == 0 for k in ks):
            raise SparseTensorError("SubMConv", "kernel_size", "odd sizes (the kernel is centred on each site)", got=ks)
        st = (1,) * ndim
        pd = tuple(d * (k - 1) // 2 for k, d in zip(ks, dl))
        out_shape = tuple(spatial_shape)
    else:
        pd = tuple(padding)
        out_shape = conv_output_shape(spatial_shape, ks, st, pd, dl)
        if any(s < 1 for s in out_shape):
            raise SparseTensorError("SparseConv", "spatial_shape", f"a grid the kernel {ks} fits into", got=list(spatial_shape))
    _check_key_range(src, indices, spatial_shape, out_shape)
    # 2-D runs as 3-D with a unit z axis: (N, 3) [b, y, x] -> (N, 4) [b, 0, y, x].
    idx3 = indices if ndim == 3 else torch.cat([indices[:, :1], torch.zeros_like(indices[:, :1]), indices[:, 1:]], 1)
    args = (
        idx3.contiguous(), _to3(spatial_shape, ndim, 1), _to3(out_shape, ndim, 1), _to3(ks, ndim, 1),
        _to3(st, ndim, 1), _to3(pd, ndim, 0), _to3(dl, ndim, 1), subm,
    )
    if resolve_backend(backend, "sparse_conv_kernel_map", indices) == "ext":
        try:
            res = ext().sparse_conv_kernel_map(*args)
        except RuntimeError as e:  # the builders' TORCH_CHECK on the pair count, stopped before int32 wraps
            found = re.search(r"dense3d kernel map: (\d+) pairs", str(e))
            if found is None:
                raise
            raise _too_many_pairs(src, int(found.group(1))) from None
    else:
        res = kernel_map_ref(*args)
    out3, in_idx, out_idx, offsets, stats, out_rowptr, out_perm, in_rowptr, in_perm, out_order, in_order = res
    _check_num_pairs(src, int(offsets[-1]))  # the reference's int32 positions would have wrapped; never used then
    n_dup, identity = (int(v) for v in stats)
    if n_dup > 0:
        raise SparseTensorError("SparseTensor", "indices", "unique sites", got=f"{n_dup} duplicate rows")
    out_indices = indices if subm else (out3 if ndim == 3 else out3[:, [0, 2, 3]].contiguous())
    return KernelMap(
        in_idx, out_idx, offsets, indices, out_indices, tuple(spatial_shape), tuple(out_shape), ks, st, pd, dl, subm,
        identity, out_rowptr, out_perm, in_rowptr, in_perm, out_order, in_order,
    )
