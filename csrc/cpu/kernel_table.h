// The interface between the CPU op front end (ops_cpu.cpp) and the per-ISA kernel builds
// (kernels_default.cpp, kernels_avx2.cpp): plain data and function pointers, no inline code, so the
// two builds share nothing that the linker could merge across ISAs.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace saner_kernels {
namespace cpu {

// The perturbation direction d = dir_g * g + dir_avg * avg of the averaging variants (Friendly-SAM, VaSSO);
// read only by the kernels instantiated with an average (avg != nullptr then).
template <typename T>
struct Direction {
  const T* avg = nullptr;
  double dir_g = 1.0, dir_avg = 0.0;
};

// A group rule (ops.GroupRule, docs/design.md "Kernel contract"): the ratio r = g_sam / (g_sgd + eps) by
// division, its regions against bound (bits: C r < 0, Z r == 0, B 0 < r < b, E r == b, A r > b; NaN in none); in
// the regions of `regions` d = in_sam * g_sam + in_sgd * g_sgd, elsewhere out_sam * g_sam + out_sgd * g_sgd. Read
// only by the kernels instantiated with kRuleMask.
struct Rule {
  int regions = 0;
  double bound = 1.0, in_sam = 1.0, in_sgd = 0.0, out_sam = 1.0, out_sgd = 0.0;
};

// What the update and the reweighting do with the two gradients: nothing (g_sam as it is), SANER's Group B mask
// (reweighted by alpha, or only counted), or a group rule.
enum MaskMode : int { kNoMask = 0, kAlphaMask = 1, kRuleMask = 2 };

template <typename T>
struct UpdateArgs {
  T* w;
  const T* g_sam;
  const T* g_sgd;
  T* buf;        // nullptr when momentum == 0
  const T* e;    // nullptr unless adaptive
  T* avg;        // nullptr unless the average variant: read (direction of e) and committed
  double scale;  // the 0-dim scale tensor's value (fp32 or fp64), rounded to the compute type in the kernels
  double inv_scale;  // GradScaler's 1 / scale for both gradients, when unscale
  double lr, momentum, dampening, weight_decay, alpha, eps;
  double dir_g, dir_avg, avg_keep, avg_take;  // the average variant's coefficients
  double gsam_k, gsam_alpha;                  // GSAM variant: g <- g - gsam_alpha * (g_sgd - gsam_k * g)
  bool nesterov, first_momentum_step;
  bool unscale;
  bool perturbed;  // scale != 0 (docs/design.md "Kernel contract": e is +0 otherwise)
  Rule rule;       // the kRuleMask kernels' rule
};

template <typename T>
struct ReweightArgs {
  T* g_sam;
  const T* g_sgd;
  double alpha, eps, inv_scale;
  bool unscale;
  Rule rule;  // the kRuled kernel's rule
};

// Group A and B counts of a range; C is the caller's: valid elements - A - B.
struct GroupCounts {
  int64_t a = 0, b = 0;
};

// How restore_ (and a skipped update_) recomputes the e it subtracts.
enum RestoreSource : int { kFromGsgd = 0, kFromE = 1, kFromDirection = 2 };

// What reweight_ has to do (alpha == 1 with nothing to unscale or count needs no kernel: g_sam is the result).
enum ReweightVariant : int {
  kUnscaleOnly = 0,  // alpha == 1, not counted: unscale g_sam
  kCountOnly = 1,    // alpha == 1, counted, nothing to unscale: read g_sam and g_sgd, write nothing
  kReweight = 2,     // alpha != 1, or counted and unscaled: the mask, written back
  kRuled = 3,        // a group rule: its regions, written back
};

template <typename T>
struct KernelTable {
  // index: [adaptive][average direction]
  double (*sq_norm[2][2])(const T* grad, const T* w, const Direction<T>& dir, int64_t begin, int64_t end);
  // [sum(g_sgd * g_sam), sum((|w| g_sam)^2)] of a range, written to out; index: adaptive
  void (*dot_norm[2])(const T* g_sgd, const T* g_sam, const T* w, int64_t begin, int64_t end, double* out);
  // index: [adaptive (e stored)][copy (g_sgd <- grad)][average direction]
  void (*perturb[2][2][2])(T* w, const T* grad, T* g_sgd, T* e, const Direction<T>& dir, double scale,
                           int64_t begin, int64_t end);
  // index: [adaptive][has_buf][MaskMode][average][gsam]; counts may be nullptr (a range past n_valid)
  void (*update[2][2][3][2][2])(const UpdateArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts);
  // index: RestoreSource (src is g_sgd, e, or g_sgd with dir.avg)
  void (*restore[3])(T* w, const T* src, const Direction<T>& dir, double scale, int64_t begin, int64_t end);
  // index: ReweightVariant
  void (*reweight[4])(const ReweightArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts);
};

// One table per ISA build. avx2_table exists when setup.py built the AVX2 library (x86-64 only).
template <typename T>
KernelTable<T> default_table();
template <typename T>
KernelTable<T> avx2_table();

}  // namespace cpu
}  // namespace saner_kernels
