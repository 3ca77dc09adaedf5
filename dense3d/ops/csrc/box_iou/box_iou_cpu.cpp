#include "box_iou/box_iou.h"

#include <vector>

#include "box_iou/box_geometry.h"

namespace dense3d {

namespace {

void check_boxes(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == 7, name, " must be (N, 7), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name, " must be float32 or float64");
}

template <typename T>
std::vector<geom::Pt> corners_of(const T* boxes, int64_t n) {
  std::vector<geom::Pt> c(4 * n);
  for (int64_t i = 0; i < n; ++i) geom::bev_corners(boxes + 7 * i, c.data() + 4 * i);
  return c;
}

template <typename T>
void box_iou_impl(const T* pa, const T* pb, int64_t n, int64_t m, int mode, double* po) {
  const std::vector<geom::Pt> ca = corners_of(pa, n), cb = corners_of(pb, m);
#pragma omp parallel for schedule(static) if (n * m > (1 << 14))
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      po[i * m + j] = geom::box_iou(pa + 7 * i, pb + 7 * j, ca.data() + 4 * i, cb.data() + 4 * j, mode);
    }
  }
}

}  // namespace

at::Tensor box_iou_rotated_cpu(const at::Tensor& a_in, const at::Tensor& b_in, int64_t mode) {
  const at::Tensor a = a_in.contiguous(), b = b_in.to(a_in.scalar_type()).contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  at::Tensor out = at::zeros({n, m}, a.options().dtype(at::kDouble));
  if (n == 0 || m == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "box_iou_rotated_cpu", [&] {
    box_iou_impl(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), n, m, static_cast<int>(mode), out.data_ptr<double>());
  });
  return out;
}

at::Tensor box_iou_rotated(const at::Tensor& a, const at::Tensor& b, int64_t mode) {
  check_boxes(a, "boxes_a");
  check_boxes(b, "boxes_b");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (bev) or 1 (3d)");
  TORCH_CHECK(a.device() == b.device(), "boxes_a and boxes_b must be on the same device");
  if (a.is_cuda()) {
#ifdef WITH_CUDA
    return box_iou_rotated_cuda(a, b, mode);
#else
    TORCH_CHECK(false, "dense3d._C was built without CUDA");
#endif
  }
  return box_iou_rotated_cpu(a, b, mode);
}

}  // namespace dense3d
