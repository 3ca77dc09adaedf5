// CUDA points-in-boxes: one thread per point, boxes (with cos / sin) read through the cache.
// Products and sums use the _rn intrinsics so nvcc cannot fuse them into FMAs: the results then
// equal the CPU kernel and the torch reference bit for bit.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "points_in_boxes/points_in_boxes.h"

namespace dense3d {

namespace {

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ __forceinline__ bool inside(const T* p, const T* box, T c, T s) {
  const T rx = p[0] - box[0], ry = p[1] - box[1], rz = p[2] - box[2];
  const T lx = add_rn(mul_rn(rx, c), mul_rn(ry, s));
  const T ly = add_rn(mul_rn(-rx, s), mul_rn(ry, c));
  return fabs(lx) <= box[3] / T(2) && fabs(ly) <= box[4] / T(2) && fabs(rz) <= box[5] / T(2);
}

template <typename T>
__global__ void points_in_boxes_kernel(const T* __restrict__ pts, const T* __restrict__ boxes, const T* __restrict__ cs, int64_t p,
                                       int64_t n, bool* __restrict__ out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= p) return;
  for (int64_t j = 0; j < n; ++j) out[i * n + j] = inside(pts + 3 * i, boxes + 7 * j, cs[2 * j], cs[2 * j + 1]);
}

template <typename T>
__global__ void points_in_boxes_first_kernel(const T* __restrict__ pts, const T* __restrict__ boxes, const T* __restrict__ cs,
                                             int64_t p, int64_t n, int64_t* __restrict__ out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= p) return;
  int64_t found = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (inside(pts + 3 * i, boxes + 7 * j, cs[2 * j], cs[2 * j + 1])) {
      found = j;
      break;
    }
  }
  out[i] = found;
}

}  // namespace

at::Tensor points_in_boxes_cuda(const at::Tensor& points_in, const at::Tensor& boxes_in, bool first_only) {
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  const at::Tensor boxes = boxes_in.to(points.scalar_type()).contiguous();
  const int64_t p = points.size(0), n = boxes.size(0);
  const at::Tensor yaw = boxes.select(1, 6);
  const at::Tensor cs = at::stack({yaw.cos(), yaw.sin()}, 1).contiguous();  // (N, 2)
  at::Tensor out = first_only ? at::full({p}, -1, points.options().dtype(at::kLong)) : at::zeros({p, n}, points.options().dtype(at::kBool));
  if (p == 0 || n == 0) return out;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((p + threads - 1) / threads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "points_in_boxes_cuda", [&] {
    if (first_only) {
      points_in_boxes_first_kernel<scalar_t><<<blocks, threads, 0, stream>>>(points.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(),
                                                                             cs.data_ptr<scalar_t>(), p, n, out.data_ptr<int64_t>());
    } else {
      points_in_boxes_kernel<scalar_t><<<blocks, threads, 0, stream>>>(points.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(),
                                                                       cs.data_ptr<scalar_t>(), p, n, out.data_ptr<bool>());
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace dense3d
