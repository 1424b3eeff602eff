// The Python module saner_kernels._C: importing it loads this library, which registers the
// torch.ops.saner_kernels.* ops (ops.cpp, cuda/saner_cuda.cu). Its attributes describe the build so
// that saner_kernels/ops/native.py can tell a stale build from a current one.
#include <string>

#include <pybind11/pybind11.h>

#include "common.h"

#ifndef SANER_KERNELS_SRC_HASH
#define SANER_KERNELS_SRC_HASH "unknown"
#endif
#ifndef SANER_KERNELS_TORCH_VERSION
#define SANER_KERNELS_TORCH_VERSION "unknown"
#endif
#ifndef SANER_KERNELS_WITH_CUDA
#define SANER_KERNELS_WITH_CUDA 0
#endif

namespace saner_kernels {
std::string cpu_capability();
void set_cpu_capability(const std::string& name);
}  // namespace saner_kernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "saner_kernels native ops (registered as torch.ops.saner_kernels.*)";
  m.attr("ABI_VERSION") = saner_kernels::kAbiVersion;
  m.attr("SOURCE_HASH") = SANER_KERNELS_SRC_HASH;
  m.attr("TORCH_VERSION") = SANER_KERNELS_TORCH_VERSION;
  m.attr("WITH_CUDA") = static_cast<bool>(SANER_KERNELS_WITH_CUDA);
  m.def("cpu_capability", &saner_kernels::cpu_capability, "ISA of the CPU kernels in use: 'avx2' or 'default'");
  m.def("set_cpu_capability", &saner_kernels::set_cpu_capability,
        "Switch the CPU kernels' ISA ('avx2' or 'default'); for tests and benchmarks");
}
