// Device-independent half of sparse convolution: argument checks, dispatch by device, and the
// per-offset gather -> GEMM (ATen: MKL/OpenBLAS on the CPU, cuBLAS on CUDA) -> scatter-add loop.
#include "sparse_conv/sparse_conv.h"

#include <algorithm>
#include <initializer_list>

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

// Row gather / CSR scatter of the GPU path (sparse_conv_cuda.cu).
void gather_rows(const at::Tensor& src, const at::Tensor& idx, int64_t skip_begin, int64_t skip_end, at::Tensor dst) {
#ifdef WITH_CUDA
  if (src.is_cuda()) return gather_rows_cuda(src, idx, skip_begin, skip_end, dst);
#endif
  TORCH_CHECK(false, "sparse_conv: CUDA tensors need dense3d._C built with CUDA");
}

void scatter_rows(const at::Tensor& src, const at::Tensor& rowptr, const at::Tensor& perm,
                  const c10::optional<at::Tensor>& bias, bool accumulate, at::Tensor dst) {
#ifdef WITH_CUDA
  if (src.is_cuda()) return scatter_rows_cuda(src, rowptr, perm, bias, accumulate, dst);
#endif
  TORCH_CHECK(false, "sparse_conv: CUDA tensors need dense3d._C built with CUDA");
}

void check_pairs(const at::Tensor& features, std::initializer_list<const at::Tensor*> lists) {
  for (const at::Tensor* t : lists) {
    TORCH_CHECK(t->scalar_type() == at::kInt, "sparse_conv: pair lists must be int32");
    TORCH_CHECK(t->device() == features.device(), "sparse_conv: pair lists must be on the features' device");
    TORCH_CHECK(t->is_contiguous() && t->dim() == 1, "sparse_conv: pair lists must be contiguous 1-D");
  }
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
                               const c10::optional<at::Tensor>& bias_, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, const at::Tensor& offsets, const at::Tensor& out_rowptr,
                               const at::Tensor& out_perm, const at::Tensor& out_order, int64_t n_out,
                               int64_t identity_k) {
  TORCH_CHECK(features_.dim() == 2 && weight_.dim() == 3 && features_.size(1) == weight_.size(1),
              "sparse_conv_forward: features (N, C_in) and weight (K, C_in, C_out) do not fit");
  TORCH_CHECK(features_.scalar_type() == weight_.scalar_type(), "sparse_conv_forward: features and weight dtypes differ");
  check_pairs(features_, {&in_idx, &out_idx, &out_rowptr, &out_perm, &out_order});
  TORCH_CHECK(out_rowptr.numel() == n_out + 1, "sparse_conv_forward: out_rowptr must have n_out + 1 entries");
  const auto off = offsets_vector(offsets);
  const int64_t K = weight_.size(0), c_out = weight_.size(2);
  TORCH_CHECK(static_cast<int64_t>(off.size()) == K + 1, "sparse_conv_forward: offsets must have K + 1 entries");
  TORCH_CHECK(identity_k < 0 || off[identity_k + 1] - off[identity_k] == n_out, "sparse_conv_forward: bad identity_k");
  auto features = features_.contiguous();
  auto weight = weight_.contiguous();
  c10::optional<at::Tensor> bias;
  if (bias_.has_value() && bias_->defined()) bias = bias_->to(features.scalar_type()).contiguous();
  const int64_t P = off[K];
  const int64_t skip_b = identity_k >= 0 ? off[identity_k] : 0, skip_e = identity_k >= 0 ? off[identity_k + 1] : 0;

  at::Tensor out = at::empty({n_out, c_out}, features.options());
  if (features.device().is_cpu()) {
    conv_rows_cpu(features, weight, false, bias, in_idx, out_idx, out_order, off, identity_k, out);
    return out;
  }
  // GPU: one gather of all pairs, a cuBLAS GEMM per offset, one CSR scatter over output rows.
  if (identity_k >= 0) at::mm_out(out, features, weight[identity_k]);  // pairs (r, r): a plain GEMM
  at::Tensor buf_in = at::empty({P, features.size(1)}, features.options());  // gathered input rows
  at::Tensor buf_out = at::empty({P, c_out}, features.options());           // their products
  gather_rows(features, in_idx, skip_b, skip_e, buf_in);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = off[k + 1] - off[k];
    if (n == 0 || k == identity_k) continue;
    at::Tensor c = buf_out.narrow(0, off[k], n);
    at::mm_out(c, buf_in.narrow(0, off[k], n), weight[k]);  // (n, C_in) @ (C_in, C_out)
  }
  scatter_rows(buf_out, out_rowptr, out_perm, bias, identity_k >= 0, out);
  return out;
}

std::vector<at::Tensor> sparse_conv_backward(const at::Tensor& grad_out_, const at::Tensor& features_,
                                             const at::Tensor& weight_, const at::Tensor& in_idx,
                                             const at::Tensor& out_idx, const at::Tensor& offsets,
                                             const at::Tensor& in_rowptr, const at::Tensor& in_perm,
                                             const at::Tensor& in_order, const at::Tensor& out_order,
                                             int64_t identity_k, bool need_features, bool need_weight) {
  check_pairs(features_, {&in_idx, &out_idx, &in_rowptr, &in_perm, &in_order, &out_order});
  const auto off = offsets_vector(offsets);
  const int64_t K = weight_.size(0), c_in = weight_.size(1), c_out = weight_.size(2);
  TORCH_CHECK(in_rowptr.numel() == features_.size(0) + 1, "sparse_conv_backward: in_rowptr must have N + 1 entries");
  auto grad_out = grad_out_.contiguous();
  auto features = features_.contiguous();
  auto weight = weight_.contiguous();
  const int64_t P = off[K];
  const int64_t skip_b = identity_k >= 0 ? off[identity_k] : 0, skip_e = identity_k >= 0 ? off[identity_k + 1] : 0;
  at::Tensor grad_features, grad_weight;
  if (!need_features && !need_weight) return {grad_features, grad_weight};
  if (features.device().is_cpu()) {
    if (need_features) {
      grad_features = at::empty_like(features);
      conv_rows_cpu(grad_out, weight, true, c10::nullopt, out_idx, in_idx, in_order, off, identity_k, grad_features);
    }
    if (need_weight) grad_weight = weight_grad_cpu(features, grad_out, in_idx, out_idx, out_order, off, identity_k, K);
    return {grad_features, grad_weight};
  }

  at::Tensor buf_g = at::empty({P, c_out}, features.options());  // grad_out at each pair's output row
  at::Tensor buf_x = at::empty({P, c_in}, features.options());   // features, then grad, per pair
  gather_rows(grad_out, out_idx, skip_b, skip_e, buf_g);
  if (need_weight) {
    grad_weight = at::zeros_like(weight);
    gather_rows(features, in_idx, skip_b, skip_e, buf_x);
  }
  if (need_features) {
    grad_features = at::empty_like(features);
    if (identity_k >= 0) at::mm_out(grad_features, grad_out, weight[identity_k].t());
  }
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = off[k + 1] - off[k];
    if (n == 0) continue;
    if (k == identity_k) {
      if (need_weight) {
        at::Tensor gw = grad_weight[k];
        at::mm_out(gw, features.t(), grad_out);  // (C_in, N) @ (N, C_out)
      }
      continue;
    }
    at::Tensor g = buf_g.narrow(0, off[k], n), x = buf_x.narrow(0, off[k], n);
    if (need_weight) {
      at::Tensor gw = grad_weight[k];
      at::mm_out(gw, x.t(), g);  // (C_in, n) @ (n, C_out)
    }
    if (need_features) at::mm_out(x, g, weight[k].t());  // (n, C_out) @ (C_out, C_in), overwrites x
  }
  if (need_features) scatter_rows(buf_x, in_rowptr, in_perm, c10::nullopt, identity_k >= 0, grad_features);
  return {grad_features, grad_weight};
}

}  // namespace dense3d
