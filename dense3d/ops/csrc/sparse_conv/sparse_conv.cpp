// Device-independent half of sparse convolution: argument checks, dispatch by device, and the
// per-offset gather -> GEMM (ATen: MKL/OpenBLAS on the CPU, cuBLAS on CUDA) -> scatter-add loop.
#include "sparse_conv/sparse_conv.h"

#include <algorithm>

namespace dense3d {
namespace {

ConvGeometry make_geometry(const std::vector<int64_t>& in_shape, const std::vector<int64_t>& out_shape,
                           const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                           const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  for (const auto* v : {&in_shape, &out_shape, &kernel, &stride, &padding, &dilation}) {
    TORCH_CHECK(v->size() == 3, "sparse_conv: shapes and conv parameters must have 3 entries (z, y, x)");
  }
  ConvGeometry g;
  for (int a = 0; a < 3; ++a) {
    g.in_shape[a] = in_shape[a];
    g.out_shape[a] = out_shape[a];
    g.kernel[a] = kernel[a];
    g.stride[a] = stride[a];
    g.padding[a] = padding[a];
    g.dilation[a] = dilation[a];
    TORCH_CHECK(kernel[a] >= 1 && stride[a] >= 1 && dilation[a] >= 1 && padding[a] >= 0,
                "sparse_conv: kernel, stride, dilation must be >= 1 and padding >= 0");
    TORCH_CHECK(kernel[a] <= 64, "sparse_conv: kernel sizes above 64 are not supported");
  }
  return g;
}

std::vector<int64_t> offsets_vector(const at::Tensor& offsets) {
  TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.dim() == 1,
              "sparse_conv: offsets must be a 1-D int64 CPU tensor");
  auto o = offsets.contiguous();
  return std::vector<int64_t>(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel());
}

void gather_rows(const at::Tensor& src, const at::Tensor& idx, int64_t begin, int64_t n, at::Tensor dst) {
#ifdef WITH_CUDA
  if (src.is_cuda()) return gather_rows_cuda(src, idx, begin, n, dst);
#endif
  TORCH_CHECK(src.device().is_cpu(), "sparse_conv: CUDA tensors need dense3d._C built with CUDA");
  gather_rows_cpu(src, idx, begin, n, dst);
}

void scatter_add_rows(const at::Tensor& src, const at::Tensor& idx, int64_t begin, int64_t n, at::Tensor dst) {
#ifdef WITH_CUDA
  if (src.is_cuda()) return scatter_add_rows_cuda(src, idx, begin, n, dst);
#endif
  TORCH_CHECK(src.device().is_cpu(), "sparse_conv: CUDA tensors need dense3d._C built with CUDA");
  scatter_add_rows_cpu(src, idx, begin, n, dst);
}

void check_pairs(const at::Tensor& features, const at::Tensor& in_idx, const at::Tensor& out_idx) {
  TORCH_CHECK(in_idx.scalar_type() == at::kInt && out_idx.scalar_type() == at::kInt,
              "sparse_conv: pair lists must be int32");
  TORCH_CHECK(in_idx.device() == features.device() && out_idx.device() == features.device(),
              "sparse_conv: pair lists must be on the features' device");
  TORCH_CHECK(in_idx.is_contiguous() && out_idx.is_contiguous(), "sparse_conv: pair lists must be contiguous");
}

}  // namespace

std::vector<at::Tensor> sparse_conv_kernel_map(const at::Tensor& indices, std::vector<int64_t> in_shape,
                                               std::vector<int64_t> out_shape, std::vector<int64_t> kernel,
                                               std::vector<int64_t> stride, std::vector<int64_t> padding,
                                               std::vector<int64_t> dilation, bool subm) {
  TORCH_CHECK(indices.dim() == 2 && indices.size(1) == 4 && indices.scalar_type() == at::kInt,
              "sparse_conv_kernel_map: indices must be (N, 4) int32");
  const ConvGeometry g = make_geometry(in_shape, out_shape, kernel, stride, padding, dilation);
  auto idx = indices.contiguous();
#ifdef WITH_CUDA
  if (idx.is_cuda()) return kernel_map_cuda(idx, g, subm);
#endif
  TORCH_CHECK(idx.device().is_cpu(), "sparse_conv_kernel_map: CUDA tensors need dense3d._C built with CUDA");
  return kernel_map_cpu(idx, g, subm);
}

at::Tensor sparse_conv_forward(const at::Tensor& features_, const at::Tensor& weight_,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, const at::Tensor& offsets, int64_t n_out,
                               int64_t identity_k) {
  TORCH_CHECK(features_.dim() == 2 && weight_.dim() == 3 && features_.size(1) == weight_.size(1),
              "sparse_conv_forward: features (N, C_in) and weight (K, C_in, C_out) do not fit");
  check_pairs(features_, in_idx, out_idx);
  const auto off = offsets_vector(offsets);
  const int64_t K = weight_.size(0), c_out = weight_.size(2);
  TORCH_CHECK(static_cast<int64_t>(off.size()) == K + 1, "sparse_conv_forward: offsets must have K + 1 entries");
  auto features = features_.contiguous();
  auto weight = weight_.contiguous();

  at::Tensor out;
  if (bias.has_value() && bias->defined()) {
    out = bias->to(features.scalar_type()).reshape({1, c_out}).expand({n_out, c_out}).contiguous();
  } else {
    out = at::zeros({n_out, c_out}, features.options());
  }
  int64_t max_n = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (k != identity_k) max_n = std::max(max_n, off[k + 1] - off[k]);
  }
  at::Tensor buf_in = at::empty({max_n, features.size(1)}, features.options());
  at::Tensor buf_out = at::empty({max_n, c_out}, features.options());
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = off[k + 1] - off[k];
    if (n == 0) continue;
    if (k == identity_k) {  // pairs (r, r) for every row: no gather, no scatter
      out.addmm_(features, weight[k]);
      continue;
    }
    at::Tensor a = buf_in.narrow(0, 0, n), c = buf_out.narrow(0, 0, n);
    gather_rows(features, in_idx, off[k], n, a);
    at::mm_out(c, a, weight[k]);
    scatter_add_rows(c, out_idx, off[k], n, out);
  }
  return out;
}

std::vector<at::Tensor> sparse_conv_backward(const at::Tensor& grad_out_, const at::Tensor& features_,
                                             const at::Tensor& weight_, const at::Tensor& in_idx,
                                             const at::Tensor& out_idx, const at::Tensor& offsets,
                                             int64_t identity_k, bool need_features, bool need_weight) {
  check_pairs(features_, in_idx, out_idx);
  const auto off = offsets_vector(offsets);
  const int64_t K = weight_.size(0), c_in = weight_.size(1), c_out = weight_.size(2);
  auto grad_out = grad_out_.contiguous();
  auto features = features_.contiguous();
  auto weight = weight_.contiguous();
  at::Tensor grad_features, grad_weight;
  if (need_features) grad_features = at::zeros_like(features);
  if (need_weight) grad_weight = at::zeros_like(weight);
  int64_t max_n = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (k != identity_k) max_n = std::max(max_n, off[k + 1] - off[k]);
  }
  at::Tensor buf_g = at::empty({max_n, c_out}, features.options());
  at::Tensor buf_x = at::empty({max_n, c_in}, features.options());
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = off[k + 1] - off[k];
    if (n == 0) continue;
    if (k == identity_k) {
      if (need_weight) {
        at::Tensor gw = grad_weight[k];
        at::mm_out(gw, features.t(), grad_out);
      }
      if (need_features) grad_features.addmm_(grad_out, weight[k].t());
      continue;
    }
    at::Tensor g = buf_g.narrow(0, 0, n), x = buf_x.narrow(0, 0, n);
    gather_rows(grad_out, out_idx, off[k], n, g);  // (n, C_out): gradient at each pair's output
    if (need_weight) {
      gather_rows(features, in_idx, off[k], n, x);  // (n, C_in)
      at::Tensor gw = grad_weight[k];
      at::mm_out(gw, x.t(), g);  // (C_in, n) @ (n, C_out)
    }
    if (need_features) {
      at::mm_out(x, g, weight[k].t());  // (n, C_out) @ (C_out, C_in) -> (n, C_in)
      scatter_add_rows(x, in_idx, off[k], n, grad_features);
    }
  }
  return {grad_features, grad_weight};
}

}  // namespace dense3d
