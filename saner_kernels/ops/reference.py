"""Pure-PyTorch implementation of the kernel contract (v3): the ground truth.

Every other backend (Triton, C++ CPU, CUDA C++) is tested against these functions on the same
inputs. They take flat, contiguous 1-D tensors of equal length (a bucket, zero-padded to a multiple of
128) and compute in fp32 whatever the storage dtype (fp64 stays fp64). docs/design.md, section
"Kernel contract", is the prose version of this file.

Common arguments:

- ``scale``: the perturbation scale ``s = rho / (N + 1e-12)``, a 0-dim fp32 tensor on the bucket's
  device (fp64 for fp64 buckets); always finite.
- ``skip``: a 0-dim fp32 tensor on the bucket's device, like ``found_inf`` in ``torch._fused_sgd_``:
  nonzero means "skip this step": ``perturb_`` and ``restore_`` write nothing; ``update_`` only restores
  ``w <- w - e`` (the perturbation may have happened before an overflow in the second pass was found) and
  writes no momentum, no average and no group count; ``reweight_`` writes nothing. (The zeroing of
  gradient buffers that ``update_`` is asked for still happens: the user asked for it.)
- ``avg`` and ``avg_hyper`` (an ``AverageHyper``), given together or not at all: a gradient average kept
  across steps (Friendly-SAM, VaSSO). The perturbation direction is then
  ``d = dir_g * g + dir_avg * avg`` (two products and a sum, in that order) instead of ``g``; ``avg`` is
  read by ``grad_sq_norm``, ``perturb_`` and ``restore_`` and written only by ``update_``, which commits
  ``avg <- keep * avg + take * g_sgd`` (unless skipped). So a skipped step or a restored perturbation
  leaves the average as it was.
- The ``e`` that ``update_`` and ``restore_`` subtract is the stored one (adaptive) or ``d * scale``
  recomputed from ``g_sgd`` (and ``avg``), and exactly ``+0`` when ``scale == 0``: the optimizer passes
  scale 0 when the perturbation was skipped (``g_sgd`` may then hold inf/NaN, and a stored ``e`` is stale).

The ops:

``grad_sq_norm(g, w=None, *, avg=None, avg_hyper=None) -> Tensor``
    0-dim fp32 or fp64 tensor (the reference always sums in fp64; the kernels in fp32 for 16- and 32-bit
    storage): sum of ``(|w| * d)**2`` (adaptive) or ``d**2``, deterministic. The optimizer adds the
    buckets' sums in fp64 when any of them is fp64.
``perturb_(w, g, scale, skip, *, e=None, g_sgd=None, avg=None, avg_hyper=None) -> None``
    ``e = (w*w if e is given else 1) * d * scale``; ``w <- w + e``; ``e`` stored when given
    (adaptive); ``g_sgd <- g`` (a bit copy) when given: the optimizer passes it only for
    ``first_step(zero_grad=False)``; with ``zero_grad=True`` the bucket swaps its two gradient buffers
    instead, so the buffer holding ``g`` simply becomes ``g_sgd``.
``gsam_dot_norm(g_sgd, g, w=None) -> Tensor``
    GSAM's reduction over the second gradient, one pass: a 1-D tensor of two sums (fp32, fp64 for fp64
    storage; the reference sums in fp64), ``[sum(g_sgd * g), sum((|w| * g)**2)]`` (``w`` given: adaptive,
    the perturbed weights), deterministic.
``update_(w, g, g_sgd, buf, scale, skip, hyper, *, e=None, first_momentum_step=False, zero_grads=False,
          stats=None, n_valid=None, inv_scale=None, avg=None, avg_hyper=None, gsam_k=None) -> None``
    restore ``w <- w - e`` (the very product perturb_ added: ``e`` stored when adaptive, else
    ``d * scale`` recomputed from the stored, possibly scaled ``g_sgd``), unscale both gradients by
    ``inv_scale`` when given (a 0-dim fp32 tensor on the device: GradScaler's ``1 / scale``); GSAM, when
    ``gsam_k`` (a 0-dim tensor on the device, typed like ``scale``) is given:
    ``g <- g - hyper.gsam_alpha * (g_sgd - gsam_k * g)`` (``gsam_k = cos * n1 / (n2 + 1e-12)``, made by the
    optimizer from ``gsam_dot_norm``); reweight Group B
    of that ``g`` against ``g_sgd`` by ``hyper.alpha``; add weight decay, SGD momentum (``buf`` is None
    when ``hyper.momentum == 0``), ``w <- w - lr * d``; commit the average (above). ``zero_grads``:
    write zeros to ``g`` and ``g_sgd`` after reading them (skipped or not). ``stats``, when given, is an
    int64 tensor of 3 counters that gets ``+= (#A, #B, #C)`` over the first ``n_valid`` elements (default:
    all). ``hyper.alpha == 1`` may skip the mask computation (counts are still made when ``stats`` is given).
``restore_(w, scale, skip, *, g_sgd=None, e=None, avg=None, avg_hyper=None) -> None``
    ``w <- w - e`` exactly as ``update_`` restores it: undoes a perturbation whose second step will not
    run (a closure that raised).
``reweight_(g, g_sgd, skip, alpha, eps, *, stats=None, n_valid=None, inv_scale=None) -> None``
    The reweighting alone, in place, for per-replica (local) distributed SANER, whose reweighted
    gradients are averaged across ranks before the step: unscale both by ``inv_scale`` when given, then
    ``g <- alpha * g`` on Group B (against ``g_sgd``); counts as ``update_``. Skipped: writes nothing.

Group B mask, division-free (equal to the division on finite inputs, docs/design.md "Numerics"):
``den = g_sgd + eps``; B = ``sign(g) == sign(den) != 0 and |g| < |den|`` which is ``0 < g/den < 1``
under IEEE division; A = same sign and ``|g| >= |den|`` (``g/den >= 1``); C = the rest (``g/den <= 0``,
plus the degenerate ``den == 0``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .hyper import AverageHyper, UpdateHyper

NAME = "reference"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_available(device: torch.device) -> tuple[bool, str]:
    return True, ""


def _f32(t: Tensor) -> Tensor:
    """Compute dtype: fp32 for 16-bit storage, the storage dtype otherwise (fp64 stays fp64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def direction(g32: Tensor, avg: Optional[Tensor], avg_hyper: Optional[AverageHyper]) -> Tensor:
    """The perturbation direction in the compute dtype: ``g``, or ``dir_g * g + dir_avg * avg``."""
    if (avg is None) != (avg_hyper is None):
        raise ValueError("avg and avg_hyper go together: give both or neither")
    if avg is None:
        return g32
    return g32 * avg_hyper.dir_g + _f32(avg) * avg_hyper.dir_avg


def grad_sq_norm(
    g: Tensor, w: Optional[Tensor] = None, *, avg: Optional[Tensor] = None, avg_hyper: Optional[AverageHyper] = None
) -> Tensor:
    g32 = direction(_f32(g), avg, avg_hyper)
    if w is not None:
        g32 = _f32(w).abs() * g32
    # Squares summed in fp64: the ground truth should not depend on a summation order. torch.dot
    # reduces in a fixed order for a given size, so it is also deterministic run to run.
    g64 = g32.double()
    return torch.dot(g64, g64)


def group_masks(g32: Tensor, g_sgd32: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(A, B) boolean masks; C is everything else. Division-free form of 1 <= r and 0 < r < 1."""
    den = g_sgd32 + eps
    same_sign = ((g32 > 0) & (den > 0)) | ((g32 < 0) & (den < 0))
    smaller = g32.abs() < den.abs()
    return same_sign & ~smaller, same_sign & smaller


def _keep(skip: Tensor) -> Tensor:
    return skip == 0


def perturb_(
    w: Tensor,
    g: Tensor,
    scale: Tensor,
    skip: Tensor,
    *,
    e: Optional[Tensor] = None,
    g_sgd: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> None:
    keep = _keep(skip)
    d32 = direction(_f32(g), avg, avg_hyper)
    w32 = _f32(w)
    e32 = (w32 * w32 * d32 * scale) if e is not None else d32 * scale
    # torch.where keeps the no-host-sync rule: a skipped step writes back the old values.
    if g_sgd is not None:
        g_sgd.copy_(torch.where(keep, g, g_sgd))
    if e is not None:
        e.copy_(torch.where(keep, e32, _f32(e)))
    w.copy_(torch.where(keep, w32 + e32, w32))


def _perturbation(
    scale: Tensor,
    g_sgd: Optional[Tensor],
    e: Optional[Tensor],
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> Tensor:
    """The ``e`` to subtract: stored (adaptive) or recomputed, and +0 when nothing was perturbed."""
    e32 = _f32(e) if e is not None else direction(_f32(g_sgd), avg, avg_hyper) * scale
    return torch.where(scale == 0, torch.zeros_like(e32), e32)


def update_(
    w: Tensor,
    g: Tensor,
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
) -> None:
    keep = _keep(skip)
    w32 = _f32(w) - _perturbation(scale, g_sgd, e, avg, avg_hyper)
    g32, g_sgd32 = _unscaled(g, g_sgd, inv_scale)
    if gsam_k is not None:  # GSAM: g2 - alpha * (g1 - k * g2), k = cos * n1 / (n2 + 1e-12)
        g32 = g32 - (g_sgd32 - gsam_k * g32) * hyper.gsam_alpha

    d = _reweighted(g32, g_sgd32, hyper.alpha, hyper.eps, keep, stats, n_valid)
    # Weight decay, momentum and the step use torch.optim.SGD's own ops (torch.add with alpha), so
    # that alpha = 1, rho = 0 reproduces SGD bit for bit.
    if hyper.weight_decay != 0.0:
        d = d.add(w32, alpha=hyper.weight_decay)
    if buf is not None:
        if first_momentum_step:
            new_buf = d
        else:
            new_buf = _f32(buf).mul(hyper.momentum).add_(d, alpha=1.0 - hyper.dampening)
        d = d.add(new_buf, alpha=hyper.momentum) if hyper.nesterov else new_buf
        buf.copy_(torch.where(keep, new_buf, _f32(buf)))
    w.copy_(torch.where(keep, w32.add(d, alpha=-hyper.lr), w32))  # skipped: restored only
    if avg is not None:
        avg.copy_(torch.where(keep, _f32(avg) * avg_hyper.keep + g_sgd32 * avg_hyper.take, _f32(avg)))
    if zero_grads:
        g.zero_()
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
    w32 = _f32(w)
    w.copy_(torch.where(_keep(skip), w32 - _perturbation(scale, g_sgd, e, avg, avg_hyper), w32))


def gsam_dot_norm(g_sgd: Tensor, g: Tensor, w: Optional[Tensor] = None) -> Tensor:
    g_sgd64, g64 = _f32(g_sgd).double(), _f32(g).double()
    weighted = _f32(w).abs().double() * g64 if w is not None else g64
    return torch.stack([torch.dot(g_sgd64, g64), torch.dot(weighted, weighted)])


def reweight_(
    g: Tensor,
    g_sgd: Tensor,
    skip: Tensor,
    alpha: float,
    eps: float,
    *,
    stats: Optional[Tensor] = None,
    n_valid: Optional[int] = None,
    inv_scale: Optional[Tensor] = None,
) -> None:
    keep = _keep(skip)
    g32, g_sgd32 = _unscaled(g, g_sgd, inv_scale)
    d = _reweighted(g32, g_sgd32, alpha, eps, keep, stats, n_valid)
    g.copy_(torch.where(keep, d, _f32(g)))


def _unscaled(g: Tensor, g_sgd: Tensor, inv_scale: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    g32, g_sgd32 = _f32(g), _f32(g_sgd)
    if inv_scale is not None:
        g32 = g32 * inv_scale
        g_sgd32 = g_sgd32 * inv_scale
    return g32, g_sgd32


def _reweighted(
    g32: Tensor,
    g_sgd32: Tensor,
    alpha: float,
    eps: float,
    keep: Tensor,
    stats: Optional[Tensor],
    n_valid: Optional[int],
) -> Tensor:
    """``g`` with Group B scaled by alpha; adds the group counts to ``stats`` (unless skipped)."""
    d = g32
    if alpha != 1.0 or stats is not None:
        mask_a, mask_b = group_masks(g32, g_sgd32, eps)
        if alpha != 1.0:
            d = torch.where(mask_b, g32 * alpha, g32)
        if stats is not None:
            valid = g32.numel() if n_valid is None else n_valid
            n_a = mask_a[:valid].sum()
            n_b = mask_b[:valid].sum()
            counts = torch.stack([n_a, n_b, valid - n_a - n_b])
            stats.add_(torch.where(keep, counts, torch.zeros_like(counts)))
    return d
