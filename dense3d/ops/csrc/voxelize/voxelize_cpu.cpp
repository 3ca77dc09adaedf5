#include "voxelize/voxelize.h"

#include <cmath>
#include <cstring>

namespace dense3d {

namespace {

// Linear voxel index ((z * ny + y) * nx + x) of every point, -1 outside the grid; parallel.
template <typename T>
std::vector<int64_t> linear_indices(const T* pts, int64_t n, int64_t d, const std::vector<double>& vs, const std::vector<double>& lo,
                                    const std::vector<int64_t>& grid) {
  std::vector<int64_t> lin(n);
  const T vx = T(vs[0]), vy = T(vs[1]), vz = T(vs[2]);
  const T lx = T(lo[0]), ly = T(lo[1]), lz = T(lo[2]);
  const T gx = T(grid[0]), gy = T(grid[1]), gz = T(grid[2]);
#pragma omp parallel for schedule(static) if (n > (1 << 18))  // below this a parallel region costs more than it saves
  for (int64_t i = 0; i < n; ++i) {
    const T* p = pts + i * d;
    const T cx = std::floor((p[0] - lx) / vx), cy = std::floor((p[1] - ly) / vy), cz = std::floor((p[2] - lz) / vz);
    if (cx >= 0 && cx < gx && cy >= 0 && cy < gy && cz >= 0 && cz < gz) {
      lin[i] = (int64_t(cz) * grid[1] + int64_t(cy)) * grid[0] + int64_t(cx);
    } else {
      lin[i] = -1;
    }
  }
  return lin;
}

// Open-addressing hash map from linear voxel index to voxel id (first-seen numbering).
class VoxelTable {
 public:
  explicit VoxelTable(int64_t expected) {
    size_t cap = 16;
    while (cap < size_t(2 * expected + 1)) cap <<= 1;
    keys_.assign(cap, -1);
    vals_.assign(cap, -1);
    mask_ = cap - 1;
  }
  // id of `key`, or -1 when absent; `slot` receives where it is / would go
  int64_t find(int64_t key, size_t* slot) const {
    size_t h = size_t(uint64_t(key) * 0x9E3779B97F4A7C15ULL) & mask_;
    while (keys_[h] != -1 && keys_[h] != key) h = (h + 1) & mask_;
    *slot = h;
    return keys_[h] == key ? vals_[h] : -1;
  }
  void insert_at(size_t slot, int64_t key, int64_t val) {
    keys_[slot] = key;
    vals_[slot] = val;
  }

 private:
  std::vector<int64_t> keys_, vals_;
  size_t mask_;
};

template <typename T>
void scatter_points(const T* pp, int64_t n, int64_t d, const std::vector<int64_t>& vid, const std::vector<int64_t>& slot, int64_t max_points,
                    T* pv) {
#pragma omp parallel for schedule(static) if (n > (1 << 18))  // below this a parallel region costs more than it saves
  for (int64_t i = 0; i < n; ++i) {
    if (vid[i] >= 0) std::memcpy(pv + (vid[i] * max_points + slot[i]) * d, pp + i * d, sizeof(T) * d);
  }
}

at::Tensor coords_tensor(const std::vector<int64_t>& voxel_lin, const std::vector<int64_t>& grid) {
  const int64_t m = int64_t(voxel_lin.size());
  at::Tensor coords = at::empty({m, 3}, at::TensorOptions().dtype(at::kInt));
  int32_t* pc = coords.data_ptr<int32_t>();
  for (int64_t v = 0; v < m; ++v) {
    const int64_t l = voxel_lin[v];
    pc[3 * v + 2] = int32_t(l % grid[0]);
    pc[3 * v + 1] = int32_t((l / grid[0]) % grid[1]);
    pc[3 * v + 0] = int32_t(l / (grid[0] * grid[1]));
  }
  return coords;
}

}  // namespace

std::vector<at::Tensor> voxelize_hard_cpu(const at::Tensor& points_in, const std::vector<double>& vs, const std::vector<double>& lo,
                                          const std::vector<int64_t>& grid, int64_t max_points, int64_t max_voxels) {
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0), d = points.size(1);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_hard_cpu", [&] {
    const scalar_t* pp = points.data_ptr<scalar_t>();
    const std::vector<int64_t> lin = linear_indices(pp, n, d, vs, lo, grid);
    // sequential pass: voxel id and slot of each point (first-seen order, mmcv's truncation)
    VoxelTable table(std::min(n, max_voxels));
    std::vector<int64_t> voxel_lin, vid(n, -1), slot(n, -1);
    std::vector<int32_t> count;
    for (int64_t i = 0; i < n; ++i) {
      if (lin[i] < 0) continue;
      size_t h;
      int64_t v = table.find(lin[i], &h);
      if (v < 0) {
        if (int64_t(voxel_lin.size()) >= max_voxels) continue;
        v = int64_t(voxel_lin.size());
        table.insert_at(h, lin[i], v);
        voxel_lin.push_back(lin[i]);
        count.push_back(0);
      }
      if (count[v] < max_points) {
        vid[i] = v;
        slot[i] = count[v]++;
      }
    }
    const int64_t m = int64_t(voxel_lin.size());
    at::Tensor voxels = at::zeros({m, max_points, d}, points.options());
    scatter_points(pp, n, d, vid, slot, max_points, voxels.data_ptr<scalar_t>());
    at::Tensor num = at::empty({m}, at::TensorOptions().dtype(at::kInt));
    if (m) std::memcpy(num.data_ptr<int32_t>(), count.data(), sizeof(int32_t) * m);
    out = {voxels, coords_tensor(voxel_lin, grid), num};
  });
  return out;
}

std::vector<at::Tensor> voxelize_dynamic_cpu(const at::Tensor& points_in, const std::vector<double>& vs, const std::vector<double>& lo,
                                             const std::vector<int64_t>& grid) {
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0), d = points.size(1);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_dynamic_cpu", [&] {
    const scalar_t* pp = points.data_ptr<scalar_t>();
    const std::vector<int64_t> lin = linear_indices(pp, n, d, vs, lo, grid);
    VoxelTable table(n);
    std::vector<int64_t> voxel_lin;
    at::Tensor p2v = at::full({n}, -1, at::TensorOptions().dtype(at::kLong));
    int64_t* pv = p2v.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (lin[i] < 0) continue;
      size_t h;
      int64_t v = table.find(lin[i], &h);
      if (v < 0) {
        v = int64_t(voxel_lin.size());
        table.insert_at(h, lin[i], v);
        voxel_lin.push_back(lin[i]);
      }
      pv[i] = v;
    }
    const int64_t m = int64_t(voxel_lin.size());
    // sums in input order (as index_add_ in the reference), then the means
    at::Tensor feats = at::zeros({m, d}, points.options());
    std::vector<int64_t> count(m, 0);
    scalar_t* pf = feats.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (pv[i] < 0) continue;
      scalar_t* f = pf + pv[i] * d;
      for (int64_t c = 0; c < d; ++c) f[c] += pp[i * d + c];
      ++count[pv[i]];
    }
    for (int64_t v = 0; v < m; ++v) {
      for (int64_t c = 0; c < d; ++c) pf[v * d + c] /= scalar_t(count[v]);
    }
    out = {feats, coords_tensor(voxel_lin, grid), p2v};
  });
  return out;
}

namespace {

void check_args(const at::Tensor& points, const std::vector<double>& vs, const std::vector<double>& lo, const std::vector<int64_t>& grid) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) >= 3, "points must be (N, 3+C), got ", points.sizes());
  TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble, "points must be float32 or float64");
  TORCH_CHECK(vs.size() == 3 && lo.size() == 3 && grid.size() == 3, "voxel_size, range_min and grid need 3 values each");
  for (int k = 0; k < 3; ++k) TORCH_CHECK(vs[k] > 0 && grid[k] > 0, "voxel_size and grid must be > 0");
}

}  // namespace

std::vector<at::Tensor> voxelize_hard(const at::Tensor& points, const std::vector<double>& vs, const std::vector<double>& lo,
                                      const std::vector<int64_t>& grid, int64_t max_points, int64_t max_voxels) {
  check_args(points, vs, lo, grid);
  TORCH_CHECK(max_points > 0 && max_voxels > 0, "max_points and max_voxels must be > 0");
  if (points.is_cuda()) {
#ifdef WITH_CUDA
    return voxelize_hard_cuda(points, vs, lo, grid, max_points, max_voxels);
#else
    TORCH_CHECK(false, "dense3d._C was built without CUDA");
#endif
  }
  return voxelize_hard_cpu(points, vs, lo, grid, max_points, max_voxels);
}

std::vector<at::Tensor> voxelize_dynamic(const at::Tensor& points, const std::vector<double>& vs, const std::vector<double>& lo,
                                         const std::vector<int64_t>& grid) {
  check_args(points, vs, lo, grid);
  if (points.is_cuda()) {
#ifdef WITH_CUDA
    return voxelize_dynamic_cuda(points, vs, lo, grid);
#else
    TORCH_CHECK(false, "dense3d._C was built without CUDA");
#endif
  }
  return voxelize_dynamic_cpu(points, vs, lo, grid);
}

}  // namespace dense3d
