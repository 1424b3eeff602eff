// Types shared by the op front end (ops.cpp) and the per-ISA CPU kernel builds (cpu/kernels_*.cpp).
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace saner_kernels {

// Bump when an op schema or the meaning of an argument changes; saner_kernels/ops/native.py checks
// it so that an extension built from older sources reports itself as stale instead of misbehaving.
constexpr int kAbiVersion = 1;

namespace cpu {

template <typename T>
struct UpdateArgs {
  T* w;
  const T* g;
  const T* g_sgd;
  T* buf;      // nullptr when momentum == 0
  const T* e;  // nullptr unless adaptive
  double scale;  // the 0-dim scale tensor's value (fp32 or fp64), rounded to C in the kernels
  double lr, momentum, dampening, weight_decay, alpha, eps;
  bool nesterov, first_momentum_step;
};

template <typename T>
struct KernelTable {
  double (*sq_norm)(const T* g, const T* w, int64_t begin, int64_t end);
  void (*perturb[2])(T* w, const T* g, T* g_sgd, T* e, double scale, int64_t begin, int64_t end);
  void (*update[8])(const UpdateArgs<T>& a, int64_t begin, int64_t end, int64_t* count_a, int64_t* count_b);
};

// One table per ISA build; has_avx2_build() is false where only the baseline was compiled.
template <typename T> KernelTable<T> default_table();
template <typename T> KernelTable<T> avx2_table();
bool has_avx2_build();

}  // namespace cpu
}  // namespace saner_kernels
