// Argument checks shared by the CPU (ops.cpp) and CUDA (cuda/saner_cuda.cu) front ends. Kept out of
// common.h: that header is also compiled into the AVX2 kernel build, and an inline function emitted
// there could be the copy the linker keeps.
#pragma once

#include <ATen/ATen.h>

namespace saner_kernels {

inline void check_flat(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), "saner_kernels: ", name, " must be a contiguous 1-D tensor");
  TORCH_CHECK(t.device() == like.device(), "saner_kernels: ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "saner_kernels: ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(t.numel() == like.numel(), "saner_kernels: ", name, " has ", t.numel(), " elements, expected ",
              like.numel());
}

}  // namespace saner_kernels
