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
#include <utility>

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

// ---------------------------------------------------------------------------------- shared pieces
// d = dir_g * g + dir_avg * avg: two products and a sum, in the reference's order (reference.direction).
template <typename C>
struct DirectionVec {
  Vectorized<C> dg, da;
  template <typename T>
  explicit DirectionVec(const Direction<T>& d) : dg(static_cast<C>(d.dir_g)), da(static_cast<C>(d.dir_avg)) {}
  Vectorized<C> operator()(const Vectorized<C>& g, const Vectorized<C>& avg) const { return g * dg + avg * da; }
};

// Folds kUnroll vector accumulators into a double in a fixed lane order (the order depends on V only).
template <typename C, int64_t kUnroll>
double fold_lanes(const Vectorized<C> (&acc)[kUnroll]) {
  constexpr int64_t V = Vectorized<C>::size();
  alignas(64) C lanes[kUnroll][V];
  for (int64_t u = 0; u < kUnroll; ++u) acc[u].store(lanes[u]);
  double sum = 0.0;
  for (int64_t l = 0; l < V; ++l)
    for (int64_t u = 0; u < kUnroll; ++u) sum += static_cast<double>(lanes[u][l]);
  return sum;
}

// ---------------------------------------------------------------------------------- grad_sq_norm
// Sum of x^2 over [begin, end), x = d or |w| d (d = g, or the average direction): fp32 vector accumulators
// over short blocks, each block folded into a double in a fixed lane order. The result depends on
// begin/end only, never on threads.
template <typename T, bool kAdaptive, bool kAvg>
double sq_norm_range(const T* g, const T* w, const Direction<T>& dir, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t kUnroll = 4;
  constexpr int64_t kBlock = 1024;  // elements folded into double at a time
  const DirectionVec<C> direction(dir);
  auto term = [&](const T* gp, const T* wp, const T* ap) {
    Vec x = IO<T>::load(gp);
    if constexpr (kAvg) x = direction(x, IO<T>::load(ap));
    if constexpr (kAdaptive) x = IO<T>::load(wp).abs() * x;
    return x * x;
  };
  double total = 0.0;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t b1 = std::min(b0 + kBlock, end);
    Vec acc[kUnroll] = {Vec(C(0)), Vec(C(0)), Vec(C(0)), Vec(C(0))};
    int64_t i = b0;
    for (; i + kUnroll * V <= b1; i += kUnroll * V) {
      for (int64_t u = 0; u < kUnroll; ++u) {
        const int64_t j = i + u * V;
        acc[u] = acc[u] + term(g + j, kAdaptive ? w + j : nullptr, kAvg ? dir.avg + j : nullptr);
      }
    }
    for (; i < b1; i += V) {  // tail: zero-filled partial vectors (a zero term)
      const int64_t k = std::min(V, b1 - i);
      Tail<T, V> gb(g + i, k), wb(kAdaptive ? w + i : nullptr, k), ab(kAvg ? dir.avg + i : nullptr, k);
      acc[0] = acc[0] + term(gb.v, wb.v, ab.v);
    }
    total += fold_lanes<C, kUnroll>(acc);
  }
  return total;
}

// ---------------------------------------------------------------------------------- gsam_dot_norm
// out = [sum(g_sgd * g), sum(x^2)] over [begin, end), x = |w| g (adaptive) or g: the norm's scheme, two sums.
template <typename T, bool kAdaptive>
void dot_norm_range(const T* g_sgd, const T* g, const T* w, int64_t begin, int64_t end, double* out) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t kUnroll = 4;
  constexpr int64_t kBlock = 1024;
  Vec dot[kUnroll], sq[kUnroll];
  auto add = [&](int64_t u, const T* gsp, const T* gp, const T* wp) {
    const Vec gv = IO<T>::load(gp);
    dot[u] = dot[u] + IO<T>::load(gsp) * gv;
    Vec x = gv;
    if constexpr (kAdaptive) x = IO<T>::load(wp).abs() * gv;
    sq[u] = sq[u] + x * x;
  };
  double total_dot = 0.0, total_sq = 0.0;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t b1 = std::min(b0 + kBlock, end);
    for (int64_t u = 0; u < kUnroll; ++u) dot[u] = sq[u] = Vec(C(0));
    int64_t i = b0;
    for (; i + kUnroll * V <= b1; i += kUnroll * V) {
      for (int64_t u = 0; u < kUnroll; ++u) {
        const int64_t j = i + u * V;
        add(u, g_sgd + j, g + j, kAdaptive ? w + j : nullptr);
      }
    }
    for (; i < b1; i += V) {
      const int64_t k = std::min(V, b1 - i);
      Tail<T, V> gsb(g_sgd + i, k), gb(g + i, k), wb(kAdaptive ? w + i : nullptr, k);
      add(0, gsb.v, gb.v, wb.v);
    }
    total_dot += fold_lanes<C, kUnroll>(dot);
    total_sq += fold_lanes<C, kUnroll>(sq);
  }
  out[0] = total_dot;
  out[1] = total_sq;
}

// ---------------------------------------------------------------------------------- perturb_
// e = (w*w*d*s if adaptive else d*s);  w <- w + e;  e stored when adaptive;  g_sgd <- g when copying.
// d = g, or the average direction (kAvg).
template <typename T, bool kAdaptive, bool kCopy, bool kAvg>
void perturb_range(T* w, const T* g, T* g_sgd, T* e, const Direction<T>& dir, double scale, int64_t begin,
                   int64_t end) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const Vec s(static_cast<C>(scale));
  const DirectionVec<C> direction(dir);
  // g_sgd is only read again in the update, after the second backward: a streaming store skips
  // reading its old cache lines first. Needs 32-byte alignment (256-bit stores).
  const bool stream_g_sgd = kCopy && (reinterpret_cast<uintptr_t>(g_sgd + begin) % 32) == 0;
  auto body = [&](T* wp, const T* gp, T* gsp, T* ep, const T* ap, bool stream) {
    const Vec gv = IO<T>::load(gp);
    const Vec wv = IO<T>::load(wp);
    Vec dv = gv;
    if constexpr (kAvg) dv = direction(gv, IO<T>::load(ap));
    Vec ev;
    if constexpr (kAdaptive) {
      ev = wv * wv * dv * s;
      IO<T>::store(ep, ev);
    } else {
      ev = dv * s;
    }
    IO<T>::store(wp, wv + ev);
    if constexpr (kCopy) {  // g itself, not the direction
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
    body(w + i, g + i, kCopy ? g_sgd + i : nullptr, kAdaptive ? e + i : nullptr, kAvg ? dir.avg + i : nullptr,
         stream_g_sgd);
  }
#if defined(CPU_CAPABILITY_AVX2)
  if (std::is_same_v<T, float> && stream_g_sgd) _mm_sfence();  // order the streaming stores
#endif
  if (i < end) {  // tail through the same vector code on zero-padded copies
    const int64_t k = end - i;
    Tail<T, V> wb(w + i, k), gb(g + i, k), gsb(nullptr, k), eb(nullptr, k), ab(kAvg ? dir.avg + i : nullptr, k);
    body(wb.v, gb.v, gsb.v, eb.v, ab.v, false);
    wb.copy_to(w + i, k);
    if (kCopy) gsb.copy_to(g_sgd + i, k);
    if (kAdaptive) eb.copy_to(e + i, k);
  }
}

// ---------------------------------------------------------------------------------- restore_
// w <- w - e, with e stored (kFromE) or recomputed as d * s (d = g_sgd, or the average direction from g_sgd
// and dir.avg): the very product perturb_ added.
template <typename T, int kSrc>
void restore_range(T* w, const T* src, const Direction<T>& dir, double scale, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  constexpr bool kAvg = kSrc == kFromDirection;
  const Vec s(static_cast<C>(scale));
  const DirectionVec<C> direction(dir);
  auto body = [&](T* wp, const T* sp, const T* ap) {
    Vec ev;
    if constexpr (kSrc == kFromE) {
      ev = IO<T>::load(sp);
    } else if constexpr (kAvg) {
      ev = direction(IO<T>::load(sp), IO<T>::load(ap)) * s;
    } else {
      ev = IO<T>::load(sp) * s;
    }
    IO<T>::store(wp, IO<T>::load(wp) - ev);
  };
  int64_t i = begin;
  for (; i + V <= end; i += V) body(w + i, src + i, kAvg ? dir.avg + i : nullptr);
  if (i < end) {
    const int64_t k = end - i;
    Tail<T, V> wb(w + i, k), sb(src + i, k), ab(kAvg ? dir.avg + i : nullptr, k);
    body(wb.v, sb.v, ab.v);
    wb.copy_to(w + i, k);
  }
}

// ---------------------------------------------------------------------------------- update_, reweight_
// update_: restore w, (GSAM) g <- g - gsam_alpha * (g_sgd - k * g), reweight Group B by alpha, weight decay,
// momentum, step, (average) commit avg; counts A and B when counts != nullptr.
// reweight_: the unscaling and the Group B reweighting alone, written back to g.
#if !defined(CPU_CAPABILITY_AVX2)
// Baseline build: ATen's generic Vectorized compares and blends lane by lane through memory (25x slower
// than this loop), so the update is a plain loop the compiler vectorizes itself. Same expressions;
// fmadd is a*b + c with two roundings, exactly what ATen's generic vec::fmadd computes.

// One element's Group B reweighting (division-free mask against den = g_sgd + eps, docs/design.md
// "Numerics"): alpha * g on Group B, else g; counts Groups A and B.
template <typename C>
inline C reweighted(C g, C gs, C eps, C alpha, bool use_alpha, int64_t& na, int64_t& nb) {
  const C den = gs + eps;
  const bool same = (g > C(0) && den > C(0)) || (g < C(0) && den < C(0));
  const C gabs = std::abs(g), dabs = std::abs(den);
  const bool in_b = same && gabs < dabs;
  na += (same && gabs >= dabs) ? 1 : 0;
  nb += in_b ? 1 : 0;
  return use_alpha && in_b ? g * alpha : g;
}

template <typename T, bool kAdaptive, bool kHasBuf, bool kMask, bool kAvg, bool kGsam>
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
  const C dg = static_cast<C>(a.dir_g), da = static_cast<C>(a.dir_avg);
  const C keep = static_cast<C>(a.avg_keep), take = static_cast<C>(a.avg_take);
  const C gk = static_cast<C>(a.gsam_k), ga = static_cast<C>(a.gsam_alpha);
  const bool use_alpha = a.alpha != 1.0;
  const bool use_wd = a.weight_decay != 0.0;  // no 0 * w term: an infinite weight stays infinite
  const bool nesterov = a.nesterov;
  const bool first = a.first_momentum_step;
  const bool unscale = a.unscale;
  const bool perturbed = a.perturbed;
  int64_t na = 0, nb_count = 0;
  T* __restrict__ wp = a.w;  // distinct buffers: lets the compiler vectorize the loop
  T* __restrict__ bp = a.buf;
  T* __restrict__ ap = a.avg;
  const T* __restrict__ gp = a.g;
  const T* __restrict__ gsp = a.g_sgd;
  const T* __restrict__ ep = a.e;
  for (int64_t i = begin; i < end; ++i) {
    C g = static_cast<C>(gp[i]);
    C gs = static_cast<C>(gsp[i]);
    const C av = kAvg ? static_cast<C>(ap[i]) : C(0);
    C ev = C(0);  // e from the stored g_sgd (and avg)
    if (perturbed) {
      if constexpr (kAdaptive) {
        ev = static_cast<C>(ep[i]);
      } else if constexpr (kAvg) {
        ev = (gs * dg + av * da) * s;
      } else {
        ev = gs * s;
      }
    }
    const C wv = static_cast<C>(wp[i]) - ev;
    if (unscale) {
      g = g * inv;
      gs = gs * inv;
    }
    if constexpr (kGsam) g = g - (gs - gk * g) * ga;
    C d = kMask ? reweighted(g, gs, eps, alpha, use_alpha, na, nb_count) : g;
    if (use_wd) d = wv * wd + d;
    if constexpr (kHasBuf) {
      const C nb = first ? d : d * damp + static_cast<C>(bp[i]) * mu;
      d = nesterov ? nb * mu + d : nb;
      bp[i] = static_cast<T>(nb);
    }
    wp[i] = static_cast<T>(d * neg_lr + wv);
    if constexpr (kAvg) ap[i] = static_cast<T>(av * keep + gs * take);  // the unscaled g_sgd
  }
  if (counts != nullptr) {
    counts->a += na;
    counts->b += nb_count;
  }
}

template <typename T, bool kMask, bool kWrite>
void reweight_range(const ReweightArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  const C alpha = static_cast<C>(a.alpha);
  const C eps = static_cast<C>(a.eps);
  const C inv = static_cast<C>(a.inv_scale);
  const bool use_alpha = a.alpha != 1.0;
  const bool unscale = a.unscale;
  int64_t na = 0, nb_count = 0;
  T* __restrict__ gp = a.g;
  const T* __restrict__ gsp = a.g_sgd;
  for (int64_t i = begin; i < end; ++i) {
    C g = static_cast<C>(gp[i]);
    C gs = kMask ? static_cast<C>(gsp[i]) : C(0);
    if (unscale) {
      g = g * inv;
      gs = gs * inv;
    }
    const C d = kMask ? reweighted(g, gs, eps, alpha, use_alpha, na, nb_count) : g;
    if constexpr (kWrite) gp[i] = static_cast<T>(d);
  }
  if (counts != nullptr) {
    counts->a += na;
    counts->b += nb_count;
  }
}
#else
// Group B mask of g against den = g_sgd + eps (division-free, docs/design.md "Numerics"); adds each lane's
// Group A and B membership (1.0f) to the lane counters.
template <typename C>
inline Vectorized<C> group_b(const Vectorized<C>& gv, const Vectorized<C>& gsv, const Vectorized<C>& eps,
                             Vectorized<C>& acc_a, Vectorized<C>& acc_b) {
  using Vec = Vectorized<C>;
  const Vec zero(C(0)), one(C(1));
  const Vec den = gsv + eps;
  const Vec same = ((gv > zero) & (den > zero)) | ((gv < zero) & (den < zero));
  const Vec ga = gv.abs();
  const Vec da = den.abs();
  const Vec mb = same & (ga < da);
  acc_a = acc_a + (same & (ga >= da) & one);
  acc_b = acc_b + (mb & one);
  return mb;
}

// Adds the lane counters to counts (when given) and resets them.
template <typename C>
inline void flush_counts(Vectorized<C>& acc_a, Vectorized<C>& acc_b, GroupCounts* counts) {
  constexpr int64_t V = Vectorized<C>::size();
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
  acc_a = Vectorized<C>(C(0));
  acc_b = Vectorized<C>(C(0));
}

// Blocks short enough that the fp32 lane counters stay exact (< 2^24) before being flushed.
constexpr int64_t kCountBlock = int64_t(1) << 16;

template <typename T, bool kAdaptive, bool kHasBuf, bool kMask, bool kAvg, bool kGsam>
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
  const Vec dg(static_cast<C>(a.dir_g)), da(static_cast<C>(a.dir_avg));
  const Vec keep(static_cast<C>(a.avg_keep)), take(static_cast<C>(a.avg_take));
  const Vec gk(static_cast<C>(a.gsam_k)), ga(static_cast<C>(a.gsam_alpha));
  const Vec zero(C(0));
  const bool use_alpha = a.alpha != 1.0;
  const bool use_wd = a.weight_decay != 0.0;  // no 0 * w term: an infinite weight stays infinite
  const bool nesterov = a.nesterov;
  const bool first = a.first_momentum_step;
  const bool unscale = a.unscale;
  const bool perturbed = a.perturbed;
  Vec acc_a(C(0)), acc_b(C(0));

  auto body = [&](T* wp, const T* gp, const T* gsp, T* bp, const T* ep, T* ap) {
    Vec gv = IO<T>::load(gp);
    Vec gsv = IO<T>::load(gsp);
    Vec av;
    if constexpr (kAvg) av = IO<T>::load(ap);
    Vec ev = zero;
    if (perturbed) {  // e from the stored g_sgd (and avg)
      if constexpr (kAdaptive) {
        ev = IO<T>::load(ep);
      } else if constexpr (kAvg) {
        ev = (gsv * dg + av * da) * s;
      } else {
        ev = gsv * s;
      }
    }
    const Vec wv = IO<T>::load(wp) - ev;
    if (unscale) {
      gv = gv * inv;
      gsv = gsv * inv;
    }
    if constexpr (kGsam) gv = gv - (gsv - gk * gv) * ga;  // t = k*g; u = g_sgd - t; v = u*alpha; g - v
    Vec d = gv;
    if constexpr (kMask) {
      const Vec mb = group_b(gv, gsv, eps, acc_a, acc_b);
      if (use_alpha) d = Vec::blendv(gv, gv * alpha, mb);
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
    if constexpr (kAvg) IO<T>::store(ap, av * keep + gsv * take);  // the unscaled g_sgd
  };

  int64_t i = begin;
  while (i + V <= end) {
    const int64_t stop = std::min(end, i + kCountBlock);
    for (; i + V <= stop; i += V) {
      body(a.w + i, a.g + i, a.g_sgd + i, kHasBuf ? a.buf + i : nullptr, kAdaptive ? a.e + i : nullptr,
           kAvg ? a.avg + i : nullptr);
    }
    if constexpr (kMask) flush_counts(acc_a, acc_b, counts);
  }
  if (i < end) {  // tail: the zero padding is never counted in A or B (g == 0 is Group C)
    const int64_t k = end - i;
    Tail<T, V> wb(a.w + i, k), gb(a.g + i, k), gsb(a.g_sgd + i, k);
    Tail<T, V> bb(kHasBuf ? a.buf + i : nullptr, k), eb(kAdaptive ? a.e + i : nullptr, k);
    Tail<T, V> ab(kAvg ? a.avg + i : nullptr, k);
    body(wb.v, gb.v, gsb.v, bb.v, eb.v, ab.v);
    wb.copy_to(a.w + i, k);
    if (kHasBuf) bb.copy_to(a.buf + i, k);
    if (kAvg) ab.copy_to(a.avg + i, k);
    if constexpr (kMask) flush_counts(acc_a, acc_b, counts);
  }
}

template <typename T, bool kMask, bool kWrite>
void reweight_range(const ReweightArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const Vec alpha(static_cast<C>(a.alpha));
  const Vec eps(static_cast<C>(a.eps));
  const Vec inv(static_cast<C>(a.inv_scale));
  const bool use_alpha = a.alpha != 1.0;
  const bool unscale = a.unscale;
  Vec acc_a(C(0)), acc_b(C(0));
  auto body = [&](T* gp, const T* gsp) {
    Vec gv = IO<T>::load(gp);
    if (unscale) gv = gv * inv;
    Vec d = gv;
    if constexpr (kMask) {
      Vec gsv = IO<T>::load(gsp);
      if (unscale) gsv = gsv * inv;
      const Vec mb = group_b(gv, gsv, eps, acc_a, acc_b);
      if (use_alpha) d = Vec::blendv(gv, gv * alpha, mb);
    }
    if constexpr (kWrite) IO<T>::store(gp, d);
  };
  int64_t i = begin;
  while (i + V <= end) {
    const int64_t stop = std::min(end, i + kCountBlock);
    for (; i + V <= stop; i += V) body(a.g + i, kMask ? a.g_sgd + i : nullptr);
    if constexpr (kMask) flush_counts(acc_a, acc_b, counts);
  }
  if (i < end) {
    const int64_t k = end - i;
    Tail<T, V> gb(a.g + i, k), gsb(kMask ? a.g_sgd + i : nullptr, k);
    body(gb.v, gsb.v);
    if (kWrite) gb.copy_to(a.g + i, k);
    if constexpr (kMask) flush_counts(acc_a, acc_b, counts);
  }
}
#endif

// The function table the front end dispatches through, one per ISA build of this header.
template <typename T, size_t... I>
void fill_update(KernelTable<T>& t, std::index_sequence<I...>) {
  ((t.update[(I >> 4) & 1][(I >> 3) & 1][(I >> 2) & 1][(I >> 1) & 1][I & 1] =
        &update_range<T, (I & 16) != 0, (I & 8) != 0, (I & 4) != 0, (I & 2) != 0, (I & 1) != 0>),
   ...);
}

template <typename T, size_t... I>
void fill_perturb(KernelTable<T>& t, std::index_sequence<I...>) {
  ((t.perturb[(I >> 2) & 1][(I >> 1) & 1][I & 1] = &perturb_range<T, (I & 4) != 0, (I & 2) != 0, (I & 1) != 0>),
   ...);
}

template <typename T>
KernelTable<T> make_table() {
  KernelTable<T> t;
  t.sq_norm[0][0] = &sq_norm_range<T, false, false>;
  t.sq_norm[0][1] = &sq_norm_range<T, false, true>;
  t.sq_norm[1][0] = &sq_norm_range<T, true, false>;
  t.sq_norm[1][1] = &sq_norm_range<T, true, true>;
  t.dot_norm[0] = &dot_norm_range<T, false>;
  t.dot_norm[1] = &dot_norm_range<T, true>;
  fill_perturb<T>(t, std::make_index_sequence<8>{});
  fill_update<T>(t, std::make_index_sequence<32>{});
  t.restore[kFromGsgd] = &restore_range<T, kFromGsgd>;
  t.restore[kFromE] = &restore_range<T, kFromE>;
  t.restore[kFromDirection] = &restore_range<T, kFromDirection>;
  t.reweight[0][0] = nullptr;  // nothing to do: the front end returns first
  t.reweight[0][1] = &reweight_range<T, false, true>;
  t.reweight[1][0] = &reweight_range<T, true, false>;
  t.reweight[1][1] = &reweight_range<T, true, true>;
  return t;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace saner_kernels
