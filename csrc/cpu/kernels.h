// Vectorized CPU kernel bodies for the contract ops, over one range [begin, end) of a bucket.
//
// This header is compiled once per ISA, into differently named namespaces (ATen's CPU_CAPABILITY
// scheme): kernels_default.cpp (the build's baseline ISA) and kernels_avx2.cpp (its own translation unit,
// compiled with -mavx2 -mfma -mf16c); cpu/isa.cpp picks one table at run time. It includes nothing but
// ATen's vector headers: no Tensor, no threads, no zeroing or skipping (the front end, ops_cpu.cpp, does
// those and splits the work into disjoint ranges).
//
// Numerics: every expression is evaluated in the compute type C (float for fp32/bf16/fp16 storage,
// double for fp64) in exactly the order of saner_kernels/ops/reference.py: one rounding per torch op,
// and ATen's own fmadd where the reference uses torch.add(..., alpha=) (see update_range). The build
// passes -ffp-contract=off so that the compiler fuses nothing else: fp32 results are then bit-identical
// to the reference's chain of elementwise torch ops on the same ISA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "kernel_table.h"

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (the ISA namespace) before including cpu/kernels.h"
#endif

namespace saner_kernels {
namespace cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename T>
using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Load/store Vectorized<C>::size() elements of storage type T as compute type C.
template <typename T>
struct IO {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  static constexpr int64_t kSize = Vec::size();

  static inline Vec load(const T* p) {
    if constexpr (std::is_same_v<T, C>) {
      return Vec::loadu(p);
    } else {
      Vec out;
      at::vec::load_to_float<T>(p, out);
      return out;
    }
  }
  static inline void store(T* p, const Vec& v) {
    if constexpr (std::is_same_v<T, C>) {
      v.store(p);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, kSize);
    }
  }
};

// Copies k < V elements of a tail into a zero-filled vector-sized buffer.
template <typename T, int64_t V>
struct Tail {
  alignas(64) T v[V] = {};
  Tail(const T* p, int64_t k) {
    if (p != nullptr) std::memcpy(v, p, k * sizeof(T));
  }
  void copy_to(T* p, int64_t k) const { std::memcpy(p, v, k * sizeof(T)); }
};

// ---------------------------------------------------------------------------------- grad_sq_norm
// Sum of g^2 (or (|w| g)^2) over [begin, end): fp32 vector accumulators over short blocks, each block
// folded into a double in a fixed lane order. The result depends on begin/end only, never on threads.
template <typename T>
double sq_norm_range(const T* g, const T* w, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t kUnroll = 4;
  constexpr int64_t kBlock = 1024;  // elements folded into double at a time
  double total = 0.0;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t b1 = std::min(b0 + kBlock, end);
    Vec acc[kUnroll] = {Vec(C(0)), Vec(C(0)), Vec(C(0)), Vec(C(0))};
    int64_t i = b0;
    for (; i + kUnroll * V <= b1; i += kUnroll * V) {
      for (int64_t u = 0; u < kUnroll; ++u) {
        Vec x = IO<T>::load(g + i + u * V);
        if (w != nullptr) x = IO<T>::load(w + i + u * V).abs() * x;
        acc[u] = acc[u] + x * x;
      }
    }
    for (; i < b1; i += V) {  // tail: zero-filled partial vectors
      const int64_t k = std::min(V, b1 - i);
      Vec x = IO<T>::load(Tail<T, V>(g + i, k).v);
      if (w != nullptr) x = IO<T>::load(Tail<T, V>(w + i, k).v).abs() * x;
      acc[0] = acc[0] + x * x;
    }
    alignas(64) C lanes[kUnroll][V];
    for (int64_t u = 0; u < kUnroll; ++u) acc[u].store(lanes[u]);
    double block = 0.0;
    for (int64_t l = 0; l < V; ++l)
      for (int64_t u = 0; u < kUnroll; ++u) block += static_cast<double>(lanes[u][l]);
    total += block;
  }
  return total;
}

// ---------------------------------------------------------------------------------- perturb_
// e = (w*w*g*s if adaptive else g*s);  w <- w + e;  e stored when adaptive;  g_sgd <- g when copying.
template <typename T, bool kAdaptive, bool kCopy>
void perturb_range(T* w, const T* g, T* g_sgd, T* e, double scale, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const Vec s(static_cast<C>(scale));
  // g_sgd is only read again in the update, after the second backward: a streaming store skips
  // reading its old cache lines first. Needs 32-byte alignment (256-bit stores).
  const bool stream_g_sgd = kCopy && (reinterpret_cast<uintptr_t>(g_sgd + begin) % 32) == 0;
  auto body = [&](T* wp, const T* gp, T* gsp, T* ep, bool stream) {
    const Vec gv = IO<T>::load(gp);
    const Vec wv = IO<T>::load(wp);
    Vec ev;
    if constexpr (kAdaptive) {
      ev = wv * wv * gv * s;
      IO<T>::store(ep, ev);
    } else {
      ev = gv * s;
    }
    IO<T>::store(wp, wv + ev);
    if constexpr (kCopy) {
#if defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<T, float>) {
        if (stream) {
          _mm256_stream_ps(reinterpret_cast<float*>(gsp), gv);
          return;
        }
      }
#endif
      std::memcpy(gsp, gp, V * sizeof(T));  // a bit copy, like g_sgd.copy_(g)
    }
  };
  int64_t i = begin;
  for (; i + V <= end; i += V) {
    body(w + i, g + i, kCopy ? g_sgd + i : nullptr, kAdaptive ? e + i : nullptr, stream_g_sgd);
  }
#if defined(CPU_CAPABILITY_AVX2)
  if (std::is_same_v<T, float> && stream_g_sgd) _mm_sfence();  // order the streaming stores
#endif
  if (i < end) {  // tail through the same vector code on zero-padded copies
    const int64_t k = end - i;
    Tail<T, V> wb(w + i, k), gb(g + i, k), gsb(nullptr, k), eb(nullptr, k);
    body(wb.v, gb.v, gsb.v, eb.v, false);
    wb.copy_to(w + i, k);
    if (kCopy) gsb.copy_to(g_sgd + i, k);
    if (kAdaptive) eb.copy_to(e + i, k);
  }
}

// ---------------------------------------------------------------------------------- restore_
// w <- w - e, with e stored (adaptive) or recomputed as g_sgd * s: the very product perturb_ added.
template <typename T, bool kAdaptive>
void restore_range(T* w, const T* src, double scale, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const Vec s(static_cast<C>(scale));
  auto body = [&](T* wp, const T* sp) {
    const Vec ev = kAdaptive ? IO<T>::load(sp) : IO<T>::load(sp) * s;
    IO<T>::store(wp, IO<T>::load(wp) - ev);
  };
  int64_t i = begin;
  for (; i + V <= end; i += V) body(w + i, src + i);
  if (i < end) {
    const int64_t k = end - i;
    Tail<T, V> wb(w + i, k), sb(src + i, k);
    body(wb.v, sb.v);
    wb.copy_to(w + i, k);
  }
}

// ---------------------------------------------------------------------------------- update_
// Restore w, reweight Group B by alpha, weight decay, momentum, step; counts A and B when counts != nullptr.
#if !defined(CPU_CAPABILITY_AVX2)
// Baseline build: ATen's generic Vectorized compares and blends lane by lane through memory (25x slower
// than this loop), so the update is a plain loop the compiler vectorizes itself. Same expressions;
// fmadd is a*b + c with two roundings, exactly what ATen's generic vec::fmadd computes.
template <typename T, bool kAdaptive, bool kHasBuf, bool kMask>
void update_range(const UpdateArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  const C s = static_cast<C>(a.scale);
  const C neg_lr = static_cast<C>(-a.lr);
  const C mu = static_cast<C>(a.momentum);
  const C damp = static_cast<C>(1.0 - a.dampening);
  const C wd = static_cast<C>(a.weight_decay);
  const C alpha = static_cast<C>(a.alpha);
  const C eps = static_cast<C>(a.eps);
  const C inv = static_cast<C>(a.inv_scale);
  const bool use_alpha = a.alpha != 1.0;
  const bool use_wd = a.weight_decay != 0.0;  // no 0 * w term: an infinite weight stays infinite
  const bool nesterov = a.nesterov;
  const bool first = a.first_momentum_step;
  const bool unscale = a.unscale;
  const bool perturbed = a.perturbed;
  int64_t na = 0, nb_count = 0;
  T* __restrict__ wp = a.w;  // distinct buffers: lets the compiler vectorize the loop
  T* __restrict__ bp = a.buf;
  const T* __restrict__ gp = a.g;
  const T* __restrict__ gsp = a.g_sgd;
  const T* __restrict__ ep = a.e;
  for (int64_t i = begin; i < end; ++i) {
    C g = static_cast<C>(gp[i]);
    C gs = static_cast<C>(gsp[i]);
    const C ev = !perturbed ? C(0) : kAdaptive ? static_cast<C>(ep[i]) : gs * s;  // e from the stored g_sgd
    const C wv = static_cast<C>(wp[i]) - ev;
    if (unscale) {
      g = g * inv;
      gs = gs * inv;
    }
    C d = g;
    if constexpr (kMask) {
      const C den = gs + eps;
      const bool same = (g > C(0) && den > C(0)) || (g < C(0) && den < C(0));
      const C ga = std::abs(g), da = std::abs(den);
      const bool in_b = same && ga < da;
      if (use_alpha && in_b) d = g * alpha;
      na += (same && ga >= da) ? 1 : 0;
      nb_count += in_b ? 1 : 0;
    }
    if (use_wd) d = wv * wd + d;
    if constexpr (kHasBuf) {
      const C nb = first ? d : d * damp + static_cast<C>(bp[i]) * mu;
      d = nesterov ? nb * mu + d : nb;
      bp[i] = static_cast<T>(nb);
    }
    wp[i] = static_cast<T>(d * neg_lr + wv);
  }
  if (counts != nullptr) {
    counts->a += na;
    counts->b += nb_count;
  }
}
#else
template <typename T, bool kAdaptive, bool kHasBuf, bool kMask>
void update_range(const UpdateArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const Vec s(static_cast<C>(a.scale));
  const Vec neg_lr(static_cast<C>(-a.lr));
  const Vec mu(static_cast<C>(a.momentum));
  const Vec damp(static_cast<C>(1.0 - a.dampening));  // (1 - tau) rounded once, as in Python
  const Vec wd(static_cast<C>(a.weight_decay));
  const Vec alpha(static_cast<C>(a.alpha));
  const Vec eps(static_cast<C>(a.eps));
  const Vec inv(static_cast<C>(a.inv_scale));
  const Vec zero(C(0));
  const Vec one(C(1));
  const bool use_alpha = a.alpha != 1.0;
  const bool use_wd = a.weight_decay != 0.0;  // no 0 * w term: an infinite weight stays infinite
  const bool nesterov = a.nesterov;
  const bool first = a.first_momentum_step;
  const bool unscale = a.unscale;
  const bool perturbed = a.perturbed;
  Vec acc_a(C(0)), acc_b(C(0));

  auto body = [&](T* wp, const T* gp, const T* gsp, T* bp, const T* ep) {
    Vec gv = IO<T>::load(gp);
    Vec gsv = IO<T>::load(gsp);
    Vec ev = zero;
    if (perturbed) ev = kAdaptive ? IO<T>::load(ep) : gsv * s;  // e from the stored g_sgd
    const Vec wv = IO<T>::load(wp) - ev;
    if (unscale) {
      gv = gv * inv;
      gsv = gsv * inv;
    }
    Vec d = gv;
    if constexpr (kMask) {
      const Vec den = gsv + eps;
      const Vec same = ((gv > zero) & (den > zero)) | ((gv < zero) & (den < zero));
      const Vec ga = gv.abs();
      const Vec da = den.abs();
      const Vec mb = same & (ga < da);
      if (use_alpha) d = Vec::blendv(gv, gv * alpha, mb);
      acc_a = acc_a + (same & (ga >= da) & one);
      acc_b = acc_b + (mb & one);
    }
    // torch.add(x, y, alpha=a) steps, as torch.optim.SGD and the reference do them: ATen evaluates
    // x + a*y as vec::fmadd(y, a, x), one fused rounding with AVX2, and so does at::vec::fmadd here.
    if (use_wd) d = at::vec::fmadd(wv, wd, d);  // d.add(w, alpha=wd)
    if constexpr (kHasBuf) {
      // buf.mul(mu).add_(d, alpha=1-tau); the first step reads no buf
      const Vec nb = first ? d : at::vec::fmadd(d, damp, IO<T>::load(bp) * mu);
      d = nesterov ? at::vec::fmadd(nb, mu, d) : nb;  // d.add(buf, alpha=mu)
      IO<T>::store(bp, nb);
    }
    IO<T>::store(wp, at::vec::fmadd(d, neg_lr, wv));  // w.add(d, alpha=-lr)
  };

  // Blocks short enough that the fp32 lane counters stay exact (< 2^24) before being flushed.
  constexpr int64_t kBlock = int64_t(1) << 16;
  auto flush = [&]() {
    if constexpr (kMask) {
      alignas(64) C la[V], lb[V];
      acc_a.store(la);
      acc_b.store(lb);
      int64_t na = 0, nb = 0;
      for (int64_t l = 0; l < V; ++l) {
        na += static_cast<int64_t>(la[l]);
        nb += static_cast<int64_t>(lb[l]);
      }
      if (counts != nullptr) {
        counts->a += na;
        counts->b += nb;
      }
      acc_a = Vec(C(0));
      acc_b = Vec(C(0));
    }
  };
  int64_t i = begin;
  while (i + V <= end) {
    const int64_t stop = std::min(end, i + kBlock);
    for (; i + V <= stop; i += V) {
      body(a.w + i, a.g + i, a.g_sgd + i, kHasBuf ? a.buf + i : nullptr, kAdaptive ? a.e + i : nullptr);
    }
    flush();
  }
  if (i < end) {  // tail: the zero padding is never counted in A or B (g == 0 is Group C)
    const int64_t k = end - i;
    Tail<T, V> wb(a.w + i, k), gb(a.g + i, k), gsb(a.g_sgd + i, k);
    Tail<T, V> bb(kHasBuf ? a.buf + i : nullptr, k), eb(kAdaptive ? a.e + i : nullptr, k);
    body(wb.v, gb.v, gsb.v, bb.v, eb.v);
    wb.copy_to(a.w + i, k);
    if (kHasBuf) bb.copy_to(a.buf + i, k);
    flush();
  }
}
#endif

// The function table the front end dispatches through, one per ISA build of this header.
template <typename T>
KernelTable<T> make_table() {
  KernelTable<T> t;
  t.sq_norm = &sq_norm_range<T>;
  t.perturb[0] = &perturb_range<T, false, false>;
  t.perturb[1] = &perturb_range<T, true, false>;
  t.perturb[2] = &perturb_range<T, false, true>;
  t.perturb[3] = &perturb_range<T, true, true>;
  t.update[0] = &update_range<T, false, false, false>;
  t.update[1] = &update_range<T, false, false, true>;
  t.update[2] = &update_range<T, false, true, false>;
  t.update[3] = &update_range<T, false, true, true>;
  t.update[4] = &update_range<T, true, false, false>;
  t.update[5] = &update_range<T, true, false, true>;
  t.update[6] = &update_range<T, true, true, false>;
  t.update[7] = &update_range<T, true, true, true>;
  t.restore[0] = &restore_range<T, false>;
  t.restore[1] = &restore_range<T, true>;
  return t;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace saner_kernels
