// The interface between the CPU op front end (ops_cpu.cpp) and the per-ISA kernel builds
// (kernels_default.cpp, kernels_avx2.cpp): plain data and function pointers, no inline code, so the
// two builds share nothing that the linker could merge across ISAs.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace saner_kernels {
namespace cpu {

template <typename T>
struct UpdateArgs {
  T* w;
  const T* g;
  const T* g_sgd;
  T* buf;        // nullptr when momentum == 0
  const T* e;    // nullptr unless adaptive
  double scale;  // the 0-dim scale tensor's value (fp32 or fp64), rounded to the compute type in the kernels
  double inv_scale;  // GradScaler's 1 / scale for both gradients, when unscale
  double lr, momentum, dampening, weight_decay, alpha, eps;
  bool nesterov, first_momentum_step;
  bool unscale;
  bool perturbed;  // scale != 0; else e is +0 (g_sgd may hold inf, a stored e is stale)
};

// Group A and B counts of a range; C is the caller's: valid elements - A - B.
struct GroupCounts {
  int64_t a = 0, b = 0;
};

template <typename T>
struct KernelTable {
  double (*sq_norm)(const T* g, const T* w, int64_t begin, int64_t end);
  // index: adaptive (e stored) + 2 * copy (g_sgd <- g)
  void (*perturb[4])(T* w, const T* g, T* g_sgd, T* e, double scale, int64_t begin, int64_t end);
  // index: adaptive * 4 + has_buf * 2 + mask; counts may be nullptr (a range past n_valid)
  void (*update[8])(const UpdateArgs<T>& a, int64_t begin, int64_t end, GroupCounts* counts);
  // index: adaptive (src is e) or not (src is g_sgd, times scale)
  void (*restore[2])(T* w, const T* src, double scale, int64_t begin, int64_t end);
};

// One table per ISA build. avx2_table exists when setup.py built the AVX2 library (x86-64 only).
template <typename T>
KernelTable<T> default_table();
template <typename T>
KernelTable<T> avx2_table();

}  // namespace cpu
}  // namespace saner_kernels
