"""Triton backend: the three kernel-contract ops (see ``reference.py``) as one-pass fused kernels.

Each op is one launch over the flat bucket plus, for the reductions, a torch sum of a small
per-block tensor (fixed order: deterministic, no float atomics). Math is fp32 whatever the storage
dtype (fp32, bf16, fp16); offsets are int64; the 0-dim ``scale`` is read inside the kernels, so a
step never syncs with the host. A non-finite ``scale`` folds into the load/store mask: nothing is
read or written (and no group counts are made).

Feature switches are ``tl.constexpr`` (one compiled variant each); lr, momentum, dampening, weight
decay, alpha and eps are runtime fp32 arguments, so schedules never recompile.

CUDA tensors run the compiled kernels; CPU tensors run Triton's interpreter, allowed only under
``TRITON_INTERPRET=1`` (read at call time). ``@triton.jit`` would pick compiled *or* interpreted
once, from the environment at import time, so whichever module imported this file first would
decide for the whole process; ``_Kernel`` keeps both and chooses per launch by device instead.
(Triton's own library functions such as ``tl.sum`` are decided when *triton* is imported; the
kernels avoid them. A process that imports triton under ``TRITON_INTERPRET=1`` is an interpreter
process for Triton as a whole, and only the CPU path is expected to work there.)

Rounding: GPUs store fp32 -> bf16/fp16 with round-to-nearest-even (``cvt.rn``). The interpreter
truncates fp32 -> bf16, so interpreted bf16 launches round by hand (``RNE_BY_HAND``, a constexpr
that is never set for the compiled kernels): interpreter tests then see the same rounding as torch.

Floating-point contraction is disabled at launch (``enable_fp_fusion=False``), so products round as
in eager torch (``e = g_sgd * s`` recomputed in the update is the very product the perturbation
added); the ``x.add(y, alpha=a)`` steps of ``torch.optim.SGD`` (weight decay, momentum, nesterov, the
step itself), which torch evaluates as a fused multiply-add, are explicit ``tl.fma``. (The
interpreter's fma rounds twice: one ulp, within the tests' tolerances.)
"""
from __future__ import annotations

import os
import types
from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

NAME = "triton"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available(device: torch.device) -> tuple[bool, str]:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        return True, ""
    if device.type == "cpu":
        if _interpreting():
            return True, ""
        return False, "Triton runs CPU tensors only under TRITON_INTERPRET=1 (the interpreter)"
    return False, f"Triton has no backend for {device.type} tensors"


# --------------------------------------------------------------------------- compiled + interpreted
_DEVICE_FNS: dict[str, types.FunctionType] = {}


def _device_fn(fn):
    """A ``@triton.jit`` helper, compiled whatever TRITON_INTERPRET says (see the module docstring)."""
    _DEVICE_FNS[fn.__name__] = fn
    return JITFunction(fn)


class _Kernel:
    """A kernel's compiled form (``.jit``, CUDA) and, built on first use, its interpreted form (CPU)."""

    def __init__(self, fn):
        self.fn = fn
        self.jit = JITFunction(fn)
        self._interpreted = None

    def interpreted(self):
        if self._interpreted is None:
            from triton.runtime.interpreter import InterpretedFunction

            # The interpreter runs the kernel source with the function's globals: give it globals in
            # which the helpers are interpreted too (the module's own names stay the compiled ones).
            scope = dict(self.fn.__globals__)

            def rebind(f):
                return types.FunctionType(f.__code__, scope, f.__name__, f.__defaults__, f.__closure__)

            scope.update({name: InterpretedFunction(rebind(f)) for name, f in _DEVICE_FNS.items()})
            self._interpreted = InterpretedFunction(rebind(self.fn))
        return self._interpreted

    def launch(self, device: torch.device, grid: tuple[int], num_warps: int, *args, **constexprs) -> None:
        if device.type == "cuda":
            with torch.cuda.device(device):
                self.jit[grid](*args, **constexprs, num_warps=num_warps, enable_fp_fusion=False)
        elif device.type == "cpu" and _interpreting():
            self.interpreted()[grid](*args, **constexprs)
        else:
            raise RuntimeError(f"the Triton backend cannot run {device.type} tensors here: "
                               f"{is_available(device)[1]}")


# --------------------------------------------------------------------------- kernels
# tl.sum is itself a @triton.jit function, compiled or interpreted depending on TRITON_INTERPRET when
# *triton* was imported; reducing with its combine function through the builtin tl.reduce works
# either way, and the interpreter recognises that combine function and sums with numpy.
@_device_fn
def _block_sum(x):
    return tl.reduce(x, 0, tl.standard._sum_combine)


@_device_fn
def _to_storage(x, dtype: tl.constexpr, RNE_BY_HAND: tl.constexpr):
    """fp32 -> storage dtype, rounding to nearest even."""
    if RNE_BY_HAND:
        # Interpreter only (it truncates fp32 -> bf16): add half an ulp minus one, plus the lowest
        # kept bit (ties to even), then drop the low 16 bits. NaN keeps its plain (quiet) cast.
        bits = x.to(tl.int32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        y = (bits >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
        return tl.where(x != x, x.to(tl.bfloat16), y)
    else:
        return x.to(dtype)


@_Kernel
def _sq_norm_kernel(g_ptr, w_ptr, partial_ptr, n, BLOCK: tl.constexpr, ADAPTIVE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ADAPTIVE:
        x = tl.abs(tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)) * x
    tl.store(partial_ptr + pid, _block_sum(x * x))


@_Kernel
def _perturb_kernel(w_ptr, g_ptr, g_sgd_ptr, e_ptr, scale_ptr, n,
                    BLOCK: tl.constexpr, ADAPTIVE: tl.constexpr, RNE_BY_HAND: tl.constexpr):
    s = tl.load(scale_ptr).to(tl.float32)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    # A non-finite scale skips the step: a zero limit masks off every load and store. (A scalar
    # select keeps the mask's divisibility for vectorization, and the interpreter cannot `&` a
    # scalar into a block.)
    mask = offs < tl.where(tl.abs(s) < float("inf"), n, 0)
    g_raw = tl.load(g_ptr + offs, mask=mask)
    w = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
    g = g_raw.to(tl.float32)
    if ADAPTIVE:
        e = w * w * g * s
        tl.store(e_ptr + offs, _to_storage(e, e_ptr.dtype.element_ty, RNE_BY_HAND), mask=mask)
    else:
        e = g * s
    tl.store(g_sgd_ptr + offs, g_raw, mask=mask)  # bit copy: g_sgd keeps the storage value
    tl.store(w_ptr + offs, _to_storage(w + e, w_ptr.dtype.element_ty, RNE_BY_HAND), mask=mask)


@_Kernel
def _update_kernel(w_ptr, g_ptr, g_sgd_ptr, buf_ptr, e_ptr, scale_ptr, counts_ptr, n,
                   lr, momentum, one_minus_dampening, weight_decay, alpha, eps,
                   BLOCK: tl.constexpr, ADAPTIVE: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                   NESTEROV: tl.constexpr, FIRST_MOMENTUM_STEP: tl.constexpr, USE_MASK: tl.constexpr,
                   TRACK_GROUPS: tl.constexpr, RNE_BY_HAND: tl.constexpr):
    s = tl.load(scale_ptr).to(tl.float32)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < tl.where(tl.abs(s) < float("inf"), n, 0)  # non-finite scale: skip, as in perturb
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    g_sgd = tl.load(g_sgd_ptr + offs, mask=mask).to(tl.float32)
    if ADAPTIVE:
        e = tl.load(e_ptr + offs, mask=mask).to(tl.float32)
    else:
        e = g_sgd * s  # the same rounded product perturb_ added
    w = tl.load(w_ptr + offs, mask=mask).to(tl.float32) - e

    d = g
    if USE_MASK or TRACK_GROUPS:
        # Division-free 0 < g / (g_sgd + eps) < 1, exactly reference.group_masks.
        den = g_sgd + eps
        same_sign = ((g > 0) & (den > 0)) | ((g < 0) & (den < 0))
        smaller = tl.abs(g) < tl.abs(den)
        in_b = same_sign & smaller
        if USE_MASK:
            d = tl.where(in_b, g * alpha, g)
        if TRACK_GROUPS:
            n_a = _block_sum((same_sign & ~smaller & mask).to(tl.int32))
            n_b = _block_sum((in_b & mask).to(tl.int32))
            n_all = _block_sum(mask.to(tl.int32))
            tl.store(counts_ptr + pid * 3 + 0, n_a)
            tl.store(counts_ptr + pid * 3 + 1, n_b)
            tl.store(counts_ptr + pid * 3 + 2, n_all - n_a - n_b)
    d = tl.fma(w, weight_decay, d)

    if HAS_MOMENTUM:
        if FIRST_MOMENTUM_STEP:
            buf = d  # torch.optim.SGD: the first buffer is d itself, no dampening
        else:
            buf = tl.fma(d, one_minus_dampening, momentum * tl.load(buf_ptr + offs, mask=mask).to(tl.float32))
        if NESTEROV:
            d = tl.fma(buf, momentum, d)
        else:
            d = buf
        tl.store(buf_ptr + offs, _to_storage(buf, buf_ptr.dtype.element_ty, RNE_BY_HAND), mask=mask)
    tl.store(w_ptr + offs, _to_storage(tl.fma(d, -lr, w), w_ptr.dtype.element_ty, RNE_BY_HAND), mask=mask)


# --------------------------------------------------------------------------- launch configuration
_GPU_BLOCK = 1024       # perturb/update: 8 fp32 per thread at 4 warps = two 128-bit accesses per tensor
_GPU_NORM_BLOCK = 4096  # fewer partial sums; 16 values per thread at 8 warps
_INTERPRETER_BLOCK = 1 << 16  # the interpreter pays per program, not per element


def _config(n: int, device: torch.device, gpu_block: int) -> tuple[int, int, int]:
    """(BLOCK, num_warps, grid) as a fixed function of n; no autotuning."""
    cap = gpu_block if device.type == "cuda" else _INTERPRETER_BLOCK
    block = min(cap, triton.next_power_of_2(n))
    num_warps = max(1, min(8, block // 256))  # >= 4 fp32 (one 128-bit access) per thread and tensor
    return block, num_warps, triton.cdiv(n, block)


def _check(*tensors: Optional[Tensor]) -> None:
    ref = tensors[0]
    if ref.dtype not in DTYPES:
        raise TypeError(f"the Triton backend takes {DTYPES}, not {ref.dtype}")
    for t in tensors:
        if t is None:
            continue
        if t.dim() != 1 or not t.is_contiguous() or t.numel() != ref.numel():
            raise ValueError("contract ops take contiguous 1-D tensors of equal length")
        if t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError("contract ops take tensors of one dtype on one device")


def _rne_by_hand(t: Tensor) -> bool:
    return t.device.type != "cuda" and t.dtype == torch.bfloat16


# --------------------------------------------------------------------------- the contract ops
def grad_sq_norm(g: Tensor, w: Optional[Tensor] = None) -> Tensor:
    _check(g, w)
    n = g.numel()
    block, num_warps, grid = _config(n, g.device, _GPU_NORM_BLOCK)
    partials = torch.empty(grid, dtype=torch.float32, device=g.device)
    _sq_norm_kernel.launch(g.device, (grid,), num_warps, g, g if w is None else w, partials, n,
                           BLOCK=block, ADAPTIVE=w is not None)
    return partials.sum()  # fixed-order reduction of a fixed-size tensor: deterministic


def perturb_(w: Tensor, g: Tensor, g_sgd: Tensor, scale: Tensor, e: Optional[Tensor] = None) -> None:
    _check(w, g, g_sgd, e)
    n = w.numel()
    block, num_warps, grid = _config(n, w.device, _GPU_BLOCK)
    _perturb_kernel.launch(w.device, (grid,), num_warps, w, g, g_sgd, w if e is None else e, scale, n,
                           BLOCK=block, ADAPTIVE=e is not None, RNE_BY_HAND=_rne_by_hand(w))


def update_(
    w: Tensor,
    g: Tensor,
    g_sgd: Tensor,
    buf: Optional[Tensor],
    scale: Tensor,
    *,
    e: Optional[Tensor] = None,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    alpha: float,
    eps: float,
    nesterov: bool,
    first_momentum_step: bool,
    stats: Optional[Tensor] = None,
) -> None:
    _check(w, g, g_sgd, buf, e)
    n = w.numel()
    block, num_warps, grid = _config(n, w.device, _GPU_BLOCK)
    counts = torch.empty(grid * 3 if stats is not None else 1, dtype=torch.int32, device=w.device)
    _update_kernel.launch(
        w.device, (grid,), num_warps,
        w, g, g_sgd, w if buf is None else buf, w if e is None else e, scale, counts, n,
        float(lr), float(momentum), 1.0 - float(dampening), float(weight_decay), float(alpha), float(eps),
        BLOCK=block, ADAPTIVE=e is not None, HAS_MOMENTUM=buf is not None,
        NESTEROV=bool(nesterov) and buf is not None, FIRST_MOMENTUM_STEP=bool(first_momentum_step) and buf is not None,
        USE_MASK=float(alpha) != 1.0, TRACK_GROUPS=stats is not None, RNE_BY_HAND=_rne_by_hand(w))
    if stats is not None:
        stats.add_(counts.view(grid, 3).sum(0))  # int sums: exact in any order
