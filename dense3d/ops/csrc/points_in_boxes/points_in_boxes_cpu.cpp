#include "points_in_boxes/points_in_boxes.h"

#include <cmath>

namespace dense3d {

namespace {

// Box-frame test; each product and sum is its own statement and rounds to T (see the header).
template <typename T>
inline bool inside(const T* p, const T* box, T c, T s) {
  const T rx = p[0] - box[0], ry = p[1] - box[1], rz = p[2] - box[2];
  const T a = rx * c, b = ry * s;
  const T lx = a + b;
  const T d = -rx * s, e = ry * c;
  const T ly = d + e;
  return std::abs(lx) <= box[3] / T(2) && std::abs(ly) <= box[4] / T(2) && std::abs(rz) <= box[5] / T(2);
}

template <typename T>
void first_impl(const T* pp, const T* pb, const T* pcs, int64_t p, int64_t n, int64_t* po) {
#pragma omp parallel for schedule(static) if (p * n > (1 << 16))
  for (int64_t i = 0; i < p; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if (inside(pp + 3 * i, pb + 7 * j, pcs[2 * j], pcs[2 * j + 1])) {
        po[i] = j;
        break;
      }
    }
  }
}

template <typename T>
void mask_impl(const T* pp, const T* pb, const T* pcs, int64_t p, int64_t n, bool* po) {
#pragma omp parallel for schedule(static) if (p * n > (1 << 16))
  for (int64_t i = 0; i < p; ++i) {
    for (int64_t j = 0; j < n; ++j) po[i * n + j] = inside(pp + 3 * i, pb + 7 * j, pcs[2 * j], pcs[2 * j + 1]);
  }
}

}  // namespace

at::Tensor points_in_boxes_cpu(const at::Tensor& points_in, const at::Tensor& boxes_in, bool first_only) {
  const at::Tensor points = points_in.contiguous();
  const at::Tensor boxes = boxes_in.to(points.scalar_type()).contiguous();
  const int64_t p = points.size(0), n = boxes.size(0);
  // cos / sin through ATen, exactly as the torch reference computes them
  const at::Tensor yaw = boxes.select(1, 6);
  const at::Tensor cs = at::stack({yaw.cos(), yaw.sin()}, 1).contiguous();  // (N, 2)
  at::Tensor out = first_only ? at::full({p}, -1, points.options().dtype(at::kLong)) : at::zeros({p, n}, points.options().dtype(at::kBool));
  if (p == 0 || n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "points_in_boxes_cpu", [&] {
    if (first_only) {
      first_impl(points.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), p, n, out.data_ptr<int64_t>());
    } else {
      mask_impl(points.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), p, n, out.data_ptr<bool>());
    }
  });
  return out;
}

namespace {

at::Tensor dispatch(const at::Tensor& points, const at::Tensor& boxes, bool first_only) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "points must be (P, 3), got ", points.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 7, "boxes must be (N, 7), got ", boxes.sizes());
  TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble, "points must be float32 or float64");
  TORCH_CHECK(points.device() == boxes.device(), "points and boxes must be on the same device");
  if (points.is_cuda()) {
#ifdef WITH_CUDA
    return points_in_boxes_cuda(points, boxes, first_only);
#else
    TORCH_CHECK(false, "dense3d._C was built without CUDA");
#endif
  }
  return points_in_boxes_cpu(points, boxes, first_only);
}

}  // namespace

at::Tensor points_in_boxes(const at::Tensor& points, const at::Tensor& boxes) { return dispatch(points, boxes, false); }

at::Tensor points_in_boxes_first(const at::Tensor& points, const at::Tensor& boxes) { return dispatch(points, boxes, true); }

}  // namespace dense3d
