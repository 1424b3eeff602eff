// saner_kernels custom ops: schemas (TORCH_LIBRARY), the CPU implementation, Meta kernels and
// autograd "not implemented" fallbacks. The CUDA implementation lives in cuda/saner_cuda.cu.
//
// Contract: saner_kernels/ops/reference.py (same names, arguments and results). Work is split with
// at::parallel_for (OpenMP); the vector loops are in cpu/kernels.h, built once per ISA.
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "common.h"
#include "front_end.h"

namespace saner_kernels {
namespace {

// ------------------------------------------------------------------------------------ ISA choice
enum class Isa : int { kDefault = 0, kAvx2 = 1 };

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

Isa initial_isa() {
  const char* env = std::getenv("SANER_KERNELS_CPU_CAPABILITY");  // "default" forces the baseline
  if (env != nullptr && std::string(env) == "default") return Isa::kDefault;
  return (cpu::has_avx2_build() && cpu_has_avx2()) ? Isa::kAvx2 : Isa::kDefault;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

template <typename T>
const cpu::KernelTable<T>& table() {
  static const cpu::KernelTable<T> base = cpu::default_table<T>();
  static const cpu::KernelTable<T> avx2 = cpu::avx2_table<T>();
  return current_isa().load() == static_cast<int>(Isa::kAvx2) ? avx2 : base;
}

// ------------------------------------------------------------------------------------ checks

void check_dtype(const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "saner_kernels: unsupported dtype ", st, " (float32, float64, bfloat16, float16 are supported)");
}

// The scale is a 0-dim fp32 tensor (fp64 allowed: the optimizer's scale for fp64 buckets). Its value
// is exact as a double; the kernels round it to their compute type, as torch's type promotion does.
double read_scale_cpu(const at::Tensor& scale) {
  TORCH_CHECK(scale.numel() == 1 && (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble),
              "saner_kernels: scale must be a 0-dim float32 (or float64) tensor, got ", scale.scalar_type(),
              " of shape ", scale.sizes());
  TORCH_CHECK(scale.device().is_cpu(), "saner_kernels: scale must be on the tensors' device (cpu), got ",
              scale.device());
  return scale.scalar_type() == at::kFloat ? static_cast<double>(scale.item<float>()) : scale.item<double>();
}


constexpr int64_t kGrain = int64_t(1) << 15;      // elementwise ops: elements per task at least
constexpr int64_t kNormChunk = int64_t(1) << 16;  // norm: fixed chunks, so the sum order is fixed

// ------------------------------------------------------------------------------------ CPU ops
at::Tensor grad_sq_norm_cpu(const at::Tensor& g, const std::optional<at::Tensor>& w) {
  check_dtype(g);
  check_flat(g, g, "g");
  if (w.has_value()) check_flat(*w, g, "w");
  const int64_t n = g.numel();
  const int64_t n_chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
  double total = 0.0;
  const auto out_dtype = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  dispatch_dtype(g.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.const_data_ptr<T>();
    const T* wp = w.has_value() ? w->const_data_ptr<T>() : nullptr;
    const auto fn = table<T>().sq_norm;
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        partial[c] = fn(gp, wp, c * kNormChunk, std::min(n, (c + 1) * kNormChunk));
      }
    });
  });
  for (double p : partial) total += p;  // fixed order: deterministic whatever the thread count
  return at::scalar_tensor(total, g.options().dtype(out_dtype));
}

void perturb_cpu(const at::Tensor& w, const at::Tensor& g, const at::Tensor& g_sgd, const at::Tensor& scale,
                 const std::optional<at::Tensor>& e) {
  check_dtype(w);
  check_flat(w, w, "w");
  check_flat(g, w, "g");
  check_flat(g_sgd, w, "g_sgd");
  if (e.has_value()) check_flat(*e, w, "e");
  const double s = read_scale_cpu(scale);
  if (!std::isfinite(s)) return;  // skipped step: write nothing
  const int64_t n = w.numel();
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* wp = w.data_ptr<T>();
    const T* gp = g.const_data_ptr<T>();
    T* gsp = g_sgd.data_ptr<T>();
    T* ep = e.has_value() ? e->data_ptr<T>() : nullptr;
    const auto fn = table<T>().perturb[e.has_value() ? 1 : 0];
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t en) { fn(wp, gp, gsp, ep, s, b, en); });
  });
}

void update_cpu(const at::Tensor& w, const at::Tensor& g, const at::Tensor& g_sgd,
                const std::optional<at::Tensor>& buf, const at::Tensor& scale, const std::optional<at::Tensor>& e,
                double lr, double momentum, double dampening, double weight_decay, double alpha, double eps,
                bool nesterov, bool first_momentum_step, const std::optional<at::Tensor>& stats) {
  check_dtype(w);
  check_flat(w, w, "w");
  check_flat(g, w, "g");
  check_flat(g_sgd, w, "g_sgd");
  if (buf.has_value()) check_flat(*buf, w, "buf");
  if (e.has_value()) check_flat(*e, w, "e");
  if (stats.has_value()) {
    TORCH_CHECK(stats->scalar_type() == at::kLong && stats->numel() == 3 && stats->is_contiguous() &&
                    stats->device() == w.device(),
                "saner_kernels: stats must be a contiguous int64 tensor of 3 counters on ", w.device());
  }
  const double s = read_scale_cpu(scale);
  if (!std::isfinite(s)) return;  // skipped step: write nothing, count nothing
  const int64_t n = w.numel();
  const bool mask = alpha != 1.0 || stats.has_value();
  const int idx = (e.has_value() ? 4 : 0) + (buf.has_value() ? 2 : 0) + (mask ? 1 : 0);
  int64_t total_a = 0, total_b = 0;
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::UpdateArgs<T> a;
    a.w = w.data_ptr<T>();
    a.g = g.const_data_ptr<T>();
    a.g_sgd = g_sgd.const_data_ptr<T>();
    a.buf = buf.has_value() ? buf->data_ptr<T>() : nullptr;
    a.e = e.has_value() ? e->const_data_ptr<T>() : nullptr;
    a.scale = s;
    a.lr = lr;
    a.momentum = momentum;
    a.dampening = dampening;
    a.weight_decay = weight_decay;
    a.alpha = alpha;
    a.eps = eps;
    a.nesterov = nesterov;
    a.first_momentum_step = first_momentum_step;
    const auto fn = table<T>().update[idx];
    const int64_t n_tasks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
    std::vector<int64_t> counts(static_cast<size_t>(2 * n_tasks), 0);
    at::parallel_for(0, n_tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        fn(a, t * kGrain, std::min(n, (t + 1) * kGrain), &counts[2 * t], &counts[2 * t + 1]);
      }
    });
    for (int64_t t = 0; t < n_tasks; ++t) {
      total_a += counts[2 * t];
      total_b += counts[2 * t + 1];
    }
  });
  if (stats.has_value()) {
    int64_t* sp = stats->data_ptr<int64_t>();
    sp[0] += total_a;
    sp[1] += total_b;
    sp[2] += n - total_a - total_b;
  }
}

// ------------------------------------------------------------------------------------ Meta (shapes only)
at::Tensor grad_sq_norm_meta(const at::Tensor& g, const std::optional<at::Tensor>& w) {
  const auto out_dtype = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty({}, g.options().dtype(out_dtype));
}
void perturb_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const std::optional<at::Tensor>&) {}
void update_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                 const at::Tensor&, const std::optional<at::Tensor>&, double, double, double, double, double, double,
                 bool, bool, const std::optional<at::Tensor>&) {}

}  // namespace

// Used by module.cpp (Python bindings for tests and diagnostics).
std::string cpu_capability() { return current_isa().load() == static_cast<int>(Isa::kAvx2) ? "avx2" : "default"; }
void set_cpu_capability(const std::string& name) {
  if (name == "default") {
    current_isa().store(static_cast<int>(Isa::kDefault));
  } else if (name == "avx2") {
    TORCH_CHECK(cpu::has_avx2_build() && cpu_has_avx2(), "saner_kernels: AVX2 kernels unavailable here");
    current_isa().store(static_cast<int>(Isa::kAvx2));
  } else {
    TORCH_CHECK(false, "saner_kernels: unknown CPU capability '", name, "' (use 'default' or 'avx2')");
  }
}

}  // namespace saner_kernels

TORCH_LIBRARY(saner_kernels, m) {
  m.def("grad_sq_norm(Tensor g, Tensor? w=None) -> Tensor");
  m.def("perturb_(Tensor(a!) w, Tensor g, Tensor(b!) g_sgd, Tensor scale, Tensor(c!)? e=None) -> ()");
  m.def(
      "update_(Tensor(a!) w, Tensor g, Tensor g_sgd, Tensor(b!)? buf, Tensor scale, *, Tensor? e=None, "
      "float lr, float momentum, float dampening, float weight_decay, float alpha, float eps, bool nesterov, "
      "bool first_momentum_step, Tensor(c!)? stats=None) -> ()");
}

TORCH_LIBRARY_IMPL(saner_kernels, CPU, m) {
  m.impl("grad_sq_norm", &saner_kernels::grad_sq_norm_cpu);
  m.impl("perturb_", &saner_kernels::perturb_cpu);
  m.impl("update_", &saner_kernels::update_cpu);
}

TORCH_LIBRARY_IMPL(saner_kernels, Meta, m) {
  m.impl("grad_sq_norm", &saner_kernels::grad_sq_norm_meta);
  m.impl("perturb_", &saner_kernels::perturb_meta);
  m.impl("update_", &saner_kernels::update_meta);
}

// Optimizer kernels have no derivative: error clearly if asked for one, and bump version counters
// of the mutated arguments (ADInplaceOrView) like any in-place torch op.
TORCH_LIBRARY_IMPL(saner_kernels, Autograd, m) {
  m.impl("grad_sq_norm", torch::autograd::autogradNotImplementedFallback());
  m.impl("perturb_", torch::autograd::autogradNotImplementedFallback());
  m.impl("update_", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(saner_kernels, ADInplaceOrView, m) {
  m.impl("perturb_", torch::autograd::autogradNotImplementedInplaceOrViewFallback());
  m.impl("update_", torch::autograd::autogradNotImplementedInplaceOrViewFallback());
}
