"""Sparse convolution compute: gather -> GEMM -> scatter-add per kernel offset.

``sparse_conv(features, weight, bias, kmap)`` runs ``dense3d._C`` (C++/OpenMP + ATen GEMM on the
CPU, CUDA gather/scatter kernels + cuBLAS on the GPU) through ``SparseConvFunction`` (forward and
backward for features and weights), or the pure-torch reference (``backend="torch"``).
"""
from __future__ import annotations

import torch

from dense3d.errors import SparseTensorError
from dense3d.ops._backend import ext, resolve_backend
from dense3d.ops._checks import check_same_device
from dense3d.ops._ref.sparse_conv import sparse_conv_ref
from dense3d.ops.sparse.kernel_map import KernelMap

__all__ = ["SparseConvFunction", "sparse_conv"]


class SparseConvFunction(torch.autograd.Function):
    """Autograd wrapper of ``dense3d._C.sparse_conv_forward`` / ``sparse_conv_backward``."""

    @staticmethod
    def forward(ctx, features, weight, bias, kmap: KernelMap):
        out = ext().sparse_conv_forward(
            features, weight, bias, kmap.in_idx, kmap.out_idx, kmap.offsets, kmap.out_rowptr, kmap.out_perm,
            kmap.out_order, kmap.num_out, kmap.identity_k,
        )
        ctx.save_for_backward(features, weight)
        ctx.kmap = kmap
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weight = ctx.saved_tensors
        km = ctx.kmap
        need_f, need_w, need_b = ctx.needs_input_grad[:3]
        grad_f = grad_w = grad_b = None
        if (need_f or need_w) and torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, a Hessian-vector product): the ext backward
            # is not differentiable and its gradients came back cut from the graph (second-order
            # terms silently lost); the reference's gradients are, and equal them
            wanted = [t for t, need in ((features, need_f), (weight, need_w)) if need]
            out = sparse_conv_ref(features, weight, None, km.in_idx, km.out_idx, km.offsets, km.num_out)
            grads = list(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
            grad_f = grads.pop(0) if need_f else None
            grad_w = grads.pop(0) if need_w else None
        elif need_f or need_w:
            grad_f, grad_w = ext().sparse_conv_backward(
                grad_out, features, weight, km.in_idx, km.out_idx, km.offsets, km.in_rowptr, km.in_perm,
                km.in_order, km.out_order, km.identity_k, need_f, need_w,
            )
        if ctx.has_bias and need_b:
            grad_b = grad_out.sum(0)
        return grad_f, grad_w, grad_b, None


def _check_operands(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap) -> None:
    """Shapes and dtypes, before any backend runs: each failed its own way (the torch reference
    with RuntimeError or IndexError from its GEMM, or none: a weight with too many offsets ran;
    the C++ kernels with RuntimeError, a bias too short read past its end, and features with
    too few rows aborted the process from inside an OpenMP loop)."""
    num_offsets = int(kmap.offsets.numel()) - 1
    if features.dim() != 2 or not features.is_floating_point() or features.shape[0] != kmap.num_in:
        raise SparseTensorError("sparse_conv", "features", f"a floating point ({kmap.num_in}, C_in) tensor (kmap.num_in rows)",
                                got=f"{features.dtype} {tuple(features.shape)}")
    if weight.dim() != 3 or weight.shape[0] != num_offsets or weight.shape[1] != features.shape[1]:
        raise SparseTensorError("sparse_conv", "weight", f"a ({num_offsets}, {features.shape[1]}, C_out) tensor (K = the kernel map's "
                                "offsets, C_in = the features' columns)", got=tuple(weight.shape))
    if weight.dtype != features.dtype:
        raise SparseTensorError("sparse_conv", "weight", f"dtype {features.dtype} like the features", got=weight.dtype)
    if bias is not None and (bias.shape != (weight.shape[2],) or bias.dtype != weight.dtype):
        raise SparseTensorError("sparse_conv", "bias", f"None or a ({weight.shape[2]},) tensor (C_out) of dtype {weight.dtype}",
                                got=f"{bias.dtype} {tuple(bias.shape)}")


def sparse_conv(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kmap: KernelMap,
    backend: str = "auto",
) -> torch.Tensor:
    """Output features (kmap.num_out, C_out) of a sparse conv.

    Args:
        features: (kmap.num_in, C_in) input features.
        weight: (K, C_in, C_out), K = prod(kernel_size), offsets z-major (see ``SparseConv3d``).
        bias: (C_out,) or None.
        kmap: the rulebook (``build_kernel_map``; ``.inverse()`` for a transposed conv).

    Raises:
        OpInputError: weight, bias or the kernel map on another device than features.
        SparseTensorError: features, weight or bias of the wrong shape or dtype for each other
            or for the kernel map (the same class on every backend).
    """
    # checked up front: torch's error from inside the GEMM / gather names no argument
    check_same_device("sparse_conv", "weight", weight, "features", features)
    if bias is not None:
        check_same_device("sparse_conv", "bias", bias, "features", features)
    check_same_device("sparse_conv", "kmap.in_idx", kmap.in_idx, "features", features)
    _check_operands(features, weight, bias, kmap)
    chosen = resolve_backend(backend, "sparse_conv_forward", features)
    if chosen == "ext" and not features.is_cuda and features.dtype not in (torch.float32, torch.float64):
        if backend == "ext":  # the CPU kernels are float32 / float64 only
            raise SparseTensorError("sparse_conv", "features", "float32 or float64 on the CPU with backend='ext'", got=features.dtype)
        chosen = "torch"
    if chosen == "ext":
        return SparseConvFunction.apply(features, weight, bias, kmap)
    return sparse_conv_ref(features, weight, bias, kmap.in_idx, kmap.out_idx, kmap.offsets, kmap.num_out)
