// Argument checks and dtype dispatch shared by the CPU (ops.cpp) and CUDA (cuda/saner_cuda.cu) op front
// ends. Kept out of common.h: that header is also compiled into the AVX2 kernel build, and an inline
// function emitted there could be the copy the linker keeps.
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

// Calls f(T{}) with the storage type T of dtype st.
template <typename F>
void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "saner_kernels: unsupported dtype ", st);
  }
}

}  // namespace saner_kernels
