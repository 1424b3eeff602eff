"""Argument checks of the contract ops, shared by every Python-level backend (reference, triton, native).

Each op's wrapper calls its ``*_args`` function before it reads or writes anything, so a bad call fails the same
way on every backend, with an error that names the argument. The C++ front end (``csrc/front_end.h``) checks
again what reaches C++ (its memory safety does not rest on Python).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .hyper import AverageHyper, GroupRule


def flat(dtypes: tuple, **tensors: Optional[Tensor]) -> Tensor:
    """The bucket tensors (``None``: not given): contiguous 1-D, of one dtype in ``dtypes``, one device and one
    length (any storage offset). Returns the first, which the others are checked against."""
    name0, ref = next(iter(tensors.items()))
    if not isinstance(ref, Tensor):
        raise TypeError(f"saner_kernels: {name0} must be a tensor, got {type(ref).__name__}")
    if ref.dtype not in dtypes:
        raise TypeError(f"saner_kernels: {name0} has unsupported dtype {ref.dtype}; this backend takes {dtypes}")
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"saner_kernels: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 1 or not t.is_contiguous():
            raise ValueError(f"saner_kernels: {name} must be a contiguous 1-D tensor, got shape {tuple(t.shape)}")
        if t.device != ref.device:
            raise ValueError(f"saner_kernels: {name} is on {t.device}, expected {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"saner_kernels: {name} has dtype {t.dtype}, expected {ref.dtype}")
        if t.numel() != ref.numel():
            raise ValueError(f"saner_kernels: {name} has {t.numel()} elements, expected {ref.numel()}")
    return ref


def device_scalar(name: str, t, like: Tensor, *, typed_like_bucket: bool) -> None:
    """A 0-dim value the kernels read on the device: float32 (``skip``, ``inv_scale``), or, when
    ``typed_like_bucket`` (``scale``, ``gsam_k``), float64 for float64 buckets."""
    wanted = torch.float64 if typed_like_bucket and like.dtype == torch.float64 else torch.float32
    if not isinstance(t, Tensor):
        raise TypeError(f"saner_kernels: {name} must be a 0-dim {wanted} tensor, got {type(t).__name__}")
    if t.numel() != 1 or t.dtype != wanted or t.device != like.device:
        raise ValueError(
            f"saner_kernels: {name} must be a 0-dim {wanted} tensor on {like.device} (for {like.dtype} buckets), "
            f"got {t.dtype} of shape {tuple(t.shape)} on {t.device}"
        )


def stats_counters(stats: Optional[Tensor], like: Tensor) -> None:
    if stats is None:
        return
    if not isinstance(stats, Tensor):
        raise TypeError(f"saner_kernels: stats must be a tensor, got {type(stats).__name__}")
    if stats.dtype != torch.int64 or stats.numel() != 3 or not stats.is_contiguous() or stats.device != like.device:
        raise ValueError(
            f"saner_kernels: stats must be a contiguous int64 tensor of 3 counters on {like.device}, "
            f"got {stats.dtype} of shape {tuple(stats.shape)} on {stats.device}"
        )


def valid_count(n_valid: Optional[int], n: int) -> int:
    """The number of leading elements the group counts cover (default: all n; the rest is bucket padding)."""
    n_valid = n if n_valid is None else int(n_valid)
    if not 0 <= n_valid <= n:
        raise ValueError(f"saner_kernels: n_valid must be in [0, {n}], got {n_valid}")
    return n_valid


def average(avg: Optional[Tensor], avg_hyper: Optional[AverageHyper]) -> None:
    """The averaging variants pass the average with its coefficients, never one without the other."""
    if (avg is None) != (avg_hyper is None):
        missing = "avg_hyper" if avg_hyper is None else "avg"
        raise ValueError(f"saner_kernels: avg and avg_hyper go together: give both or neither ({missing} is None)")


# ------------------------------------------------------------------ each op's arguments
def norm_args(dtypes: tuple, grad: Tensor, w: Optional[Tensor], avg, avg_hyper) -> None:
    average(avg, avg_hyper)
    flat(dtypes, grad=grad, w=w, avg=avg)


def dot_norm_args(dtypes: tuple, g_sgd: Tensor, g_sam: Tensor, w: Optional[Tensor]) -> None:
    flat(dtypes, g_sgd=g_sgd, g_sam=g_sam, w=w)


def perturb_args(dtypes: tuple, w, grad, scale, skip, e, g_sgd, avg, avg_hyper) -> None:
    average(avg, avg_hyper)
    flat(dtypes, w=w, grad=grad, e=e, g_sgd=g_sgd, avg=avg)
    device_scalar("scale", scale, w, typed_like_bucket=True)
    device_scalar("skip", skip, w, typed_like_bucket=False)


def update_args(
    dtypes: tuple, w, g_sam, g_sgd, buf, scale, skip, e, stats, n_valid, inv_scale, avg, avg_hyper, gsam_k
) -> int:
    """Returns the checked ``n_valid`` (default: every element)."""
    average(avg, avg_hyper)
    flat(dtypes, w=w, g_sam=g_sam, g_sgd=g_sgd, buf=buf, e=e, avg=avg)
    device_scalar("scale", scale, w, typed_like_bucket=True)
    device_scalar("skip", skip, w, typed_like_bucket=False)
    if inv_scale is not None:
        device_scalar("inv_scale", inv_scale, w, typed_like_bucket=False)
    if gsam_k is not None:
        device_scalar("gsam_k", gsam_k, w, typed_like_bucket=True)
    stats_counters(stats, w)
    return valid_count(n_valid, w.numel())


def restore_args(dtypes: tuple, w, scale, skip, g_sgd, e, avg, avg_hyper) -> None:
    if g_sgd is None and e is None:
        raise ValueError("saner_kernels: restore_ needs g_sgd (e = d * scale) or the stored e (adaptive)")
    average(avg, avg_hyper)
    flat(dtypes, w=w, g_sgd=g_sgd, e=e, avg=avg)
    device_scalar("scale", scale, w, typed_like_bucket=True)
    device_scalar("skip", skip, w, typed_like_bucket=False)


def reweight_args(dtypes: tuple, g_sam, g_sgd, skip, stats, n_valid, inv_scale) -> int:
    """Returns the checked ``n_valid`` (default: every element)."""
    flat(dtypes, g_sam=g_sam, g_sgd=g_sgd)
    device_scalar("skip", skip, g_sam, typed_like_bucket=False)
    if inv_scale is not None:
        device_scalar("inv_scale", inv_scale, g_sam, typed_like_bucket=False)
    stats_counters(stats, g_sam)
    return valid_count(n_valid, g_sam.numel())


def group_rule(rule) -> None:
    if rule is not None and not isinstance(rule, GroupRule):
        raise TypeError(f"saner_kernels: rule must be a GroupRule (ops/hyper.py) or None, got {type(rule).__name__}")
    if rule is not None and not 0 < rule.regions < 32:
        raise ValueError(f"saner_kernels: GroupRule.regions must be a non-empty set of region bits, got {rule.regions}")
    if rule is not None:
        for name in ("bound", "in_sam", "in_sgd", "out_sam", "out_sgd"):
            value = getattr(rule, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"saner_kernels: GroupRule.{name} must be a finite number, got {value!r}")
