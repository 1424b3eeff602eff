// AVX2+FMA build of cpu/kernels.h, chosen at run time by cpu/isa.cpp when the CPU has AVX2, FMA and F16C.
//
// setup.py compiles this file alone, as its own static library, with -mavx2 -mfma -mf16c and
// -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2, the way ATen builds its per-ISA kernels. Everything it
// defines lives in namespace saner_kernels::cpu::AVX2 except the four avx2_table entry points:
// tests/test_native_ops.py checks that with nm, so that no inline function compiled for AVX2 can be
// the copy the linker keeps for the baseline code.
#if !defined(CPU_CAPABILITY_AVX2) || !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "build this file with -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 (setup.py does)"
#endif
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

}  // namespace cpu
}  // namespace saner_kernels
