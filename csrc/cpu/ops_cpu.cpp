// The CPU implementation of the saner_kernels ops (schemas in ops.cpp): argument checks, the skip flag,
// zeroing and group-count bookkeeping, and the split into ranges run in parallel (at::parallel_for,
// OpenMP). The vector loops are in cpu/kernels.h, one build per ISA (cpu/isa.cpp picks one).
#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../front_end.h"
#include "isa.h"

namespace saner_kernels {
namespace cpu {
namespace {

constexpr int64_t kGrain = int64_t(1) << 15;      // elementwise ops: elements per task
constexpr int64_t kNormChunk = int64_t(1) << 16;  // norm: fixed chunks, so the sum order is fixed

// The scale's value, exact as a double; the kernels round it to their compute type like torch's type
// promotion does. Reading a CPU tensor is no host sync.
double read_scale(const at::Tensor& scale) {
  return scale.scalar_type() == at::kFloat ? static_cast<double>(*scale.const_data_ptr<float>())
                                           : *scale.const_data_ptr<double>();
}

bool read_skip(const at::Tensor& skip) { return *skip.const_data_ptr<float>() != 0.0f; }

// f(task, begin, end) over [0, n) in fixed tasks of kGrain elements, run in parallel.
template <typename F>
void for_each_task(int64_t n, const F& f) {
  const int64_t n_tasks = (n + kGrain - 1) / kGrain;
  at::parallel_for(0, n_tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) f(t, t * kGrain, std::min(n, (t + 1) * kGrain));
  });
}

// The flat rule arguments as the kernels take them, checked (front_end.h).
Rule checked_rule(bool has_rule, int64_t regions, double bound, double in_sam, double in_sgd, double out_sam,
                  double out_sgd) {
  check_rule(has_rule, regions, bound, in_sam, in_sgd, out_sam, out_sgd);
  Rule r;
  if (has_rule) {
    r.regions = static_cast<int>(regions);
    r.bound = bound;
    r.in_sam = in_sam;
    r.in_sgd = in_sgd;
    r.out_sam = out_sam;
    r.out_sgd = out_sgd;
  }
  return r;
}

template <typename T>
void zero_range(T* p, int64_t begin, int64_t end) {
  std::memset(p + begin, 0, static_cast<size_t>(end - begin) * sizeof(T));  // +0.0 in every dtype
}

double read_scalar(const std::optional<at::Tensor>& t, double otherwise) {
  return t.has_value() ? read_scale(*t) : otherwise;
}

// The direction's average and coefficients as the kernels take them (unused without an average).
template <typename T>
Direction<T> direction_of(const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  Direction<T> d;
  d.avg = avg.has_value() ? avg->const_data_ptr<T>() : nullptr;
  d.dir_g = dir_g;
  d.dir_avg = dir_avg;
  return d;
}

// Adds a task's group counts: [b, split) is counted, [split, en) is bucket padding.
template <typename F>
void counted_ranges(int64_t valid, int64_t b, int64_t en, GroupCounts* counts, const F& fn) {
  const int64_t split = std::clamp(valid, b, en);
  if (split > b) fn(b, split, counts);
  if (en > split) fn(split, en, nullptr);
}

void add_stats(const std::optional<at::Tensor>& stats, const std::vector<GroupCounts>& counts, int64_t valid) {
  GroupCounts total;
  for (const auto& c : counts) {
    total.a += c.a;
    total.b += c.b;
  }
  int64_t* sp = stats->data_ptr<int64_t>();
  sp[0] += total.a;
  sp[1] += total.b;
  sp[2] += valid - total.a - total.b;
}

at::Tensor grad_sq_norm_cpu(const at::Tensor& grad, const std::optional<at::Tensor>& w,
                            const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  check_norm_args(grad, w, avg);
  const int64_t n = grad.numel();
  const int64_t n_chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
  dispatch_dtype(grad.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = grad.const_data_ptr<T>();
    const T* wp = w.has_value() ? w->const_data_ptr<T>() : nullptr;
    const Direction<T> dir = direction_of<T>(avg, dir_g, dir_avg);
    const auto fn = kernels<T>().sq_norm[w.has_value()][avg.has_value()];
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        partial[c] = fn(gp, wp, dir, c * kNormChunk, std::min(n, (c + 1) * kNormChunk));
      }
    });
  });
  double total = 0.0;
  for (double p : partial) total += p;  // fixed order: deterministic whatever the thread count
  return at::scalar_tensor(total,
                           grad.options().dtype(grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}

at::Tensor gsam_dot_norm_cpu(const at::Tensor& g_sgd, const at::Tensor& g_sam, const std::optional<at::Tensor>& w) {
  check_dot_norm_args(g_sgd, g_sam, w);
  const int64_t n = g_sam.numel();
  const int64_t n_chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(static_cast<size_t>(2 * n_chunks), 0.0);
  dispatch_dtype(g_sam.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gsp = g_sgd.const_data_ptr<T>();
    const T* gp = g_sam.const_data_ptr<T>();
    const T* wp = w.has_value() ? w->const_data_ptr<T>() : nullptr;
    const auto fn = kernels<T>().dot_norm[w.has_value()];
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        fn(gsp, gp, wp, c * kNormChunk, std::min(n, (c + 1) * kNormChunk), &partial[2 * c]);
      }
    });
  });
  double dot = 0.0, sq = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) {  // fixed order, as grad_sq_norm
    dot += partial[2 * c];
    sq += partial[2 * c + 1];
  }
  const bool is_double = g_sam.scalar_type() == at::kDouble;
  at::Tensor out = at::empty({2}, g_sam.options().dtype(is_double ? at::kDouble : at::kFloat));
  if (is_double) {
    out.data_ptr<double>()[0] = dot;
    out.data_ptr<double>()[1] = sq;
  } else {
    out.data_ptr<float>()[0] = static_cast<float>(dot);
    out.data_ptr<float>()[1] = static_cast<float>(sq);
  }
  return out;
}

void perturb_cpu(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& scale, const at::Tensor& skip,
                 const std::optional<at::Tensor>& e, const std::optional<at::Tensor>& g_sgd,
                 const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  check_perturb_args(w, grad, scale, skip, e, g_sgd, avg);
  const int64_t n = w.numel();
  if (n == 0 || read_skip(skip)) return;
  const double s = read_scale(scale);
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* wp = w.data_ptr<T>();
    const T* gp = grad.const_data_ptr<T>();
    T* ep = e.has_value() ? e->data_ptr<T>() : nullptr;
    T* gsp = g_sgd.has_value() ? g_sgd->data_ptr<T>() : nullptr;
    const Direction<T> dir = direction_of<T>(avg, dir_g, dir_avg);
    const auto fn = kernels<T>().perturb[e.has_value()][g_sgd.has_value()][avg.has_value()];
    for_each_task(n, [&](int64_t, int64_t b, int64_t en) { fn(wp, gp, gsp, ep, dir, s, b, en); });
  });
}

// w <- w - e over [0, n) (the restore of restore_ and of a skipped update_); nothing to subtract when s == 0.
template <typename T>
void restore_all(T* wp, const T* g_sgd, const std::optional<at::Tensor>& e, const Direction<T>& dir, double s,
                 int64_t n, T* zero_a = nullptr, T* zero_b = nullptr) {
  const int source = e.has_value() ? kFromE : dir.avg != nullptr ? kFromDirection : kFromGsgd;
  const auto fn = kernels<T>().restore[source];
  const T* src = e.has_value() ? e->const_data_ptr<T>() : g_sgd;
  for_each_task(n, [&](int64_t, int64_t b, int64_t en) {
    if (s != 0.0) fn(wp, src, dir, s, b, en);
    if (zero_a != nullptr) {  // right after the read: the lines are still in cache
      zero_range(zero_a, b, en);
      zero_range(zero_b, b, en);
    }
  });
}

void update_cpu(const at::Tensor& w, const at::Tensor& g_sam, const at::Tensor& g_sgd,
                const std::optional<at::Tensor>& buf, const at::Tensor& scale, const at::Tensor& skip, double lr,
                double momentum, double dampening, double weight_decay, double alpha, double eps, bool nesterov,
                const std::optional<at::Tensor>& e, bool first_momentum_step, bool zero_grads,
                const std::optional<at::Tensor>& stats, std::optional<int64_t> n_valid,
                const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& avg, double dir_g,
                double dir_avg, double avg_keep, double avg_take, const std::optional<at::Tensor>& gsam_k,
                double gsam_alpha, bool has_rule, int64_t rule_regions, double rule_bound, double rule_in_sam,
                double rule_in_sgd, double rule_out_sam, double rule_out_sgd) {
  check_update_args(w, g_sam, g_sgd, buf, scale, skip, e, stats, inv_scale, avg, gsam_k);
  const Rule rule = checked_rule(has_rule, rule_regions, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam,
                                 rule_out_sgd);
  const int64_t n = w.numel();
  const int64_t valid = valid_count(n_valid, n);
  if (n == 0) return;
  const bool skipped = read_skip(skip);
  const double s = read_scale(scale);
  const int mask = has_rule ? kRuleMask : (alpha != 1.0 || stats.has_value()) ? kAlphaMask : kNoMask;
  std::vector<GroupCounts> counts(static_cast<size_t>((n + kGrain - 1) / kGrain));
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* wp = w.data_ptr<T>();
    T* gp = g_sam.data_ptr<T>();
    T* gsp = g_sgd.data_ptr<T>();
    if (skipped) {  // restore w, and zero what was asked for (docs/design.md "Kernel contract")
      restore_all<T>(wp, gsp, e, direction_of<T>(avg, dir_g, dir_avg), s, n, zero_grads ? gp : nullptr,
                     zero_grads ? gsp : nullptr);
      return;
    }
    UpdateArgs<T> a;
    a.w = wp;
    a.g_sam = gp;
    a.g_sgd = gsp;
    a.buf = buf.has_value() ? buf->data_ptr<T>() : nullptr;
    a.e = e.has_value() ? e->const_data_ptr<T>() : nullptr;
    a.avg = avg.has_value() ? avg->data_ptr<T>() : nullptr;
    a.scale = s;
    a.perturbed = s != 0.0;
    a.unscale = inv_scale.has_value();
    a.inv_scale = read_scalar(inv_scale, 1.0);
    a.lr = lr;
    a.momentum = momentum;
    a.dampening = dampening;
    a.weight_decay = weight_decay;
    a.alpha = alpha;
    a.eps = eps;
    a.dir_g = dir_g;
    a.dir_avg = dir_avg;
    a.avg_keep = avg_keep;
    a.avg_take = avg_take;
    a.gsam_k = read_scalar(gsam_k, 0.0);
    a.gsam_alpha = gsam_alpha;
    a.nesterov = nesterov;
    a.first_momentum_step = first_momentum_step;
    a.rule = rule;
    const auto fn =
        kernels<T>().update[e.has_value()][buf.has_value()][mask][avg.has_value()][gsam_k.has_value()];
    for_each_task(n, [&](int64_t t, int64_t b, int64_t en) {
      counted_ranges(valid, b, en, &counts[t], [&](int64_t r0, int64_t r1, GroupCounts* c) { fn(a, r0, r1, c); });
      if (zero_grads) {  // right after the read: the lines are still in cache
        zero_range(gp, b, en);
        zero_range(gsp, b, en);
      }
    });
  });
  if (stats.has_value() && !skipped) add_stats(stats, counts, valid);
}

void restore_cpu(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& skip,
                 const std::optional<at::Tensor>& g_sgd, const std::optional<at::Tensor>& e,
                 const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  check_restore_args(w, scale, skip, g_sgd, e, avg);
  const int64_t n = w.numel();
  const double s = read_scale(scale);
  if (n == 0 || read_skip(skip) || s == 0.0) return;  // nothing to restore
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gsp = g_sgd.has_value() ? g_sgd->const_data_ptr<T>() : nullptr;
    restore_all<T>(w.data_ptr<T>(), gsp, e, direction_of<T>(avg, dir_g, dir_avg), s, n);
  });
}

void reweight_cpu(const at::Tensor& g_sam, const at::Tensor& g_sgd, const at::Tensor& skip, double alpha,
                  double eps, const std::optional<at::Tensor>& stats, std::optional<int64_t> n_valid,
                  const std::optional<at::Tensor>& inv_scale, bool has_rule, int64_t rule_regions, double rule_bound,
                  double rule_in_sam, double rule_in_sgd, double rule_out_sam, double rule_out_sgd) {
  check_reweight_args(g_sam, g_sgd, skip, stats, inv_scale);
  const Rule rule = checked_rule(has_rule, rule_regions, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam,
                                 rule_out_sgd);
  const int64_t n = g_sam.numel();
  const int64_t valid = valid_count(n_valid, n);
  const bool mask = has_rule || alpha != 1.0 || stats.has_value();
  const bool write = has_rule || alpha != 1.0 || inv_scale.has_value();  // else g_sam is written back as it is
  if (n == 0 || read_skip(skip) || !(mask || write)) return;
  const ReweightVariant variant = has_rule ? kRuled : !mask ? kUnscaleOnly : !write ? kCountOnly : kReweight;
  std::vector<GroupCounts> counts(static_cast<size_t>((n + kGrain - 1) / kGrain));
  dispatch_dtype(g_sam.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    ReweightArgs<T> a;
    a.g_sam = g_sam.data_ptr<T>();
    a.g_sgd = g_sgd.const_data_ptr<T>();
    a.alpha = alpha;
    a.eps = eps;
    a.unscale = inv_scale.has_value();
    a.inv_scale = read_scalar(inv_scale, 1.0);
    a.rule = rule;
    const auto fn = kernels<T>().reweight[variant];
    for_each_task(n, [&](int64_t t, int64_t b, int64_t en) {
      counted_ranges(valid, b, en, &counts[t], [&](int64_t r0, int64_t r1, GroupCounts* c) { fn(a, r0, r1, c); });
    });
  });
  if (stats.has_value()) add_stats(stats, counts, valid);
}

}  // namespace
}  // namespace cpu
}  // namespace saner_kernels

TORCH_LIBRARY_IMPL(saner_kernels, CPU, m) {
  m.impl("grad_sq_norm", &saner_kernels::cpu::grad_sq_norm_cpu);
  m.impl("perturb_", &saner_kernels::cpu::perturb_cpu);
  m.impl("update_", &saner_kernels::cpu::update_cpu);
  m.impl("restore_", &saner_kernels::cpu::restore_cpu);
  m.impl("gsam_dot_norm", &saner_kernels::cpu::gsam_dot_norm_cpu);
  m.impl("reweight_", &saner_kernels::cpu::reweight_cpu);
}
