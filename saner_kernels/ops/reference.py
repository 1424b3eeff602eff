"""Pure-PyTorch implementation of the kernel contract (v3): the ground truth.

Every other backend (Triton, C++ CPU, CUDA C++) is tested against these functions on the same
inputs. They take flat, contiguous 1-D tensors of equal length (a bucket, zero-padded to a multiple of
128) and compute in fp32 whatever the storage dtype (fp64 stays fp64). docs/design.md, section
"Kernel contract", is the prose version of this file.

Arguments every backend shares: ``scale`` (the perturbation scale ``s``), ``skip`` (the step's skip flag),
``avg``/``avg_hyper`` (the averaging variants' gradient average and its ``AverageHyper``), ``inv_scale``,
``gsam_k``, ``stats`` and ``n_valid``: their meaning, and what a nonzero ``skip`` and ``scale == 0`` do, is
docs/design.md, "Kernel contract". ``ops/checks.py`` checks them for every backend. Gradients are named by which
they are: ``grad`` the gradient being perturbed by (the first one), ``g_sgd`` that first gradient kept for the
update, ``g_sam`` the second one (at the perturbed weights).

The ops:

``grad_sq_norm(grad, w=None, *, avg=None, avg_hyper=None) -> Tensor``
    0-dim fp32 or fp64 tensor (the reference always sums in fp64; the kernels in fp32 for 16- and 32-bit
    storage): sum of ``(|w| * d)**2`` (adaptive) or ``d**2``, deterministic. The optimizer adds the
    buckets' sums in fp64 when any of them is fp64.
``perturb_(w, grad, scale, skip, *, e=None, g_sgd=None, avg=None, avg_hyper=None) -> None``
    ``e = (w*w if e is given else 1) * d * scale`` (``d``: ``grad`` or the average direction); ``w <- w + e``;
    ``e`` stored when given (adaptive); ``g_sgd <- grad`` (a bit copy) when given: the optimizer passes it only
    for ``first_step(zero_grad=False)``; with ``zero_grad=True`` the bucket swaps its two gradient buffers
    instead, so the buffer holding ``grad`` simply becomes ``g_sgd``.
``gsam_dot_norm(g_sgd, g_sam, w=None) -> Tensor``
    GSAM's reduction over the second gradient, one pass: a 1-D tensor of two sums (fp32, fp64 for fp64
    storage; the reference sums in fp64), ``[sum(g_sgd * g_sam), sum((|w| * g_sam)**2)]`` (``w`` given: adaptive,
    the perturbed weights), deterministic.
``update_(w, g_sam, g_sgd, buf, scale, skip, hyper, *, e=None, first_momentum_step=False, zero_grads=False,
          stats=None, n_valid=None, inv_scale=None, avg=None, avg_hyper=None, gsam_k=None) -> None``
    restore ``w <- w - e`` (the very product perturb_ added: ``e`` stored when adaptive, else
    ``d * scale`` recomputed from the stored, possibly scaled ``g_sgd``), unscale both gradients by
    ``inv_scale`` when given (a 0-dim fp32 tensor on the device: GradScaler's ``1 / scale``); GSAM, when
    ``gsam_k`` (a 0-dim tensor on the device, typed like ``scale``) is given:
    ``g_sam <- g_sam - hyper.gsam_alpha * (g_sgd - gsam_k * g_sam)`` (``gsam_k = cos * n1 / (n2 + 1e-12)``, made by the
    optimizer from ``gsam_dot_norm``); reweight Group B
    of that ``g_sam`` against ``g_sgd`` by ``hyper.alpha``; add weight decay, SGD momentum (``buf`` is None
    when ``hyper.momentum == 0``), ``w <- w - lr * d``; commit the average. ``zero_grads``:
    write zeros to ``g_sam`` and ``g_sgd`` after reading them (skipped or not). ``stats``, when given, is an
    int64 tensor of 3 counters that gets ``+= (#A, #B, #C)`` over the first ``n_valid`` elements (default:
    all). ``hyper.alpha == 1`` may skip the mask computation (counts are still made when ``stats`` is given).
``restore_(w, scale, skip, *, g_sgd=None, e=None, avg=None, avg_hyper=None) -> None``
    ``w <- w - e`` exactly as ``update_`` restores it: undoes a perturbation whose second step will not
    run (a closure that raised).
``reweight_(g_sam, g_sgd, skip, alpha, eps, *, stats=None, n_valid=None, inv_scale=None) -> None``
    The reweighting alone, in place, for per-replica (local) distributed SANER, whose reweighted
    gradients are averaged across ranks before the step: unscale both by ``inv_scale`` when given, then
    ``g_sam <- alpha * g_sam`` on Group B (against ``g_sgd``); counts as ``update_``.

Group B mask, division-free (equal to the division on finite inputs, docs/design.md "Numerics"):
``den = g_sgd + eps``; B = ``sign(g) == sign(den) != 0 and |g| < |den|`` which is ``0 < g/den < 1``
under IEEE division; A = same sign and ``|g| >= |den|`` (``g/den >= 1``); C = the rest (``g/den <= 0``,
plus the degenerate ``den == 0``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import checks
from .hyper import AverageHyper, GroupRule, UpdateHyper

NAME = "reference"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_available(device: torch.device) -> tuple[bool, str]:
    return True, ""


def _compute(t: Tensor) -> Tensor:
    """``t`` in the compute dtype: fp32 for 16-bit storage, the storage dtype otherwise (fp64 stays fp64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def direction(grad_c: Tensor, avg: Optional[Tensor], avg_hyper: Optional[AverageHyper]) -> Tensor:
    """The perturbation direction in the compute dtype: ``grad``, or ``dir_g * grad + dir_avg * avg``."""
    if avg is None:
        return grad_c
    return grad_c * avg_hyper.dir_g + _compute(avg) * avg_hyper.dir_avg


def grad_sq_norm(
    grad: Tensor,
    w: Optional[Tensor] = None,
    *,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> Tensor:
    checks.norm_args(DTYPES, grad, w, avg, avg_hyper)
    x = direction(_compute(grad), avg, avg_hyper)
    if w is not None:
        x = _compute(w).abs() * x
    # Squares summed in fp64: the ground truth should not depend on a summation order. torch.dot
    # reduces in a fixed order for a given size, so it is also deterministic run to run.
    x64 = x.double()
    return torch.dot(x64, x64)


def group_masks(g_sam_c: Tensor, g_sgd_c: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(A, B) boolean masks; C is everything else. Division-free form of 1 <= r and 0 < r < 1."""
    den = g_sgd_c + eps
    same_sign = ((g_sam_c > 0) & (den > 0)) | ((g_sam_c < 0) & (den < 0))
    smaller = g_sam_c.abs() < den.abs()
    return same_sign & ~smaller, same_sign & smaller


def _ruled(g_sam_c: Tensor, g_sgd_c: Tensor, eps: float, rule: GroupRule) -> tuple[Tensor, Tensor, Tensor]:
    """(d, A mask, B mask) under ``rule``: the ratio by division, its regions against the rule's bound."""
    r = g_sam_c / (g_sgd_c + eps)
    b = rule.bound
    regions = {
        GroupRule.C: r < 0,
        GroupRule.Z: r == 0,
        GroupRule.B: (r > 0) & (r < b),
        GroupRule.E: r == b,
        GroupRule.A: r > b,
    }
    inside = torch.zeros_like(r, dtype=torch.bool)
    for bit, mask in regions.items():
        if rule.regions & bit:
            inside |= mask
    taken_in = g_sam_c * rule.in_sam + g_sgd_c * rule.in_sgd
    taken_out = g_sam_c * rule.out_sam + g_sgd_c * rule.out_sgd
    return torch.where(inside, taken_in, taken_out), r >= b, regions[GroupRule.B]


def group_counts(
    g_sam: Tensor, g_sgd: Tensor, eps: float, rule: Optional[GroupRule] = None, inv_scale: Optional[Tensor] = None
) -> Tensor:
    """int64 [A, B, C] counts of one tensor's components, as the update counts them (analysis: one parameter's)."""
    g_sam_c, g_sgd_c = _unscaled(g_sam.reshape(-1), g_sgd.reshape(-1), inv_scale)
    mask_a, mask_b = group_masks(g_sam_c, g_sgd_c, eps) if rule is None else _ruled(g_sam_c, g_sgd_c, eps, rule)[1:]
    n_a, n_b = mask_a.sum(), mask_b.sum()
    return torch.stack([n_a, n_b, g_sam_c.numel() - n_a - n_b])


def _not_skipped(skip: Tensor) -> Tensor:
    return skip == 0


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
    stepping = _not_skipped(skip)
    d = direction(_compute(grad), avg, avg_hyper)
    w_c = _compute(w)
    e_c = (w_c * w_c * d * scale) if e is not None else d * scale
    # torch.where keeps the no-host-sync rule: a skipped step writes back the old values.
    if g_sgd is not None:
        g_sgd.copy_(torch.where(stepping, grad, g_sgd))
    if e is not None:
        e.copy_(torch.where(stepping, e_c, _compute(e)))
    w.copy_(torch.where(stepping, w_c + e_c, w_c))


def _perturbation(
    scale: Tensor,
    g_sgd: Optional[Tensor],
    e: Optional[Tensor],
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> Tensor:
    """The ``e`` to subtract: stored (adaptive) or recomputed, and +0 when nothing was perturbed."""
    e_c = _compute(e) if e is not None else direction(_compute(g_sgd), avg, avg_hyper) * scale
    return torch.where(scale == 0, torch.zeros_like(e_c), e_c)


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
    checks.update_args(DTYPES, w, g_sam, g_sgd, buf, scale, skip, e, stats, n_valid, inv_scale, avg, avg_hyper, gsam_k)
    checks.group_rule(rule)
    stepping = _not_skipped(skip)
    w_c = _compute(w) - _perturbation(scale, g_sgd, e, avg, avg_hyper)
    g_sam_c, g_sgd_c = _unscaled(g_sam, g_sgd, inv_scale)
    if gsam_k is not None:  # GSAM: g2 - alpha * (g1 - k * g2), k = cos * n1 / (n2 + 1e-12)
        g_sam_c = g_sam_c - (g_sgd_c - gsam_k * g_sam_c) * hyper.gsam_alpha

    d = _reweighted(g_sam_c, g_sgd_c, hyper.alpha, hyper.eps, stepping, stats, n_valid, rule)
    # Weight decay, momentum and the step use torch.optim.SGD's own ops (torch.add with alpha), so
    # that alpha = 1, rho = 0 reproduces SGD bit for bit.
    if hyper.weight_decay != 0.0:
        d = d.add(w_c, alpha=hyper.weight_decay)
    if buf is not None:
        if first_momentum_step:
            new_buf = d
        else:
            new_buf = _compute(buf).mul(hyper.momentum).add_(d, alpha=1.0 - hyper.dampening)
        d = d.add(new_buf, alpha=hyper.momentum) if hyper.nesterov else new_buf
        buf.copy_(torch.where(stepping, new_buf, _compute(buf)))
    w.copy_(torch.where(stepping, w_c.add(d, alpha=-hyper.lr), w_c))  # skipped: restored only
    if avg is not None:
        committed = _compute(avg) * avg_hyper.keep + g_sgd_c * avg_hyper.take
        avg.copy_(torch.where(stepping, committed, _compute(avg)))
    if zero_grads:
        g_sam.zero_()
        g_sgd.zero_()


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
    w_c = _compute(w)
    w.copy_(torch.where(_not_skipped(skip), w_c - _perturbation(scale, g_sgd, e, avg, avg_hyper), w_c))


def gsam_dot_norm(g_sgd: Tensor, g_sam: Tensor, w: Optional[Tensor] = None) -> Tensor:
    checks.dot_norm_args(DTYPES, g_sgd, g_sam, w)
    g_sgd64, g_sam64 = _compute(g_sgd).double(), _compute(g_sam).double()
    weighted = _compute(w).abs().double() * g_sam64 if w is not None else g_sam64
    return torch.stack([torch.dot(g_sgd64, g_sam64), torch.dot(weighted, weighted)])


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
    checks.reweight_args(DTYPES, g_sam, g_sgd, skip, stats, n_valid, inv_scale)
    checks.group_rule(rule)
    stepping = _not_skipped(skip)
    g_sam_c, g_sgd_c = _unscaled(g_sam, g_sgd, inv_scale)
    d = _reweighted(g_sam_c, g_sgd_c, alpha, eps, stepping, stats, n_valid, rule)
    g_sam.copy_(torch.where(stepping, d, _compute(g_sam)))


def _unscaled(g_sam: Tensor, g_sgd: Tensor, inv_scale: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    g_sam_c, g_sgd_c = _compute(g_sam), _compute(g_sgd)
    if inv_scale is not None:
        g_sam_c = g_sam_c * inv_scale
        g_sgd_c = g_sgd_c * inv_scale
    return g_sam_c, g_sgd_c


def _reweighted(
    g_sam_c: Tensor,
    g_sgd_c: Tensor,
    alpha: float,
    eps: float,
    stepping: Tensor,
    stats: Optional[Tensor],
    n_valid: Optional[int],
    rule: Optional[GroupRule] = None,
) -> Tensor:
    """``g_sam`` with Group B scaled by alpha, or as ``rule`` says; adds the group counts to ``stats`` (unless
    skipped)."""
    d = g_sam_c
    if rule is not None:
        d, mask_a, mask_b = _ruled(g_sam_c, g_sgd_c, eps, rule)
    if rule is not None or alpha != 1.0 or stats is not None:
        if rule is None:
            mask_a, mask_b = group_masks(g_sam_c, g_sgd_c, eps)
        if rule is None and alpha != 1.0:
            d = torch.where(mask_b, g_sam_c * alpha, g_sam_c)
        if stats is not None:
            valid = g_sam_c.numel() if n_valid is None else n_valid
            n_a = mask_a[:valid].sum()
            n_b = mask_b[:valid].sum()
            counts = torch.stack([n_a, n_b, valid - n_a - n_b])
            stats.add_(torch.where(stepping, counts, torch.zeros_like(counts)))
    return d
