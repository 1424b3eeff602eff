// Baseline-ISA build of cpu/kernels.h (whatever the compiler targets by default: SSE2 on x86-64).
#define CPU_CAPABILITY DEFAULT
#include "kernels.h"

namespace saner_kernels {
namespace cpu {

template <typename T>
KernelTable<T> default_table() {
  return DEFAULT::make_table<T>();
}
template KernelTable<float> default_table<float>();
template KernelTable<double> default_table<double>();
template KernelTable<c10::BFloat16> default_table<c10::BFloat16>();
template KernelTable<c10::Half> default_table<c10::Half>();

}  // namespace cpu
}  // namespace saner_kernels
