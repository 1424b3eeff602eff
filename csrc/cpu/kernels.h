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
  Vectorized<C> dir_g, dir_avg;
  template <typename T>
  explicit DirectionVec(const Direction<T>& d) : dir_g(static_cast<C>(d.dir_g)), dir_avg(static_cast<C>(d.dir_avg)) {}
  Vectorized<C> operator()(const Vectorized<C>& g, const Vectorized<C>& avg) const { return g * dir_g + avg * dir_avg; }
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
double sq_norm_range(const T* grad, const T* w, const Direction<T>& dir, int64_t begin, int64_t end) {
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
        acc[u] = acc[u] + term(grad + j, kAdaptive ? w + j : nullptr, kAvg ? dir.avg + j : nullptr);
      }
    }
    for (; i < b1; i += V) {  // tail: zero-filled partial vectors (a zero term)
      const int64_t k = std::min(V, b1 - i);
      Tail<T, V> gb(grad + i, k), wb(kAdaptive ? w + i : nullptr, k), ab(kAvg ? dir.avg + i : nullptr, k);
      acc[0] = acc[0] + term(gb.v, wb.v, ab.v);
    }
    total += fold_lanes<C, kUnroll>(acc);
  }
  return total;
}

// ---------------------------------------------------------------------------------- gsam_dot_norm
// out = [sum(g_sgd * g_sam), sum(x^2)] over [begin, end), x = |w| g_sam (adaptive) or g_sam: the norm's scheme,
// two sums.
template <typename T, bool kAdaptive>
void dot_norm_range(const T* g_sgd, const T* g_sam, const T* w, int64_t begin, int64_t end, double* out) {
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
        add(u, g_sgd + j, g_sam + j, kAdaptive ? w + j : nullptr);
      }
    }
    for (; i < b1; i += V) {
      const int64_t k = std::min(V, b1 - i);
      Tail<T, V> gsb(g_sgd + i, k), gb(g_sam + i, k), wb(kAdaptive ? w + i : nullptr, k);
      add(0, gsb.v, gb.v, wb.v);
    }
    total_dot += fold_lanes<C, kUnroll>(dot);
    total_sq += fold_lanes<C, kUnroll>(sq);
  }
  out[0] = total_dot;
  out[1] = total_sq;
}

// ---------------------------------------------------------------------------------- perturb_
// e = (w*w*d*s if adaptive else d*s);  w <- w + e;  e stored when adaptive;  g_sgd <- grad when copying.
// d = grad, or the average direction (kAvg).
template <typename T, bool kAdaptive, bool kCopy, bool kAvg>
void perturb_range(T* w, const T* grad, T* g_sgd, T* e, const Direction<T>& dir, double scale, int64_t begin,
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
    if constexpr (kCopy) {  // grad itself, not the direction
#if defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<T, float>) {
        if (stream) {
          _mm256_stream_ps(reinterpret_cast<float*>(gsp), gv);
          return;
        }
      }
#endif
      std::memcpy(gsp, gp, V * sizeof(T));  // a bit copy, like g_sgd.copy_(grad)
    }
  };
  int64_t i = begin;
  for (; i + V <= end; i += V) {
    body(w + i, grad + i, kCopy ? g_sgd + i : nullptr, kAdaptive ? e + i : nullptr, kAvg ? dir.avg + i : nullptr,
         stream_g_sgd);
  }
#if defined(CPU_CAPABILITY_AVX2)
  if (std::is_same_v<T, float> && stream_g_sgd) _mm_sfence();  // order the streaming stores
#endif
  if (i < end) {  // tail through the same vector code on zero-padded copies
    const int64_t k = end - i;
    Tail<T, V> wb(w + i, k), gb(grad + i, k), gsb(nullptr, k), eb(nullptr, k), ab(kAvg ? dir.avg + i : nullptr, k);
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
// update_: restore w, (GSAM) g_sam <- g_sam - gsam_alpha * (g_sgd - gsam_k * g_sam), reweight Group B by alpha,
// weight decay, momentum, step, (average) commit avg; counts A and B when counts != nullptr.
// reweight_: the unscaling and the Group B reweighting alone, written back to g_sam.
//
// The math is written once, over a lane type L: Vectorized<C> in the AVX2 build, C itself in the baseline build
// (there ATen's generic Vectorized compares and blends lane by lane through memory, 25x slower than a plain loop
// the compiler vectorizes itself). What differs between the two is in the lane_* overloads; lane_fmadd is
// ATen's vec::fmadd (one fused rounding with AVX2) and a*b + c with two roundings in the scalar build, exactly
// what ATen's generic vec::fmadd computes.
template <typename L>
struct LaneValue {
  using type = L;
};
template <typename C>
struct LaneValue<Vectorized<C>> {
  using type = C;
};

template <typename C, std::enable_if_t<std::is_floating_point_v<C>, int> = 0>
inline C lane_abs(C x) {
  return std::abs(x);
}
template <typename C>
inline Vectorized<C> lane_abs(const Vectorized<C>& x) {
  return x.abs();
}
template <typename C, std::enable_if_t<std::is_floating_point_v<C>, int> = 0>
inline C lane_fmadd(C a, C b, C c) {
  return a * b + c;
}
template <typename C>
inline Vectorized<C> lane_fmadd(const Vectorized<C>& a, const Vectorized<C>& b, const Vectorized<C>& c) {
  return at::vec::fmadd(a, b, c);
}
// mask ? a : b, lane by lane
template <typename C, std::enable_if_t<std::is_floating_point_v<C>, int> = 0>
inline C lane_select(bool mask, C a, C b) {
  return mask ? a : b;
}
template <typename C>
inline Vectorized<C> lane_select(const Vectorized<C>& mask, const Vectorized<C>& a, const Vectorized<C>& b) {
  return Vectorized<C>::blendv(b, a, mask);
}

// Group A and B counts: exact integers for scalar lanes; for vectors, per-lane counters in C, exact below 2^24,
// flushed at least every kCountBlock elements.
constexpr int64_t kCountBlock = int64_t(1) << 16;

template <typename L>
struct GroupTally {
  int64_t a = 0, b = 0;
  void add(bool in_a, bool in_b) {
    a += in_a;
    b += in_b;
  }
  void flush(GroupCounts* counts) {
    if (counts != nullptr) {
      counts->a += a;
      counts->b += b;
    }
    a = b = 0;
  }
};

template <typename C>
struct GroupTally<Vectorized<C>> {
  Vectorized<C> a{C(0)}, b{C(0)};
  void add(const Vectorized<C>& in_a, const Vectorized<C>& in_b) {
    const Vectorized<C> one(C(1));
    a = a + (in_a & one);
    b = b + (in_b & one);
  }
  void flush(GroupCounts* counts) {
    constexpr int64_t V = Vectorized<C>::size();
    alignas(64) C la[V], lb[V];
    a.store(la);
    b.store(lb);
    int64_t count_a = 0, count_b = 0;
    for (int64_t l = 0; l < V; ++l) {
      count_a += static_cast<int64_t>(la[l]);
      count_b += static_cast<int64_t>(lb[l]);
    }
    if (counts != nullptr) {
      counts->a += count_a;
      counts->b += count_b;
    }
    a = b = Vectorized<C>(C(0));
  }
};

// g_sam with Group B scaled by alpha (when use_alpha); counts Groups A and B. The mask is division-free, against
// den = g_sgd + eps (docs/design.md "Numerics").
template <typename L>
inline L reweighted(const L& g_sam, const L& g_sgd, const L& eps, const L& alpha, bool use_alpha,
                    GroupTally<L>& tally) {
  using C = typename LaneValue<L>::type;
  using Mask = decltype(g_sam < g_sam);  // bool, or a Vectorized lane mask
  const L zero(C(0));
  const L den = g_sgd + eps;
  const Mask same = ((g_sam > zero) & (den > zero)) | ((g_sam < zero) & (den < zero));
  const L g_abs = lane_abs(g_sam), den_abs = lane_abs(den);
  const Mask in_b = same & (g_abs < den_abs);
  tally.add(same & (g_abs >= den_abs), in_b);
  return use_alpha ? lane_select(in_b, g_sam * alpha, g_sam) : g_sam;
}

// A group rule's lanes (kRuleMask): the bound, the coefficients, and which regions are in, as lane masks.
template <typename L>
struct RuleLanes {
  using C = typename LaneValue<L>::type;
  using Mask = decltype(L() < L());  // bool, or a Vectorized lane mask
  L bound, in_sam, in_sgd, out_sam, out_sgd;
  Mask in_c, in_z, in_b, in_e, in_a;

  static Mask has(int regions, int bit) { return L(C((regions & bit) != 0)) != L(C(0)); }
  explicit RuleLanes(const Rule& r)
      : bound(static_cast<C>(r.bound)),
        in_sam(static_cast<C>(r.in_sam)),
        in_sgd(static_cast<C>(r.in_sgd)),
        out_sam(static_cast<C>(r.out_sam)),
        out_sgd(static_cast<C>(r.out_sgd)),
        in_c(has(r.regions, 1)),
        in_z(has(r.regions, 2)),
        in_b(has(r.regions, 4)),
        in_e(has(r.regions, 8)),
        in_a(has(r.regions, 16)) {}
};

// Without a rule (kNoMask, kAlphaMask) the math holds none: the kernels are today's.
struct NoRule {
  explicit NoRule(const Rule&) {}
};
template <typename L, int kMask>
using RuleOf = std::conditional_t<kMask == kRuleMask, RuleLanes<L>, NoRule>;

// The update's gradient under a group rule (reference._ruled): r = g_sam / (g_sgd + eps) by division, its regions
// against the bound (every comparison with a NaN ratio is false: in no region); two products and a sum on each
// side. Counts A as r >= bound, B as 0 < r < bound.
template <typename L>
inline L ruled(const L& g_sam, const L& g_sgd, const L& eps, const RuleLanes<L>& rule, GroupTally<L>& tally) {
  using C = typename LaneValue<L>::type;
  using Mask = typename RuleLanes<L>::Mask;
  const L zero(C(0));
  const L r = g_sam / (g_sgd + eps);
  const Mask in_b = (r > zero) & (r < rule.bound);
  const Mask inside = ((r < zero) & rule.in_c) | ((r == zero) & rule.in_z) | (in_b & rule.in_b) |
                      ((r == rule.bound) & rule.in_e) | ((r > rule.bound) & rule.in_a);
  tally.add(r >= rule.bound, in_b);
  return lane_select(inside, g_sam * rule.in_sam + g_sgd * rule.in_sgd, g_sam * rule.out_sam + g_sgd * rule.out_sgd);
}

// The update of one lane set. w, buf and avg are read and written; buf is not read in a first momentum step.
template <typename L, bool kAdaptive, bool kHasBuf, int kMask, bool kAvg, bool kGsam>
struct UpdateMath {
  using C = typename LaneValue<L>::type;
  L s, neg_lr, mu, one_minus_damp, wd, alpha, eps, inv, dir_g, dir_avg, avg_keep, avg_take, gsam_k, gsam_alpha;
  bool use_alpha, use_wd, nesterov, first, unscale, perturbed;
  RuleOf<L, kMask> rule;

  template <typename T>
  explicit UpdateMath(const UpdateArgs<T>& a)
      : s(static_cast<C>(a.scale)),
        neg_lr(static_cast<C>(-a.lr)),
        mu(static_cast<C>(a.momentum)),
        one_minus_damp(static_cast<C>(1.0 - a.dampening)),  // (1 - tau) rounded once, as in Python
        wd(static_cast<C>(a.weight_decay)),
        alpha(static_cast<C>(a.alpha)),
        eps(static_cast<C>(a.eps)),
        inv(static_cast<C>(a.inv_scale)),
        dir_g(static_cast<C>(a.dir_g)),
        dir_avg(static_cast<C>(a.dir_avg)),
        avg_keep(static_cast<C>(a.avg_keep)),
        avg_take(static_cast<C>(a.avg_take)),
        gsam_k(static_cast<C>(a.gsam_k)),
        gsam_alpha(static_cast<C>(a.gsam_alpha)),
        use_alpha(a.alpha != 1.0),
        use_wd(a.weight_decay != 0.0),  // no 0 * w term: an infinite weight stays infinite
        nesterov(a.nesterov),
        first(a.first_momentum_step),
        unscale(a.unscale),
        perturbed(a.perturbed),
        rule(a.rule) {}

  bool reads_buf() const { return kHasBuf && !first; }

  void operator()(L& w, L g_sam, L g_sgd, L& buf, const L& e, L& avg, GroupTally<L>& tally) const {
    L ev(C(0));
    if (perturbed) {  // e from the stored g_sgd (and avg)
      if constexpr (kAdaptive) {
        ev = e;
      } else if constexpr (kAvg) {
        ev = (g_sgd * dir_g + avg * dir_avg) * s;
      } else {
        ev = g_sgd * s;
      }
    }
    const L wv = w - ev;
    if (unscale) {
      g_sam = g_sam * inv;
      g_sgd = g_sgd * inv;
    }
    if constexpr (kGsam) g_sam = g_sam - (g_sgd - gsam_k * g_sam) * gsam_alpha;  // t = k*g; u = g_sgd - t; g - u*alpha
    L d = g_sam;
    if constexpr (kMask == kRuleMask) {
      d = ruled(g_sam, g_sgd, eps, rule, tally);
    } else if constexpr (kMask == kAlphaMask) {
      d = reweighted(g_sam, g_sgd, eps, alpha, use_alpha, tally);
    }
    // torch.add(x, y, alpha=a) steps, as torch.optim.SGD and the reference do them: ATen evaluates
    // x + a*y as vec::fmadd(y, a, x), one fused rounding with AVX2, and so does lane_fmadd here.
    if (use_wd) d = lane_fmadd(wv, wd, d);  // d.add(w, alpha=wd)
    if constexpr (kHasBuf) {
      const L new_buf = first ? d : lane_fmadd(d, one_minus_damp, buf * mu);  // buf.mul(mu).add_(d, alpha=1-tau)
      d = nesterov ? lane_fmadd(new_buf, mu, d) : new_buf;                   // d.add(buf, alpha=mu)
      buf = new_buf;
    }
    w = lane_fmadd(d, neg_lr, wv);                                   // w.add(d, alpha=-lr)
    if constexpr (kAvg) avg = avg * avg_keep + g_sgd * avg_take;  // the unscaled g_sgd
  }
};

// The reweighting of one lane set: the new g_sam.
template <typename L, int kMask>
struct ReweightMath {
  using C = typename LaneValue<L>::type;
  L alpha, eps, inv;
  bool use_alpha, unscale;
  RuleOf<L, kMask> rule;

  template <typename T>
  explicit ReweightMath(const ReweightArgs<T>& a)
      : alpha(static_cast<C>(a.alpha)),
        eps(static_cast<C>(a.eps)),
        inv(static_cast<C>(a.inv_scale)),
        use_alpha(a.alpha != 1.0),
        unscale(a.unscale),
        rule(a.rule) {}

  L operator()(L g_sam, L g_sgd, GroupTally<L>& tally) const {
    if (unscale) {
      g_sam = g_sam * inv;
      if constexpr (kMask != kNoMask) g_sgd = g_sgd * inv;
    }
    if constexpr (kMask == kRuleMask) return ruled(g_sam, g_sgd, eps, rule, tally);
    if constexpr (kMask == kAlphaMask) return reweighted(g_sam, g_sgd, eps, alpha, use_alpha, tally);
    return g_sam;
  }
};

#if !defined(CPU_CAPABILITY_AVX2)
// Baseline build: plain loops over scalar lanes, which the compiler vectorizes itself.
template <typename T, bool kAdaptive, bool kHasBuf, int kMask, bool kAvg, bool kGsam>
void update_range(const UpdateArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  const UpdateMath<C, kAdaptive, kHasBuf, kMask, kAvg, kGsam> math(a);
  const bool read_buf = math.reads_buf();
  GroupTally<C> tally;
  T* __restrict__ wp = a.w;  // distinct buffers: lets the compiler vectorize the loop
  T* __restrict__ bp = a.buf;
  T* __restrict__ ap = a.avg;
  const T* __restrict__ gp = a.g_sam;
  const T* __restrict__ gsp = a.g_sgd;
  const T* __restrict__ ep = a.e;
  for (int64_t i = begin; i < end; ++i) {
    C w = static_cast<C>(wp[i]);
    C buf = read_buf ? static_cast<C>(bp[i]) : C(0);
    C avg = kAvg ? static_cast<C>(ap[i]) : C(0);
    math(w, static_cast<C>(gp[i]), static_cast<C>(gsp[i]), buf, kAdaptive ? static_cast<C>(ep[i]) : C(0), avg,
         tally);
    wp[i] = static_cast<T>(w);
    if constexpr (kHasBuf) bp[i] = static_cast<T>(buf);
    if constexpr (kAvg) ap[i] = static_cast<T>(avg);
  }
  if constexpr (kMask) tally.flush(counts);
}

template <typename T, int kMask, bool kWrite>
void reweight_range(const ReweightArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  const ReweightMath<C, kMask> math(a);
  GroupTally<C> tally;
  T* __restrict__ gp = a.g_sam;
  const T* __restrict__ gsp = a.g_sgd;
  for (int64_t i = begin; i < end; ++i) {
    const C d = math(static_cast<C>(gp[i]), kMask ? static_cast<C>(gsp[i]) : C(0), tally);
    if constexpr (kWrite) gp[i] = static_cast<T>(d);
  }
  if constexpr (kMask) tally.flush(counts);
}
#else
// AVX2 build: Vectorized lanes; blocks of kCountBlock elements between count flushes; the tail through the same
// vector code on zero-padded copies (the padding is never counted in A or B: g_sam == 0 is Group C).
template <typename T, bool kAdaptive, bool kHasBuf, int kMask, bool kAvg, bool kGsam>
void update_range(const UpdateArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const UpdateMath<Vec, kAdaptive, kHasBuf, kMask, kAvg, kGsam> math(a);
  const bool read_buf = math.reads_buf();
  GroupTally<Vec> tally;
  auto body = [&](T* wp, const T* gp, const T* gsp, T* bp, const T* ep, T* ap) {
    Vec w = IO<T>::load(wp);
    Vec buf = read_buf ? IO<T>::load(bp) : Vec(C(0));
    Vec avg = kAvg ? IO<T>::load(ap) : Vec(C(0));
    math(w, IO<T>::load(gp), IO<T>::load(gsp), buf, kAdaptive ? IO<T>::load(ep) : Vec(C(0)), avg, tally);
    if constexpr (kHasBuf) IO<T>::store(bp, buf);
    IO<T>::store(wp, w);
    if constexpr (kAvg) IO<T>::store(ap, avg);
  };
  int64_t i = begin;
  while (i + V <= end) {
    const int64_t stop = std::min(end, i + kCountBlock);
    for (; i + V <= stop; i += V) {
      body(a.w + i, a.g_sam + i, a.g_sgd + i, kHasBuf ? a.buf + i : nullptr, kAdaptive ? a.e + i : nullptr,
           kAvg ? a.avg + i : nullptr);
    }
    if constexpr (kMask) tally.flush(counts);
  }
  if (i < end) {
    const int64_t k = end - i;
    Tail<T, V> wb(a.w + i, k), gb(a.g_sam + i, k), gsb(a.g_sgd + i, k);
    Tail<T, V> bb(kHasBuf ? a.buf + i : nullptr, k), eb(kAdaptive ? a.e + i : nullptr, k);
    Tail<T, V> ab(kAvg ? a.avg + i : nullptr, k);
    body(wb.v, gb.v, gsb.v, bb.v, eb.v, ab.v);
    wb.copy_to(a.w + i, k);
    if (kHasBuf) bb.copy_to(a.buf + i, k);
    if (kAvg) ab.copy_to(a.avg + i, k);
    if constexpr (kMask) tally.flush(counts);
  }
}

template <typename T, int kMask, bool kWrite>
void reweight_range(const ReweightArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts) {
  using C = compute_t<T>;
  using Vec = Vectorized<C>;
  constexpr int64_t V = Vec::size();
  const ReweightMath<Vec, kMask> math(a);
  GroupTally<Vec> tally;
  auto body = [&](T* gp, const T* gsp) {
    const Vec d = math(IO<T>::load(gp), kMask ? IO<T>::load(gsp) : Vec(C(0)), tally);
    if constexpr (kWrite) IO<T>::store(gp, d);
  };
  int64_t i = begin;
  while (i + V <= end) {
    const int64_t stop = std::min(end, i + kCountBlock);
    for (; i + V <= stop; i += V) body(a.g_sam + i, kMask ? a.g_sgd + i : nullptr);
    if constexpr (kMask) tally.flush(counts);
  }
  if (i < end) {
    const int64_t k = end - i;
    Tail<T, V> gb(a.g_sam + i, k), gsb(kMask ? a.g_sgd + i : nullptr, k);
    body(gb.v, gsb.v);
    if (kWrite) gb.copy_to(a.g_sam + i, k);
    if constexpr (kMask) tally.flush(counts);
  }
}
#endif

// The function table the front end dispatches through, one per ISA build of this header.
// I = (((adaptive * 2 + has_buf) * 3 + mask) * 2 + average) * 2 + gsam
template <typename T, size_t... I>
void fill_update(KernelTable<T>& t, std::index_sequence<I...>) {
  ((t.update[I / 24][(I / 12) % 2][(I / 4) % 3][(I / 2) % 2][I % 2] =
        &update_range<T, (I / 24) != 0, (I / 12) % 2 != 0, int((I / 4) % 3), (I / 2) % 2 != 0, I % 2 != 0>),
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
  fill_update<T>(t, std::make_index_sequence<48>{});
  t.restore[kFromGsgd] = &restore_range<T, kFromGsgd>;
  t.restore[kFromE] = &restore_range<T, kFromE>;
  t.restore[kFromDirection] = &restore_range<T, kFromDirection>;
  t.reweight[kUnscaleOnly] = &reweight_range<T, kNoMask, true>;
  t.reweight[kCountOnly] = &reweight_range<T, kAlphaMask, false>;
  t.reweight[kReweight] = &reweight_range<T, kAlphaMask, true>;
  t.reweight[kRuled] = &reweight_range<T, kRuleMask, true>;
  return t;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace saner_kernels
