// Argument checks and dtype dispatch shared by the CPU (cpu/ops_cpu.cpp) and CUDA (cuda/saner_cuda.cu)
// op front ends. Every check runs before an op writes anything; each message names the argument. The Python
// wrappers check the same first (saner_kernels/ops/checks.py); these keep a direct torch.ops call memory-safe.
#pragma once

#include <cmath>
#include <optional>

#include <ATen/ATen.h>

namespace saner_kernels {

inline void check_dtype(const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "saner_kernels: unsupported dtype ", st, " (float32, float64, bfloat16, float16 are supported)");
}

// t is a contiguous 1-D tensor like `like` (device, dtype, length); any storage offset is fine.
inline void check_flat(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), "saner_kernels: ", name, " must be a contiguous 1-D tensor");
  TORCH_CHECK(t.device() == like.device(), "saner_kernels: ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "saner_kernels: ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(t.numel() == like.numel(), "saner_kernels: ", name, " has ", t.numel(), " elements, expected ",
              like.numel());
}

inline void check_flat(const std::optional<at::Tensor>& t, const at::Tensor& like, const char* name) {
  if (t.has_value()) check_flat(*t, like, name);
}

// scale: one fp32 value (fp64 allowed: the optimizer's scale for fp64 buckets) on the tensors' device.
inline void check_scale(const at::Tensor& scale, const at::Tensor& like) {
  TORCH_CHECK(scale.numel() == 1 && (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble),
              "saner_kernels: scale must be a 0-dim float32 (or float64) tensor, got ", scale.scalar_type(),
              " of shape ", scale.sizes());
  TORCH_CHECK(scale.device() == like.device(), "saner_kernels: scale is on ", scale.device(),
              ", expected the tensors' device ", like.device());
}

// skip: one fp32 flag on the tensors' device (nonzero: skip the step), like found_inf in torch's fused SGD.
inline void check_skip(const at::Tensor& skip, const at::Tensor& like) {
  TORCH_CHECK(skip.numel() == 1 && skip.scalar_type() == at::kFloat,
              "saner_kernels: skip must be a 0-dim float32 tensor, got ", skip.scalar_type(), " of shape ",
              skip.sizes());
  TORCH_CHECK(skip.device() == like.device(), "saner_kernels: skip is on ", skip.device(),
              ", expected the tensors' device ", like.device());
}

// A 0-dim factor read on the device (inv_scale, gsam_k): one value of an allowed dtype on the tensors' device.
inline void check_device_scalar(const at::Tensor& t, const at::Tensor& like, const char* name, bool allow_double) {
  const auto st = t.scalar_type();
  TORCH_CHECK(t.numel() == 1 && (st == at::kFloat || (allow_double && st == at::kDouble)), "saner_kernels: ", name,
              " must be a 0-dim float32", allow_double ? " (or float64)" : "", " tensor, got ", st, " of shape ",
              t.sizes());
  TORCH_CHECK(t.device() == like.device(), "saner_kernels: ", name, " is on ", t.device(),
              ", expected the tensors' device ", like.device());
}

// inv_scale: GradScaler's 1 / scale, one fp32 value on the tensors' device.
inline void check_inv_scale(const std::optional<at::Tensor>& inv_scale, const at::Tensor& like) {
  if (inv_scale.has_value()) check_device_scalar(*inv_scale, like, "inv_scale", false);
}

// gsam_k: GSAM's coefficient, typed like scale (fp32; fp64 for fp64 buckets).
inline void check_gsam_k(const std::optional<at::Tensor>& gsam_k, const at::Tensor& like) {
  if (gsam_k.has_value()) check_device_scalar(*gsam_k, like, "gsam_k", true);
}

// A group rule's flat fields (ops.GroupRule): a non-empty set of the 5 region bits, finite bound and coefficients.
inline void check_rule(bool has_rule, int64_t regions, double bound, double in_sam, double in_sgd, double out_sam,
                       double out_sgd) {
  if (!has_rule) return;
  TORCH_CHECK(regions > 0 && regions < 32, "saner_kernels: rule_regions must be a non-empty set of region bits "
              "(C=1, Z=2, B=4, E=8, A=16), got ", regions);
  TORCH_CHECK(std::isfinite(bound), "saner_kernels: rule_bound must be finite, got ", bound);
  TORCH_CHECK(std::isfinite(in_sam) && std::isfinite(in_sgd) && std::isfinite(out_sam) && std::isfinite(out_sgd),
              "saner_kernels: the rule's coefficients must be finite, got in_sam=", in_sam, " in_sgd=", in_sgd,
              " out_sam=", out_sam, " out_sgd=", out_sgd);
}

inline void check_stats(const std::optional<at::Tensor>& stats, const at::Tensor& like) {
  if (!stats.has_value()) return;
  TORCH_CHECK(stats->scalar_type() == at::kLong && stats->numel() == 3 && stats->is_contiguous() &&
                  stats->device() == like.device(),
              "saner_kernels: stats must be a contiguous int64 tensor of 3 counters on ", like.device(), ", got ",
              stats->scalar_type(), " of shape ", stats->sizes(), " on ", stats->device());
}

// The number of leading elements the group counts cover (the rest is bucket padding).
inline int64_t valid_count(std::optional<int64_t> n_valid, int64_t n) {
  if (!n_valid.has_value()) return n;
  TORCH_CHECK(*n_valid >= 0 && *n_valid <= n, "saner_kernels: n_valid must be in [0, ", n, "], got ", *n_valid);
  return *n_valid;
}

// ------------------------------------------------------------------ each op's arguments, checked before any write
// avg: the gradient average of the averaging variants, a flat tensor like the others.
inline void check_norm_args(const at::Tensor& grad, const std::optional<at::Tensor>& w,
                            const std::optional<at::Tensor>& avg) {
  check_dtype(grad);
  check_flat(grad, grad, "grad");
  check_flat(w, grad, "w");
  check_flat(avg, grad, "avg");
}

inline void check_dot_norm_args(const at::Tensor& g_sgd, const at::Tensor& g_sam,
                                const std::optional<at::Tensor>& w) {
  check_dtype(g_sam);
  check_flat(g_sam, g_sam, "g_sam");
  check_flat(g_sgd, g_sam, "g_sgd");
  check_flat(w, g_sam, "w");
}

inline void check_perturb_args(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& scale,
                               const at::Tensor& skip, const std::optional<at::Tensor>& e,
                               const std::optional<at::Tensor>& g_sgd, const std::optional<at::Tensor>& avg) {
  check_dtype(w);
  check_flat(w, w, "w");
  check_flat(grad, w, "grad");
  check_flat(e, w, "e");
  check_flat(g_sgd, w, "g_sgd");
  check_flat(avg, w, "avg");
  check_scale(scale, w);
  check_skip(skip, w);
}

inline void check_update_args(const at::Tensor& w, const at::Tensor& g_sam, const at::Tensor& g_sgd,
                              const std::optional<at::Tensor>& buf, const at::Tensor& scale, const at::Tensor& skip,
                              const std::optional<at::Tensor>& e, const std::optional<at::Tensor>& stats,
                              const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& avg,
                              const std::optional<at::Tensor>& gsam_k) {
  check_dtype(w);
  check_flat(w, w, "w");
  check_flat(g_sam, w, "g_sam");
  check_flat(g_sgd, w, "g_sgd");
  check_flat(buf, w, "buf");
  check_flat(e, w, "e");
  check_flat(avg, w, "avg");
  check_scale(scale, w);
  check_skip(skip, w);
  check_stats(stats, w);
  check_inv_scale(inv_scale, w);
  check_gsam_k(gsam_k, w);
}

inline void check_restore_args(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& skip,
                               const std::optional<at::Tensor>& g_sgd, const std::optional<at::Tensor>& e,
                               const std::optional<at::Tensor>& avg) {
  check_dtype(w);
  check_flat(w, w, "w");
  check_flat(g_sgd, w, "g_sgd");
  check_flat(e, w, "e");
  check_flat(avg, w, "avg");
  TORCH_CHECK(g_sgd.has_value() || e.has_value(), "saner_kernels: restore_ needs g_sgd (or e when adaptive)");
  check_scale(scale, w);
  check_skip(skip, w);
}

inline void check_reweight_args(const at::Tensor& g_sam, const at::Tensor& g_sgd, const at::Tensor& skip,
                                const std::optional<at::Tensor>& stats, const std::optional<at::Tensor>& inv_scale) {
  check_dtype(g_sam);
  check_flat(g_sam, g_sam, "g_sam");
  check_flat(g_sgd, g_sam, "g_sgd");
  check_skip(skip, g_sam);
  check_stats(stats, g_sam);
  check_inv_scale(inv_scale, g_sam);
}

// Calls f(T{}) with the storage type T of dtype st.
template <typename F>
void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "saner_kernels: unsupported dtype ", st);
  }
}

}  // namespace saner_kernels
