// The saner_kernels op library: schemas (TORCH_LIBRARY), Meta kernels (shapes only, for fake tensors and
// torch.compile) and the autograd "not implemented" fallbacks. The implementations register themselves:
// cpu/ops_cpu.cpp (CPU) and cuda/saner_cuda.cu (CUDA).
//
// Contract v2: saner_kernels/ops/reference.py (same names, arguments and results); ops/native.py passes
// UpdateHyper's fields flat. Every tensor an op may write is marked mutable (x!), g and g_sgd of update_
// included (zero_grads writes zeros to them). Bump kAbiVersion (common.h) with any change here.
#include <optional>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace saner_kernels {
namespace {

at::Tensor grad_sq_norm_meta(const at::Tensor& g, const std::optional<at::Tensor>&) {
  return at::empty({}, g.options().dtype(g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}
void perturb_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {}
void update_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                 const at::Tensor&, const at::Tensor&, double, double, double, double, double, double, bool,
                 const std::optional<at::Tensor>&, bool, bool, const std::optional<at::Tensor>&,
                 std::optional<int64_t>, const std::optional<at::Tensor>&) {}
void restore_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                  const std::optional<at::Tensor>&) {}

}  // namespace
}  // namespace saner_kernels

TORCH_LIBRARY(saner_kernels, m) {
  m.def("grad_sq_norm(Tensor g, Tensor? w=None) -> Tensor");
  m.def("perturb_(Tensor(a!) w, Tensor g, Tensor scale, Tensor skip, *, Tensor(b!)? e=None, "
        "Tensor(c!)? g_sgd=None) -> ()");
  m.def(
      "update_(Tensor(a!) w, Tensor(b!) g, Tensor(c!) g_sgd, Tensor(d!)? buf, Tensor scale, Tensor skip, *, "
      "float lr, float momentum, float dampening, float weight_decay, float alpha, float eps, bool nesterov, "
      "Tensor? e=None, bool first_momentum_step=False, bool zero_grads=False, Tensor(e!)? stats=None, "
      "int? n_valid=None, Tensor? inv_scale=None) -> ()");
  m.def("restore_(Tensor(a!) w, Tensor scale, Tensor skip, *, Tensor? g_sgd=None, Tensor? e=None) -> ()");
}

TORCH_LIBRARY_IMPL(saner_kernels, Meta, m) {
  m.impl("grad_sq_norm", &saner_kernels::grad_sq_norm_meta);
  m.impl("perturb_", &saner_kernels::perturb_meta);
  m.impl("update_", &saner_kernels::update_meta);
  m.impl("restore_", &saner_kernels::restore_meta);
}

// Optimizer kernels have no derivative: error clearly if asked for one, and bump version counters
// of the mutated arguments (ADInplaceOrView) like any in-place torch op.
TORCH_LIBRARY_IMPL(saner_kernels, Autograd, m) {
  for (const char* op : {"grad_sq_norm", "perturb_", "update_", "restore_"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}

TORCH_LIBRARY_IMPL(saner_kernels, ADInplaceOrView, m) {
  for (const char* op : {"perturb_", "update_", "restore_"}) {
    m.impl(op, torch::autograd::autogradNotImplementedInplaceOrViewFallback());
  }
}
