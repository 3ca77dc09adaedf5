// CPU kernels of sparse convolution: an open-addressing hash of linear site keys for the
// kernel map, and OpenMP row gather / scatter-add for the compute loop.
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>
#include <limits>

#include "sparse_conv/sparse_conv.h"

namespace dense3d {
namespace {

// Open addressing with linear probing over a power-of-two table of (key, row) entries (key -1 =
// empty; one 16-byte entry, so a probe touches one cache line). The slot keeps the key's two
// lowest bits (x mod 4) and hashes the rest (Fibonacci hashing): x-neighbours of a site, which
// every kernel looks up one after another, land in the same cache line.
class SiteHash {
 public:
  explicit SiteHash(int64_t n) {
    int64_t cap = 16;
    shift_ = 60;
    while (cap < 4 * n) {  // load <= 1/4: a miss (most lookups) probes ~1.4 slots
      cap <<= 1;
      --shift_;
    }
    mask_ = static_cast<uint64_t>(cap - 1);
    table_.assign(cap, Entry{-1, -1, 0});
  }
  // Inserts key -> val; returns false (and keeps the old value) when the key is already present.
  bool insert(int64_t key, int32_t val) {
    uint64_t s = slot(key);
    while (true) {
      Entry& e = table_[s];
      if (e.key == -1) {
        e.key = key;
        e.val = val;
        ++size_;
        return true;
      }
      if (e.key == key) return false;
      s = (s + 1) & mask_;
    }
  }
  int32_t find(int64_t key) const {
    uint64_t s = slot(key);
    while (true) {
      const Entry& e = table_[s];
      if (e.key == key) return e.val;
      if (e.key == -1) return -1;
      s = (s + 1) & mask_;
    }
  }
  int64_t capacity() const { return static_cast<int64_t>(table_.size()); }
  int64_t size() const { return size_; }

 private:
  struct Entry {
    int64_t key;
    int32_t val;
    int32_t pad;
  };
  uint64_t slot(int64_t key) const {
    const uint64_t k = static_cast<uint64_t>(key);
    return ((((k >> 2) * 0x9E3779B97F4A7C15ULL) >> (shift_ + 2)) << 2 | (k & 3)) & mask_;
  }
  std::vector<Entry> table_;
  uint64_t mask_;
  int shift_;
  int64_t size_ = 0;
};

}  // namespace

std::vector<at::Tensor> kernel_map_cpu(const at::Tensor& indices, const ConvGeometry& g, bool subm) {
  const int64_t n_in = indices.size(0);
  const int32_t* ind = indices.data_ptr<int32_t>();
  const int64_t D = g.in_shape[0], H = g.in_shape[1], W = g.in_shape[2];
  const int64_t OD = g.out_shape[0], OH = g.out_shape[1], OW = g.out_shape[2];
  const int64_t K = g.num_offsets();

  // 1. Hash of the input sites: key -> row (duplicates counted, first row kept).
  SiteHash in_hash(n_in);
  int64_t n_dup = 0;
  for (int64_t i = 0; i < n_in; ++i) {
    const int32_t* c = ind + 4 * i;
    const int64_t key = ((c[0] * D + c[1]) * H + c[2]) * W + c[3];
    if (!in_hash.insert(key, static_cast<int32_t>(i))) ++n_dup;
  }

  // 2. Output sites: the inputs themselves (submanifold), or every site some input reaches
  //    through some offset, deduplicated in a hash set and sorted by key.
  at::Tensor out_indices;
  if (subm) {
    out_indices = indices;
  } else {
    SiteHash out_set(n_in);  // grows if needed below
    std::vector<int64_t> out_keys;
    out_keys.reserve(n_in * 2);
    // per axis: the (k, o) pairs with i = o * s - p + k * d, 0 <= o < out
    for (int64_t i = 0; i < n_in; ++i) {
      const int32_t* c = ind + 4 * i;
      int64_t os[3][64];
      int64_t cnt[3] = {0, 0, 0};
      for (int a = 0; a < 3; ++a) {
        for (int64_t k = 0; k < g.kernel[a] && cnt[a] < 64; ++k) {
          const int64_t num = c[1 + a] + g.padding[a] - k * g.dilation[a];
          if (num < 0 || num % g.stride[a] != 0) continue;
          const int64_t o = num / g.stride[a];
          if (o < g.out_shape[a]) os[a][cnt[a]++] = o;
        }
      }
      for (int64_t a0 = 0; a0 < cnt[0]; ++a0)
        for (int64_t a1 = 0; a1 < cnt[1]; ++a1)
          for (int64_t a2 = 0; a2 < cnt[2]; ++a2) {
            const int64_t key = ((c[0] * OD + os[0][a0]) * OH + os[1][a1]) * OW + os[2][a2];
            if (out_set.size() * 2 + 2 > out_set.capacity()) {
              SiteHash bigger(out_set.capacity());  // 4x capacity: rehash what is there
              for (int64_t key2 : out_keys) bigger.insert(key2, 0);
              out_set = std::move(bigger);
            }
            if (out_set.insert(key, 0)) out_keys.push_back(key);
          }
    }
    std::sort(out_keys.begin(), out_keys.end());
    const int64_t m = static_cast<int64_t>(out_keys.size());
    out_indices = at::empty({m, 4}, indices.options());
    int32_t* oi = out_indices.data_ptr<int32_t>();
    const int64_t vol = OD * OH * OW;
    at::parallel_for(0, m, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        int64_t key = out_keys[j];
        oi[4 * j + 0] = static_cast<int32_t>(key / vol);
        key %= vol;
        oi[4 * j + 1] = static_cast<int32_t>(key / (OH * OW));
        key %= OH * OW;
        oi[4 * j + 2] = static_cast<int32_t>(key / OW);
        oi[4 * j + 3] = static_cast<int32_t>(key % OW);
      }
    });
  }
  const int64_t n_out = out_indices.size(0);
  const int32_t* oind = out_indices.data_ptr<int32_t>();
  const int64_t identity_k = (subm && n_dup == 0) ? K / 2 : -1;

  // 3. Neighbour table nbr[k][o] = input row at o * s - p + k * d, or -1; hits counted per offset.
  //    Submanifold maps are symmetric: nbr[k][o] = i  <=>  nbr[K-1-k][i] = o (mirrored offsets), so
  //    only offsets before the centre are looked up; the mirror rows are filled from them.
  std::unique_ptr<int32_t[]> nbr(new int32_t[static_cast<size_t>(K * n_out)]);  // every entry set below
  std::vector<int64_t> counts(K, 0);
  const bool par_out = n_out > 4096;
  const bool mirror = identity_k >= 0;
  if (mirror) std::fill(nbr.get() + (identity_k + 1) * n_out, nbr.get() + K * n_out, -1);
#pragma omp parallel num_threads(at::get_num_threads()) if (par_out)
  {
    std::vector<int64_t> local(K, 0);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < n_out; ++o) {
      const int32_t* c = oind + 4 * o;
      int64_t k = 0;
      for (int64_t kz = 0; kz < g.kernel[0]; ++kz) {
        const int64_t z = c[1] * g.stride[0] - g.padding[0] + kz * g.dilation[0];
        const bool zin = z >= 0 && z < D;
        for (int64_t ky = 0; ky < g.kernel[1]; ++ky) {
          const int64_t y = c[2] * g.stride[1] - g.padding[1] + ky * g.dilation[1];
          const bool yin = zin && y >= 0 && y < H;
          const int64_t base = ((c[0] * D + z) * H + y) * W;
          for (int64_t kx = 0; kx < g.kernel[2]; ++kx, ++k) {
            const int64_t x = c[3] * g.stride[2] - g.padding[2] + kx * g.dilation[2];
            if (mirror && k > identity_k) continue;  // filled by its mirror offset
            int32_t v = -1;
            if (k == identity_k) {
              v = static_cast<int32_t>(o);
            } else if (yin && x >= 0 && x < W) {
              v = in_hash.find(base + x);
            }
            nbr[k * n_out + o] = v;
            local[k] += v >= 0;
            if (mirror && k < identity_k && v >= 0) {
              nbr[(K - 1 - k) * n_out + v] = static_cast<int32_t>(o);
              ++local[K - 1 - k];
            }
          }
        }
      }
    }
#pragma omp critical
    for (int64_t k = 0; k < K; ++k) counts[k] += local[k];
  }

  // 4. Pair lists grouped by offset, outputs ascending within an offset.
  at::Tensor offsets = at::zeros({K + 1}, at::kLong);
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) off[k + 1] = off[k] + counts[k];
  const int64_t P = off[K];
  // Pair positions, CSR row pointers and orders are int32: more pairs would wrap (kernel_map.py
  // turns this message into a SparseTensorError).
  TORCH_CHECK(P <= std::numeric_limits<int32_t>::max(), "dense3d kernel map: ", P,
              " pairs exceed the int32 pair index limit 2147483647");
  at::Tensor in_idx = at::empty({P}, indices.options());
  at::Tensor out_idx = at::empty({P}, indices.options());
  int32_t* pin = in_idx.data_ptr<int32_t>();
  int32_t* pout = out_idx.data_ptr<int32_t>();
#pragma omp parallel num_threads(at::get_num_threads()) if (par_out)
  {
    // Branch-free compaction (hits are sparse and random: a branch would mispredict) into
    // per-thread scratch, then one copy into this offset's slice.
    std::vector<int32_t> sin(n_out + 1), sout(n_out + 1);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t* row = nbr.get() + k * n_out;
      int64_t n = 0;
      for (int64_t o = 0; o < n_out; ++o) {
        const int32_t v = row[o];
        sin[n] = v;
        sout[n] = static_cast<int32_t>(o);
        n += v >= 0;
      }
      std::memcpy(pin + off[k], sin.data(), n * sizeof(int32_t));
      std::memcpy(pout + off[k], sout.data(), n * sizeof(int32_t));
    }
  }

  // 5. Row-wise views of the pairs (counting sort by output row and by input row; stable, so
  //    each row lists its pairs by ascending offset). The identity offset's pairs are left out.
  const int64_t skip_b = identity_k >= 0 ? off[identity_k] : 0, skip_e = identity_k >= 0 ? off[identity_k + 1] : 0;
  auto csr = [&](const int32_t* rows, int64_t n_rows) {
    at::Tensor rowptr = at::zeros({n_rows + 1}, indices.options());
    int32_t* rp = rowptr.data_ptr<int32_t>();
    for (int64_t p = 0; p < P; ++p) {
      if (p >= skip_b && p < skip_e) continue;
      ++rp[rows[p] + 1];
    }
    for (int64_t r = 0; r < n_rows; ++r) rp[r + 1] += rp[r];
    at::Tensor perm = at::empty({static_cast<int64_t>(rp[n_rows])}, indices.options());
    int32_t* pm = perm.data_ptr<int32_t>();
    std::vector<int32_t> fill(rp, rp + n_rows);
    for (int64_t p = 0; p < P; ++p) {
      if (p >= skip_b && p < skip_e) continue;
      pm[fill[rows[p]]++] = static_cast<int32_t>(p);
    }
    return std::make_pair(rowptr, perm);
  };
  auto out_csr = csr(pout, n_out);
  auto in_csr = csr(pin, n_in);

  // 6. Each offset's pairs sorted by output row (already so) and by input row (from the input
  //    CSR, whose rows ascend: append each pair to its offset's bucket).
  at::Tensor out_order = at::arange(P, indices.options());
  at::Tensor in_order = at::empty({P}, indices.options());
  {
    int32_t* io = in_order.data_ptr<int32_t>();
    std::vector<int64_t> fill(off, off + K);
    if (identity_k >= 0) {
      for (int64_t p = skip_b; p < skip_e; ++p) io[p] = static_cast<int32_t>(p);  // (r, r): sorted already
    }
    const int32_t* rp = in_csr.first.data_ptr<int32_t>();
    const int32_t* pm = in_csr.second.data_ptr<int32_t>();
    for (int64_t e = 0; e < rp[n_in]; ++e) {
      const int32_t p = pm[e];
      const int64_t k = std::upper_bound(off, off + K + 1, static_cast<int64_t>(p)) - off - 1;
      io[fill[k]++] = p;
    }
  }
  at::Tensor stats = at::empty({2}, at::kLong);
  stats[0] = n_dup;
  stats[1] = identity_k;
  return {out_indices, in_idx, out_idx, offsets, stats, out_csr.first, out_csr.second, in_csr.first, in_csr.second,
          out_order, in_order};
}

namespace {

constexpr int64_t kChunk = 1024;  // rows gathered per GEMM: buffers stay in L2

// Threads to use for n rows: at most one per 2048 rows (small inputs stay serial).
int threads_for(int64_t n_rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_rows / 2048)));
}

// [lo, hi) of order[off[k] .. off[k+1]) whose rows[order[q]] lie in [r0, r1) (order sorts by row).
std::pair<const int32_t*, const int32_t*> row_range(const int32_t* order, const int32_t* rows, int64_t b, int64_t e,
                                                    int64_t r0, int64_t r1) {
  auto less = [rows](int32_t p, int64_t v) { return rows[p] < v; };
  const int32_t* lo = std::lower_bound(order + b, order + e, r0, less);
  const int32_t* hi = std::lower_bound(lo, order + e, r1, less);
  return {lo, hi};
}

template <typename scalar_t>
void conv_rows_impl(const at::Tensor& src, const at::Tensor& w, bool transpose, const c10::optional<at::Tensor>& bias,
                    const int32_t* sidx, const int32_t* didx, const int32_t* ord, const std::vector<int64_t>& off,
                    int64_t identity_k, at::Tensor& dst) {
  const int64_t n_dst = dst.size(0), c_src = src.size(1), c_dst = dst.size(1);
  const int64_t K = static_cast<int64_t>(off.size()) - 1;
  const scalar_t* s = src.data_ptr<scalar_t>();
  scalar_t* d = dst.data_ptr<scalar_t>();
  const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
#pragma omp parallel num_threads(threads_for(n_dst))
  {
    c10::AutoGradMode no_grad(false);  // worker threads start with grad mode on
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t r0 = n_dst * t / T, r1 = n_dst * (t + 1) / T;
    if (r1 > r0) {
      at::Tensor out_t = dst.narrow(0, r0, r1 - r0);
      if (identity_k >= 0) {  // pairs (r, r): rows r0..r1 of src times the centre weight
        at::mm_out(out_t, src.narrow(0, r0, r1 - r0), transpose ? w[identity_k].t() : w[identity_k]);
      } else {
        out_t.zero_();
      }
      if (bp != nullptr) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t q = 0; q < c_dst; ++q) d[r * c_dst + q] += bp[q];
      }
      at::Tensor buf_s = at::empty({kChunk, c_src}, src.options());
      at::Tensor buf_d = at::empty({kChunk, c_dst}, src.options());
      scalar_t* bs = buf_s.data_ptr<scalar_t>();
      const scalar_t* bd = buf_d.data_ptr<scalar_t>();
      for (int64_t k = 0; k < K; ++k) {
        if (k == identity_k || off[k + 1] == off[k]) continue;
        const auto range = row_range(ord, didx, off[k], off[k + 1], r0, r1);
        const at::Tensor wk = transpose ? w[k].t() : w[k];
        for (const int32_t* q = range.first; q < range.second; q += kChunk) {
          const int64_t m = std::min<int64_t>(kChunk, range.second - q);
          for (int64_t j = 0; j < m; ++j)  // gather
            std::memcpy(bs + j * c_src, s + static_cast<int64_t>(sidx[q[j]]) * c_src, c_src * sizeof(scalar_t));
          at::Tensor prod = buf_d.narrow(0, 0, m);
          at::mm_out(prod, buf_s.narrow(0, 0, m), wk);  // (m, c_src) @ (c_src, c_dst)
          for (int64_t j = 0; j < m; ++j) {  // scatter-add into rows this thread owns
            scalar_t* drow = d + static_cast<int64_t>(didx[q[j]]) * c_dst;
            const scalar_t* prow = bd + j * c_dst;
#pragma omp simd
            for (int64_t c = 0; c < c_dst; ++c) drow[c] += prow[c];
          }
        }
      }
    }
  }
}

template <typename scalar_t>
at::Tensor weight_grad_impl(const at::Tensor& features, const at::Tensor& grad_out, const int32_t* iidx,
                            const int32_t* oidx, const int32_t* ord, const std::vector<int64_t>& off,
                            int64_t identity_k, int64_t K) {
  const int64_t n_out = grad_out.size(0), c_in = features.size(1), c_out = grad_out.size(1);
  const int nt = threads_for(n_out);
  at::Tensor parts = at::zeros({nt, K, c_in, c_out}, features.options());
  const scalar_t* f = features.data_ptr<scalar_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();
#pragma omp parallel num_threads(nt)
  {
    c10::AutoGradMode no_grad(false);
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t r0 = n_out * t / T, r1 = n_out * (t + 1) / T;
    if (r1 > r0) {
      at::Tensor gw = parts[t];
      if (identity_k >= 0) {
        at::Tensor gk = gw[identity_k];
        gk.addmm_(features.narrow(0, r0, r1 - r0).t(), grad_out.narrow(0, r0, r1 - r0));
      }
      at::Tensor buf_x = at::empty({kChunk, c_in}, features.options());
      at::Tensor buf_g = at::empty({kChunk, c_out}, features.options());
      scalar_t* bx = buf_x.data_ptr<scalar_t>();
      scalar_t* bg = buf_g.data_ptr<scalar_t>();
      for (int64_t k = 0; k < K; ++k) {
        if (k == identity_k || off[k + 1] == off[k]) continue;
        const auto range = row_range(ord, oidx, off[k], off[k + 1], r0, r1);
        at::Tensor gk = gw[k];
        for (const int32_t* q = range.first; q < range.second; q += kChunk) {
          const int64_t m = std::min<int64_t>(kChunk, range.second - q);
          for (int64_t j = 0; j < m; ++j) {
            std::memcpy(bx + j * c_in, f + static_cast<int64_t>(iidx[q[j]]) * c_in, c_in * sizeof(scalar_t));
            std::memcpy(bg + j * c_out, g + static_cast<int64_t>(oidx[q[j]]) * c_out, c_out * sizeof(scalar_t));
          }
          gk.addmm_(buf_x.narrow(0, 0, m).t(), buf_g.narrow(0, 0, m));  // (c_in, m) @ (m, c_out)
        }
      }
    }
  }
  return nt == 1 ? parts[0] : parts.sum(0);
}

}  // namespace

void conv_rows_cpu(const at::Tensor& src, const at::Tensor& weight, bool transpose_weight,
                   const c10::optional<at::Tensor>& bias, const at::Tensor& src_idx, const at::Tensor& dst_idx,
                   const at::Tensor& order, const std::vector<int64_t>& off, int64_t identity_k, at::Tensor& dst) {
  if (dst.size(0) == 0) return;
  const at::Tensor w = weight.detach();
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "conv_rows_cpu", [&] {
    conv_rows_impl<scalar_t>(src, w, transpose_weight, bias, src_idx.data_ptr<int32_t>(), dst_idx.data_ptr<int32_t>(),
                             order.data_ptr<int32_t>(), off, identity_k, dst);
  });
}

at::Tensor weight_grad_cpu(const at::Tensor& features, const at::Tensor& grad_out, const at::Tensor& in_idx,
                           const at::Tensor& out_idx, const at::Tensor& out_order, const std::vector<int64_t>& off,
                           int64_t identity_k, int64_t K) {
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "weight_grad_cpu", [&] {
    out = weight_grad_impl<scalar_t>(features.detach(), grad_out.detach(), in_idx.data_ptr<int32_t>(),
                                     out_idx.data_ptr<int32_t>(), out_order.data_ptr<int32_t>(), off, identity_k, K);
  });
  return out;
}

}  // namespace dense3d
