// Voxelization of point clouds (hard: mmcv semantics; dynamic: mean per voxel).
//
// Voxel (x, y, z) of a point is floor((p - range_min) / voxel_size) in the points' dtype; points
// with an index outside [0, grid) are dropped. Voxels come in first-seen order (voxel 0 holds the
// first in-range point), coords are int32 [z, y, x]. Same results as dense3d/ops/_ref/voxelize.py.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace dense3d {

// -> {voxels (M, max_points, D), coords (M, 3) int32, num_points (M,) int32}
std::vector<at::Tensor> voxelize_hard(const at::Tensor& points, const std::vector<double>& voxel_size,
                                      const std::vector<double>& range_min, const std::vector<int64_t>& grid, int64_t max_points,
                                      int64_t max_voxels);
// -> {features (M, D) means, coords (M, 3) int32, point2voxel (N,) int64 (-1 outside)}
std::vector<at::Tensor> voxelize_dynamic(const at::Tensor& points, const std::vector<double>& voxel_size,
                                         const std::vector<double>& range_min, const std::vector<int64_t>& grid);

std::vector<at::Tensor> voxelize_hard_cpu(const at::Tensor& points, const std::vector<double>& voxel_size,
                                          const std::vector<double>& range_min, const std::vector<int64_t>& grid, int64_t max_points,
                                          int64_t max_voxels);
std::vector<at::Tensor> voxelize_dynamic_cpu(const at::Tensor& points, const std::vector<double>& voxel_size,
                                             const std::vector<double>& range_min, const std::vector<int64_t>& grid);
#ifdef WITH_CUDA
std::vector<at::Tensor> voxelize_hard_cuda(const at::Tensor& points, const std::vector<double>& voxel_size,
                                           const std::vector<double>& range_min, const std::vector<int64_t>& grid, int64_t max_points,
                                           int64_t max_voxels);
std::vector<at::Tensor> voxelize_dynamic_cuda(const at::Tensor& points, const std::vector<double>& voxel_size,
                                              const std::vector<double>& range_min, const std::vector<int64_t>& grid);
#endif

}  // namespace dense3d
