"""Triton backend: the kernel-contract ops (v3, see ``reference.py``) as one-pass fused kernels.

``perturb_``, ``update_``, ``restore_`` and ``reweight_`` are one launch each over the flat bucket;
``grad_sq_norm`` and ``gsam_dot_norm`` are a per-block pass plus, for more than one block, a one-program
second pass over the block sums per result (fixed order, see ``_sum_partials_kernel``). Math is fp32 whatever
the storage dtype (fp32, bf16, fp16); offsets are int64. The 0-dim ``scale``, ``skip``, ``inv_scale`` and
``gsam_k`` tensors are read inside the kernels, so a step never syncs with the host. What a nonzero ``skip``
and ``scale == 0`` mean is docs/design.md's ("Kernel contract"); here these scalar conditions (uniform per
launch) fold into the load/store bounds (``_bound``) where they can, so a skipped op reads nothing it does not
write, a skipped ``update_`` drops the step's result by one select, and a stored ``e`` is not read (a recomputed
one is selected away: ``g_sgd`` may hold inf) when nothing was perturbed.

Feature switches are ``tl.constexpr`` (one compiled variant each; a variant without a switch loads and stores
nothing the switch needs): ``HAS_INV_SCALE``, the update unscales both gradients by GradScaler's
``inv_scale`` (one scalar load and two multiplies); ``HAS_AVG``, a gradient average (Friendly-SAM, VaSSO)
makes the direction ``d = dir_g * g + dir_avg * avg`` (``_direction``) in the norm, the perturbation and the
recomputed ``e`` of the update and the restore (one more tensor read), and the update commits
``avg <- keep * avg + take * g_sgd`` from the unscaled ``g_sgd`` (one more tensor written); ``HAS_GSAM``,
GSAM's ``g <- g - gsam_alpha * (g_sgd - gsam_k * g)`` after the unscaling, before the Group B mask (one scalar
load); ``RULE`` (the update and the reweighting), a group rule's region bits (``ops.GroupRule``, 0: none) in
place of the alpha reweighting: the ratio by IEEE division (``tl.div_rn``), its regions against the runtime bound
and the rule's four runtime coefficients (no tensor traffic: ``g_sgd`` is loaded as for the mask). lr, momentum,
dampening, weight decay, alpha, eps and the average's, GSAM's and the rule's coefficients are runtime
fp32 arguments, so schedules never recompile. ``weight_decay == 0`` skips the decay term with a runtime branch
(no ``0 * w``: an infinite weight stays infinite, -0 stays -0).

The kernels are plain ``@triton.jit`` functions. Triton decides when this module is imported whether
they are compiled (CUDA tensors) or run by its interpreter (CPU tensors, when ``TRITON_INTERPRET=1``
was set before triton was imported); ``is_available`` tells which devices the process can run.

Rounding: stores to bf16/fp16 round to nearest even on the GPU (``cvt.rn``). The interpreter
truncates fp32 -> bf16; the tests expect that (``contract_cases.expected_ops``: the reference with truncating
bf16 stores).

Floating-point contraction is disabled at launch (``enable_fp_fusion=False``), so products round as
in eager torch (``e = d * s`` recomputed in the update is the very product the perturbation added; the
direction, GSAM's decomposition and the average's commit are separate products and sums, as in the
reference); the ``x.add(y, alpha=a)`` steps of ``torch.optim.SGD`` (weight decay, momentum, nesterov, the
step itself), which torch evaluates as a fused multiply-add, are explicit ``tl.fma``. (The
interpreter's fma rounds twice: one ulp, within the tests' tolerances.)

Group counts (``update_``, ``reweight_``) are exact integers: per-block int32 counts, added to the int64
``stats`` with integer atomics (exact in any order, so deterministic).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import checks
from .hyper import AverageHyper, GroupRule, UpdateHyper

NAME = "triton"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _bound(n, go):
    """A load/store bound: ``n``, or 0 when ``go`` (a scalar condition, uniform per launch) is false. A scalar
    select keeps ``n``'s divisibility, so masks built on it still vectorize."""
    return tl.where(go, n, 0)


@triton.jit
def _direction(g, avg, dir_g, dir_avg):
    """The perturbation direction with a gradient average: two products and a sum, in the reference's order
    (no contraction at launch: no fma)."""
    return g * dir_g + avg * dir_avg


@triton.jit
def _group_masks(g, g_sgd, eps):
    """(same sign, |g| smaller): Group B is both (division-free 0 < g / (g_sgd + eps) < 1, exactly
    reference.group_masks), Group A the first without the second."""
    den = g_sgd + eps
    same_sign = ((g > 0) & (den > 0)) | ((g < 0) & (den < 0))
    return same_sign, tl.abs(g) < tl.abs(den)


@triton.jit
def _ruled(g, g_sgd, eps, bound, in_sam, in_sgd, out_sam, out_sgd, RULE: tl.constexpr):
    """A group rule (reference._ruled): ``(d, A, B)``. The ratio by IEEE division (``div_rn``: Triton's ``/`` is
    ``div.full.f32``, not correctly rounded), its regions against ``bound`` selected by the region bits ``RULE``
    (C 1, Z 2, B 4, E 8, A 16; a NaN ratio is in none); two products and a sum on each side. A is ``r >= bound``,
    B ``0 < r < bound`` (disjoint)."""
    r = tl.div_rn(g, g_sgd + eps)
    in_b = (r > 0) & (r < bound)
    inside = r < r  # all false (a NaN ratio too), then the rule's regions
    if RULE & 1:
        inside = inside | (r < 0)
    if RULE & 2:
        inside = inside | (r == 0)
    if RULE & 4:
        inside = inside | in_b
    if RULE & 8:
        inside = inside | (r == bound)
    if RULE & 16:
        inside = inside | (r > bound)
    d = tl.where(inside, g * in_sam + g_sgd * in_sgd, g * out_sam + g_sgd * out_sgd)
    return d, r >= bound, in_b


@triton.jit
def _count_groups(same_sign, smaller, offs, pid, keep, n_valid, stats_ptr, BLOCK: tl.constexpr):
    """Adds the block's (#A, #B, #C) over the elements below ``n_valid`` to ``stats`` (none when not ``keep``).
    Called after the reweighted gradient is formed: with the atomics first, ptxas (CUDA 13, Triton 3.9) gave
    the tracking update an 8-byte stack frame."""
    n_counted = tl.where(keep, n_valid, 0)
    valid = offs < n_counted
    n_a = tl.sum((same_sign & ~smaller & valid).to(tl.int32))
    n_b = tl.sum((same_sign & smaller & valid).to(tl.int32))
    n_all = tl.minimum(tl.maximum(n_counted - pid.to(tl.int64) * BLOCK, 0), BLOCK)
    tl.atomic_add(stats_ptr + 0, n_a.to(tl.int64), sem="relaxed")
    tl.atomic_add(stats_ptr + 1, n_b.to(tl.int64), sem="relaxed")
    tl.atomic_add(stats_ptr + 2, n_all.to(tl.int64) - n_a - n_b, sem="relaxed")


@triton.jit
def _sq_norm_kernel(
    g_ptr,
    w_ptr,
    avg_ptr,
    partial_ptr,
    n,
    dir_g,
    dir_avg,
    BLOCK: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    HAS_AVG: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_AVG:  # masked-off lanes: 0 * dir_g + 0 * dir_avg = +0 (the scalars are finite)
        x = _direction(x, tl.load(avg_ptr + offs, mask=mask, other=0.0).to(tl.float32), dir_g, dir_avg)
    if ADAPTIVE:
        x = tl.abs(tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)) * x
    tl.store(partial_ptr + pid, tl.sum(x * x))


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, n_partials, BLOCK: tl.constexpr):
    """The norm's second stage, one program: a fixed-order sum of the per-block partials, in fp64.

    Partial ``j`` always goes to lane ``j % BLOCK`` at loop iteration ``j // BLOCK`` (index order),
    and the final ``tl.sum`` reduces the BLOCK lanes of this one program along a tree fixed by BLOCK
    and num_warps, both constants. So the order of every addition depends on ``n`` only: not on the
    GPU's SM count, not on scheduling (no atomics, one program), unlike ``torch.sum`` over the
    partials, whose reduction strategy for long inputs depends on the device it runs on. (fp64: a lane
    adds up to n / 4M partials in a row; one rounding to fp32 at the end.)
    """
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    start = 0
    while start < n_partials:  # (a while loop: the interpreter cannot take a runtime bound in range())
        idx = start + lanes
        acc += tl.load(partial_ptr + idx, mask=idx < n_partials, other=0.0).to(tl.float64)
        start += BLOCK
    tl.store(out_ptr, tl.sum(acc).to(tl.float32))


@triton.jit
def _perturb_kernel(
    w_ptr,
    g_ptr,
    g_sgd_ptr,
    e_ptr,
    avg_ptr,
    scale_ptr,
    skip_ptr,
    n,
    dir_g,
    dir_avg,
    BLOCK: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    COPY_G: tl.constexpr,
    HAS_AVG: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < _bound(n, tl.load(skip_ptr) == 0)
    s = tl.load(scale_ptr)
    g_raw = tl.load(g_ptr + offs, mask=mask)
    w = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
    g = g_raw.to(tl.float32)
    if HAS_AVG:
        g = _direction(g, tl.load(avg_ptr + offs, mask=mask).to(tl.float32), dir_g, dir_avg)
    if ADAPTIVE:
        e = w * w * g * s
        tl.store(e_ptr + offs, e.to(e_ptr.dtype.element_ty), mask=mask)
    else:
        e = g * s
    if COPY_G:
        tl.store(g_sgd_ptr + offs, g_raw, mask=mask)  # a bit copy: g_sgd keeps the storage value
    tl.store(w_ptr + offs, (w + e).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_valid"])
def _update_kernel(
    w_ptr,
    g_ptr,
    g_sgd_ptr,
    buf_ptr,
    e_ptr,
    scale_ptr,
    skip_ptr,
    stats_ptr,
    inv_scale_ptr,
    avg_ptr,
    gsam_k_ptr,
    n,
    n_valid,
    lr,
    momentum,
    one_minus_dampening,
    weight_decay,
    alpha,
    eps,
    dir_g,
    dir_avg,
    avg_keep,
    avg_take,
    gsam_alpha,
    rule_bound,
    rule_in_sam,
    rule_in_sgd,
    rule_out_sam,
    rule_out_sgd,
    BLOCK: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    FIRST_MOMENTUM_STEP: tl.constexpr,
    USE_MASK: tl.constexpr,
    TRACK_GROUPS: tl.constexpr,
    ZERO_GRADS: tl.constexpr,
    HAS_INV_SCALE: tl.constexpr,
    HAS_AVG: tl.constexpr,
    HAS_GSAM: tl.constexpr,
    RULE: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = tl.load(skip_ptr) == 0
    s = tl.load(scale_ptr)
    perturbed = s != 0  # scale 0: nothing was perturbed, e is +0
    # ``step``: the momentum buffer (and the group counts below) only when the step is not skipped. ``touch_w``:
    # w, and the gradients, also on a skipped step (w is restored then, the step's result dropped by a select),
    # unless nothing was perturbed then either (w - (+0) is w). g is loaded under ``touch_w``, not ``step``: one
    # bound fewer keeps ptxas from spilling predicates in the group-tracking variants.
    step = offs < _bound(n, keep)
    touch_w = offs < _bound(n, keep | perturbed)
    g = tl.load(g_ptr + offs, mask=touch_w).to(tl.float32)
    if not ADAPTIVE or USE_MASK or TRACK_GROUPS or HAS_AVG or HAS_GSAM or RULE:
        # for e (not adaptive); for the groups, the average's commit, GSAM's decomposition, the rule
        g_sgd = tl.load(g_sgd_ptr + offs, mask=touch_w).to(tl.float32)
    if ZERO_GRADS:
        # Right after this thread's loads of the same elements (short address live ranges: no spill); on a
        # skipped step too (the user asked for it).
        in_bounds = offs < n
        zeros = tl.zeros((BLOCK,), dtype=g_ptr.dtype.element_ty)
        tl.store(g_ptr + offs, zeros, mask=in_bounds)
        tl.store(g_sgd_ptr + offs, zeros, mask=in_bounds)
    if HAS_AVG:
        # For e (not adaptive: also on a skipped step, to restore w) and for the commit.
        avg = tl.load(avg_ptr + offs, mask=touch_w).to(tl.float32)
    if ADAPTIVE:
        # Not read when nothing was perturbed (a stale e): the masked-off lanes are +0.
        e = tl.load(e_ptr + offs, mask=offs < _bound(n, perturbed), other=0.0).to(tl.float32)
    elif HAS_AVG:
        e = tl.where(perturbed, _direction(g_sgd, avg, dir_g, dir_avg) * s, 0.0)  # as perturb_ added it
    else:
        e = tl.where(perturbed, g_sgd * s, 0.0)  # the same rounded product perturb_ added; g_sgd may be inf
    w = tl.load(w_ptr + offs, mask=touch_w).to(tl.float32) - e
    if HAS_INV_SCALE:
        # GradScaler's 1/scale: both gradients unscaled after e was recomputed from the stored (scaled) g_sgd.
        inv_scale = tl.load(inv_scale_ptr)
        g = g * inv_scale
        if USE_MASK or TRACK_GROUPS or HAS_AVG or HAS_GSAM or RULE:
            g_sgd = g_sgd * inv_scale
    if HAS_GSAM:
        # GSAM: g - gsam_alpha * (g_sgd - k * g), the reference's op order (no fma: contraction is off).
        g = g - (g_sgd - tl.load(gsam_k_ptr) * g) * gsam_alpha

    d = g
    if RULE:  # a group rule in place of the alpha reweighting
        d, in_a, in_b = _ruled(g, g_sgd, eps, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam, rule_out_sgd, RULE)
        if TRACK_GROUPS:
            _count_groups(in_a | in_b, in_b, offs, pid, keep, n_valid, stats_ptr, BLOCK)
    elif USE_MASK or TRACK_GROUPS:
        same_sign, smaller = _group_masks(g, g_sgd, eps)
        if USE_MASK:
            d = tl.where(same_sign & smaller, g * alpha, g)
        if TRACK_GROUPS:
            _count_groups(same_sign, smaller, offs, pid, keep, n_valid, stats_ptr, BLOCK)
    if weight_decay != 0.0:
        d = tl.fma(w, weight_decay, d)

    if HAS_MOMENTUM:
        if FIRST_MOMENTUM_STEP:
            buf = d  # torch.optim.SGD: the first buffer is d itself, no dampening
        else:
            buf = tl.fma(d, one_minus_dampening, momentum * tl.load(buf_ptr + offs, mask=step).to(tl.float32))
        if NESTEROV:
            d = tl.fma(buf, momentum, d)
        else:
            d = buf
        tl.store(buf_ptr + offs, buf.to(buf_ptr.dtype.element_ty), mask=step)
    # Skipped: the restored w only (the step's d may be inf/NaN then).
    w = tl.where(keep, tl.fma(d, -lr, w), w)
    tl.store(w_ptr + offs, w.to(w_ptr.dtype.element_ty), mask=touch_w)
    if HAS_AVG:
        # The commit, from the unscaled g_sgd; not on a skipped step.
        tl.store(avg_ptr + offs, (avg * avg_keep + g_sgd * avg_take).to(avg_ptr.dtype.element_ty), mask=step)


@triton.jit
def _restore_kernel(
    w_ptr,
    g_sgd_ptr,
    e_ptr,
    avg_ptr,
    scale_ptr,
    skip_ptr,
    n,
    dir_g,
    dir_avg,
    BLOCK: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    HAS_AVG: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    s = tl.load(scale_ptr)
    # Skipped, or nothing perturbed (scale 0: e is +0 and w - e is w): nothing is read or written.
    mask = offs < _bound(n, (tl.load(skip_ptr) == 0) & (s != 0))
    if ADAPTIVE:
        e = tl.load(e_ptr + offs, mask=mask).to(tl.float32)
    elif HAS_AVG:
        g_sgd = tl.load(g_sgd_ptr + offs, mask=mask).to(tl.float32)
        e = _direction(g_sgd, tl.load(avg_ptr + offs, mask=mask).to(tl.float32), dir_g, dir_avg) * s
    else:
        e = tl.load(g_sgd_ptr + offs, mask=mask).to(tl.float32) * s  # as update_ restores
    w = tl.load(w_ptr + offs, mask=mask).to(tl.float32) - e
    tl.store(w_ptr + offs, w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gsam_dot_norm_kernel(g_sgd_ptr, g_ptr, w_ptr, partial_ptr, n, BLOCK: tl.constexpr, ADAPTIVE: tl.constexpr):
    """GSAM's two sums, per block: the dot product at ``partial[pid]``, the squares at ``partial[grid + pid]``
    (one block: ``partial`` is the result itself)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g_sgd = tl.load(g_sgd_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = g
    if ADAPTIVE:
        x = tl.abs(tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)) * g
    tl.store(partial_ptr + pid, tl.sum(g_sgd * g))
    tl.store(partial_ptr + tl.num_programs(0) + pid, tl.sum(x * x))


@triton.jit(do_not_specialize=["n_valid"])
def _reweight_kernel(
    g_ptr,
    g_sgd_ptr,
    skip_ptr,
    stats_ptr,
    inv_scale_ptr,
    n,
    n_valid,
    alpha,
    eps,
    rule_bound,
    rule_in_sam,
    rule_in_sgd,
    rule_out_sam,
    rule_out_sgd,
    BLOCK: tl.constexpr,
    USE_MASK: tl.constexpr,
    TRACK_GROUPS: tl.constexpr,
    HAS_INV_SCALE: tl.constexpr,
    RULE: tl.constexpr = 0,
):
    """update_'s unscaling and reweighting alone, in place on g; a skipped step reads and writes nothing (and
    counts nothing). Without the mask, g is written only to unscale it."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = tl.load(skip_ptr) == 0
    step = offs < _bound(n, keep)
    g = tl.load(g_ptr + offs, mask=step).to(tl.float32)
    if HAS_INV_SCALE:
        inv_scale = tl.load(inv_scale_ptr)
        g = g * inv_scale
    if RULE:
        g_sgd = tl.load(g_sgd_ptr + offs, mask=step).to(tl.float32)
        if HAS_INV_SCALE:
            g_sgd = g_sgd * inv_scale
        g, in_a, in_b = _ruled(g, g_sgd, eps, rule_bound, rule_in_sam, rule_in_sgd, rule_out_sam, rule_out_sgd, RULE)
        if TRACK_GROUPS:
            _count_groups(in_a | in_b, in_b, offs, pid, keep, n_valid, stats_ptr, BLOCK)
    elif USE_MASK or TRACK_GROUPS:
        g_sgd = tl.load(g_sgd_ptr + offs, mask=step).to(tl.float32)
        if HAS_INV_SCALE:
            g_sgd = g_sgd * inv_scale
        same_sign, smaller = _group_masks(g, g_sgd, eps)
        if USE_MASK:
            g = tl.where(same_sign & smaller, g * alpha, g)
        if TRACK_GROUPS:
            _count_groups(same_sign, smaller, offs, pid, keep, n_valid, stats_ptr, BLOCK)
    if USE_MASK or HAS_INV_SCALE or RULE:
        tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=step)


# Decided by triton.jit when this module was imported (TRITON_INTERPRET=1 then: the interpreter).
_INTERPRETED = not isinstance(_update_kernel, triton.JITFunction)


def is_available(device: torch.device) -> tuple[bool, str]:
    device = torch.device(device)
    if device.type == "cuda":
        if _INTERPRETED:
            return False, "Triton was imported with TRITON_INTERPRET=1: its interpreter runs CPU tensors only"
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        return True, ""
    if device.type == "cpu":
        if _INTERPRETED:
            return True, ""
        return False, "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing triton"
    return False, f"Triton has no backend for {device.type} tensors"


# --------------------------------------------------------------------------- launch configuration
_GPU_BLOCK = 1024  # perturb/update/restore: 8 fp32 per thread at 4 warps = two 128-bit accesses per tensor
_GPU_NORM_BLOCK = 4096  # fewer partial sums; 16 values per thread at 8 warps
_INTERPRETER_BLOCK = 1 << 16  # the interpreter pays per program, not per element
_SUM_BLOCK = 1024  # the norm's second stage: lanes of its one program (fixed: the order depends on n only)
_SUM_WARPS = 4


def _config(n: int, device: torch.device, gpu_block: int) -> tuple[int, int, int]:
    """(BLOCK, num_warps, grid) as a fixed function of n; no autotuning."""
    cap = gpu_block if device.type == "cuda" else _INTERPRETER_BLOCK
    block = min(cap, triton.next_power_of_2(n))
    num_warps = max(1, min(8, block // 256))  # >= 4 fp32 (one 128-bit access) per thread and tensor
    return block, num_warps, triton.cdiv(n, block)


def _launch(kernel, device: torch.device, grid: int, num_warps: int, *args, **constexprs) -> None:
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[(grid,)](*args, **constexprs, num_warps=num_warps, enable_fp_fusion=False)
    else:
        kernel[(grid,)](*args, **constexprs, num_warps=num_warps, enable_fp_fusion=False)


# --------------------------------------------------------------------------- arguments
def _on_runnable_device(t: Tensor) -> None:
    """After the shared checks (``checks.py``): the bucket's device is one this process runs Triton on."""
    ok, reason = is_available(t.device)
    if not ok:
        raise RuntimeError(f"saner_kernels (triton): cannot run {t.device} tensors here: {reason}")


def _average_args(avg_hyper: Optional[AverageHyper]) -> tuple[float, float, float, float]:
    """(dir_g, dir_avg, keep, take) as runtime fp32 kernel arguments (unused zeros without an average)."""
    if avg_hyper is None:
        return 0.0, 0.0, 0.0, 0.0
    h = avg_hyper
    return float(h.dir_g), float(h.dir_avg), float(h.keep), float(h.take)


def _rule_args(rule: Optional[GroupRule]) -> tuple[tuple[float, ...], int]:
    """((bound, in_sam, in_sgd, out_sam, out_sgd) as runtime fp32 kernel arguments, the region bits as the ``RULE``
    constexpr); without a rule, unused values and ``RULE=0`` (the kernels compile as they do without the switch)."""
    if rule is None:
        return (1.0, 1.0, 0.0, 1.0, 0.0), 0
    return (float(rule.bound), float(rule.in_sam), float(rule.in_sgd), float(rule.out_sam), float(rule.out_sgd)), int(
        rule.regions
    )


# --------------------------------------------------------------------------- the contract ops
def _reduction_grid(n: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK, num_warps, grid) of the norms' first stage. More than one block: the grid is rounded up to a
    multiple of 16 (the extra programs mask everything off and store 0.0), so that the second stage reads
    the partials in 128-bit vectors."""
    block, num_warps, grid = _config(n, device, _GPU_NORM_BLOCK)
    if grid > 1:
        grid = triton.cdiv(grid, 16) * 16
    return block, num_warps, grid


def grad_sq_norm(
    grad: Tensor,
    w: Optional[Tensor] = None,
    *,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> Tensor:
    checks.norm_args(DTYPES, grad, w, avg, avg_hyper)
    _on_runnable_device(grad)
    dir_g, dir_avg, _, _ = _average_args(avg_hyper)
    n = grad.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=grad.device)
    out = torch.empty((), dtype=torch.float32, device=grad.device)  # written by the one block or the second stage
    block, num_warps, grid = _reduction_grid(n, grad.device)
    # One block: its sum is the result; more: per-block partials, summed by the fixed-order second stage.
    partials = out if grid == 1 else torch.empty(grid, dtype=torch.float32, device=grad.device)
    _launch(
        _sq_norm_kernel,
        grad.device,
        grid,
        num_warps,
        grad,
        grad if w is None else w,
        grad if avg is None else avg,
        partials,
        n,
        dir_g,
        dir_avg,
        BLOCK=block,
        ADAPTIVE=w is not None,
        HAS_AVG=avg is not None,
    )
    if grid > 1:
        _launch(_sum_partials_kernel, grad.device, 1, _SUM_WARPS, partials, out, grid, BLOCK=_SUM_BLOCK)
    return out


def gsam_dot_norm(g_sgd: Tensor, g_sam: Tensor, w: Optional[Tensor] = None) -> Tensor:
    checks.dot_norm_args(DTYPES, g_sgd, g_sam, w)
    _on_runnable_device(g_sam)
    n = g_sam.numel()
    out = torch.zeros(2, dtype=torch.float32, device=g_sam.device)
    if n == 0:
        return out
    block, num_warps, grid = _reduction_grid(n, g_sam.device)
    # [dot partials | square partials]; one block writes the two sums straight into ``out``.
    partials = out if grid == 1 else torch.empty(2 * grid, dtype=torch.float32, device=g_sam.device)
    _launch(
        _gsam_dot_norm_kernel,
        g_sam.device,
        grid,
        num_warps,
        g_sgd,
        g_sam,
        g_sam if w is None else w,
        partials,
        n,
        BLOCK=block,
        ADAPTIVE=w is not None,
    )
    if grid > 1:
        # The norm's fixed-order second stage, once per sum (each half starts at a multiple of 16 floats).
        for i in range(2):
            _launch(
                _sum_partials_kernel,
                g_sam.device,
                1,
                _SUM_WARPS,
                partials[i * grid : (i + 1) * grid],
                out[i:],
                grid,
                BLOCK=_SUM_BLOCK,
            )
    return out


def perturb_(
    w: Tensor,
    grad: Tensor,
    scale: Tensor,
    skip: Tensor,
    *,
    e: Optional[Tensor] = None,
    g_sgd: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> None:
    checks.perturb_args(DTYPES, w, grad, scale, skip, e, g_sgd, avg, avg_hyper)
    _on_runnable_device(w)
    dir_g, dir_avg, _, _ = _average_args(avg_hyper)
    n = w.numel()
    if n == 0:
        return
    block, num_warps, grid = _config(n, w.device, _GPU_BLOCK)
    _launch(
        _perturb_kernel,
        w.device,
        grid,
        num_warps,
        w,
        grad,
        w if g_sgd is None else g_sgd,
        w if e is None else e,
        w if avg is None else avg,
        scale,
        skip,
        n,
        dir_g,
        dir_avg,
        BLOCK=block,
        ADAPTIVE=e is not None,
        COPY_G=g_sgd is not None,
        HAS_AVG=avg is not None,
    )


def update_(
    w: Tensor,
    g_sam: Tensor,
    g_sgd: Tensor,
    buf: Optional[Tensor],
    scale: Tensor,
    skip: Tensor,
    hyper: UpdateHyper,
    *,
    e: Optional[Tensor] = None,
    first_momentum_step: bool = False,
    zero_grads: bool = False,
    stats: Optional[Tensor] = None,
    n_valid: Optional[int] = None,
    inv_scale: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
    gsam_k: Optional[Tensor] = None,
    rule: Optional[GroupRule] = None,
) -> None:
    n_valid = checks.update_args(
        DTYPES, w, g_sam, g_sgd, buf, scale, skip, e, stats, n_valid, inv_scale, avg, avg_hyper, gsam_k
    )
    checks.group_rule(rule)
    _on_runnable_device(w)
    dir_g, dir_avg, avg_keep, avg_take = _average_args(avg_hyper)
    rule_scalars, rule_regions = _rule_args(rule)
    n = w.numel()
    if n == 0:
        return
    has_momentum = buf is not None
    block, num_warps, grid = _config(n, w.device, _GPU_BLOCK)
    _launch(
        _update_kernel,
        w.device,
        grid,
        num_warps,
        w,
        g_sam,
        g_sgd,
        w if buf is None else buf,
        w if e is None else e,
        scale,
        skip,
        scale if stats is None else stats,
        scale if inv_scale is None else inv_scale,
        w if avg is None else avg,
        scale if gsam_k is None else gsam_k,
        n,
        n_valid,
        float(hyper.lr),
        float(hyper.momentum),
        1.0 - float(hyper.dampening),
        float(hyper.weight_decay),
        float(hyper.alpha),
        float(hyper.eps),
        dir_g,
        dir_avg,
        avg_keep,
        avg_take,
        float(hyper.gsam_alpha),
        *rule_scalars,
        BLOCK=block,
        ADAPTIVE=e is not None,
        HAS_MOMENTUM=has_momentum,
        NESTEROV=bool(hyper.nesterov) and has_momentum,
        FIRST_MOMENTUM_STEP=bool(first_momentum_step) and has_momentum,
        USE_MASK=float(hyper.alpha) != 1.0 and rule is None,  # a rule replaces the alpha reweighting
        TRACK_GROUPS=stats is not None,
        ZERO_GRADS=bool(zero_grads),
        HAS_INV_SCALE=inv_scale is not None,
        HAS_AVG=avg is not None,
        HAS_GSAM=gsam_k is not None,
        **({"RULE": rule_regions} if rule_regions else {}),
    )


def restore_(
    w: Tensor,
    scale: Tensor,
    skip: Tensor,
    *,
    g_sgd: Optional[Tensor] = None,
    e: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> None:
    checks.restore_args(DTYPES, w, scale, skip, g_sgd, e, avg, avg_hyper)
    _on_runnable_device(w)
    dir_g, dir_avg, _, _ = _average_args(avg_hyper)
    n = w.numel()
    if n == 0:
        return
    block, num_warps, grid = _config(n, w.device, _GPU_BLOCK)
    _launch(
        _restore_kernel,
        w.device,
        grid,
        num_warps,
        w,
        w if g_sgd is None else g_sgd,
        w if e is None else e,
        w if avg is None else avg,
        scale,
        skip,
        n,
        dir_g,
        dir_avg,
        BLOCK=block,
        ADAPTIVE=e is not None,
        HAS_AVG=avg is not None and e is None,  # a stored e needs no direction
    )


def reweight_(
    g_sam: Tensor,
    g_sgd: Tensor,
    skip: Tensor,
    alpha: float,
    eps: float,
    *,
    stats: Optional[Tensor] = None,
    n_valid: Optional[int] = None,
    inv_scale: Optional[Tensor] = None,
    rule: Optional[GroupRule] = None,
) -> None:
    n_valid = checks.reweight_args(DTYPES, g_sam, g_sgd, skip, stats, n_valid, inv_scale)
    checks.group_rule(rule)
    _on_runnable_device(g_sam)
    n = g_sam.numel()
    use_mask = float(alpha) != 1.0 and rule is None
    rule_scalars, rule_regions = _rule_args(rule)
    if n == 0 or not (use_mask or stats is not None or inv_scale is not None or rule is not None):
        return  # alpha 1, no rule, nothing to unscale or count: g_sam is already the result
    block, num_warps, grid = _config(n, g_sam.device, _GPU_BLOCK)
    _launch(
        _reweight_kernel,
        g_sam.device,
        grid,
        num_warps,
        g_sam,
        g_sgd,
        skip,
        skip if stats is None else stats,
        skip if inv_scale is None else inv_scale,
        n,
        n_valid,
        float(alpha),
        float(eps),
        *rule_scalars,
        BLOCK=block,
        USE_MASK=use_mask,
        TRACK_GROUPS=stats is not None,
        HAS_INV_SCALE=inv_scale is not None,
        **({"RULE": rule_regions} if rule_regions else {}),
    )
