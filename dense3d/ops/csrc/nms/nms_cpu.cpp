#include "nms/nms.h"

#include <cstdint>
#include <vector>

#include "box_iou/box_geometry.h"

namespace dense3d {

namespace {

template <typename T>
std::vector<int64_t> nms_impl(const T* pb, const int64_t* pl, int64_t k, double iou_threshold) {
  std::vector<geom::Pt> corners(4 * k);
  for (int64_t i = 0; i < k; ++i) geom::bev_corners(pb + 7 * i, corners.data() + 4 * i);
  // one parallel pass fills the bit mask "i overlaps later j above the threshold" (as the CUDA
  // kernel does); a parallel region per kept box instead would pay a barrier each time
  const int64_t words = (k + 63) / 64;
  std::vector<uint64_t> mask(size_t(k) * words, 0);
#pragma omp parallel for schedule(dynamic, 16) if (k > 512)
  for (int64_t i = 0; i < k; ++i) {
    uint64_t* row = mask.data() + i * words;
    for (int64_t j = i + 1; j < k; ++j) {
      if (pl && pl[j] != pl[i]) continue;
      if (geom::box_iou(pb + 7 * i, pb + 7 * j, corners.data() + 4 * i, corners.data() + 4 * j, 0) > iou_threshold)
        row[j / 64] |= uint64_t(1) << (j % 64);
    }
  }
  std::vector<uint64_t> removed(words, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < k; ++i) {
    if (removed[i / 64] & (uint64_t(1) << (i % 64))) continue;
    keep.push_back(i);
    const uint64_t* row = mask.data() + i * words;
    for (int64_t w = i / 64; w < words; ++w) removed[w] |= row[w];
  }
  return keep;
}

}  // namespace

at::Tensor nms_bev_cpu(const at::Tensor& boxes_in, double iou_threshold, const at::Tensor& labels_in) {
  const at::Tensor boxes = boxes_in.contiguous();
  const int64_t k = boxes.size(0);
  const bool use_labels = labels_in.numel() > 0;
  const at::Tensor labels = use_labels ? labels_in.to(at::kLong).contiguous() : labels_in;
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_bev_cpu", [&] {
    keep = nms_impl(boxes.data_ptr<scalar_t>(), use_labels ? labels.data_ptr<int64_t>() : nullptr, k, iou_threshold);
  });
  return at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(boxes_in.device());
}

at::Tensor nms_bev(const at::Tensor& boxes, double iou_threshold, const at::Tensor& labels) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 7, "boxes must be (K, 7), got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, "boxes must be float32 or float64");
  TORCH_CHECK(labels.numel() == 0 || (labels.dim() == 1 && labels.size(0) == boxes.size(0)), "labels must be empty or (K,)");
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  if (boxes.is_cuda()) {
#ifdef WITH_CUDA
    return nms_bev_cuda(boxes, iou_threshold, labels);
#else
    TORCH_CHECK(false, "dense3d._C was built without CUDA");
#endif
  }
  return nms_bev_cpu(boxes, iou_threshold, labels);
}

}  // namespace dense3d
