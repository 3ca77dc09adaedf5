// CPU kernels of BEV pooling (see bev_pool.h). Parallel over intervals (forward) and points
// (backward); each output row is written by one interval only, so no locks are needed.
#include "bev_pool/bev_pool.h"

#include <ATen/Parallel.h>

at::Tensor bev_pool_forward_cpu(const at::Tensor& features_, const at::Tensor& order_, const at::Tensor& starts_,
                                const at::Tensor& lengths_, const at::Tensor& interval_cells_, int64_t num_cells) {
  const auto features = features_.contiguous();
  const auto order = order_.contiguous();
  const auto starts = starts_.contiguous();
  const auto lengths = lengths_.contiguous();
  const auto interval_cells = interval_cells_.contiguous();
  const int64_t C = features.size(1);
  const int64_t K = starts.size(0);
  auto out = at::zeros({num_cells, C}, features.options());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "bev_pool_forward_cpu", [&] {
    const scalar_t* f = features.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t* ord = order.data_ptr<int64_t>();
    const int64_t* st = starts.data_ptr<int64_t>();
    const int64_t* len = lengths.data_ptr<int64_t>();
    const int64_t* cell = interval_cells.data_ptr<int64_t>();
    at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* row = o + cell[k] * C;
        for (int64_t j = st[k]; j < st[k] + len[k]; ++j) {
          const scalar_t* src = f + ord[j] * C;
          for (int64_t c = 0; c < C; ++c) row[c] += src[c];
        }
      }
    });
  });
  return out;
}

at::Tensor bev_pool_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& cells_) {
  const auto grad_out = grad_out_.contiguous();
  const auto cells = cells_.contiguous();
  const int64_t N = cells.size(0);
  const int64_t C = grad_out.size(1);
  auto grad = at::zeros({N, C}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "bev_pool_backward_cpu", [&] {
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const int64_t* cell = cells.data_ptr<int64_t>();
    at::parallel_for(0, N, 1024, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        if (cell[n] < 0) continue;
        const scalar_t* src = g + cell[n] * C;
        scalar_t* dst = out + n * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
      }
    });
  });
  return grad;
}
