// The op ABI version, shared by every front end and the Python module (module.cpp).
#pragma once

namespace saner_kernels {

// Bump when an op schema or the meaning of an argument changes; saner_kernels/ops/native.py checks
// it so that an extension built from older sources reports itself as stale instead of misbehaving.
// 2: contract v2 (explicit skip flag, zero_grads, n_valid, restore_).
constexpr int kAbiVersion = 2;

}  // namespace saner_kernels
