// CUDA kernels of the saner_kernels ops; the host side (checks, launches, registration) is saner_cuda.cu.
//
// - 128-bit vector loads/stores (Pack<T>: 4 fp32, 8 bf16/fp16, 2 fp64) when every pointer is 16-byte
//   aligned (flat buckets always are), element by element otherwise (unaligned views such as v[1:]);
//   kUnroll packs per thread are loaded before any is used, so several loads are in flight per thread.
// - The scale s, the skip flag and GradScaler's inv_scale are read from device memory inside the kernels:
//   no host sync. A nonzero skip makes perturb_ and restore_ write nothing and update_ only restore w and
//   zero the gradients it was asked to. e is +0 when s == 0 (nothing was perturbed).
// - Math in fp32 (fp64 for fp64 storage) in the reference's order. Built with -fmad=false so that the
//   compiler fuses nothing; the reference's torch.add(x, y, alpha=a) steps, which torch's CUDA kernels
//   evaluate as one fma, are explicit fma() calls here.
// - Variants are template switches, so a variant loads only what it uses: no buf in a first momentum
//   step, no g_sgd when neither e = g_sgd * s, the group mask, the average's commit nor GSAM needs it
//   (adaptive, alpha = 1, no stats, no average, no GSAM); no avg without the averaging variant. The paths
//   without the contract-v3 switches (average, GSAM) compile to the same code as before them.
#pragma once

#include <cstdint>
#include <type_traits>

namespace saner_kernels {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kNormMaxBlocks = 1024;

template <typename T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// Item i of an array: a 16-byte pack (kVec) or one element.
template <typename T, bool kVec>
struct Access {
  static constexpr int N = kVec ? Pack<T>::N : 1;
  struct Item {
    T v[N];
  };
  __device__ __forceinline__ static Item load(const T* p, int64_t i) {
    Item it;
    if constexpr (kVec) {
      const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p + i * N);
#pragma unroll
      for (int k = 0; k < N; ++k) it.v[k] = pk.v[k];
    } else {
      it.v[0] = p[i];
    }
    return it;
  }
  __device__ __forceinline__ static void store(T* p, int64_t i, const Item& it) {
    if constexpr (kVec) {
      Pack<T> pk;
#pragma unroll
      for (int k = 0; k < N; ++k) pk.v[k] = it.v[k];
      *reinterpret_cast<Pack<T>*>(p + i * N) = pk;
    } else {
      p[i] = it.v[0];
    }
  }
  __device__ __forceinline__ static void store_zero(T* p, int64_t i) {
    Item z;
#pragma unroll
    for (int k = 0; k < N; ++k) z.v[k] = T(0);
    store(p, i, z);
  }
};

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T x) {
  return static_cast<acc_t<T>>(x);
}

__device__ __forceinline__ float fma_(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return __fma_rn(a, b, c); }

// The scale (or GSAM's gsam_k, typed like it): a 0-dim fp32 tensor, or fp64 (fp64 buckets); exact as a double.
struct ScaleArg {
  const void* p;
  bool is_double;
  __device__ __forceinline__ double get() const {
    return is_double ? *static_cast<const double*>(p) : static_cast<double>(*static_cast<const float*>(p));
  }
};

__device__ __forceinline__ bool skipped(const float* skip) { return *skip != 0.0f; }

// The averaging variants' direction d = dir_g * g + dir_avg * avg: two products and a sum, the reference's order.
template <typename C>
struct DirArg {
  C dg, da;
  __device__ __forceinline__ C operator()(C g, C avg) const { return g * dg + avg * da; }
};

// Where the e that restore_ (and a skipped update_) subtracts comes from.
enum RestoreSource : int { kFromGsgd = 0, kFromE = 1, kFromDirection = 2 };

// The grid-stride schedule of every elementwise kernel (launched with kThreads threads per block): item
// indices of this thread, kUnroll at a time. kThreads, not blockDim.x: the kUnroll addresses of an array
// then differ by compile-time offsets, one register pair per array instead of one per load.
__device__ __forceinline__ int64_t first_base() {
  return static_cast<int64_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x;
}
__device__ __forceinline__ int64_t base_stride() { return static_cast<int64_t>(gridDim.x) * kThreads * kUnroll; }
__device__ __forceinline__ int64_t item_index(int64_t base, int u) { return base + u * kThreads; }

// ------------------------------------------------------------------------------------ grad_sq_norm
// Two stages, fixed order: a grid fixed by n writes one fp64 partial per block (each thread sums its
// elements in a fixed sequence, then a fixed tree inside the block), then one block adds the partials in a
// fixed tree. Each term: x formed in the compute type as the reference forms it (|w| * g in fp32 for 16-
// and 32-bit storage), then squared and summed in fp64; the square of an fp32 value is exact in fp64.
//
// Error bound, fp32 result: the terms are exact and >= 0, so with u = 2^-53 and h the longest chain of fp64
// additions from a term to the sum, |sum - S| <= h*u/(1 - h*u) * S (recursive summation of non-negative
// terms). A thread adds at most ceil(n / (kNormMaxBlocks * kThreads * kUnroll * N)) * kUnroll * N <=
// n/2^18 + 32 terms, plus one tail element; the block tree and the second stage add 10 levels each:
// h <= n/2^18 + 53. For n <= 2^33: h*u < 3.7e-12, and with the final rounding to fp32,
// |result - S| <= (2^-24 + 3.7e-12) * S: within one fp32 rounding of the exact sum. The fp64 sum cannot
// overflow (2^33 terms of at most FLT_MAX^2 ~ 1.2e77); an exact sum above FLT_MAX (||g|| above ~1.8e19)
// rounds to inf in fp32, as the reference's fp64 sum does when cast to fp32. fp64 storage: the squares
// round too, |result - S| <= (h + 1)*u/(1 - (h + 1)*u) * S.
template <typename C>
__device__ __forceinline__ C block_sum(C v, C* shared) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < n_warps) ? shared[threadIdx.x] : C(0);
  if (warp == 0) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

// One term of the norm: x = d (g, or the average direction) or |w| * d, formed in the compute type as the
// reference forms it, squared in fp64.
template <typename T, bool kAdaptive, bool kAvg>
__device__ __forceinline__ double square(T g, T w, T a, DirArg<acc_t<T>> dir) {
  acc_t<T> x = to_acc(g);
  if constexpr (kAvg) x = dir(x, to_acc(a));
  if constexpr (kAdaptive) x = fabs(to_acc(w)) * x;
  const double xd = static_cast<double>(x);
  return xd * xd;
}

template <typename T, bool kVec, bool kAdaptive, bool kAvg>
__global__ void __launch_bounds__(kThreads)
    sq_norm_partial_kernel(const T* __restrict__ g, const T* __restrict__ w, const T* __restrict__ avg,
                           DirArg<acc_t<T>> dir, int64_t n_items, int64_t n, double* __restrict__ partial) {
  using A = Access<T, kVec>;
  __shared__ double shared[32];
  double acc = 0.0;
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
    typename A::Item gi[kUnroll], wi[kUnroll], ai[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        gi[u] = A::load(g, i);
        if constexpr (kAdaptive) wi[u] = A::load(w, i);
        if constexpr (kAvg) ai[u] = A::load(avg, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (item_index(base, u) < n_items) {
#pragma unroll
        for (int k = 0; k < A::N; ++k) {
          acc += square<T, kAdaptive, kAvg>(gi[u].v[k], kAdaptive ? wi[u].v[k] : T(0), kAvg ? ai[u].v[k] : T(0),
                                            dir);
        }
      }
    }
  }
  // Elements past the last whole pack (vector path only): block 0 takes them.
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) {
      acc += square<T, kAdaptive, kAvg>(g[j], kAdaptive ? w[j] : T(0), kAvg ? avg[j] : T(0), dir);
    }
  }
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// The second stage of the norm (kSums = 1) and of gsam_dot_norm (kSums = 2): partial holds kSums rows of
// n_partial block sums; one block adds each row in a fixed tree and writes out[0 .. kSums).
template <typename Out, int kSums>
__global__ void sums_final_kernel(const double* __restrict__ partial, int n_partial, Out* __restrict__ out) {
  __shared__ double shared[kSums][32];  // one per sum: no block_sum reads what the next one writes
#pragma unroll
  for (int r = 0; r < kSums; ++r) {
    double v = 0.0;
    for (int i = threadIdx.x; i < n_partial; i += blockDim.x) v += partial[r * n_partial + i];
    v = block_sum(v, shared[r]);
    if (threadIdx.x == 0) out[r] = static_cast<Out>(v);
  }
}

// ------------------------------------------------------------------------------------ gsam_dot_norm
// [sum(g_sgd * g), sum((|w| g)^2)] (g when not adaptive): the norm's scheme with two sums, written as two rows
// of partials (dot, then squares). The terms are formed in fp64, as the reference forms them: g_sgd * g and
// |w| * g are exact in fp64 for 16- and 32-bit storage (only the square rounds). The dot product's terms have
// both signs: its error bound is the norm's, relative to the sum of the terms' magnitudes.
template <typename T, bool kVec, bool kAdaptive>
__global__ void __launch_bounds__(kThreads)
    dot_norm_partial_kernel(const T* __restrict__ g_sgd, const T* __restrict__ g, const T* __restrict__ w,
                            int64_t n_items, int64_t n, double* __restrict__ partial) {
  using A = Access<T, kVec>;
  __shared__ double shared_dot[32], shared_sq[32];
  double dot = 0.0, sq = 0.0;
  auto add = [&](T gs, T gv, T wv) {
    const double gd = static_cast<double>(to_acc(gv));
    dot += static_cast<double>(to_acc(gs)) * gd;
    const double x = kAdaptive ? fabs(static_cast<double>(to_acc(wv))) * gd : gd;
    sq += x * x;
  };
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
    typename A::Item gsi[kUnroll], gi[kUnroll], wi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        gsi[u] = A::load(g_sgd, i);
        gi[u] = A::load(g, i);
        if constexpr (kAdaptive) wi[u] = A::load(w, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (item_index(base, u) < n_items) {
#pragma unroll
        for (int k = 0; k < A::N; ++k) add(gsi[u].v[k], gi[u].v[k], kAdaptive ? wi[u].v[k] : T(0));
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) add(g_sgd[j], g[j], kAdaptive ? w[j] : T(0));
  }
  dot = block_sum(dot, shared_dot);
  sq = block_sum(sq, shared_sq);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = dot;
    partial[gridDim.x + blockIdx.x] = sq;
  }
}

// ------------------------------------------------------------------------------------ perturb_
// e = (w*w*d*s if adaptive else d*s);  w <- w + e;  e stored when adaptive;  g_sgd <- g when copying.
// d = g, or the average direction (kAvg).
template <typename C, bool kAdaptive>
__device__ __forceinline__ C perturb_one(C& w, C d, C s) {
  const C ev = kAdaptive ? w * w * d * s : d * s;
  w = w + ev;
  return ev;
}

template <typename T, bool kVec, bool kAdaptive, bool kCopy, bool kAvg>
__global__ void __launch_bounds__(kThreads)
    perturb_kernel(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ g_sgd, T* __restrict__ e,
                   const T* __restrict__ avg, DirArg<acc_t<T>> dir, ScaleArg scale, const float* __restrict__ skip,
                   int64_t n_items, int64_t n) {
  if (skipped(skip)) return;
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  const C s = static_cast<C>(scale.get());
  auto direction = [&](T gv, T av) -> C { return kAvg ? dir(to_acc(gv), to_acc(av)) : to_acc(gv); };
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
    typename A::Item gi[kUnroll], wi[kUnroll], ai[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        gi[u] = A::load(g, i);
        wi[u] = A::load(w, i);
        if constexpr (kAvg) ai[u] = A::load(avg, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        typename A::Item ei;
#pragma unroll
        for (int k = 0; k < A::N; ++k) {
          C wv = to_acc(wi[u].v[k]);
          const C d = direction(gi[u].v[k], kAvg ? ai[u].v[k] : T(0));
          ei.v[k] = static_cast<T>(perturb_one<C, kAdaptive>(wv, d, s));
          wi[u].v[k] = static_cast<T>(wv);
        }
        A::store(w, i, wi[u]);
        if constexpr (kCopy) A::store(g_sgd, i, gi[u]);  // g itself, not the direction
        if constexpr (kAdaptive) A::store(e, i, ei);
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) {
      const T gj = g[j];
      C wv = to_acc(w[j]);
      const C ev = perturb_one<C, kAdaptive>(wv, direction(gj, kAvg ? avg[j] : T(0)), s);
      w[j] = static_cast<T>(wv);
      if constexpr (kCopy) g_sgd[j] = gj;
      if constexpr (kAdaptive) e[j] = static_cast<T>(ev);
    }
  }
}

// ------------------------------------------------------------------------------------ restore_
// w <- w - e, e stored (kFromE) or recomputed as d * s (d = g_sgd, or the average direction from g_sgd and
// avg): the very product perturb_ added. The callers skip it when s == 0 (then e is +0: nothing was perturbed).
template <typename T, bool kVec, int kSrc>
__device__ __forceinline__ void restore_items(T* __restrict__ w, const T* __restrict__ src, const T* __restrict__ avg,
                                              DirArg<acc_t<T>> dir, acc_t<T> s, int64_t n_items, int64_t n) {
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  constexpr bool kAvg = kSrc == kFromDirection;
  auto one = [&](T wv, T sv, T av) -> T {
    C ev;
    if constexpr (kSrc == kFromE) {
      ev = to_acc(sv);
    } else if constexpr (kAvg) {
      ev = dir(to_acc(sv), to_acc(av)) * s;
    } else {
      ev = to_acc(sv) * s;
    }
    return static_cast<T>(to_acc(wv) - ev);
  };
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
    typename A::Item wi[kUnroll], si[kUnroll], ai[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        wi[u] = A::load(w, i);
        si[u] = A::load(src, i);
        if constexpr (kAvg) ai[u] = A::load(avg, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
#pragma unroll
        for (int k = 0; k < A::N; ++k) wi[u].v[k] = one(wi[u].v[k], si[u].v[k], kAvg ? ai[u].v[k] : T(0));
        A::store(w, i, wi[u]);
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) {
      w[j] = one(w[j], src[j], kAvg ? avg[j] : T(0));
    }
  }
}

template <typename T, bool kVec, int kSrc>
__global__ void __launch_bounds__(kThreads)
    restore_kernel(T* __restrict__ w, const T* __restrict__ src, const T* __restrict__ avg, DirArg<acc_t<T>> dir,
                   ScaleArg scale, const float* __restrict__ skip, int64_t n_items, int64_t n) {
  const double sd = scale.get();
  if (skipped(skip) || sd == 0.0) return;
  restore_items<T, kVec, kSrc>(w, src, avg, dir, static_cast<acc_t<T>>(sd), n_items, n);
}

// ------------------------------------------------------------------------------------ update_
template <typename C>
struct UpdateScalars {
  C neg_lr, mu, damp, wd, alpha, eps;
  C dg, da, keep, take;  // the average's direction and commit (kAvg)
  C gsam_alpha;          // GSAM (kGsam)
  bool use_alpha, use_wd, nesterov;
  __host__ __device__ DirArg<C> dir() const { return DirArg<C>{dg, da}; }
};

// The scalars read from device memory at the start of an update.
template <typename C>
struct DeviceScalars {
  C s;             // the perturbation scale
  C inv;           // GradScaler's 1 / scale, when unscale
  C k;             // GSAM's gsam_k (kGsam)
  bool perturbed;  // s != 0; else e is +0 (g_sgd may hold inf, a stored e is stale)
  bool unscale;
};

// Group of g against den = g_sgd + eps (division-free, docs/design.md "Numerics"): 0 = A, 1 = B, 2 = C.
template <typename C>
__device__ __forceinline__ int group_of(C g, C gs, C eps) {
  const C den = gs + eps;
  const bool same = (g > C(0) && den > C(0)) || (g < C(0) && den < C(0));
  const bool smaller = fabs(g) < fabs(den);
  return same ? (smaller ? 1 : 0) : 2;
}

// One element; returns the group: 0 = A, 1 = B, 2 = C. buf is read only in a running momentum step; avg (kAvg)
// is read for e and the commit, and holds the committed average on return.
template <typename C, bool kAdaptive, bool kHasBuf, bool kFirst, bool kMask, bool kAvg, bool kGsam>
__device__ __forceinline__ int update_one(C& w, C g, C gs, C& buf, C e, C& avg, const DeviceScalars<C>& q,
                                          const UpdateScalars<C>& p) {
  C ev = C(0);  // e from the stored (scaled) g_sgd (and avg)
  if (q.perturbed) {
    if constexpr (kAdaptive) {
      ev = e;
    } else if constexpr (kAvg) {
      ev = p.dir()(gs, avg) * q.s;
    } else {
      ev = gs * q.s;
    }
  }
  const C wv = w - ev;
  if (q.unscale) {
    g = g * q.inv;
    gs = gs * q.inv;
  }
  if constexpr (kGsam) g = g - (gs - q.k * g) * p.gsam_alpha;  // t = k*g; u = g_sgd - t; v = u*alpha; g - v
  C d = g;
  int group = 2;
  if constexpr (kMask) {
    group = group_of(g, gs, p.eps);
    if (p.use_alpha && group == 1) d = g * p.alpha;
  }
  if (p.use_wd) d = fma_(wv, p.wd, d);  // d.add(w, alpha=wd); no 0 * w term: an infinite weight stays inf
  if constexpr (kHasBuf) {
    const C nb = kFirst ? d : fma_(d, p.damp, buf * p.mu);  // buf.mul(mu).add_(d, alpha=1-tau)
    d = p.nesterov ? fma_(nb, p.mu, d) : nb;                 // d.add(buf, alpha=mu)
    buf = nb;
  }
  w = fma_(d, p.neg_lr, wv);  // w.add(d, alpha=-lr)
  if constexpr (kAvg) avg = avg * p.keep + gs * p.take;  // the unscaled g_sgd
  return group;
}

// stats += (A, B, n_valid - A - B): warp sums, one atomicAdd per warp and counter (integers: exact in any
// order); C is n_valid, added once by thread 0 of block 0, minus every warp's A + B (modulo 2^64).
// Every thread of every block must call it (full-warp shuffles).
__device__ __forceinline__ void add_counts(int ca, int cb, unsigned long long* stats, int64_t n_valid) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ca += __shfl_down_sync(0xffffffffu, ca, off);
    cb += __shfl_down_sync(0xffffffffu, cb, off);
  }
  if ((threadIdx.x & 31) == 0) {
    if (ca) atomicAdd(stats + 0, static_cast<unsigned long long>(ca));
    if (cb) atomicAdd(stats + 1, static_cast<unsigned long long>(cb));
    if (ca + cb) atomicAdd(stats + 2, 0ull - static_cast<unsigned long long>(ca + cb));
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(stats + 2, static_cast<unsigned long long>(n_valid));
}

template <typename T, bool kVec>
__device__ void zero_both(T* __restrict__ g, T* __restrict__ g_sgd, int64_t n_items, int64_t n) {
  using A = Access<T, kVec>;
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        A::store_zero(g, i);
        A::store_zero(g_sgd, i);
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) g[j] = g_sgd[j] = T(0);
  }
}

template <typename T, bool kVec, bool kAdaptive, bool kHasBuf, bool kFirst, bool kMask, bool kAvg, bool kGsam>
__global__ void __launch_bounds__(kThreads)
    update_kernel(T* __restrict__ w, T* __restrict__ g, T* __restrict__ g_sgd, T* __restrict__ buf,
                  const T* __restrict__ e, T* __restrict__ avg, ScaleArg scale, const float* __restrict__ skip,
                  const float* __restrict__ inv_scale, ScaleArg gsam_k, UpdateScalars<acc_t<T>> p,
                  unsigned long long* __restrict__ stats, int64_t n_valid, bool zero_grads, int64_t n_items,
                  int64_t n) {
  // g_sgd for e = g_sgd * s, the mask, the average's commit or GSAM
  constexpr bool kReadGsgd = !kAdaptive || kMask || kAvg || kGsam;
  constexpr bool kReadBuf = kHasBuf && !kFirst;
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  const double sd = scale.get();
  if (skipped(skip)) {  // an overflow found in the second pass: restore w, zero what was asked for; avg untouched
    if (sd != 0.0) {
      constexpr int kSrc = kAdaptive ? kFromE : kAvg ? kFromDirection : kFromGsgd;
      restore_items<T, kVec, kSrc>(w, kAdaptive ? e : g_sgd, avg, p.dir(), static_cast<C>(sd), n_items, n);
    }
    if (zero_grads) zero_both<T, kVec>(g, g_sgd, n_items, n);  // the same items per thread: after its reads
    return;
  }
  DeviceScalars<C> q;
  q.s = static_cast<C>(sd);
  q.perturbed = sd != 0.0;
  q.unscale = inv_scale != nullptr;
  q.inv = q.unscale ? static_cast<C>(*inv_scale) : C(1);
  q.k = kGsam ? static_cast<C>(gsam_k.get()) : C(0);
  int ca = 0, cb = 0;  // Group A and B counts over elements < n_valid
  auto count = [&](int group, int64_t j) {
    if (kMask && j < n_valid) {
      ca += group == 0;
      cb += group == 1;
    }
  };
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
    typename A::Item wi[kUnroll], gi[kUnroll], gsi[kUnroll], bi[kUnroll], ei[kUnroll], ai[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        wi[u] = A::load(w, i);
        gi[u] = A::load(g, i);
        if constexpr (kReadGsgd) gsi[u] = A::load(g_sgd, i);
        if constexpr (kReadBuf) bi[u] = A::load(buf, i);
        if constexpr (kAdaptive) ei[u] = A::load(e, i);
        if constexpr (kAvg) ai[u] = A::load(avg, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        typename A::Item bo;  // the new buf (not bi: in a first step bi was never loaded)
#pragma unroll
        for (int k = 0; k < A::N; ++k) {
          C wv = to_acc(wi[u].v[k]);
          C bv = kReadBuf ? to_acc(bi[u].v[k]) : C(0);
          C av = kAvg ? to_acc(ai[u].v[k]) : C(0);
          const int group = update_one<C, kAdaptive, kHasBuf, kFirst, kMask, kAvg, kGsam>(
              wv, to_acc(gi[u].v[k]), kReadGsgd ? to_acc(gsi[u].v[k]) : C(0), bv,
              kAdaptive ? to_acc(ei[u].v[k]) : C(0), av, q, p);
          count(group, i * A::N + k);
          wi[u].v[k] = static_cast<T>(wv);
          bo.v[k] = static_cast<T>(bv);
          if constexpr (kAvg) ai[u].v[k] = static_cast<T>(av);
        }
        A::store(w, i, wi[u]);
        if constexpr (kHasBuf) A::store(buf, i, bo);
        if constexpr (kAvg) A::store(avg, i, ai[u]);
        if (zero_grads) {
          A::store_zero(g, i);
          A::store_zero(g_sgd, i);
        }
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) {
      C wv = to_acc(w[j]);
      C bv = kReadBuf ? to_acc(buf[j]) : C(0);
      C av = kAvg ? to_acc(avg[j]) : C(0);
      const int group = update_one<C, kAdaptive, kHasBuf, kFirst, kMask, kAvg, kGsam>(
          wv, to_acc(g[j]), kReadGsgd ? to_acc(g_sgd[j]) : C(0), bv, kAdaptive ? to_acc(e[j]) : C(0), av, q, p);
      count(group, j);
      w[j] = static_cast<T>(wv);
      if constexpr (kHasBuf) buf[j] = static_cast<T>(bv);
      if constexpr (kAvg) avg[j] = static_cast<T>(av);
      if (zero_grads) g[j] = g_sgd[j] = T(0);
    }
  }
  if (kMask && stats != nullptr) add_counts(ca, cb, stats, n_valid);
}

// ------------------------------------------------------------------------------------ reweight_
// Unscale g and g_sgd (inv_scale given), g <- alpha * g on Group B; counts as update_. Skipped: nothing written.
// kMask: alpha != 1 or counted (reads g_sgd); kWrite: alpha != 1 or unscaled (writes g). The host launches
// nothing when neither holds.
template <typename T, bool kVec, bool kMask, bool kWrite>
__global__ void __launch_bounds__(kThreads)
    reweight_kernel(T* __restrict__ g, const T* __restrict__ g_sgd, const float* __restrict__ skip,
                    const float* __restrict__ inv_scale, acc_t<T> alpha, acc_t<T> eps, bool use_alpha,
                    unsigned long long* __restrict__ stats, int64_t n_valid, int64_t n_items, int64_t n) {
  if (skipped(skip)) return;
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  const bool unscale = inv_scale != nullptr;
  const C inv = unscale ? static_cast<C>(*inv_scale) : C(1);
  int ca = 0, cb = 0;
  auto one = [&](T gv, T gsv, int64_t j) -> T {
    C x = to_acc(gv);
    C xs = kMask ? to_acc(gsv) : C(0);
    if (unscale) {
      x = x * inv;
      xs = xs * inv;
    }
    C d = x;
    if constexpr (kMask) {
      const int group = group_of(x, xs, eps);
      if (use_alpha && group == 1) d = x * alpha;
      if (j < n_valid) {
        ca += group == 0;
        cb += group == 1;
      }
    }
    return static_cast<T>(d);
  };
  for (int64_t base = first_base(); base < n_items; base += base_stride()) {
    typename A::Item gi[kUnroll], gsi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
        gi[u] = A::load(g, i);
        if constexpr (kMask) gsi[u] = A::load(g_sgd, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = item_index(base, u);
      if (i < n_items) {
#pragma unroll
        for (int k = 0; k < A::N; ++k) gi[u].v[k] = one(gi[u].v[k], kMask ? gsi[u].v[k] : T(0), i * A::N + k);
        if constexpr (kWrite) A::store(g, i, gi[u]);
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) {
      const T d = one(g[j], kMask ? g_sgd[j] : T(0), j);
      if constexpr (kWrite) g[j] = d;
    }
  }
  if (kMask && stats != nullptr) add_counts(ca, cb, stats, n_valid);
}

}  // namespace cuda
}  // namespace saner_kernels
