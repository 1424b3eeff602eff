// AVX2+FMA build of cpu/kernels.h, chosen at runtime by ops.cpp when the CPU has both.
//
// setuptools cannot give one source file its own flags, so this file switches the target ISA itself
// (before any include, so that ATen's AVX2 vector code and the kernels are compiled for it) and names
// its namespace AVX2, as ATen does for its own per-ISA kernel builds. Only vector headers are included
// here: no Tensor code. -ffp-contract=off (setup.py) keeps every multiply and add separately rounded.
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma,f16c")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#endif
// The pragma enables the instructions but, unlike -mavx2, does not define the ISA macros; sleef.h
// (pulled in by ATen's AVX2 vector code) only declares its 8-wide functions under them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels.h"

namespace saner_kernels {
namespace cpu {

template <typename T>
KernelTable<T> avx2_table() {
  return AVX2::make_table<T>();
}
template KernelTable<float> avx2_table<float>();
template KernelTable<double> avx2_table<double>();
template KernelTable<c10::BFloat16> avx2_table<c10::BFloat16>();
template KernelTable<c10::Half> avx2_table<c10::Half>();
bool has_avx2_build() { return true; }

}  // namespace cpu
}  // namespace saner_kernels

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else  // not x86-64: no AVX2 build, the baseline table is used

#include "../common.h"
namespace saner_kernels {
namespace cpu {
template <typename T>
KernelTable<T> avx2_table() {
  return default_table<T>();
}
template KernelTable<float> avx2_table<float>();
template KernelTable<double> avx2_table<double>();
template KernelTable<c10::BFloat16> avx2_table<c10::BFloat16>();
template KernelTable<c10::Half> avx2_table<c10::Half>();
bool has_avx2_build() { return false; }
}  // namespace cpu
}  // namespace saner_kernels
#endif
