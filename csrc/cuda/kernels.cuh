// CUDA kernels of the saner_kernels ops; the host side (checks, launches, registration) is saner_cuda.cu.
//
// - One elementwise driver (for_each_item) runs every op: 128-bit vector loads/stores (Pack<T>: 4 fp32,
//   8 bf16/fp16, 2 fp64) when every pointer is 16-byte aligned (flat buckets always are), element by element
//   otherwise (unaligned views such as v[1:]); each op is a small struct saying what an item reads and writes.
// - The scale s, the skip flag and GradScaler's inv_scale are read from device memory inside the kernels:
//   no host sync. What skip and s == 0 mean: docs/design.md, "Kernel contract".
// - Math in fp32 (fp64 for fp64 storage) in the reference's order. Built with -fmad=false so that the
//   compiler fuses nothing; the reference's torch.add(x, y, alpha=a) steps, which torch's CUDA kernels
//   evaluate as one fma, are explicit fma() calls here.
// - Variants are template switches, so a variant loads only what it uses: no buf in a first momentum
//   step, no g_sgd when neither e = g_sgd * s, the group mask, the average's commit nor GSAM needs it
//   (adaptive, alpha = 1, no stats, no average, no GSAM); no avg without the averaging variant.
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
  C dir_g, dir_avg;
  __device__ __forceinline__ C operator()(C g, C avg) const { return g * dir_g + avg * dir_avg; }
};

// Where the e that restore_ (and a skipped update_) subtracts comes from.
enum RestoreSource : int { kFromGsgd = 0, kFromE = 1, kFromDirection = 2 };

// ------------------------------------------------------------------------------------ the elementwise driver
// Every elementwise kernel is for_each_item over an op (launched with kThreads threads per block): a grid-stride
// loop over items (16-byte packs, or single elements when a pointer is unaligned), kUnroll items per thread and
// round, all loaded before any is used, so several loads are in flight per thread; then, on the vector path,
// block 0 takes the elements past the last whole pack. An op holds its pointers and scalars and says what an
// item reads and what it writes:
//   template <typename A> struct Loaded;                 what one item of Access A holds in registers
//   template <typename A> Loaded<A> load(int64_t i);     reads item i
//   template <typename A> void apply(Loaded<A>&, int64_t i);  computes item i (its elements i*A::N + k), writes it
// The tail runs the same op with A = Access<T, false> (one element per item).
//
// kThreads, not blockDim.x: the kUnroll addresses of an array then differ by compile-time offsets, one register
// pair per array instead of one per load.
template <typename T, bool kVec, typename Op>
__device__ __forceinline__ void for_each_item(Op& op, int64_t n_items, int64_t n) {
  using A = Access<T, kVec>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x; base < n_items;
       base += stride) {
    typename Op::template Loaded<A> in[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < n_items) in[u] = op.template load<A>(i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < n_items) op.template apply<A>(in[u], i);
    }
  }
  if (kVec && blockIdx.x == 0) {  // elements past the last whole pack
    using E = Access<T, false>;
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += kThreads) {
      typename Op::template Loaded<E> one = op.template load<E>(j);
      op.template apply<E>(one, j);
    }
  }
}

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

// sum(x^2), x = d (g, or the average direction) or |w| * d, formed in the compute type as the reference forms
// it, squared in fp64.
template <typename T, bool kAdaptive, bool kAvg>
struct SqNormOp {
  const T* __restrict__ g;
  const T* __restrict__ w;
  const T* __restrict__ avg;
  DirArg<acc_t<T>> dir;
  double sum = 0.0;

  template <typename A>
  struct Loaded {
    typename A::Item g, w, avg;
  };
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t i) const {
    Loaded<A> in;
    in.g = A::load(g, i);
    if constexpr (kAdaptive) in.w = A::load(w, i);
    if constexpr (kAvg) in.avg = A::load(avg, i);
    return in;
  }
  template <typename A>
  __device__ __forceinline__ void apply(const Loaded<A>& in, int64_t) {
#pragma unroll
    for (int k = 0; k < A::N; ++k) {
      acc_t<T> x = to_acc(in.g.v[k]);
      if constexpr (kAvg) x = dir(x, to_acc(in.avg.v[k]));
      if constexpr (kAdaptive) x = fabs(to_acc(in.w.v[k])) * x;
      const double xd = static_cast<double>(x);
      sum += xd * xd;
    }
  }
};

template <typename T, bool kVec, bool kAdaptive, bool kAvg>
__global__ void __launch_bounds__(kThreads)
    sq_norm_partial_kernel(const T* __restrict__ g, const T* __restrict__ w, const T* __restrict__ avg,
                           DirArg<acc_t<T>> dir, double* __restrict__ partial, int64_t n_items, int64_t n) {
  __shared__ double shared[32];
  SqNormOp<T, kAdaptive, kAvg> op{g, w, avg, dir};
  for_each_item<T, kVec>(op, n_items, n);
  const double total = block_sum(op.sum, shared);
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
template <typename T, bool kAdaptive>
struct DotNormOp {
  const T* __restrict__ g_sgd;
  const T* __restrict__ g;
  const T* __restrict__ w;
  double dot = 0.0, sq = 0.0;

  template <typename A>
  struct Loaded {
    typename A::Item g_sgd, g, w;
  };
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t i) const {
    Loaded<A> in;
    in.g_sgd = A::load(g_sgd, i);
    in.g = A::load(g, i);
    if constexpr (kAdaptive) in.w = A::load(w, i);
    return in;
  }
  template <typename A>
  __device__ __forceinline__ void apply(const Loaded<A>& in, int64_t) {
#pragma unroll
    for (int k = 0; k < A::N; ++k) {
      const double gd = static_cast<double>(to_acc(in.g.v[k]));
      dot += static_cast<double>(to_acc(in.g_sgd.v[k])) * gd;
      const double x = kAdaptive ? fabs(static_cast<double>(to_acc(in.w.v[k]))) * gd : gd;
      sq += x * x;
    }
  }
};

template <typename T, bool kVec, bool kAdaptive>
__global__ void __launch_bounds__(kThreads)
    dot_norm_partial_kernel(const T* __restrict__ g_sgd, const T* __restrict__ g, const T* __restrict__ w,
                            double* __restrict__ partial, int64_t n_items, int64_t n) {
  __shared__ double shared_dot[32], shared_sq[32];
  DotNormOp<T, kAdaptive> op{g_sgd, g, w};
  for_each_item<T, kVec>(op, n_items, n);
  const double dot = block_sum(op.dot, shared_dot);
  const double sq = block_sum(op.sq, shared_sq);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = dot;
    partial[gridDim.x + blockIdx.x] = sq;
  }
}

// ------------------------------------------------------------------------------------ perturb_
// e = (w*w*d*s if adaptive else d*s);  w <- w + e;  e stored when adaptive;  g_sgd <- g when copying.
// d = g, or the average direction (kAvg).
template <typename T, bool kAdaptive, bool kCopy, bool kAvg>
struct PerturbOp {
  T* __restrict__ w;
  const T* __restrict__ g;
  T* __restrict__ g_sgd;
  T* __restrict__ e;
  const T* __restrict__ avg;
  DirArg<acc_t<T>> dir;
  acc_t<T> s;

  template <typename A>
  struct Loaded {
    typename A::Item g, w, avg;
  };
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t i) const {
    Loaded<A> in;
    in.g = A::load(g, i);
    in.w = A::load(w, i);
    if constexpr (kAvg) in.avg = A::load(avg, i);
    return in;
  }
  template <typename A>
  __device__ __forceinline__ void apply(Loaded<A>& in, int64_t i) const {
    using C = acc_t<T>;
    typename A::Item e_out;
#pragma unroll
    for (int k = 0; k < A::N; ++k) {
      const C wv = to_acc(in.w.v[k]);
      const C d = kAvg ? dir(to_acc(in.g.v[k]), to_acc(in.avg.v[k])) : to_acc(in.g.v[k]);
      const C ev = kAdaptive ? wv * wv * d * s : d * s;
      e_out.v[k] = static_cast<T>(ev);
      in.w.v[k] = static_cast<T>(wv + ev);
    }
    A::store(w, i, in.w);
    if constexpr (kCopy) A::store(g_sgd, i, in.g);  // g itself, not the direction
    if constexpr (kAdaptive) A::store(e, i, e_out);
  }
};

template <typename T, bool kVec, bool kAdaptive, bool kCopy, bool kAvg>
__global__ void __launch_bounds__(kThreads)
    perturb_kernel(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ g_sgd, T* __restrict__ e,
                   const T* __restrict__ avg, DirArg<acc_t<T>> dir, ScaleArg scale, const float* __restrict__ skip,
                   int64_t n_items, int64_t n) {
  if (skipped(skip)) return;
  PerturbOp<T, kAdaptive, kCopy, kAvg> op{w, g, g_sgd, e, avg, dir, static_cast<acc_t<T>>(scale.get())};
  for_each_item<T, kVec>(op, n_items, n);
}

// ------------------------------------------------------------------------------------ restore_
// w <- w - e, e stored (kFromE) or recomputed as d * s (d = g_sgd, or the average direction from g_sgd and
// avg): the very product perturb_ added. The callers skip it when s == 0 (then e is +0: nothing was perturbed).
template <typename T, int kSrc>
struct RestoreOp {
  static constexpr bool kAvg = kSrc == kFromDirection;
  T* __restrict__ w;
  const T* __restrict__ src;  // e (kFromE) or g_sgd
  const T* __restrict__ avg;
  DirArg<acc_t<T>> dir;
  acc_t<T> s;

  template <typename A>
  struct Loaded {
    typename A::Item w, src, avg;
  };
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t i) const {
    Loaded<A> in;
    in.w = A::load(w, i);
    in.src = A::load(src, i);
    if constexpr (kAvg) in.avg = A::load(avg, i);
    return in;
  }
  template <typename A>
  __device__ __forceinline__ void apply(Loaded<A>& in, int64_t i) const {
    using C = acc_t<T>;
#pragma unroll
    for (int k = 0; k < A::N; ++k) {
      C ev;
      if constexpr (kSrc == kFromE) {
        ev = to_acc(in.src.v[k]);
      } else if constexpr (kAvg) {
        ev = dir(to_acc(in.src.v[k]), to_acc(in.avg.v[k])) * s;
      } else {
        ev = to_acc(in.src.v[k]) * s;
      }
      in.w.v[k] = static_cast<T>(to_acc(in.w.v[k]) - ev);
    }
    A::store(w, i, in.w);
  }
};

template <typename T, bool kVec, int kSrc>
__global__ void __launch_bounds__(kThreads)
    restore_kernel(T* __restrict__ w, const T* __restrict__ src, const T* __restrict__ avg, DirArg<acc_t<T>> dir,
                   ScaleArg scale, const float* __restrict__ skip, int64_t n_items, int64_t n) {
  const double sd = scale.get();
  if (skipped(skip) || sd == 0.0) return;
  RestoreOp<T, kSrc> op{w, src, avg, dir, static_cast<acc_t<T>>(sd)};
  for_each_item<T, kVec>(op, n_items, n);
}

// Writes zeros to g and g_sgd (a skipped update_ asked to zero the gradients).
template <typename T>
struct ZeroBothOp {
  T* __restrict__ g;
  T* __restrict__ g_sgd;

  template <typename A>
  struct Loaded {};
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t) const {
    return {};
  }
  template <typename A>
  __device__ __forceinline__ void apply(const Loaded<A>&, int64_t i) const {
    A::store_zero(g, i);
    A::store_zero(g_sgd, i);
  }
};

// ------------------------------------------------------------------------------------ update_
// What update_ and reweight_ do with the two gradients: nothing, SANER's Group B mask (by alpha, or only counted),
// or a group rule (kRuleMask: the kernels read RuleScalars; the others never do).
enum MaskMode : int { kNoMask = 0, kAlphaMask = 1, kRuleMask = 2 };

// A group rule (ops.GroupRule, docs/design.md "Kernel contract"): region bits C 1 (r < 0), Z 2 (r == 0),
// B 4 (0 < r < bound), E 8 (r == bound), A 16 (r > bound); the coefficients in and out of them.
template <typename C>
struct RuleScalars {
  C bound, in_sam, in_sgd, out_sam, out_sgd;
  int regions;
};

__device__ __forceinline__ float div_rn_(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn_(double a, double b) { return __ddiv_rn(a, b); }

// The gradient under a group rule, into d; returns the group: 0 = A (r >= bound), 1 = B (0 < r < bound), 2 = C.
// r = g / (g_sgd + eps) by IEEE division, as the reference divides; a NaN ratio is in no region (every
// comparison false) and in Group C. Two products and a sum on each side (no contraction: -fmad=false).
template <typename C>
__device__ __forceinline__ int ruled(C g, C g_sgd, C eps, const RuleScalars<C>& r, C& d) {
  const C ratio = div_rn_(g, g_sgd + eps);
  const bool in_b = ratio > C(0) && ratio < r.bound;
  const bool inside = ((r.regions & 1) && ratio < C(0)) || ((r.regions & 2) && ratio == C(0)) ||
                      ((r.regions & 4) && in_b) || ((r.regions & 8) && ratio == r.bound) ||
                      ((r.regions & 16) && ratio > r.bound);
  d = inside ? g * r.in_sam + g_sgd * r.in_sgd : g * r.out_sam + g_sgd * r.out_sgd;
  return ratio >= r.bound ? 0 : in_b ? 1 : 2;
}

template <typename C>
struct UpdateScalars {
  C neg_lr, mu, one_minus_damp, wd, alpha, eps;
  DirArg<C> dir;         // the average's direction (kAvg)
  C avg_keep, avg_take;  // the average's commit (kAvg)
  C gsam_alpha;          // GSAM (kGsam)
  bool use_alpha, use_wd, nesterov;
};

// The kRuleMask update's scalars: the others' and the rule. The other kernels take UpdateScalars itself, so that
// without a rule the kernels' parameters (and code) are what they were before the switch.
template <typename C>
struct RuledUpdateScalars : UpdateScalars<C> {
  RuleScalars<C> rule;
};
template <typename C, int kMask>
using UpdateParams = std::conditional_t<kMask == kRuleMask, RuledUpdateScalars<C>, UpdateScalars<C>>;

// The scalars read from device memory at the start of an update.
template <typename C>
struct DeviceScalars {
  C s;             // the perturbation scale
  C inv;           // GradScaler's 1 / scale, when unscale
  C k;             // GSAM's gsam_k (kGsam)
  bool perturbed;  // s != 0 (docs/design.md "Kernel contract": e is +0 otherwise)
  bool unscale;
};

// Group of g against den = g_sgd + eps (division-free, docs/design.md "Numerics"): 0 = A, 1 = B, 2 = C.
template <typename C>
__device__ __forceinline__ int group_of(C g, C g_sgd, C eps) {
  const C den = g_sgd + eps;
  const bool same = (g > C(0) && den > C(0)) || (g < C(0) && den < C(0));
  const bool smaller = fabs(g) < fabs(den);
  return same ? (smaller ? 1 : 0) : 2;
}

// Group A and B counts of this thread over elements < n_valid (update_ and reweight_ with kMask).
struct GroupTally {
  int64_t n_valid;
  int a = 0, b = 0;
  __device__ __forceinline__ void add(int group, int64_t j) {
    if (j < n_valid) {
      a += group == 0;
      b += group == 1;
    }
  }
  // stats += (A, B, n_valid - A - B): warp sums, one atomicAdd per warp and counter (integers: exact in any
  // order); C is n_valid, added once by thread 0 of block 0, minus every warp's A + B (modulo 2^64).
  // Every thread of every block must call it (full-warp shuffles).
  __device__ __forceinline__ void add_to(unsigned long long* stats) {
    int ca = a, cb = b;
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
};

// One element; returns the group: 0 = A, 1 = B, 2 = C. buf is read only in a running momentum step; avg (kAvg)
// is read for e and the commit, and holds the committed average on return.
template <typename C, bool kAdaptive, bool kHasBuf, bool kFirst, int kMask, bool kAvg, bool kGsam>
__device__ __forceinline__ int update_one(C& w, C g_sam, C g_sgd, C& buf, C e, C& avg, const DeviceScalars<C>& q,
                                          const UpdateParams<C, kMask>& p) {
  C ev = C(0);  // e from the stored (scaled) g_sgd (and avg)
  if (q.perturbed) {
    if constexpr (kAdaptive) {
      ev = e;
    } else if constexpr (kAvg) {
      ev = p.dir(g_sgd, avg) * q.s;
    } else {
      ev = g_sgd * q.s;
    }
  }
  const C wv = w - ev;
  if (q.unscale) {
    g_sam = g_sam * q.inv;
    g_sgd = g_sgd * q.inv;
  }
  if constexpr (kGsam) g_sam = g_sam - (g_sgd - q.k * g_sam) * p.gsam_alpha;  // t = k*g; u = g_sgd - t; g - u*alpha
  C d = g_sam;
  int group = 2;
  if constexpr (kMask == kRuleMask) {
    group = ruled(g_sam, g_sgd, p.eps, p.rule, d);
  } else if constexpr (kMask == kAlphaMask) {
    group = group_of(g_sam, g_sgd, p.eps);
    if (p.use_alpha && group == 1) d = g_sam * p.alpha;
  }
  if (p.use_wd) d = fma_(wv, p.wd, d);  // d.add(w, alpha=wd); no 0 * w term: an infinite weight stays inf
  if constexpr (kHasBuf) {
    const C new_buf = kFirst ? d : fma_(d, p.one_minus_damp, buf * p.mu);  // buf.mul(mu).add_(d, alpha=1-tau)
    d = p.nesterov ? fma_(new_buf, p.mu, d) : new_buf;                     // d.add(buf, alpha=mu)
    buf = new_buf;
  }
  w = fma_(d, p.neg_lr, wv);  // w.add(d, alpha=-lr)
  if constexpr (kAvg) avg = avg * p.avg_keep + g_sgd * p.avg_take;  // the unscaled g_sgd
  return group;
}

template <typename T, bool kAdaptive, bool kHasBuf, bool kFirst, int kMask, bool kAvg, bool kGsam>
struct UpdateOp {
  // g_sgd for e = g_sgd * s, the mask, the average's commit or GSAM
  static constexpr bool kReadGsgd = !kAdaptive || kMask != kNoMask || kAvg || kGsam;
  static constexpr bool kReadBuf = kHasBuf && !kFirst;
  using C = acc_t<T>;
  T* __restrict__ w;
  T* __restrict__ g_sam;
  T* __restrict__ g_sgd;
  T* __restrict__ buf;
  const T* __restrict__ e;
  T* __restrict__ avg;
  const DeviceScalars<C>& q;
  const UpdateParams<C, kMask>& p;  // the kernel's parameter itself: read where used, not copied into registers
  bool zero_grads;
  GroupTally tally;

  template <typename A>
  struct Loaded {
    typename A::Item w, g_sam, g_sgd, buf, e, avg;
  };
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t i) const {
    Loaded<A> in;
    in.w = A::load(w, i);
    in.g_sam = A::load(g_sam, i);
    if constexpr (kReadGsgd) in.g_sgd = A::load(g_sgd, i);
    if constexpr (kReadBuf) in.buf = A::load(buf, i);
    if constexpr (kAdaptive) in.e = A::load(e, i);
    if constexpr (kAvg) in.avg = A::load(avg, i);
    return in;
  }
  template <typename A>
  __device__ __forceinline__ void apply(Loaded<A>& in, int64_t i) {
    typename A::Item buf_out;  // not in.buf: a first momentum step never loads it
#pragma unroll
    for (int k = 0; k < A::N; ++k) {
      C wv = to_acc(in.w.v[k]);
      C bv = kReadBuf ? to_acc(in.buf.v[k]) : C(0);
      C av = kAvg ? to_acc(in.avg.v[k]) : C(0);
      const int group = update_one<C, kAdaptive, kHasBuf, kFirst, kMask, kAvg, kGsam>(
          wv, to_acc(in.g_sam.v[k]), kReadGsgd ? to_acc(in.g_sgd.v[k]) : C(0), bv,
          kAdaptive ? to_acc(in.e.v[k]) : C(0), av, q, p);
      if constexpr (kMask) tally.add(group, i * A::N + k);
      in.w.v[k] = static_cast<T>(wv);
      buf_out.v[k] = static_cast<T>(bv);
      if constexpr (kAvg) in.avg.v[k] = static_cast<T>(av);
    }
    A::store(w, i, in.w);
    if constexpr (kHasBuf) A::store(buf, i, buf_out);
    if constexpr (kAvg) A::store(avg, i, in.avg);
    if (zero_grads) {
      A::store_zero(g_sam, i);
      A::store_zero(g_sgd, i);
    }
  }
};

template <typename T, bool kVec, bool kAdaptive, bool kHasBuf, bool kFirst, int kMask, bool kAvg, bool kGsam>
__global__ void __launch_bounds__(kThreads)
    update_kernel(T* __restrict__ w, T* __restrict__ g_sam, T* __restrict__ g_sgd, T* __restrict__ buf,
                  const T* __restrict__ e, T* __restrict__ avg, ScaleArg scale, const float* __restrict__ skip,
                  const float* __restrict__ inv_scale, ScaleArg gsam_k, UpdateParams<acc_t<T>, kMask> p,
                  unsigned long long* __restrict__ stats, int64_t n_valid, bool zero_grads, int64_t n_items,
                  int64_t n) {
  using C = acc_t<T>;
  const double sd = scale.get();
  if (skipped(skip)) {  // restore w, zero what was asked for (docs/design.md "Kernel contract")
    if (sd != 0.0) {
      constexpr int kSrc = kAdaptive ? kFromE : kAvg ? kFromDirection : kFromGsgd;
      RestoreOp<T, kSrc> restore{w, kAdaptive ? e : g_sgd, avg, p.dir, static_cast<C>(sd)};
      for_each_item<T, kVec>(restore, n_items, n);
    }
    if (zero_grads) {  // the same items per thread: after its reads
      ZeroBothOp<T> zero{g_sam, g_sgd};
      for_each_item<T, kVec>(zero, n_items, n);
    }
    return;
  }
  DeviceScalars<C> q;
  q.s = static_cast<C>(sd);
  q.perturbed = sd != 0.0;
  q.unscale = inv_scale != nullptr;
  q.inv = q.unscale ? static_cast<C>(*inv_scale) : C(1);
  q.k = kGsam ? static_cast<C>(gsam_k.get()) : C(0);
  UpdateOp<T, kAdaptive, kHasBuf, kFirst, kMask, kAvg, kGsam> op{
      w, g_sam, g_sgd, buf, e, avg, q, p, zero_grads, GroupTally{n_valid}};
  for_each_item<T, kVec>(op, n_items, n);
  if (kMask && stats != nullptr) op.tally.add_to(stats);
}

// ------------------------------------------------------------------------------------ reweight_
// Unscale g_sam and g_sgd (inv_scale given), g_sam <- alpha * g_sam on Group B; counts as update_. Skipped:
// nothing written. kMask: alpha != 1 or counted (reads g_sgd); kWrite: alpha != 1 or unscaled (writes g_sam).
// The host launches nothing when neither holds.
// reweight_'s alpha parameter, or with a rule (which replaces the alpha reweighting) the rule in its place: the
// kernels without a rule keep the parameters they had before the switch.
template <typename C, int kMask>
using ReweightAlpha = std::conditional_t<kMask == kRuleMask, RuleScalars<C>, C>;

template <typename T, int kMask, bool kWrite>
struct ReweightOp {
  using C = acc_t<T>;
  T* __restrict__ g_sam;
  const T* __restrict__ g_sgd;
  C alpha, eps, inv;
  bool use_alpha, unscale;
  GroupTally tally;
  const ReweightAlpha<C, kMask>& rule;  // the kernel's parameter: the rule (kRuleMask; alpha otherwise, unused)

  template <typename A>
  struct Loaded {
    typename A::Item g_sam, g_sgd;
  };
  template <typename A>
  __device__ __forceinline__ Loaded<A> load(int64_t i) const {
    Loaded<A> in;
    in.g_sam = A::load(g_sam, i);
    if constexpr (kMask) in.g_sgd = A::load(g_sgd, i);
    return in;
  }
  template <typename A>
  __device__ __forceinline__ void apply(Loaded<A>& in, int64_t i) {
#pragma unroll
    for (int k = 0; k < A::N; ++k) {
      C x = to_acc(in.g_sam.v[k]);
      C xs = kMask ? to_acc(in.g_sgd.v[k]) : C(0);
      if (unscale) {
        x = x * inv;
        xs = xs * inv;
      }
      C d = x;
      if constexpr (kMask == kRuleMask) {
        tally.add(ruled(x, xs, eps, rule, d), i * A::N + k);
      } else if constexpr (kMask == kAlphaMask) {
        const int group = group_of(x, xs, eps);
        if (use_alpha && group == 1) d = x * alpha;
        tally.add(group, i * A::N + k);
      }
      in.g_sam.v[k] = static_cast<T>(d);
    }
    if constexpr (kWrite) A::store(g_sam, i, in.g_sam);
  }
};

template <typename T, bool kVec, int kMask, bool kWrite>
__global__ void __launch_bounds__(kThreads)
    reweight_kernel(T* __restrict__ g_sam, const T* __restrict__ g_sgd, const float* __restrict__ skip,
                    const float* __restrict__ inv_scale, ReweightAlpha<acc_t<T>, kMask> alpha, acc_t<T> eps,
                    bool use_alpha, unsigned long long* __restrict__ stats, int64_t n_valid, int64_t n_items,
                    int64_t n) {
  if (skipped(skip)) return;
  using C = acc_t<T>;
  const bool unscale = inv_scale != nullptr;
  C a(1);  // alpha (unused with a rule)
  if constexpr (kMask != kRuleMask) a = alpha;
  ReweightOp<T, kMask, kWrite> op{g_sam,     g_sgd,   a, eps, unscale ? static_cast<C>(*inv_scale) : C(1),
                                  use_alpha, unscale, GroupTally{n_valid}, alpha};
  for_each_item<T, kVec>(op, n_items, n);
  if (kMask && stats != nullptr) op.tally.add_to(stats);
}

}  // namespace cuda
}  // namespace saner_kernels
