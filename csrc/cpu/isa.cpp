#include "isa.h"

#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

// SANER_KERNELS_AVX2 is defined by setup.py when it built the AVX2 kernel library (x86-64).
#ifndef SANER_KERNELS_AVX2
#define SANER_KERNELS_AVX2 0
#endif

namespace saner_kernels {
namespace cpu {
namespace {

enum class Isa : int { kDefault = 0, kAvx2 = 1 };

bool avx2_usable() {
#if SANER_KERNELS_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

Isa initial_isa() {
  const char* env = std::getenv("SANER_KERNELS_CPU_CAPABILITY");
  if (env != nullptr && std::string(env) == "default") return Isa::kDefault;
  return avx2_usable() ? Isa::kAvx2 : Isa::kDefault;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

}  // namespace

template <typename T>
const KernelTable<T>& kernels() {
  static const KernelTable<T> base = default_table<T>();
#if SANER_KERNELS_AVX2
  static const KernelTable<T> avx2 = avx2_table<T>();
  if (current_isa().load() == static_cast<int>(Isa::kAvx2)) return avx2;
#endif
  return base;
}
template const KernelTable<float>& kernels<float>();
template const KernelTable<double>& kernels<double>();
template const KernelTable<c10::BFloat16>& kernels<c10::BFloat16>();
template const KernelTable<c10::Half>& kernels<c10::Half>();

std::string capability() { return current_isa().load() == static_cast<int>(Isa::kAvx2) ? "avx2" : "default"; }

std::vector<std::string> built_capabilities() {
  if (SANER_KERNELS_AVX2) return {"default", "avx2"};
  return {"default"};
}

void set_capability(const std::string& name) {
  if (name == "default") {
    current_isa().store(static_cast<int>(Isa::kDefault));
  } else if (name == "avx2") {
    TORCH_CHECK(avx2_usable(), "saner_kernels: the AVX2 kernels are not built or this CPU lacks AVX2/FMA/F16C");
    current_isa().store(static_cast<int>(Isa::kAvx2));
  } else {
    TORCH_CHECK(false, "saner_kernels: unknown CPU capability '", name, "' (use 'default' or 'avx2')");
  }
}

}  // namespace cpu
}  // namespace saner_kernels
