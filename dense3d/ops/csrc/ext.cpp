// dense3d._C: the one extension module. Each op lives in csrc/<op>/{<op>.h, <op>_cpu.cpp,
// <op>_cuda.cu}; its header declares the dispatching entry points registered here.
#include <torch/extension.h>

#include "bev_pool/bev_pool.h"
#include "box_iou/box_iou.h"
#include "nms/nms.h"
#include "points_in_boxes/points_in_boxes.h"
#include "sparse_conv/sparse_conv.h"
#include "voxelize/voxelize.h"

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("voxelize_hard", &dense3d::voxelize_hard, "hard voxelization (mmcv semantics, first-seen order)");
  m.def("voxelize_dynamic", &dense3d::voxelize_dynamic, "dynamic voxelization (mean per voxel, first-seen order)");
  m.def("box_iou_rotated", &dense3d::box_iou_rotated, "rotated BEV (mode 0) / 3D (mode 1) IoU, float64");
  m.def("nms_bev", &dense3d::nms_bev, "greedy rotated BEV NMS over score-sorted boxes (optional labels)");
  m.def("points_in_boxes", &dense3d::points_in_boxes, "(P, 3) x (N, 7) -> (P, N) bool");
  m.def("points_in_boxes_first", &dense3d::points_in_boxes_first, "(P, 3) x (N, 7) -> (P,) first box index or -1");
  m.def("with_cuda", &with_cuda, "True when dense3d._C was built with its CUDA kernels");
  m.def("bev_pool_forward", &bev_pool_forward, "BEV pooling: sum point features per cell (sorted intervals)");
  m.def("bev_pool_backward", &bev_pool_backward, "BEV pooling backward: gather the cell gradients");
  m.def("sparse_conv_kernel_map", &dense3d::sparse_conv_kernel_map, "sparse conv kernel map (rulebook)");
  m.def("sparse_conv_forward", &dense3d::sparse_conv_forward, "sparse conv gather-GEMM-scatter forward");
  m.def("sparse_conv_backward", &dense3d::sparse_conv_backward, "sparse conv backward (features, weight)");
}
