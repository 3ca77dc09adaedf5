"""Sparse convolution, voxelization and box geometry ops.

Each op has a C++/CUDA kernel in ``dense3d._C`` (sources in ``csrc/<op>/``) and a pure-torch
reference in ``_ref/``; see ``_backend`` for how ``backend="auto" | "ext" | "torch"`` picks.
"""
from dense3d.ops._backend import backend_info, ext_available, ext_has_cuda, resolve_backend
from dense3d.ops.box_iou import boxes_iou_3d, boxes_iou_3d_axis_aligned, boxes_iou_bev, generalized_iou_3d_axis_aligned
from dense3d.ops.nms import batched_nms_bev, nms_bev
from dense3d.ops.points_in_boxes import points_in_boxes, points_in_boxes_first
from dense3d.ops.voxelize import voxel_grid_size, voxelize, voxelize_batch
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
__all__ += ["voxelize", "voxelize_batch", "voxel_grid_size"]
__all__ += ["boxes_iou_bev", "boxes_iou_3d", "boxes_iou_3d_axis_aligned", "generalized_iou_3d_axis_aligned"]
__all__ += ["nms_bev", "batched_nms_bev", "points_in_boxes", "points_in_boxes_first"]

from dense3d.ops.bev_pool import bev_pool  # noqa: E402

__all__ += ["bev_pool"]

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
