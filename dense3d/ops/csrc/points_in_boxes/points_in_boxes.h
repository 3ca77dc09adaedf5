// Which points lie inside which rotated boxes (faces included).
//
// Same arithmetic, in the points' dtype, as Boxes3D.points_in_boxes: the offset to the box
// centre is rotated by -yaw (lx = rx*c + ry*s, ly = -rx*s + ry*c, each product and sum rounded
// separately, no fused multiply-add) and compared with the half sizes, so the results agree
// bit for bit with the torch reference.
#pragma once

#include <ATen/ATen.h>

namespace dense3d {

// points (P, 3), boxes (N, 7) of the same dtype -> (P, N) bool.
at::Tensor points_in_boxes(const at::Tensor& points, const at::Tensor& boxes);
// -> (P,) int64: lowest index of a box holding each point, -1 for none.
at::Tensor points_in_boxes_first(const at::Tensor& points, const at::Tensor& boxes);

at::Tensor points_in_boxes_cpu(const at::Tensor& points, const at::Tensor& boxes, bool first_only);
#ifdef WITH_CUDA
at::Tensor points_in_boxes_cuda(const at::Tensor& points, const at::Tensor& boxes, bool first_only);
#endif

}  // namespace dense3d
