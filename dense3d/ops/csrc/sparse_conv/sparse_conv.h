// Sparse convolution: kernel map (rulebook) building and gather -> GEMM -> scatter-add compute.
//
// Coordinates are (batch, z, y, x) int32 rows. A site's linear key is
//   key = ((b * D + z) * H + y) * W + x        (int64, D/H/W the spatial shape)
// and kernel offsets k = (kz * KH + ky) * KW + kx run z-major. For an output site o and offset k
// the input site is  i = o * stride - padding + k * dilation  (per axis); a submanifold conv is
// stride 1, padding = dilation * (kernel - 1) / 2, outputs = inputs.
//
// The kernel map is stored as pair lists grouped by offset: for k in [0, K),
// pairs offsets[k] .. offsets[k+1] - 1 of (in_idx, out_idx) say "input row in_idx contributes
// through weight[k] to output row out_idx". Within one offset every input and every output
// row occurs at most once, so the scatter-add of one offset is race free (and deterministic).
//
// Weight layout: (K, C_in, C_out), out[o] = bias + sum_k sum_pairs(k) features[i] @ weight[k].
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <vector>

namespace dense3d {

// Returns {out_indices (M, 4) int32, in_idx (P,) int32, out_idx (P,) int32,
//          offsets (K + 1,) int64 on the CPU, stats (2,) int64 on the CPU = [n_duplicate_inputs, identity_k],
//          out_rowptr (M + 1,) int32, out_perm (Q,) int32, in_rowptr (N + 1,) int32, in_perm (Q,) int32,
//          out_order (P,) int32, in_order (P,) int32}.
// Strided outputs are sorted by linear key (batch-major, then z, y, x): deterministic.
// identity_k is the centre offset of a submanifold map (its pairs are (r, r) for every row), else -1.
// out_rowptr/out_perm list, for every output row, the pair positions that write to it (offsets
// ascending, identity pairs left out): the scatter-add then runs over output rows without atomics
// and sums in a fixed order (the CUDA path). in_rowptr/in_perm do the same for input rows.
// out_order / in_order list each offset's pair positions sorted by output / input row (the CPU
// path: a thread owning a range of rows finds its pairs of offset k by binary search).
std::vector<at::Tensor> sparse_conv_kernel_map(const at::Tensor& indices, std::vector<int64_t> in_shape,
                                               std::vector<int64_t> out_shape, std::vector<int64_t> kernel,
                                               std::vector<int64_t> stride, std::vector<int64_t> padding,
                                               std::vector<int64_t> dilation, bool subm);

// out (n_out, C_out) = bias + sum over offsets of scatter(gather(features) @ weight[k]):
// one gather of all pairs, one GEMM per offset, one scatter pass over output rows (CSR).
// identity_k >= 0 names the offset whose pairs are (r, r): it becomes one GEMM, no gather/scatter.
at::Tensor sparse_conv_forward(const at::Tensor& features, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, const at::Tensor& offsets, const at::Tensor& out_rowptr,
                               const at::Tensor& out_perm, const at::Tensor& out_order, int64_t n_out,
                               int64_t identity_k);

// Returns {grad_features (N, C_in) or undefined, grad_weight (K, C_in, C_out) or undefined}.
std::vector<at::Tensor> sparse_conv_backward(const at::Tensor& grad_out, const at::Tensor& features,
                                             const at::Tensor& weight, const at::Tensor& in_idx,
                                             const at::Tensor& out_idx, const at::Tensor& offsets,
                                             const at::Tensor& in_rowptr, const at::Tensor& in_perm,
                                             const at::Tensor& in_order, const at::Tensor& out_order,
                                             int64_t identity_k, bool need_features, bool need_weight);

struct ConvGeometry {
  int64_t in_shape[3], out_shape[3], kernel[3], stride[3], padding[3], dilation[3];
  int64_t batch_volume_in() const { return in_shape[0] * in_shape[1] * in_shape[2]; }
  int64_t batch_volume_out() const { return out_shape[0] * out_shape[1] * out_shape[2]; }
  int64_t num_offsets() const { return kernel[0] * kernel[1] * kernel[2]; }
};

// Device implementations (the dispatchers above pick one by the tensors' device).
// gather_rows: dst[p] = src[idx[p]] for p in [0, P) outside [skip_begin, skip_end).
// scatter_rows: dst[r] = (accumulate ? dst[r] : 0) + bias + sum_{q in rowptr[r]..rowptr[r+1]} src[perm[q]].
std::vector<at::Tensor> kernel_map_cpu(const at::Tensor& indices, const ConvGeometry& g, bool subm);
// CPU compute, one OpenMP region: each thread owns a range of destination rows and, per offset,
// gathers its pairs in chunks (cache sized), multiplies (ATen GEMM, single-threaded inside the
// region) and adds into its own rows: no atomics, no big buffers, deterministic.
// dst[d] = bias + sum_k sum_{pairs p of k with dst_idx[p] = d} src[src_idx[p]] @ W_k,
// W_k = weight[k] (or weight[k]^T with transpose_weight); `order` sorts each offset's pairs by dst row.
void conv_rows_cpu(const at::Tensor& src, const at::Tensor& weight, bool transpose_weight,
                   const c10::optional<at::Tensor>& bias, const at::Tensor& src_idx, const at::Tensor& dst_idx,
                   const at::Tensor& order, const std::vector<int64_t>& off, int64_t identity_k, at::Tensor& dst);
// grad_weight[k] = sum over pairs of k of features[in]^T grad_out[out]; threads own output rows
// and their partial sums are added in thread order.
at::Tensor weight_grad_cpu(const at::Tensor& features, const at::Tensor& grad_out, const at::Tensor& in_idx,
                           const at::Tensor& out_idx, const at::Tensor& out_order, const std::vector<int64_t>& off,
                           int64_t identity_k, int64_t K);
#ifdef WITH_CUDA
std::vector<at::Tensor> kernel_map_cuda(const at::Tensor& indices, const ConvGeometry& g, bool subm);
void gather_rows_cuda(const at::Tensor& src, const at::Tensor& idx, int64_t skip_begin, int64_t skip_end, at::Tensor& dst);
void scatter_rows_cuda(const at::Tensor& src, const at::Tensor& rowptr, const at::Tensor& perm,
                       const c10::optional<at::Tensor>& bias, bool accumulate, at::Tensor& dst);
#endif

}  // namespace dense3d
