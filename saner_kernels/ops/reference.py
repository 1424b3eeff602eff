"""Pure-PyTorch implementation of the three kernel-contract ops: the ground truth.

Every other backend (Triton, C++ CPU, CUDA C++) is tested against these functions on the same
inputs. They take flat, contiguous 1-D tensors of equal length (a bucket, padded to a multiple of
128 with zeros) and compute in fp32 whatever the storage dtype, exactly as DESIGN.md section 1 says.

The contract, shared by every backend (same names, same signatures):

``grad_sq_norm(g, w=None) -> Tensor``
    0-dim fp32 (or fp64) tensor: sum of ``(|w| * g)**2`` (adaptive, ``w`` given) or ``g**2``,
    deterministic. The optimizer adds the buckets' sums in fp64 when any of them is fp64.
``perturb_(w, g, g_sgd, scale, e=None) -> None``
    ``g_sgd <- g``; ``e = (w*w if e is given else 1) * g * scale``; ``w <- w + e`` (``e`` stored when
    given, i.e. adaptive). ``scale`` is a 0-dim fp32 tensor on the bucket's device (fp64 for fp64 buckets); a non-finite
    ``scale`` means "skip this step": nothing is written at all.
``update_(w, g, g_sgd, buf, scale, *, e, lr, momentum, dampening, weight_decay, alpha, eps,
          nesterov, first_momentum_step, stats) -> None``
    restore ``w <- w - e`` (``e = g_sgd * scale`` recomputed, or the stored ``e`` when adaptive),
    reweight Group B by ``alpha``, add weight decay, SGD momentum (``buf`` is None when
    ``momentum == 0``), ``w <- w - lr * d``. A non-finite ``scale`` skips: nothing is written.
    ``stats``, when given, is an int64 tensor of 3 counters that gets ``+= (#A, #B, #C)`` over the
    whole (padded) length; padding lands in C and the caller subtracts it. ``alpha == 1`` may skip
    the mask computation (counts are still made when ``stats`` is given).

Group B mask, division-free (DESIGN.md allows it where it equals the division on finite inputs):
``den = g_sgd + eps``; B = ``sign(g) == sign(den) != 0 and |g| < |den|`` which is ``0 < g/den < 1``
under IEEE division; A = same sign and ``|g| >= |den|`` (``g/den >= 1``); C = the rest (``g/den <= 0``,
plus the degenerate ``den == 0``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

NAME = "reference"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_available(device: torch.device) -> tuple[bool, str]:
    return True, ""


def _f32(t: Tensor) -> Tensor:
    """Compute dtype: fp32 for 16-bit storage, the storage dtype otherwise (fp64 stays fp64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def grad_sq_norm(g: Tensor, w: Optional[Tensor] = None) -> Tensor:
    g32 = _f32(g)
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


def _skip(scale: Tensor) -> Tensor:
    return ~torch.isfinite(scale)


def perturb_(w: Tensor, g: Tensor, g_sgd: Tensor, scale: Tensor, e: Optional[Tensor] = None) -> None:
    skip = _skip(scale)
    s = torch.where(skip, torch.zeros_like(scale), scale)
    g32 = _f32(g)
    w32 = _f32(w)
    e32 = (w32 * w32 * g32 * s) if e is not None else g32 * s
    # torch.where keeps the no-host-sync rule: a skipped step writes back the old values.
    g_sgd.copy_(torch.where(skip, g_sgd, g))
    if e is not None:
        e.copy_(torch.where(skip, _f32(e), e32))
    w.copy_(torch.where(skip, w32, w32 + e32))


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
    skip = _skip(scale)
    s = torch.where(skip, torch.zeros_like(scale), scale)
    g32 = _f32(g)
    g_sgd32 = _f32(g_sgd)
    e32 = _f32(e) if e is not None else g_sgd32 * s
    w32 = _f32(w) - e32

    d = g32
    if alpha != 1.0 or stats is not None:
        mask_a, mask_b = group_masks(g32, g_sgd32, eps)
        if alpha != 1.0:
            d = torch.where(mask_b, g32 * alpha, g32)
        if stats is not None:
            n_a = mask_a.sum()
            n_b = mask_b.sum()
            counts = torch.stack([n_a, n_b, g32.numel() - n_a - n_b])
            stats.add_(torch.where(skip, torch.zeros_like(counts), counts))
    # Weight decay, momentum and the step use torch.optim.SGD's own ops (torch.add with alpha), so
    # that alpha = 1, rho = 0 reproduces SGD bit for bit.
    if weight_decay != 0.0:
        d = d.add(w32, alpha=weight_decay)
    if buf is not None:
        if first_momentum_step:
            new_buf = d
        else:
            new_buf = _f32(buf).mul(momentum).add_(d, alpha=1.0 - dampening)
        d = d.add(new_buf, alpha=momentum) if nesterov else new_buf
        buf.copy_(torch.where(skip, _f32(buf), new_buf))
    w.copy_(torch.where(skip, _f32(w), w32.add(d, alpha=-lr)))
