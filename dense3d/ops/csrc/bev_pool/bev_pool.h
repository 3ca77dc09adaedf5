// BEV pooling: sum the features of the points that fall in the same BEV cell (LSS splat).
//
// The host side (dense3d/ops/bev_pool.py) sorts the points by cell and hands the kernels
// contiguous intervals, so the forward sums each interval without atomics (deterministic)
// and the backward is a gather.
//   forward(features (N, C), order (M,) long, starts (K,) long, lengths (K,) long,
//           interval_cells (K,) long, num_cells) -> (num_cells, C)
//     interval k sums features[order[starts[k] : starts[k] + lengths[k]]] into row interval_cells[k].
//   backward(grad_out (num_cells, C), cells (N,) long, -1 = dropped) -> grad_features (N, C)
#pragma once
#include <ATen/ATen.h>

at::Tensor bev_pool_forward_cpu(const at::Tensor& features, const at::Tensor& order, const at::Tensor& starts,
                                const at::Tensor& lengths, const at::Tensor& interval_cells, int64_t num_cells);
at::Tensor bev_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& cells);

#ifdef WITH_CUDA
at::Tensor bev_pool_forward_cuda(const at::Tensor& features, const at::Tensor& order, const at::Tensor& starts,
                                 const at::Tensor& lengths, const at::Tensor& interval_cells, int64_t num_cells);
at::Tensor bev_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& cells);
#endif

inline at::Tensor bev_pool_forward(const at::Tensor& features, const at::Tensor& order, const at::Tensor& starts,
                                   const at::Tensor& lengths, const at::Tensor& interval_cells, int64_t num_cells) {
  TORCH_CHECK(features.dim() == 2, "bev_pool: features must be (N, C)");
  TORCH_CHECK(order.scalar_type() == at::kLong && starts.scalar_type() == at::kLong &&
                  lengths.scalar_type() == at::kLong && interval_cells.scalar_type() == at::kLong,
              "bev_pool: order, starts, lengths, interval_cells must be int64");
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return bev_pool_forward_cuda(features, order, starts, lengths, interval_cells, num_cells);
#else
    TORCH_CHECK(false, "bev_pool: dense3d._C was built without CUDA");
#endif
  }
  return bev_pool_forward_cpu(features, order, starts, lengths, interval_cells, num_cells);
}

inline at::Tensor bev_pool_backward(const at::Tensor& grad_out, const at::Tensor& cells) {
  TORCH_CHECK(grad_out.dim() == 2, "bev_pool: grad_out must be (num_cells, C)");
  TORCH_CHECK(cells.scalar_type() == at::kLong, "bev_pool: cells must be int64");
  if (grad_out.is_cuda()) {
#ifdef WITH_CUDA
    return bev_pool_backward_cuda(grad_out, cells);
#else
    TORCH_CHECK(false, "bev_pool: dense3d._C was built without CUDA");
#endif
  }
  return bev_pool_backward_cpu(grad_out, cells);
}
