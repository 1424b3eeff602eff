// Which ISA build of the CPU kernels runs: AVX2+FMA when it was built and the CPU has it, else the
// baseline build. SANER_KERNELS_CPU_CAPABILITY=default forces the baseline; tests and benchmarks switch
// at run time through saner_kernels._C.set_cpu_capability.
#pragma once

#include <string>
#include <vector>

#include "kernel_table.h"

namespace saner_kernels {
namespace cpu {

template <typename T>
const KernelTable<T>& kernels();

std::string capability();                      // "avx2" or "default"
std::vector<std::string> built_capabilities();  // the ISA builds in this extension
void set_capability(const std::string& name);

}  // namespace cpu
}  // namespace saner_kernels
