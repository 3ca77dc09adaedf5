// CUDA kernels of sparse convolution: a GPU open-addressing hash (atomicCAS on int64 keys) for the
// kernel map, and gather / row-wise scatter kernels for the compute loop (GEMMs go to cuBLAS
// through ATen in sparse_conv.cpp). The scatter runs one thread per (row, channel) over the
// row's pair list, so it needs no atomics and sums in a fixed order.
#include <limits>
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "sparse_conv/sparse_conv.h"

namespace dense3d {
namespace {

constexpr unsigned long long kEmpty = 0xFFFFFFFFFFFFFFFFULL;
constexpr int kThreads = 256;

inline int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20)); }

__device__ __forceinline__ unsigned long long hash_slot(long long key, int shift) {
  return (static_cast<unsigned long long>(key) * 0x9E3779B97F4A7C15ULL) >> shift;
}

__global__ void hash_insert_kernel(const int32_t* __restrict__ ind, int64_t n, int64_t D, int64_t H, int64_t W,
                                   unsigned long long* keys, int32_t* vals, unsigned long long mask, int shift,
                                   int* n_dup) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t* c = ind + 4 * i;
    const long long key = ((c[0] * D + c[1]) * H + c[2]) * W + c[3];
    unsigned long long s = hash_slot(key, shift);
    while (true) {
      const unsigned long long prev = atomicCAS(&keys[s], kEmpty, static_cast<unsigned long long>(key));
      if (prev == kEmpty) {
        vals[s] = static_cast<int32_t>(i);
        break;
      }
      if (prev == static_cast<unsigned long long>(key)) {
        atomicAdd(n_dup, 1);
        break;
      }
      s = (s + 1) & mask;
    }
  }
}

__device__ __forceinline__ int32_t hash_find(const unsigned long long* keys, const int32_t* vals, long long key,
                                             unsigned long long mask, int shift) {
  unsigned long long s = hash_slot(key, shift);
  while (true) {
    const unsigned long long k = keys[s];
    if (k == static_cast<unsigned long long>(key)) return vals[s];
    if (k == kEmpty) return -1;
    s = (s + 1) & mask;
  }
}

struct Geo {
  int64_t in[3], out[3], kernel[3], stride[3], padding[3], dilation[3];
};

// cand[i * K + k] = linear key of the output that input i reaches through offset k, or -1.
__global__ void output_candidates_kernel(const int32_t* __restrict__ ind, int64_t n, Geo g, int64_t K,
                                         long long* cand) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n * K;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / K, k = t % K;
    const int64_t kk[3] = {k / (g.kernel[1] * g.kernel[2]), (k / g.kernel[2]) % g.kernel[1], k % g.kernel[2]};
    const int32_t* c = ind + 4 * i;
    long long key = c[0];
    bool ok = true;
    for (int a = 0; a < 3; ++a) {
      const int64_t num = c[1 + a] + g.padding[a] - kk[a] * g.dilation[a];
      const int64_t o = num / g.stride[a];
      ok = ok && num >= 0 && num % g.stride[a] == 0 && o < g.out[a];
      key = key * g.out[a] + o;
    }
    cand[t] = ok ? key : -1;
  }
}

// nbr[k * M + o] = input row at o * s - p + k * d, or -1 (identity_k: o itself).
__global__ void query_kernel(const int32_t* __restrict__ oind, int64_t m, Geo g, int64_t K, int64_t identity_k,
                             const unsigned long long* keys, const int32_t* vals, unsigned long long mask, int shift,
                             int32_t* nbr) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < m * K;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = t / m, o = t % m;
    if (k == identity_k) {
      nbr[t] = static_cast<int32_t>(o);
      continue;
    }
    const int64_t kk[3] = {k / (g.kernel[1] * g.kernel[2]), (k / g.kernel[2]) % g.kernel[1], k % g.kernel[2]};
    const int32_t* c = oind + 4 * o;
    long long key = c[0];
    bool ok = true;
    for (int a = 0; a < 3; ++a) {
      const int64_t x = c[1 + a] * g.stride[a] - g.padding[a] + kk[a] * g.dilation[a];
      ok = ok && x >= 0 && x < g.in[a];
      key = key * g.in[a] + x;
    }
    nbr[t] = ok ? hash_find(keys, vals, key, mask, shift) : -1;
  }
}

template <typename scalar_t>
__global__ void gather_kernel(const scalar_t* __restrict__ src, const int32_t* __restrict__ idx, int64_t n, int64_t c,
                              int64_t skip_b, int64_t skip_e, scalar_t* __restrict__ dst) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n * c;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = t / c, q = t % c;
    if (j >= skip_b && j < skip_e) continue;
    dst[t] = src[static_cast<int64_t>(idx[j]) * c + q];
  }
}

template <typename scalar_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ src, const int32_t* __restrict__ rowptr,
                               const int32_t* __restrict__ perm, const scalar_t* __restrict__ bias, bool accumulate,
                               int64_t n_rows, int64_t c, scalar_t* __restrict__ dst) {
  using acc_t = at::acc_type<scalar_t, true>;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n_rows * c;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / c, q = t % c;
    acc_t acc = accumulate ? static_cast<acc_t>(dst[t]) : acc_t(0);
    if (bias != nullptr) acc += static_cast<acc_t>(bias[q]);
    for (int32_t e = rowptr[r]; e < rowptr[r + 1]; ++e) acc += static_cast<acc_t>(src[static_cast<int64_t>(perm[e]) * c + q]);
    dst[t] = static_cast<scalar_t>(acc);
  }
}

std::pair<at::Tensor, at::Tensor> rows_csr(const at::Tensor& rows, const at::Tensor& keep, int64_t n_rows) {
  at::Tensor pos = keep.nonzero().squeeze(1);
  at::Tensor r = rows.index_select(0, pos).to(at::kLong);
  at::Tensor order = std::get<1>(at::sort(r, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor perm = pos.index_select(0, order).to(at::kInt);
  at::Tensor rowptr = at::zeros({n_rows + 1}, r.options());
  if (n_rows > 0) rowptr.narrow(0, 1, n_rows).copy_(at::bincount(r, {}, n_rows).cumsum(0));
  return {rowptr.to(at::kInt), perm};
}

}  // namespace

std::vector<at::Tensor> kernel_map_cuda(const at::Tensor& indices, const ConvGeometry& cg, bool subm) {
  const c10::cuda::CUDAGuard guard(indices.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Geo g;
  for (int a = 0; a < 3; ++a) {
    g.in[a] = cg.in_shape[a];
    g.out[a] = cg.out_shape[a];
    g.kernel[a] = cg.kernel[a];
    g.stride[a] = cg.stride[a];
    g.padding[a] = cg.padding[a];
    g.dilation[a] = cg.dilation[a];
  }
  const int64_t n_in = indices.size(0), K = cg.num_offsets();
  auto opts_i32 = indices.options().dtype(at::kInt);
  auto opts_i64 = indices.options().dtype(at::kLong);

  // 1. Hash of the input sites (capacity a power of two >= 2N).
  int64_t cap = 16;
  int shift = 60;
  while (cap < 2 * n_in) {
    cap <<= 1;
    --shift;
  }
  at::Tensor keys = at::full({cap}, -1, opts_i64);
  at::Tensor vals = at::full({cap}, -1, opts_i32);
  at::Tensor n_dup = at::zeros({1}, opts_i32);
  auto* keys_p = reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>());
  const unsigned long long mask = static_cast<unsigned long long>(cap - 1);
  if (n_in > 0) {
    hash_insert_kernel<<<blocks_for(n_in), kThreads, 0, stream>>>(indices.data_ptr<int32_t>(), n_in, g.in[0], g.in[1],
                                                                  g.in[2], keys_p, vals.data_ptr<int32_t>(), mask,
                                                                  shift, n_dup.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t dup = n_dup.item<int32_t>();

  // 2. Output sites: the inputs, or the unique reachable sites sorted by key.
  at::Tensor out_indices;
  if (subm) {
    out_indices = indices;
  } else {
    at::Tensor cand = at::empty({n_in * K}, opts_i64);
    if (n_in > 0) {
      output_candidates_kernel<<<blocks_for(n_in * K), kThreads, 0, stream>>>(indices.data_ptr<int32_t>(), n_in, g, K,
                                                                             reinterpret_cast<long long*>(cand.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    at::Tensor uniq = std::get<0>(at::_unique(cand, /*sorted=*/true, /*return_inverse=*/false));
    uniq = uniq.masked_select(uniq >= 0);
    const int64_t vol = g.out[0] * g.out[1] * g.out[2];
    out_indices = at::stack({at::floor_divide(uniq, vol), at::floor_divide(uniq, g.out[1] * g.out[2]).remainder(g.out[0]),
                             at::floor_divide(uniq, g.out[2]).remainder(g.out[1]), uniq.remainder(g.out[2])},
                            1)
                      .to(at::kInt)
                      .contiguous();
  }
  const int64_t m = out_indices.size(0);
  const int64_t identity_k = (subm && dup == 0) ? K / 2 : -1;

  // 3. Neighbour table, 4. pair lists grouped by offset (nonzero keeps (k, o) order).
  at::Tensor nbr = at::empty({K * m}, opts_i32);
  if (m > 0) {
    query_kernel<<<blocks_for(K * m), kThreads, 0, stream>>>(out_indices.data_ptr<int32_t>(), m, g, K, identity_k,
                                                             keys_p, vals.data_ptr<int32_t>(), mask, shift,
                                                             nbr.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor hit = nbr >= 0;
  at::Tensor sel = hit.nonzero().squeeze(1);
  at::Tensor in_idx = nbr.index_select(0, sel).contiguous();
  at::Tensor out_idx = (m > 0 ? sel.remainder(m) : sel).to(at::kInt).contiguous();
  at::Tensor offsets = at::zeros({K + 1}, at::kLong);
  offsets.narrow(0, 1, K).copy_(hit.view({K, m}).sum(1).cumsum(0).cpu());
  const int64_t* off = offsets.data_ptr<int64_t>();
  // Pair positions, CSR row pointers and orders are int32: more pairs would wrap (kernel_map.py
  // turns this message into a SparseTensorError).
  TORCH_CHECK(off[K] <= std::numeric_limits<int32_t>::max(), "dense3d kernel map: ", off[K],
              " pairs exceed the int32 pair index limit 2147483647");

  // 5. Row-wise views of the pairs (identity pairs left out).
  at::Tensor keep = at::ones({off[K]}, indices.options().dtype(at::kBool));
  if (identity_k >= 0) keep.narrow(0, off[identity_k], off[identity_k + 1] - off[identity_k]).fill_(false);
  auto out_csr = rows_csr(out_idx, keep, m);
  auto in_csr = rows_csr(in_idx, keep, n_in);
  // Each offset's pairs by output row (already so) and by input row (stable sort of k * N + in).
  const int64_t P = off[K];
  at::Tensor out_order = at::arange(P, opts_i32);
  at::Tensor k_of = at::repeat_interleave(at::arange(K, opts_i64), hit.view({K, m}).sum(1));
  at::Tensor in_order =
      std::get<1>(at::sort(k_of * n_in + in_idx.to(at::kLong), /*stable=*/true, /*dim=*/0, /*descending=*/false)).to(at::kInt);
  at::Tensor stats = at::empty({2}, at::kLong);
  stats[0] = dup;
  stats[1] = identity_k;
  return {out_indices, in_idx, out_idx, offsets, stats, out_csr.first, out_csr.second, in_csr.first, in_csr.second,
          out_order, in_order};
}

void gather_rows_cuda(const at::Tensor& src, const at::Tensor& idx, int64_t skip_begin, int64_t skip_end, at::Tensor& dst) {
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t n = idx.numel(), c = src.size(1);
  if (n * c == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_rows_cuda", [&] {
    gather_kernel<scalar_t><<<blocks_for(n * c), kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), idx.data_ptr<int32_t>(), n, c, skip_begin, skip_end, dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void scatter_rows_cuda(const at::Tensor& src, const at::Tensor& rowptr, const at::Tensor& perm,
                       const c10::optional<at::Tensor>& bias, bool accumulate, at::Tensor& dst) {
  const c10::cuda::CUDAGuard guard(dst.device());
  const int64_t n_rows = dst.size(0), c = dst.size(1);
  if (n_rows * c == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dst.scalar_type(), "scatter_rows_cuda", [&] {
    const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    scatter_kernel<scalar_t><<<blocks_for(n_rows * c), kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), rowptr.data_ptr<int32_t>(), perm.data_ptr<int32_t>(), b, accumulate, n_rows, c,
        dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dense3d
