// The saner_kernels op library: schemas (TORCH_LIBRARY), Meta kernels (shapes only, for fake tensors and
// torch.compile) and the autograd "not implemented" fallbacks. The implementations register themselves:
// cpu/ops_cpu.cpp (CPU) and cuda/saner_cuda.cu (CUDA).
//
// Contract v3: saner_kernels/ops/reference.py (same names, arguments and results); ops/native.py passes
// UpdateHyper's and AverageHyper's fields flat. Every tensor an op may write is marked mutable (x!), g and
// g_sgd of update_ included (zero_grads writes zeros to them). Bump ABI_VERSION (saner_kernels/_source_hash.py)
// with any change here.
#include <optional>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace saner_kernels {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::ScalarType sum_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor grad_sq_norm_meta(const at::Tensor& grad, const OptTensor&, const OptTensor&, double, double) {
  return at::empty({}, grad.options().dtype(sum_dtype(grad)));
}
at::Tensor gsam_dot_norm_meta(const at::Tensor&, const at::Tensor& g_sam, const OptTensor&) {
  return at::empty({2}, g_sam.options().dtype(sum_dtype(g_sam)));
}
void perturb_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                  const OptTensor&, const OptTensor&, double, double) {}
void update_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
                 const at::Tensor&, double, double, double, double, double, double, bool, const OptTensor&, bool, bool,
                 const OptTensor&, std::optional<int64_t>, const OptTensor&, const OptTensor&, double, double, double,
                 double, const OptTensor&, double, bool, int64_t, double, double, double, double, double) {}
void restore_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                  const OptTensor&, double, double) {}
void reweight_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, const OptTensor&,
                   std::optional<int64_t>, const OptTensor&, bool, int64_t, double, double, double, double, double) {}

}  // namespace
}  // namespace saner_kernels

// The averaging variants pass avg with the direction's coefficients (d = dir_g * g + dir_avg * avg) and, to
// update_, the commit's (avg <- avg_keep * avg + avg_take * g_sgd); GSAM passes gsam_k and gsam_alpha. A group
// rule (ops.GroupRule) reaches update_ and reweight_ as its fields flat, after has_rule=True.
#define RULE_ARGS                                                                                             \
  "bool has_rule=False, int rule_regions=0, float rule_bound=1.0, float rule_in_sam=1.0, float rule_in_sgd=0.0, " \
  "float rule_out_sam=1.0, float rule_out_sgd=0.0"
TORCH_LIBRARY(saner_kernels, m) {
  m.def("grad_sq_norm(Tensor grad, Tensor? w=None, *, Tensor? avg=None, float dir_g=1.0, float dir_avg=0.0) -> Tensor");
  m.def("perturb_(Tensor(a!) w, Tensor grad, Tensor scale, Tensor skip, *, Tensor(b!)? e=None, "
        "Tensor(c!)? g_sgd=None, Tensor? avg=None, float dir_g=1.0, float dir_avg=0.0) -> ()");
  m.def(
      "update_(Tensor(a!) w, Tensor(b!) g_sam, Tensor(c!) g_sgd, Tensor(d!)? buf, Tensor scale, Tensor skip, *, "
      "float lr, float momentum, float dampening, float weight_decay, float alpha, float eps, bool nesterov, "
      "Tensor? e=None, bool first_momentum_step=False, bool zero_grads=False, Tensor(e!)? stats=None, "
      "int? n_valid=None, Tensor? inv_scale=None, Tensor(f!)? avg=None, float dir_g=1.0, float dir_avg=0.0, "
      "float avg_keep=0.0, float avg_take=1.0, Tensor? gsam_k=None, float gsam_alpha=0.0, " RULE_ARGS ") -> ()");
  m.def("restore_(Tensor(a!) w, Tensor scale, Tensor skip, *, Tensor? g_sgd=None, Tensor? e=None, "
        "Tensor? avg=None, float dir_g=1.0, float dir_avg=0.0) -> ()");
  m.def("gsam_dot_norm(Tensor g_sgd, Tensor g_sam, Tensor? w=None) -> Tensor");
  m.def("reweight_(Tensor(a!) g_sam, Tensor g_sgd, Tensor skip, *, float alpha, float eps, Tensor(b!)? stats=None, "
        "int? n_valid=None, Tensor? inv_scale=None, " RULE_ARGS ") -> ()");
}

TORCH_LIBRARY_IMPL(saner_kernels, Meta, m) {
  m.impl("grad_sq_norm", &saner_kernels::grad_sq_norm_meta);
  m.impl("perturb_", &saner_kernels::perturb_meta);
  m.impl("update_", &saner_kernels::update_meta);
  m.impl("restore_", &saner_kernels::restore_meta);
  m.impl("gsam_dot_norm", &saner_kernels::gsam_dot_norm_meta);
  m.impl("reweight_", &saner_kernels::reweight_meta);
}

// Optimizer kernels have no derivative: error clearly if asked for one, and bump version counters
// of the mutated arguments (ADInplaceOrView) like any in-place torch op.
TORCH_LIBRARY_IMPL(saner_kernels, Autograd, m) {
  for (const char* op : {"grad_sq_norm", "perturb_", "update_", "restore_", "gsam_dot_norm", "reweight_"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}

TORCH_LIBRARY_IMPL(saner_kernels, ADInplaceOrView, m) {
  for (const char* op : {"perturb_", "update_", "restore_", "reweight_"}) {
    m.impl(op, torch::autograd::autogradNotImplementedInplaceOrViewFallback());
  }
}
