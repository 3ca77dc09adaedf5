// BEV pooling: sum the features of the points that fall in the same BEV cell (LSS splat).
//
//   forward(features (N, C), coords (N, 3) long [b, y, x], B, H, W) -> (B * H * W, C), row
//     (b * H + y) * W + x; points outside [0, B) x [0, H) x [0, W) are dropped
//   backward(grad_out (B * H * W, C), coords, B, H, W) -> grad_features (N, C) (a gather)
//
// Both kernels are deterministic (each cell sums its points in input order, no atomics):
// the CPU forward gives each thread a range of cells and lets it scan all points (cheap
// integer reads; no sort needed), the CUDA forward sorts the points by cell with ATen and
// sums each run of equal cells in one thread per (run, channel).
#pragma once
#include <ATen/ATen.h>

// Flat cell of point (b, y, x), or -1 outside the grid.
inline int64_t bev_pool_cell(const int64_t* c, int64_t B, int64_t H, int64_t W) {
  const int64_t b = c[0], y = c[1], x = c[2];
  return (b < 0 || b >= B || y < 0 || y >= H || x < 0 || x >= W) ? -1 : (b * H + y) * W + x;
}

at::Tensor bev_pool_forward_cpu(const at::Tensor& features, const at::Tensor& coords, int64_t B, int64_t H, int64_t W);
at::Tensor bev_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& coords, int64_t B, int64_t H, int64_t W);

#ifdef WITH_CUDA
at::Tensor bev_pool_forward_cuda(const at::Tensor& features, const at::Tensor& coords, int64_t B, int64_t H, int64_t W);
at::Tensor bev_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& coords, int64_t B, int64_t H, int64_t W);
#endif

inline at::Tensor bev_pool_forward(const at::Tensor& features, const at::Tensor& coords, int64_t B, int64_t H, int64_t W) {
  TORCH_CHECK(features.dim() == 2, "bev_pool: features must be (N, C)");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3 && coords.size(0) == features.size(0), "bev_pool: coords must be (N, 3)");
  TORCH_CHECK(coords.scalar_type() == at::kLong, "bev_pool: coords must be int64");
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return bev_pool_forward_cuda(features, coords, B, H, W);
#else
    TORCH_CHECK(false, "bev_pool: dense3d._C was built without CUDA");
#endif
  }
  return bev_pool_forward_cpu(features, coords, B, H, W);
}

inline at::Tensor bev_pool_backward(const at::Tensor& grad_out, const at::Tensor& coords, int64_t B, int64_t H, int64_t W) {
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == B * H * W, "bev_pool: grad_out must be (B * H * W, C)");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3 && coords.scalar_type() == at::kLong, "bev_pool: coords must be (N, 3) int64");
  if (grad_out.is_cuda()) {
#ifdef WITH_CUDA
    return bev_pool_backward_cuda(grad_out, coords, B, H, W);
#else
    TORCH_CHECK(false, "bev_pool: dense3d._C was built without CUDA");
#endif
  }
  return bev_pool_backward_cpu(grad_out, coords, B, H, W);
}
