"""Sparse convolution, voxelization and box geometry ops.

Each op has a C++/CUDA kernel in ``dense3d._C`` (sources in ``csrc/<op>/``) and a pure-torch
reference in ``_ref/``; see ``_backend`` for how ``backend="auto" | "ext" | "torch"`` picks.
"""
from dense3d.ops._backend import backend_info, ext_available, ext_has_cuda, resolve_backend
from dense3d.ops.sparse import (
    SparseConv2d,
    SparseConv3d,
    SparseInverseConv3d,
    SparseSequential,
    SparseTensor,
    SubMConv2d,
    SubMConv3d,
    load_spconv_weight,
)

__all__ = ["backend_info", "ext_available", "ext_has_cuda", "resolve_backend"]
__all__ += [
    "SparseTensor",
    "SubMConv3d",
    "SparseConv3d",
    "SparseInverseConv3d",
    "SubMConv2d",
    "SparseConv2d",
    "SparseSequential",
    "load_spconv_weight",
]
