"""Shared inputs and checks for testing a backend's contract ops against ``reference``.

Every kernel backend's tests (Triton, C++ CPU, CUDA C++) draw their inputs from here so that they
all face the same edge cases: zeros in g_sgd, exact sign flips, |g_sgd| around eps, equal
magnitudes (the A/B boundary), large magnitudes, and padding zeros at the end of the bucket.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import Tensor

from saner_kernels.ops import reference

LENGTHS = (128, 1024, 65536, 300032)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EPS = 1e-8

# Every combination of the kernel feature switches.
SWITCHES = [
    dict(adaptive=a, nesterov=n, first_momentum_step=f, alpha=al, track_groups=t)
    for a, n, f, al, t in itertools.product((False, True), (False, True), (False, True), (0.5, 1.0), (False, True))
]


def tolerances(dtype: torch.dtype) -> dict:
    """Per-step tolerances: fp32 at rtol 1e-6; 16-bit storage within about one rounding unit."""
    return {
        torch.float32: dict(rtol=1e-6, atol=1e-6),
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.bfloat16: dict(rtol=2 ** -7, atol=1e-5),
        torch.float16: dict(rtol=2 ** -10, atol=1e-6),
    }[dtype]


def make_bucket_tensors(n: int, dtype: torch.dtype = torch.float32, seed: int = 0, device="cpu",
                        pad: int = 0) -> dict[str, Tensor]:
    """A bucket's tensors of length n, edge cases mixed into random data; the last ``pad`` are 0.

    ``g`` is the first gradient (it becomes g_sgd in perturb_), ``g_sam`` the second one, built
    relative to ``g`` so that all of Groups A, B and C and their boundaries occur; ``g_sgd`` is
    the (stale) buffer that perturb_ overwrites.
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen) * 1e-2
    g_sam = g * (torch.rand(n, generator=gen) * 3 - 1)  # ratios spread over A, B and C
    buf = torch.randn(n, generator=gen) * 1e-2
    k = max(n // 16, 1)
    idx = torch.randperm(n, generator=gen)
    groups = [idx[i * k:(i + 1) * k] for i in range(8)]
    g[groups[0]] = 0.0                                         # den == eps
    g_sam[groups[1]] = -g[groups[1]]                           # exact sign flips
    g[groups[2]] = EPS * (torch.rand(k, generator=gen) * 4 - 2)  # |g_sgd| around eps
    g_sam[groups[2]] = EPS * (torch.rand(k, generator=gen) * 4 - 2)
    g_sam[groups[3]] = 0.0                                     # zero SAM gradient
    g_sam[groups[4]] = g[groups[4]]                            # r just below/above 1 (den = g_sgd + eps)
    w[groups[5]] *= 1e3                                        # large magnitudes
    g[groups[5]] *= 1e3
    g_sam[groups[5]] *= 1e3
    g_sam[groups[6]] = g[groups[6]] * 0.5                      # clean Group B
    g_sam[groups[7]] = g[groups[7]] * 2.0                      # clean Group A
    tensors = dict(w=w, g=g, g_sam=g_sam, g_sgd=torch.randn(n, generator=gen), buf=buf)
    if pad:
        for t in tensors.values():
            t[n - pad:] = 0.0
    return {name: t.to(dtype=dtype, device=device) for name, t in tensors.items()}


def clone_all(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in tensors.items()}


def scale_for(tensors: dict[str, Tensor], rho: float = 0.1, adaptive: bool = False) -> Tensor:
    """The device scale s = rho / (||g|| + 1e-12) exactly as the optimizer computes it."""
    total = reference.grad_sq_norm(tensors["g"], tensors["w"] if adaptive else None)
    return (rho / (total.float().sqrt() + 1e-12)).float()


def run_step(ops, tensors: dict[str, Tensor], *, adaptive: bool, nesterov: bool, first_momentum_step: bool,
             alpha: float, track_groups: bool, scale: Optional[Tensor] = None, lr: float = 0.1,
             momentum: float = 0.9, dampening: float = 0.0, weight_decay: float = 5e-4,
             eps: float = EPS) -> dict[str, Tensor]:
    """perturb_ then update_ with ``ops`` on a copy of ``tensors``; returns the final tensors (+ stats)."""
    t = clone_all(tensors)
    if scale is None:
        scale = scale_for(t, adaptive=adaptive)
    e = torch.zeros_like(t["w"]) if adaptive else None
    ops.perturb_(t["w"], t["g"], t["g_sgd"], scale, e)
    t["w_perturbed"] = t["w"].clone()
    stats = torch.zeros(3, dtype=torch.int64, device=t["w"].device) if track_groups else None
    ops.update_(t["w"], t["g_sam"], t["g_sgd"], t["buf"], scale, e=e, lr=lr, momentum=momentum,
                dampening=dampening, weight_decay=weight_decay, alpha=alpha, eps=eps, nesterov=nesterov,
                first_momentum_step=first_momentum_step, stats=stats)
    if stats is not None:
        t["stats"] = stats
    if e is not None:
        t["e"] = e
    return t


def assert_same_step(actual: dict[str, Tensor], expected: dict[str, Tensor], dtype: torch.dtype) -> None:
    tol = tolerances(dtype)
    for name, exp in expected.items():
        act = actual[name].cpu()
        exp = exp.cpu()
        if name == "stats":
            assert torch.equal(act, exp), f"group counts differ: {act.tolist()} vs {exp.tolist()}"
        else:
            torch.testing.assert_close(act.float(), exp.float(), **tol, msg=lambda m: f"{name}: {m}")


def assert_step_skipped(got: dict[str, Tensor], before: dict[str, Tensor]) -> None:
    """A step run with a non-finite scale wrote nothing: every tensor as it was, no e, no group counts."""
    for name in ("w", "g", "g_sgd", "g_sam", "buf"):
        assert torch.equal(got[name], before[name]), f"{name} was written on a skipped step"
    if "e" in got:
        assert not got["e"].any(), "e was written on a skipped step"
    if "stats" in got:
        assert not got["stats"].any(), "a skipped step counted groups"
