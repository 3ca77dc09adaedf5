// CPU kernels of BEV pooling (see bev_pool.h). Forward: each thread owns a contiguous range of
// cells and scans all points, summing those that fall in its range (no locks, no sort,
// deterministic). Backward: a gather, parallel over points.
#include "bev_pool/bev_pool.h"

#include <ATen/Parallel.h>

at::Tensor bev_pool_forward_cpu(const at::Tensor& features_, const at::Tensor& coords_, int64_t B, int64_t H, int64_t W) {
  const auto features = features_.contiguous();
  const auto coords = coords_.contiguous();
  const int64_t num_cells = B * H * W;
  const int64_t N = features.size(0);
  const int64_t C = features.size(1);
  auto out = at::zeros({num_cells, C}, features.options());
  if (N == 0 || C == 0 || num_cells == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "bev_pool_forward_cpu", [&] {
    const scalar_t* f = features.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t* xyz = coords.data_ptr<int64_t>();
    const int64_t threads = at::get_num_threads();
    const int64_t grain = std::max<int64_t>(1, (num_cells + threads - 1) / threads);
    at::parallel_for(0, num_cells, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = bev_pool_cell(xyz + 3 * n, B, H, W);
        if (k < c0 || k >= c1) continue;  // dropped (-1) or another thread's cell
        scalar_t* row = o + k * C;
        const scalar_t* src = f + n * C;
        for (int64_t c = 0; c < C; ++c) row[c] += src[c];
      }
    });
  });
  return out;
}

at::Tensor bev_pool_backward_cpu(const at::Tensor& grad_out_, const at::Tensor& coords_, int64_t B, int64_t H, int64_t W) {
  const auto grad_out = grad_out_.contiguous();
  const auto coords = coords_.contiguous();
  const int64_t N = coords.size(0);
  const int64_t C = grad_out.size(1);
  auto grad = at::zeros({N, C}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "bev_pool_backward_cpu", [&] {
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const int64_t* xyz = coords.data_ptr<int64_t>();
    at::parallel_for(0, N, 1024, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t k = bev_pool_cell(xyz + 3 * n, B, H, W);
        if (k < 0) continue;
        const scalar_t* src = g + k * C;
        scalar_t* dst = out + n * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
      }
    });
  });
  return grad;
}
