// CUDA voxelization, deterministic: a kernel computes each point's linear voxel index; a stable
// sort groups the points by voxel with input order kept inside each group; the groups are then
// numbered in first-seen order (by their lowest point index) and kernels scatter the points
// (hard) or average each group in input order (dynamic). Same results as the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "voxelize/voxelize.h"

namespace dense3d {

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

struct Grid {
  double vs[3], lo[3];
  int64_t n[3];
};

template <typename T>
__global__ void linear_index_kernel(const T* __restrict__ pts, int64_t n, int64_t d, Grid g, int64_t* __restrict__ lin) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const T* p = pts + i * d;
  // (p - lo) / vs in T, correctly rounded (nvcc does not contract a sub and a div)
  const T cx = floor((p[0] - T(g.lo[0])) / T(g.vs[0]));
  const T cy = floor((p[1] - T(g.lo[1])) / T(g.vs[1]));
  const T cz = floor((p[2] - T(g.lo[2])) / T(g.vs[2]));
  const bool ok = cx >= 0 && cx < T(g.n[0]) && cy >= 0 && cy < T(g.n[1]) && cz >= 0 && cz < T(g.n[2]);
  lin[i] = ok ? (int64_t(cz) * g.n[1] + int64_t(cy)) * g.n[0] + int64_t(cx) : -1;
}

__global__ void decode_coords_kernel(const int64_t* __restrict__ lin, int64_t m, int64_t nx, int64_t ny, int32_t* __restrict__ coords) {
  const int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (v >= m) return;
  const int64_t l = lin[v];
  coords[3 * v + 2] = int32_t(l % nx);
  coords[3 * v + 1] = int32_t((l / nx) % ny);
  coords[3 * v + 0] = int32_t(l / (nx * ny));
}

// hard: point at sorted position k goes to voxels[vid[k], pos[k]] unless truncated
template <typename T>
__global__ void scatter_hard_kernel(const T* __restrict__ pts, int64_t d, const int64_t* __restrict__ point_of, const int64_t* __restrict__ vid,
                                    const int64_t* __restrict__ pos, int64_t v_total, int64_t max_points, int64_t max_voxels,
                                    T* __restrict__ voxels) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= v_total || vid[k] >= max_voxels || pos[k] >= max_points) return;
  const T* src = pts + point_of[k] * d;
  T* dst = voxels + (vid[k] * max_points + pos[k]) * d;
  for (int64_t c = 0; c < d; ++c) dst[c] = src[c];
}

// dynamic: mean of each voxel's points, summed in input order (one thread per voxel and channel)
template <typename T>
__global__ void mean_kernel(const T* __restrict__ pts, int64_t d, const int64_t* __restrict__ point_of, const int64_t* __restrict__ start,
                            const int64_t* __restrict__ count, int64_t m, T* __restrict__ feats) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= m * d) return;
  const int64_t v = t / d, c = t % d;
  T s = 0;
  for (int64_t k = start[v]; k < start[v] + count[v]; ++k) s += pts[point_of[k] * d + c];
  feats[t] = s / T(count[v]);
}

// Grouping shared by both modes. All outputs indexed by sorted position k (V in-range points)
// or by voxel rank v (U voxels, first-seen order).
struct Groups {
  at::Tensor point_of;  // (V,) point index at sorted position k
  at::Tensor vid;       // (V,) voxel rank of sorted position k
  at::Tensor pos;       // (V,) position of the point inside its voxel (input order)
  at::Tensor start;     // (U,) first sorted position of voxel v
  at::Tensor count;     // (U,) points in voxel v
  at::Tensor lin;       // (U,) linear index of voxel v
};

Groups group_points(const at::Tensor& points, const std::vector<double>& vs, const std::vector<double>& lo, const std::vector<int64_t>& grid) {
  const int64_t n = points.size(0), d = points.size(1);
  const auto lopt = points.options().dtype(at::kLong);
  at::Tensor lin = at::empty({n}, lopt);
  Grid g;
  for (int k = 0; k < 3; ++k) {
    g.vs[k] = vs[k];
    g.lo[k] = lo[k];
    g.n[k] = grid[k];
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_linear_index", [&] {
      linear_index_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(points.data_ptr<scalar_t>(), n, d, g, lin.data_ptr<int64_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor idx = at::nonzero(lin >= 0).select(1, 0);  // (V,) ascending point indices
  const at::Tensor lin_v = lin.index_select(0, idx);
  const int64_t v_total = idx.size(0);
  Groups out;
  if (v_total == 0) {
    const at::Tensor e = at::empty({0}, lopt);
    out = {e, e, e, e, e, e};
    return out;
  }
  auto sorted = at::sort(lin_v, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor sorted_lin = std::get<0>(sorted), perm = std::get<1>(sorted);
  out.point_of = idx.index_select(0, perm);
  at::Tensor head = at::ones({v_total}, points.options().dtype(at::kBool));
  if (v_total > 1) head.slice(0, 1).copy_(sorted_lin.slice(0, 1) != sorted_lin.slice(0, 0, v_total - 1));
  const at::Tensor seg = at::cumsum(head, 0) - 1;              // (V,) segment of each sorted position
  const at::Tensor seg_start = at::nonzero(head).select(1, 0);  // (U,) in linear-index order
  const int64_t u = seg_start.size(0);
  const at::Tensor seg_count = at::diff(seg_start, 1, 0, c10::nullopt, at::full({1}, v_total, lopt));
  const at::Tensor first = out.point_of.index_select(0, seg_start);  // lowest point index of each segment
  const at::Tensor order = at::argsort(first);                        // segments in first-seen order
  at::Tensor rank = at::empty({u}, lopt);
  rank.index_put_({order}, at::arange(u, lopt));
  out.vid = rank.index_select(0, seg);
  out.pos = at::arange(v_total, lopt) - seg_start.index_select(0, seg);
  out.start = seg_start.index_select(0, order);
  out.count = seg_count.index_select(0, order);
  out.lin = sorted_lin.index_select(0, out.start);
  return out;
}

at::Tensor decode_coords(const at::Tensor& lin, const std::vector<int64_t>& grid) {
  const int64_t m = lin.size(0);
  at::Tensor coords = at::empty({m, 3}, lin.options().dtype(at::kInt));
  if (m > 0) {
    decode_coords_kernel<<<blocks_for(m), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(lin.data_ptr<int64_t>(), m, grid[0], grid[1],
                                                                                         coords.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return coords;
}

}  // namespace

std::vector<at::Tensor> voxelize_hard_cuda(const at::Tensor& points_in, const std::vector<double>& vs, const std::vector<double>& lo,
                                           const std::vector<int64_t>& grid, int64_t max_points, int64_t max_voxels) {
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  const int64_t d = points.size(1);
  const Groups gr = group_points(points, vs, lo, grid);
  const int64_t v_total = gr.point_of.size(0);
  const int64_t m = std::min(gr.start.size(0), max_voxels);
  at::Tensor voxels = at::zeros({m, max_points, d}, points.options());
  if (v_total > 0) {
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_hard_cuda", [&] {
      scatter_hard_kernel<scalar_t><<<blocks_for(v_total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          points.data_ptr<scalar_t>(), d, gr.point_of.data_ptr<int64_t>(), gr.vid.data_ptr<int64_t>(), gr.pos.data_ptr<int64_t>(), v_total,
          max_points, max_voxels, voxels.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor lin = gr.lin.slice(0, 0, m);
  const at::Tensor num = gr.count.slice(0, 0, m).clamp_max(max_points).to(at::kInt);
  return {voxels, decode_coords(lin, grid), num};
}

std::vector<at::Tensor> voxelize_dynamic_cuda(const at::Tensor& points_in, const std::vector<double>& vs, const std::vector<double>& lo,
                                              const std::vector<int64_t>& grid) {
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0), d = points.size(1);
  const Groups gr = group_points(points, vs, lo, grid);
  const int64_t m = gr.start.size(0);
  at::Tensor feats = at::zeros({m, d}, points.options());
  at::Tensor p2v = at::full({n}, -1, points.options().dtype(at::kLong));
  if (m > 0) {
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_dynamic_cuda", [&] {
      mean_kernel<scalar_t><<<blocks_for(m * d), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          points.data_ptr<scalar_t>(), d, gr.point_of.data_ptr<int64_t>(), gr.start.data_ptr<int64_t>(), gr.count.data_ptr<int64_t>(), m,
          feats.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    p2v.index_put_({gr.point_of}, gr.vid);
  }
  return {feats, decode_coords(gr.lin, grid), p2v};
}

}  // namespace dense3d
