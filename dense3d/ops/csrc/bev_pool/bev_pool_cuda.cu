// CUDA kernels of BEV pooling (see bev_pool.h): the forward sorts the points by cell (ATen,
// stable), then one thread per (run of equal cells, channel) sums the run (no atomics); the
// backward gather uses one thread per (point, channel).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "bev_pool/bev_pool.h"

namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void bev_pool_forward_kernel(const scalar_t* __restrict__ features, const int64_t* __restrict__ order,
                                        const int64_t* __restrict__ starts, const int64_t* __restrict__ lengths,
                                        const int64_t* __restrict__ interval_cells, int64_t K, int64_t C,
                                        scalar_t* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= K * C) return;
  const int64_t k = idx / C;
  const int64_t c = idx % C;
  scalar_t acc = 0;
  const int64_t end = starts[k] + lengths[k];
  for (int64_t j = starts[k]; j < end; ++j) acc += features[order[j] * C + c];
  out[interval_cells[k] * C + c] = acc;
}

__global__ void bev_pool_cells_kernel(const int64_t* __restrict__ coords, int64_t N, int64_t B, int64_t H, int64_t W,
                                      int64_t* __restrict__ cells) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t b = coords[3 * n], y = coords[3 * n + 1], x = coords[3 * n + 2];
  cells[n] = (b < 0 || b >= B || y < 0 || y >= H || x < 0 || x >= W) ? -1 : (b * H + y) * W + x;
}

at::Tensor bev_pool_cells_cuda(const at::Tensor& coords, int64_t B, int64_t H, int64_t W) {
  const int64_t N = coords.size(0);
  auto cells = at::empty({N}, coords.options());
  if (N == 0) return cells;
  const int blocks = static_cast<int>((N + kThreads - 1) / kThreads);
  bev_pool_cells_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(coords.data_ptr<int64_t>(), N, B, H, W,
                                                                                   cells.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return cells;
}

template <typename scalar_t>
__global__ void bev_pool_backward_kernel(const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ cells,
                                         int64_t N, int64_t C, scalar_t* __restrict__ grad) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * C) return;
  const int64_t n = idx / C;
  const int64_t c = idx % C;
  const int64_t cell = cells[n];
  grad[idx] = cell < 0 ? scalar_t(0) : grad_out[cell * C + c];
}

}  // namespace

at::Tensor bev_pool_forward_cuda(const at::Tensor& features_, const at::Tensor& coords, int64_t B, int64_t H, int64_t W) {
  at::cuda::CUDAGuard guard(features_.device());
  const auto features = features_.contiguous();
  const int64_t num_cells = B * H * W;
  const auto cells = bev_pool_cells_cuda(coords.contiguous(), B, H, W);
  const auto keep = at::nonzero(cells >= 0).squeeze(1);
  const auto sorted = at::sort(cells.index_select(0, keep), /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto order = keep.index_select(0, std::get<1>(sorted)).contiguous();  // point indices grouped by cell
  const auto runs = at::unique_consecutive(std::get<0>(sorted), /*return_inverse=*/false, /*return_counts=*/true);
  const auto interval_cells = std::get<0>(runs).contiguous();
  const auto lengths = std::get<2>(runs).contiguous();
  const auto starts = (at::cumsum(lengths, 0) - lengths).contiguous();
  const int64_t C = features.size(1);
  const int64_t K = starts.size(0);
  auto out = at::zeros({num_cells, C}, features.options());
  if (K == 0 || C == 0) return out;
  const int64_t total = K * C;
  const int blocks = static_cast<int>((total + kThreads - 1) / kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "bev_pool_forward_cuda", [&] {
    bev_pool_forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        features.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
        lengths.data_ptr<int64_t>(), interval_cells.data_ptr<int64_t>(), K, C, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor bev_pool_backward_cuda(const at::Tensor& grad_out_, const at::Tensor& coords, int64_t B, int64_t H, int64_t W) {
  at::cuda::CUDAGuard guard(grad_out_.device());
  const auto grad_out = grad_out_.contiguous();
  const auto cells = bev_pool_cells_cuda(coords.contiguous(), B, H, W);
  const int64_t N = cells.size(0);
  const int64_t C = grad_out.size(1);
  auto grad = at::empty({N, C}, grad_out.options());
  if (N == 0 || C == 0) return grad;
  const int64_t total = N * C;
  const int blocks = static_cast<int>((total + kThreads - 1) / kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "bev_pool_backward_cuda", [&] {
    bev_pool_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), cells.data_ptr<int64_t>(), N, C, grad.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}
