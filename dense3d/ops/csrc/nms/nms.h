// Greedy rotated BEV NMS over boxes already sorted by descending score.
#pragma once

#include <ATen/ATen.h>

namespace dense3d {

// boxes (K, 7) sorted by score; labels (K,) int64 or empty (class-agnostic). Box i is dropped
// when a kept earlier box (same label, if given) has BEV IoU > iou_threshold with it.
// Returns kept positions (K',) int64, ascending. Dispatches on the device of `boxes`.
at::Tensor nms_bev(const at::Tensor& boxes, double iou_threshold, const at::Tensor& labels);

at::Tensor nms_bev_cpu(const at::Tensor& boxes, double iou_threshold, const at::Tensor& labels);
#ifdef WITH_CUDA
at::Tensor nms_bev_cuda(const at::Tensor& boxes, double iou_threshold, const at::Tensor& labels);
#endif

}  // namespace dense3d
