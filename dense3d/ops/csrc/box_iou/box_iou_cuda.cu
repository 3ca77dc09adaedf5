// CUDA rotated box IoU: one thread per (i, j) pair, corners recomputed per thread (cheap).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "box_iou/box_geometry.h"
#include "box_iou/box_iou.h"

namespace dense3d {

namespace {

template <typename T>
__global__ void box_iou_rotated_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t n, int64_t m, int mode,
                                       double* __restrict__ out) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t i = blockIdx.y;
  if (j >= m || i >= n) return;
  geom::Pt ca[4], cb[4];
  geom::bev_corners(a + 7 * i, ca);
  geom::bev_corners(b + 7 * j, cb);
  out[i * m + j] = geom::box_iou(a + 7 * i, b + 7 * j, ca, cb, mode);
}

}  // namespace

at::Tensor box_iou_rotated_cuda(const at::Tensor& a_in, const at::Tensor& b_in, int64_t mode) {
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.to(a_in.scalar_type()).contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  at::Tensor out = at::zeros({n, m}, a.options().dtype(at::kDouble));
  if (n == 0 || m == 0) return out;
  const int threads = 256;
  auto stream = at::cuda::getCurrentCUDAStream();
  // rows beyond the grid's y limit are launched in slices
  const int64_t rows_per_launch = 65535;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "box_iou_rotated_cuda", [&] {
    for (int64_t r0 = 0; r0 < n; r0 += rows_per_launch) {
      const int64_t rows = std::min(rows_per_launch, n - r0);
      const dim3 grid(static_cast<unsigned>((m + threads - 1) / threads), static_cast<unsigned>(rows));
      box_iou_rotated_kernel<scalar_t><<<grid, threads, 0, stream>>>(a.data_ptr<scalar_t>() + 7 * r0, b.data_ptr<scalar_t>(), rows, m,
                                                                    static_cast<int>(mode), out.data_ptr<double>() + r0 * m);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace dense3d
