// The CUDA implementation of the saner_kernels ops (schemas in ops.cpp; kernels in kernels.cuh): argument
// checks, the choice of kernel variant, launches on the current stream of the tensors' device.
// Only c10/cuda-level headers (the toolkit needs no cuBLAS headers).
#include <cstdint>
#include <optional>
#include <type_traits>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../front_end.h"
#include "kernels.cuh"

namespace saner_kernels {
namespace cuda {
namespace {

ScaleArg scale_arg(const at::Tensor& scale) {
  return ScaleArg{scale.const_data_ptr(), scale.scalar_type() == at::kDouble};
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Calls f(std::integral_constant<int, mode>{}) for the MaskMode mode.
template <typename F>
void dispatch_mask(int mode, F&& f) {
  if (mode == kRuleMask) {
    f(std::integral_constant<int, kRuleMask>{});
  } else if (mode == kAlphaMask) {
    f(std::integral_constant<int, kAlphaMask>{});
  } else {
    f(std::integral_constant<int, kNoMask>{});
  }
}

// A checked group rule's fields as the kRuleMask kernels take them (unused zeros-and-ones without one).
template <typename C>
RuleScalars<C> rule_scalars(bool has_rule, int64_t regions, double bound, double in_sam, double in_sgd,
                            double out_sam, double out_sgd) {
  check_rule(has_rule, regions, bound, in_sam, in_sgd, out_sam, out_sgd);
  if (!has_rule) return RuleScalars<C>{C(1), C(1), C(0), C(1), C(0), 0};
  return RuleScalars<C>{static_cast<C>(bound),   static_cast<C>(in_sam),  static_cast<C>(in_sgd),
                        static_cast<C>(out_sam), static_cast<C>(out_sgd), static_cast<int>(regions)};
}

// The grid of an elementwise kernel over n_items items: depends on n only.
int64_t grid_for(int64_t n_items) {
  const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
  return std::max<int64_t>(1, std::min<int64_t>((n_items + per_block - 1) / per_block, int64_t(1) << 20));
}

// The grid of a reduction (norm, dot_norm): depends on n only, so the partial sums and their order are the
// same on every run and device.
int reduction_blocks(int64_t n_items) {
  return static_cast<int>(std::min<int64_t>(grid_for(n_items), kNormMaxBlocks));
}

// Launches an elementwise kernel (for_each_item) over the n elements in items of Access<T, kVec>, on `blocks`
// blocks (grid_for when 0); the kernel's last two parameters are n_items and n.
template <typename T, bool kVec, typename... Params, typename... Args>
void launch_items(void (*kernel)(Params...), int64_t n, int blocks, cudaStream_t stream, Args... args) {
  const int64_t n_items = n / Access<T, kVec>::N;
  kernel<<<blocks > 0 ? blocks : grid_for(n_items), kThreads, 0, stream>>>(args..., n_items, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The second stage of a reduction with kSums rows of partials: fp32 results (fp64 for fp64 storage).
template <int kSums>
void launch_sums_final(const at::Tensor& partial, int blocks, at::Tensor& out, cudaStream_t stream) {
  if (out.scalar_type() == at::kDouble) {
    sums_final_kernel<double, kSums><<<1, 1024, 0, stream>>>(partial.data_ptr<double>(), blocks, out.data_ptr<double>());
  } else {
    sums_final_kernel<float, kSums><<<1, 1024, 0, stream>>>(partial.data_ptr<double>(), blocks, out.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename C>
DirArg<C> dir_arg(double dir_g, double dir_avg) {
  return DirArg<C>{static_cast<C>(dir_g), static_cast<C>(dir_avg)};
}

template <typename T>
const T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

at::Tensor grad_sq_norm_cuda(const at::Tensor& grad, const std::optional<at::Tensor>& w,
                             const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  check_norm_args(grad, w, avg);
  const bool is_double = grad.scalar_type() == at::kDouble;
  const int64_t n = grad.numel();
  if (n == 0) return at::zeros({}, grad.options().dtype(is_double ? at::kDouble : at::kFloat));
  c10::cuda::CUDAGuard guard(grad.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor out = at::empty({}, grad.options().dtype(is_double ? at::kDouble : at::kFloat));
  dispatch_dtype(grad.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = grad.const_data_ptr<T>();
    const T* wp = opt_ptr<T>(w);
    const T* ap = opt_ptr<T>(avg);
    dispatch_bool(aligned16(gp) && aligned16(wp) && aligned16(ap), [&](auto kv) {
      dispatch_bool(w.has_value(), [&](auto ka) {
        dispatch_bool(avg.has_value(), [&](auto kg) {
          constexpr bool kVec = decltype(kv)::value;
          const int blocks = reduction_blocks(n / Access<T, kVec>::N);
          at::Tensor partial = at::empty({blocks}, grad.options().dtype(at::kDouble));
          launch_items<T, kVec>(&sq_norm_partial_kernel<T, kVec, decltype(ka)::value, decltype(kg)::value>, n,
                                blocks, stream, gp, wp, ap, dir_arg<acc_t<T>>(dir_g, dir_avg),
                                partial.data_ptr<double>());
          launch_sums_final<1>(partial, blocks, out, stream);
        });
      });
    });
  });
  return out;
}

at::Tensor gsam_dot_norm_cuda(const at::Tensor& g_sgd, const at::Tensor& g_sam,
                              const std::optional<at::Tensor>& w) {
  check_dot_norm_args(g_sgd, g_sam, w);
  const bool is_double = g_sam.scalar_type() == at::kDouble;
  const int64_t n = g_sam.numel();
  if (n == 0) return at::zeros({2}, g_sam.options().dtype(is_double ? at::kDouble : at::kFloat));
  c10::cuda::CUDAGuard guard(g_sam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor out = at::empty({2}, g_sam.options().dtype(is_double ? at::kDouble : at::kFloat));
  dispatch_dtype(g_sam.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gsp = g_sgd.const_data_ptr<T>();
    const T* gp = g_sam.const_data_ptr<T>();
    const T* wp = opt_ptr<T>(w);
    dispatch_bool(aligned16(gsp) && aligned16(gp) && aligned16(wp), [&](auto kv) {
      dispatch_bool(w.has_value(), [&](auto ka) {
        constexpr bool kVec = decltype(kv)::value;
        const int blocks = reduction_blocks(n / Access<T, kVec>::N);
        at::Tensor partial = at::empty({2 * blocks}, g_sam.options().dtype(at::kDouble));  // dot row, squares row
        launch_items<T, kVec>(&dot_norm_partial_kernel<T, kVec, decltype(ka)::value>, n, blocks, stream, gsp, gp, wp,
                              partial.data_ptr<double>());
        launch_sums_final<2>(partial, blocks, out, stream);
      });
    });
  });
  return out;
}

void perturb_cuda(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& scale, const at::Tensor& skip,
                  const std::optional<at::Tensor>& e, const std::optional<at::Tensor>& g_sgd,
                  const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  check_perturb_args(w, grad, scale, skip, e, g_sgd, avg);
  const int64_t n = w.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(w.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* wp = w.data_ptr<T>();
    const T* gp = grad.const_data_ptr<T>();
    T* ep = e.has_value() ? e->data_ptr<T>() : nullptr;
    T* gsp = g_sgd.has_value() ? g_sgd->data_ptr<T>() : nullptr;
    const T* ap = opt_ptr<T>(avg);
    const bool vec = aligned16(wp) && aligned16(gp) && aligned16(gsp) && aligned16(ep) && aligned16(ap);
    dispatch_bool(vec, [&](auto kv) {
      dispatch_bool(e.has_value(), [&](auto ka) {
        dispatch_bool(g_sgd.has_value(), [&](auto kc) {
          dispatch_bool(avg.has_value(), [&](auto kg) {
            constexpr bool kVec = decltype(kv)::value;
            launch_items<T, kVec>(
                &perturb_kernel<T, kVec, decltype(ka)::value, decltype(kc)::value, decltype(kg)::value>, n, 0,
                stream, wp, gp, gsp, ep, ap, dir_arg<acc_t<T>>(dir_g, dir_avg), scale_arg(scale),
                skip.const_data_ptr<float>());
          });
        });
      });
    });
  });
}

// Momentum variants: none (buf is None), the first step (buf <- d, no buf read), a running step.
template <typename F>
void dispatch_momentum(bool has_buf, bool first, F&& f) {
  if (!has_buf) {
    f(std::false_type{}, std::false_type{});
  } else if (first) {
    f(std::true_type{}, std::true_type{});
  } else {
    f(std::true_type{}, std::false_type{});
  }
}

void update_cuda(const at::Tensor& w, const at::Tensor& g_sam, const at::Tensor& g_sgd,
                 const std::optional<at::Tensor>& buf, const at::Tensor& scale, const at::Tensor& skip, double lr,
                 double momentum, double dampening, double weight_decay, double alpha, double eps, bool nesterov,
                 const std::optional<at::Tensor>& e, bool first_momentum_step, bool zero_grads,
                 const std::optional<at::Tensor>& stats, std::optional<int64_t> n_valid,
                 const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& avg, double dir_g,
                 double dir_avg, double avg_keep, double avg_take, const std::optional<at::Tensor>& gsam_k,
                 double gsam_alpha, bool has_rule, int64_t rule_regions, double rule_bound, double rule_in_sam,
                 double rule_in_sgd, double rule_out_sam, double rule_out_sgd) {
  check_update_args(w, g_sam, g_sgd, buf, scale, skip, e, stats, inv_scale, avg, gsam_k);
  check_rule(has_rule, rule_regions, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam, rule_out_sgd);
  const int64_t n = w.numel();
  const int64_t valid = valid_count(n_valid, n);
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(w.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int mask = has_rule ? kRuleMask : (alpha != 1.0 || stats.has_value()) ? kAlphaMask : kNoMask;
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using C = acc_t<T>;
    RuledUpdateScalars<C> p;  // passed whole to the kRuleMask kernels, as UpdateScalars<C> to the others
    p.neg_lr = static_cast<C>(-lr);
    p.mu = static_cast<C>(momentum);
    p.one_minus_damp = static_cast<C>(1.0 - dampening);  // (1 - tau) rounded once, as in Python
    p.wd = static_cast<C>(weight_decay);
    p.alpha = static_cast<C>(alpha);
    p.eps = static_cast<C>(eps);
    p.dir = dir_arg<C>(dir_g, dir_avg);
    p.avg_keep = static_cast<C>(avg_keep);
    p.avg_take = static_cast<C>(avg_take);
    p.gsam_alpha = static_cast<C>(gsam_alpha);
    p.use_alpha = alpha != 1.0;
    p.use_wd = weight_decay != 0.0;
    p.nesterov = nesterov;
    p.rule = rule_scalars<C>(has_rule, rule_regions, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam, rule_out_sgd);
    T* wp = w.data_ptr<T>();
    T* gp = g_sam.data_ptr<T>();
    T* gsp = g_sgd.data_ptr<T>();
    T* bp = buf.has_value() ? buf->data_ptr<T>() : nullptr;
    const T* ep = opt_ptr<T>(e);
    T* ap = avg.has_value() ? avg->data_ptr<T>() : nullptr;
    auto* sp = stats.has_value() ? reinterpret_cast<unsigned long long*>(stats->data_ptr<int64_t>()) : nullptr;
    const float* ip = inv_scale.has_value() ? inv_scale->const_data_ptr<float>() : nullptr;
    // gsam_k is read only by the kGsam kernels; without it, this points at scale (never read).
    const ScaleArg kp = scale_arg(gsam_k.has_value() ? *gsam_k : scale);
    const bool vec =
        aligned16(wp) && aligned16(gp) && aligned16(gsp) && aligned16(bp) && aligned16(ep) && aligned16(ap);
    dispatch_bool(vec, [&](auto kv) {
      dispatch_bool(e.has_value(), [&](auto ka) {
        dispatch_momentum(buf.has_value(), first_momentum_step, [&](auto kb, auto kf) {
          dispatch_mask(mask, [&](auto km) {
            dispatch_bool(avg.has_value(), [&](auto kg) {
              dispatch_bool(gsam_k.has_value(), [&](auto kk) {
                constexpr bool kVec = decltype(kv)::value;
                launch_items<T, kVec>(&update_kernel<T, kVec, decltype(ka)::value, decltype(kb)::value,
                                                     decltype(kf)::value, decltype(km)::value, decltype(kg)::value,
                                                     decltype(kk)::value>,
                                      n, 0, stream, wp, gp, gsp, bp, ep, ap, scale_arg(scale),
                                      skip.const_data_ptr<float>(), ip, kp, p, sp, valid, zero_grads);
              });
            });
          });
        });
      });
    });
  });
}

void restore_cuda(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& skip,
                  const std::optional<at::Tensor>& g_sgd, const std::optional<at::Tensor>& e,
                  const std::optional<at::Tensor>& avg, double dir_g, double dir_avg) {
  check_restore_args(w, scale, skip, g_sgd, e, avg);
  const int64_t n = w.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(w.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* wp = w.data_ptr<T>();
    const T* src = e.has_value() ? e->const_data_ptr<T>() : g_sgd->const_data_ptr<T>();
    // the average matters only when e is recomputed (a stored e already holds the direction)
    const T* ap = e.has_value() ? nullptr : opt_ptr<T>(avg);
    const int source = e.has_value() ? kFromE : ap != nullptr ? kFromDirection : kFromGsgd;
    auto launch = [&](auto kv, auto src_tag) {
      constexpr bool kVec = decltype(kv)::value;
      launch_items<T, kVec>(&restore_kernel<T, kVec, decltype(src_tag)::value>, n, 0, stream, wp, src, ap,
                            dir_arg<acc_t<T>>(dir_g, dir_avg), scale_arg(scale), skip.const_data_ptr<float>());
    };
    dispatch_bool(aligned16(wp) && aligned16(src) && aligned16(ap), [&](auto kv) {
      if (source == kFromE) {
        launch(kv, std::integral_constant<int, kFromE>{});
      } else if (source == kFromDirection) {
        launch(kv, std::integral_constant<int, kFromDirection>{});
      } else {
        launch(kv, std::integral_constant<int, kFromGsgd>{});
      }
    });
  });
}

void reweight_cuda(const at::Tensor& g_sam, const at::Tensor& g_sgd, const at::Tensor& skip, double alpha,
                   double eps, const std::optional<at::Tensor>& stats, std::optional<int64_t> n_valid,
                   const std::optional<at::Tensor>& inv_scale, bool has_rule, int64_t rule_regions, double rule_bound,
                   double rule_in_sam, double rule_in_sgd, double rule_out_sam, double rule_out_sgd) {
  check_reweight_args(g_sam, g_sgd, skip, stats, inv_scale);
  check_rule(has_rule, rule_regions, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam, rule_out_sgd);
  const int64_t n = g_sam.numel();
  const int64_t valid = valid_count(n_valid, n);
  const int mask = has_rule ? kRuleMask : (alpha != 1.0 || stats.has_value()) ? kAlphaMask : kNoMask;
  const bool write = has_rule || alpha != 1.0 || inv_scale.has_value();  // else g_sam would be written back as it is
  if (n == 0 || !(mask != kNoMask || write)) return;
  c10::cuda::CUDAGuard guard(g_sam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(g_sam.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using C = acc_t<T>;
    T* gp = g_sam.data_ptr<T>();
    const T* gsp = g_sgd.const_data_ptr<T>();
    auto* sp = stats.has_value() ? reinterpret_cast<unsigned long long*>(stats->data_ptr<int64_t>()) : nullptr;
    const float* ip = inv_scale.has_value() ? inv_scale->const_data_ptr<float>() : nullptr;
    dispatch_bool(aligned16(gp) && aligned16(gsp), [&](auto kv) {
      dispatch_mask(mask, [&](auto km) {
        dispatch_bool(write, [&](auto kw) {
          // decay_t: inside if constexpr, g++ sees the captured tags as references
          constexpr int kMask = std::decay_t<decltype(km)>::value;
          constexpr bool kWrite = std::decay_t<decltype(kw)>::value;
          // (kNoMask, false) returned above; a rule always writes
          if constexpr ((kMask != kNoMask || kWrite) && (kMask != kRuleMask || kWrite)) {
            constexpr bool kVec = std::decay_t<decltype(kv)>::value;
            ReweightAlpha<C, kMask> alpha_or_rule;  // the rule in alpha's place (kRuleMask)
            if constexpr (kMask == kRuleMask) {
              alpha_or_rule = rule_scalars<C>(has_rule, rule_regions, rule_bound, rule_in_sam, rule_in_sgd,
                                              rule_out_sam, rule_out_sgd);
            } else {
              alpha_or_rule = static_cast<C>(alpha);
            }
            launch_items<T, kVec>(&reweight_kernel<T, kVec, kMask, kWrite>, n, 0, stream, gp, gsp,
                                  skip.const_data_ptr<float>(), ip, alpha_or_rule, static_cast<C>(eps),
                                  alpha != 1.0, sp, valid);
          }
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
  m.impl("restore_", &saner_kernels::cuda::restore_cuda);
  m.impl("gsam_dot_norm", &saner_kernels::cuda::gsam_dot_norm_cuda);
  m.impl("reweight_", &saner_kernels::cuda::reweight_cuda);
}
