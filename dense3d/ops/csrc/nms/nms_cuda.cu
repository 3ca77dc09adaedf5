// CUDA rotated NMS: a kernel fills the (K, ceil(K/64)) bit mask of "box i overlaps later box j
// above the threshold" in 64 x 64 tiles; the greedy pass over the mask runs on the host (it is
// sequential by nature and reads K * K / 64 words), so the result is deterministic.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "box_iou/box_geometry.h"
#include "nms/nms.h"

namespace dense3d {

namespace {

constexpr int kTile = 64;

template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ labels, int64_t k, double thr,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (row_tile > col_tile) return;  // only j > i matters
  const int64_t row_n = min(k - row_tile * kTile, int64_t(kTile));
  const int64_t col_n = min(k - col_tile * kTile, int64_t(kTile));
  __shared__ T col_boxes[kTile * 7];
  __shared__ geom::Pt col_corners[kTile * 4];
  const int t = threadIdx.x;
  if (t < col_n) {
    const T* src = boxes + 7 * (col_tile * kTile + t);
    for (int c = 0; c < 7; ++c) col_boxes[7 * t + c] = src[c];
    geom::bev_corners(src, col_corners + 4 * t);
  }
  __syncthreads();
  if (t >= row_n) return;
  const int64_t i = row_tile * kTile + t;
  const T* bi = boxes + 7 * i;
  geom::Pt ci[4];
  geom::bev_corners(bi, ci);
  unsigned long long bits = 0;
  const int start = (row_tile == col_tile) ? t + 1 : 0;
  for (int c = start; c < col_n; ++c) {
    const int64_t j = col_tile * kTile + c;
    if (labels != nullptr && labels[i] != labels[j]) continue;
    if (geom::box_iou(bi, col_boxes + 7 * c, ci, col_corners + 4 * c, 0) > thr) bits |= 1ULL << c;
  }
  const int64_t tiles = (k + kTile - 1) / kTile;
  mask[i * tiles + col_tile] = bits;
}

}  // namespace

at::Tensor nms_bev_cuda(const at::Tensor& boxes_in, double iou_threshold, const at::Tensor& labels_in) {
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous();
  const int64_t k = boxes.size(0);
  const bool use_labels = labels_in.numel() > 0;
  const at::Tensor labels = use_labels ? labels_in.to(boxes.device(), at::kLong).contiguous() : labels_in;
  const int64_t tiles = (k + kTile - 1) / kTile;
  at::Tensor mask = at::zeros({k, tiles}, boxes.options().dtype(at::kLong));
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_bev_cuda", [&] {
    nms_mask_kernel<scalar_t><<<grid, kTile, 0, stream>>>(boxes.data_ptr<scalar_t>(), use_labels ? labels.data_ptr<int64_t>() : nullptr, k,
                                                          iou_threshold, reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor mask_cpu = mask.cpu();
  const auto* m = reinterpret_cast<const unsigned long long*>(mask_cpu.data_ptr<int64_t>());
  std::vector<unsigned long long> removed(tiles, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < k; ++i) {
    if (removed[i / kTile] & (1ULL << (i % kTile))) continue;
    keep.push_back(i);
    const unsigned long long* row = m + i * tiles;
    for (int64_t w = i / kTile; w < tiles; ++w) removed[w] |= row[w];
  }
  return at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(boxes_in.device());
}

}  // namespace dense3d
