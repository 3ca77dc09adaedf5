"""Sparse convolution: ``SparseTensor``, kernel maps and spconv-shaped layers (see docs/ops.md)."""
from dense3d.ops.sparse.conv import (
    SparseConv2d,
    SparseConv3d,
    SparseConvNd,
    SparseInverseConv3d,
    SparseModule,
    SparseSequential,
    SubMConv2d,
    SubMConv3d,
    load_spconv_weight,
)
from dense3d.ops.sparse.functional import SparseConvFunction, sparse_conv
from dense3d.ops.sparse.kernel_map import KernelMap, build_kernel_map, conv_output_shape
from dense3d.ops.sparse.tensor import SparseTensor

__all__ = [
    "SparseTensor",
    "KernelMap",
    "build_kernel_map",
    "conv_output_shape",
    "SparseConvFunction",
    "sparse_conv",
    "SparseModule",
    "SparseConvNd",
    "SubMConv3d",
    "SparseConv3d",
    "SparseInverseConv3d",
    "SubMConv2d",
    "SparseConv2d",
    "SparseSequential",
    "load_spconv_weight",
]
