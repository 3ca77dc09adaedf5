// Rotated box IoU (BEV and 3D) of dense3d boxes (N, 7) x (M, 7) -> (N, M) float64.
#pragma once

#include <ATen/ATen.h>

namespace dense3d {

// mode 0: rotated BEV IoU, 1: rotated 3D IoU. Dispatches on the device of `a`.
at::Tensor box_iou_rotated(const at::Tensor& a, const at::Tensor& b, int64_t mode);

at::Tensor box_iou_rotated_cpu(const at::Tensor& a, const at::Tensor& b, int64_t mode);
#ifdef WITH_CUDA
at::Tensor box_iou_rotated_cuda(const at::Tensor& a, const at::Tensor& b, int64_t mode);
#endif

}  // namespace dense3d
