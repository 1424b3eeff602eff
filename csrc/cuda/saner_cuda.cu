// CUDA kernels for the saner_kernels ops (the fallback when Triton is missing); schemas in ops.cpp.
//
// - 128-bit vector loads/stores (Pack<T>: 4 fp32, 8 bf16/fp16, 2 fp64) when every pointer is 16-byte
//   aligned (flat buckets always are), element by element otherwise; kUnroll packs per thread are
//   loaded before any is used, so several independent loads are in flight per thread.
// - The scale s is read from device memory inside the kernels: no host sync; a non-finite s makes
//   every thread return before writing anything.
// - grad_sq_norm is two-stage and deterministic: a grid fixed by n writes per-block partials (fixed
//   tree order inside a block), one block sums them in a fixed order. Group counts are integers, so
//   their per-block atomicAdd is exact and order-free.
// - Math in fp32 (fp64 for fp64 storage) in the reference's order. Built with -fmad=false so that the
//   compiler fuses nothing; the reference's torch.add(x, y, alpha=a) steps, which torch's CUDA kernels
//   evaluate as one fma, are explicit fma() calls here.
// - Launched on the current stream of the tensors' device. Only c10/cuda-level headers (the toolkit
//   needs no cuBLAS headers).
#include <cstdint>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../front_end.h"

namespace saner_kernels {
namespace cuda {
namespace {

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
};

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T x) {
  return static_cast<acc_t<T>>(x);
}

__device__ __forceinline__ float fma_(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return __fma_rn(a, b, c); }

// The scale: a 0-dim fp32 tensor, or fp64 (the optimizer's scale for fp64 buckets); exact as a double.
struct ScalePtr {
  const void* p;
  bool is_double;
  __device__ __forceinline__ double get() const {
    return is_double ? *static_cast<const double*>(p) : static_cast<double>(*static_cast<const float*>(p));
  }
};

// ------------------------------------------------------------------------------------ grad_sq_norm
template <typename C>
__device__ __forceinline__ C block_sum(C v, C* shared) {
  // Fixed tree order: warp shuffles, then the first warp over the warps' sums.
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

template <typename T, bool kVec>
__global__ void sq_norm_partial_kernel(const T* __restrict__ g, const T* __restrict__ w, int64_t n_items,
                                       int64_t n, double* __restrict__ partial) {
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  __shared__ C shared[32];
  C acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < n_items;
       base += stride) {
    typename A::Item gi[kUnroll], wi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n_items) {
        gi[u] = A::load(g, i);
        if (w != nullptr) wi[u] = A::load(w, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n_items) {
#pragma unroll
        for (int k = 0; k < A::N; ++k) {
          C x = to_acc(gi[u].v[k]);
          if (w != nullptr) x = fabs(to_acc(wi[u].v[k])) * x;
          acc += x * x;
        }
      }
    }
  }
  // Elements past the last whole pack (vector path only): block 0 takes them.
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += blockDim.x) {
      C x = to_acc(g[j]);
      if (w != nullptr) x = fabs(to_acc(w[j])) * x;
      acc += x * x;
    }
  }
  const C total = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(total);
}

template <typename Out>
__global__ void sq_norm_final_kernel(const double* __restrict__ partial, int n_partial, Out* __restrict__ out) {
  __shared__ double shared[32];
  double v = 0.0;
  for (int i = threadIdx.x; i < n_partial; i += blockDim.x) v += partial[i];
  v = block_sum(v, shared);
  if (threadIdx.x == 0) *out = static_cast<Out>(v);
}

// ------------------------------------------------------------------------------------ perturb_
template <typename T, bool kVec, bool kAdaptive>
__global__ void perturb_kernel(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ g_sgd, T* __restrict__ e,
                               ScalePtr scale, int64_t n_items, int64_t n) {
  const double sd = scale.get();
  if (!isfinite(sd)) return;  // skipped step: write nothing
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  const C s = static_cast<C>(sd);
  auto one = [&](C wv, C gv, C& ev) -> C {
    if constexpr (kAdaptive) {
      ev = wv * wv * gv * s;
    } else {
      ev = gv * s;
    }
    return wv + ev;
  };
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < n_items;
       base += stride) {
    typename A::Item gi[kUnroll], wi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n_items) {
        gi[u] = A::load(g, i);
        wi[u] = A::load(w, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n_items) {
        typename A::Item ei;
#pragma unroll
        for (int k = 0; k < A::N; ++k) {
          C ev;
          wi[u].v[k] = static_cast<T>(one(to_acc(wi[u].v[k]), to_acc(gi[u].v[k]), ev));
          ei.v[k] = static_cast<T>(ev);
        }
        A::store(w, i, wi[u]);
        A::store(g_sgd, i, gi[u]);
        if constexpr (kAdaptive) A::store(e, i, ei);
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += blockDim.x) {
      C ev;
      const T gj = g[j];
      w[j] = static_cast<T>(one(to_acc(w[j]), to_acc(gj), ev));
      g_sgd[j] = gj;
      if constexpr (kAdaptive) e[j] = static_cast<T>(ev);
    }
  }
}

// ------------------------------------------------------------------------------------ update_
template <typename C>
struct UpdateScalars {
  C neg_lr, mu, damp, wd, alpha, eps;
  bool use_alpha, use_wd, nesterov, first;
};

// One element; returns the group: 0 = A, 1 = B, 2 = C.
template <typename C, bool kAdaptive, bool kHasBuf, bool kMask>
__device__ __forceinline__ int update_one(C& w, C g, C gs, C& buf, C e, C s, const UpdateScalars<C>& p) {
  const C ev = kAdaptive ? e : gs * s;
  const C wv = w - ev;
  C d = g;
  int group = 2;
  if constexpr (kMask) {
    const C den = gs + p.eps;
    const bool same = (g > C(0) && den > C(0)) || (g < C(0) && den < C(0));
    const bool smaller = fabs(g) < fabs(den);
    group = same ? (smaller ? 1 : 0) : 2;
    if (p.use_alpha && group == 1) d = g * p.alpha;
  }
  if (p.use_wd) d = fma_(wv, p.wd, d);  // d.add(w, alpha=wd)
  if constexpr (kHasBuf) {
    const C nb = p.first ? d : fma_(d, p.damp, buf * p.mu);  // buf.mul(mu).add_(d, alpha=1-tau)
    d = p.nesterov ? fma_(nb, p.mu, d) : nb;                   // d.add(buf, alpha=mu)
    buf = nb;
  }
  w = fma_(d, p.neg_lr, wv);  // w.add(d, alpha=-lr)
  return group;
}

__device__ __forceinline__ void add_counts(int ca, int cb, int cc, unsigned long long* stats) {
  // Warp sums, then one atomicAdd per warp and counter (integers: exact in any order).
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ca += __shfl_down_sync(0xffffffffu, ca, off);
    cb += __shfl_down_sync(0xffffffffu, cb, off);
    cc += __shfl_down_sync(0xffffffffu, cc, off);
  }
  if ((threadIdx.x & 31) == 0) {
    if (ca) atomicAdd(stats + 0, static_cast<unsigned long long>(ca));
    if (cb) atomicAdd(stats + 1, static_cast<unsigned long long>(cb));
    if (cc) atomicAdd(stats + 2, static_cast<unsigned long long>(cc));
  }
}

template <typename T, bool kVec, bool kAdaptive, bool kHasBuf, bool kMask>
__global__ void update_kernel(T* __restrict__ w, const T* __restrict__ g, const T* __restrict__ g_sgd,
                              T* __restrict__ buf, const T* __restrict__ e, ScalePtr scale,
                              UpdateScalars<acc_t<T>> p, unsigned long long* __restrict__ stats, int64_t n_items,
                              int64_t n) {
  const double sd = scale.get();
  if (!isfinite(sd)) return;  // skipped step: write nothing, count nothing
  using A = Access<T, kVec>;
  using C = acc_t<T>;
  const C s = static_cast<C>(sd);
  int cnt[3] = {0, 0, 0};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < n_items;
       base += stride) {
    typename A::Item wi[kUnroll], gi[kUnroll], gsi[kUnroll], bi[kUnroll], ei[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n_items) {
        wi[u] = A::load(w, i);
        gi[u] = A::load(g, i);
        gsi[u] = A::load(g_sgd, i);
        if constexpr (kHasBuf) bi[u] = A::load(buf, i);
        if constexpr (kAdaptive) ei[u] = A::load(e, i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < n_items) {
#pragma unroll
        for (int k = 0; k < A::N; ++k) {
          C wv = to_acc(wi[u].v[k]);
          C bv = kHasBuf ? to_acc(bi[u].v[k]) : C(0);
          const int grp = update_one<C, kAdaptive, kHasBuf, kMask>(
              wv, to_acc(gi[u].v[k]), to_acc(gsi[u].v[k]), bv, kAdaptive ? to_acc(ei[u].v[k]) : C(0), s, p);
          cnt[grp] += 1;
          wi[u].v[k] = static_cast<T>(wv);
          if constexpr (kHasBuf) bi[u].v[k] = static_cast<T>(bv);
        }
        A::store(w, i, wi[u]);
        if constexpr (kHasBuf) A::store(buf, i, bi[u]);
      }
    }
  }
  if (kVec && blockIdx.x == 0) {
    for (int64_t j = n_items * A::N + threadIdx.x; j < n; j += blockDim.x) {
      C wv = to_acc(w[j]);
      C bv = kHasBuf ? to_acc(buf[j]) : C(0);
      const int grp = update_one<C, kAdaptive, kHasBuf, kMask>(wv, to_acc(g[j]), to_acc(g_sgd[j]), bv,
                                                               kAdaptive ? to_acc(e[j]) : C(0), s, p);
      cnt[grp] += 1;
      w[j] = static_cast<T>(wv);
      if constexpr (kHasBuf) buf[j] = static_cast<T>(bv);
    }
  }
  if (kMask && stats != nullptr) add_counts(cnt[0], cnt[1], cnt[2], stats);
}

// ------------------------------------------------------------------------------------ host side

void check_scale(const at::Tensor& scale, const at::Tensor& like) {
  TORCH_CHECK(scale.numel() == 1 && (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble) &&
                  scale.device() == like.device(),
              "saner_kernels: scale must be a 0-dim float32 (or float64) tensor on ", like.device(), ", got ",
              scale.scalar_type(), " of shape ", scale.sizes(), " on ", scale.device());
}

ScalePtr scale_ptr(const at::Tensor& scale) { return ScalePtr{scale.const_data_ptr(), scale.scalar_type() == at::kDouble}; }

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }


template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

int64_t grid_for(int64_t n_items) {
  const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
  return std::max<int64_t>(1, std::min<int64_t>((n_items + per_block - 1) / per_block, int64_t(1) << 20));
}

at::Tensor grad_sq_norm_cuda(const at::Tensor& g, const std::optional<at::Tensor>& w) {
  check_flat(g, g, "g");
  if (w.has_value()) check_flat(*w, g, "w");
  c10::cuda::CUDAGuard guard(g.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = g.numel();
  const bool is_double = g.scalar_type() == at::kDouble;
  at::Tensor out = at::empty({}, g.options().dtype(is_double ? at::kDouble : at::kFloat));
  dispatch_dtype(g.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.const_data_ptr<T>();
    const T* wp = w.has_value() ? w->const_data_ptr<T>() : nullptr;
    const bool vec = aligned16(gp) && aligned16(wp);
    dispatch_bool(vec, [&](auto kv) {
      constexpr bool kVec = decltype(kv)::value;
      const int64_t n_items = n / Access<T, kVec>::N;
      // The grid depends on n only: the same partial sums and order on every run and device.
      const int blocks = static_cast<int>(std::min<int64_t>(grid_for(n_items), kNormMaxBlocks));
      at::Tensor partial = at::empty({blocks}, g.options().dtype(at::kDouble));
      sq_norm_partial_kernel<T, kVec><<<blocks, kThreads, 0, stream>>>(gp, wp, n_items, n,
                                                                        partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (is_double) {
        sq_norm_final_kernel<double><<<1, 1024, 0, stream>>>(partial.data_ptr<double>(), blocks,
                                                             out.data_ptr<double>());
      } else {
        sq_norm_final_kernel<float><<<1, 1024, 0, stream>>>(partial.data_ptr<double>(), blocks,
                                                            out.data_ptr<float>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

void perturb_cuda(const at::Tensor& w, const at::Tensor& g, const at::Tensor& g_sgd, const at::Tensor& scale,
                  const std::optional<at::Tensor>& e) {
  check_flat(w, w, "w");
  check_flat(g, w, "g");
  check_flat(g_sgd, w, "g_sgd");
  if (e.has_value()) check_flat(*e, w, "e");
  check_scale(scale, w);
  const int64_t n = w.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(w.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* wp = w.data_ptr<T>();
    const T* gp = g.const_data_ptr<T>();
    T* gsp = g_sgd.data_ptr<T>();
    T* ep = e.has_value() ? e->data_ptr<T>() : nullptr;
    const bool vec = aligned16(wp) && aligned16(gp) && aligned16(gsp) && aligned16(ep);
    dispatch_bool(vec, [&](auto kv) {
      constexpr bool kVec = decltype(kv)::value;
      dispatch_bool(e.has_value(), [&](auto ka) {
        constexpr bool kAdaptive = decltype(ka)::value;
        const int64_t n_items = n / Access<T, kVec>::N;
        perturb_kernel<T, kVec, kAdaptive><<<grid_for(n_items), kThreads, 0, stream>>>(
            wp, gp, gsp, ep, scale_ptr(scale), n_items, n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

void update_cuda(const at::Tensor& w, const at::Tensor& g, const at::Tensor& g_sgd,
                 const std::optional<at::Tensor>& buf, const at::Tensor& scale, const std::optional<at::Tensor>& e,
                 double lr, double momentum, double dampening, double weight_decay, double alpha, double eps,
                 bool nesterov, bool first_momentum_step, const std::optional<at::Tensor>& stats) {
  check_flat(w, w, "w");
  check_flat(g, w, "g");
  check_flat(g_sgd, w, "g_sgd");
  if (buf.has_value()) check_flat(*buf, w, "buf");
  if (e.has_value()) check_flat(*e, w, "e");
  check_scale(scale, w);
  if (stats.has_value()) {
    TORCH_CHECK(stats->scalar_type() == at::kLong && stats->numel() == 3 && stats->is_contiguous() &&
                    stats->device() == w.device(),
                "saner_kernels: stats must be a contiguous int64 tensor of 3 counters on ", w.device());
  }
  const int64_t n = w.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(w.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool mask = alpha != 1.0 || stats.has_value();
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using C = acc_t<T>;
    UpdateScalars<C> p;
    p.neg_lr = static_cast<C>(-lr);
    p.mu = static_cast<C>(momentum);
    p.damp = static_cast<C>(1.0 - dampening);
    p.wd = static_cast<C>(weight_decay);
    p.alpha = static_cast<C>(alpha);
    p.eps = static_cast<C>(eps);
    p.use_alpha = alpha != 1.0;
    p.use_wd = weight_decay != 0.0;
    p.nesterov = nesterov;
    p.first = first_momentum_step;
    T* wp = w.data_ptr<T>();
    const T* gp = g.const_data_ptr<T>();
    const T* gsp = g_sgd.const_data_ptr<T>();
    T* bp = buf.has_value() ? buf->data_ptr<T>() : nullptr;
    const T* ep = e.has_value() ? e->const_data_ptr<T>() : nullptr;
    auto* sp = stats.has_value() ? reinterpret_cast<unsigned long long*>(stats->data_ptr<int64_t>()) : nullptr;
    const bool vec = aligned16(wp) && aligned16(gp) && aligned16(gsp) && aligned16(bp) && aligned16(ep);
    dispatch_bool(vec, [&](auto kv) {
      dispatch_bool(e.has_value(), [&](auto ka) {
        dispatch_bool(buf.has_value(), [&](auto kb) {
          dispatch_bool(mask, [&](auto km) {
            constexpr bool kVec = decltype(kv)::value;
            const int64_t n_items = n / Access<T, kVec>::N;
            update_kernel<T, kVec, decltype(ka)::value, decltype(kb)::value, decltype(km)::value>
                <<<grid_for(n_items), kThreads, 0, stream>>>(wp, gp, gsp, bp, ep, scale_ptr(scale), p,
                                                             sp, n_items, n);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
      });
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace saner_kernels

TORCH_LIBRARY_IMPL(saner_kernels, CUDA, m) {
  m.impl("grad_sq_norm", &saner_kernels::cuda::grad_sq_norm_cuda);
  m.impl("perturb_", &saner_kernels::cuda::perturb_cuda);
  m.impl("update_", &saner_kernels::cuda::update_cuda);
}
