// The op ABI version, shared by every front end and the Python module (module.cpp).
#pragma once

namespace saner_kernels {

// Bump when an op schema or the meaning of an argument changes; saner_kernels/ops/native.py checks
// it so that an extension built from older sources reports itself as stale instead of misbehaving.
// 2: contract v2 (explicit skip flag, zero_grads, n_valid, restore_). 3: update_ takes inv_scale, a skipped
// update restores w, e is +0 when scale is 0. 4: contract v3 (avg and its coefficients, gsam_k / gsam_alpha,
// gsam_dot_norm, reweight_).
constexpr int kAbiVersion = 4;

}  // namespace saner_kernels
