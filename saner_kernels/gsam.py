"""GSAM's coefficient for one step (docs/design.md, "The SAM family"): one reduction pass over every bucket."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .amp import Unscaling
from .bucket_set import Entry, sum_on_first_device
from .ops.hyper import gsam_coefficient


def gsam_k(entries: list[Entry], n1: Tensor, scaling: Optional[Unscaling]) -> Optional[Tensor]:
    """``k`` (``ops/hyper.py``, ``gsam_coefficient``) at w + e, before the update restores w; None unless the
    groups run GSAM (it is the variant of every group or of none). ``n1``: the first gradient's norm."""
    if not entries or entries[0].group["variant"] != "gsam":
        return None
    partials = [
        backend.gsam_dot_norm(bucket.flat_g_sgd, bucket.flat_grad, bucket.flat_param if group["adaptive"] else None)
        for group, bucket, backend in entries
    ]
    if scaling is not None:  # n1 was taken on the scaled g_SGD; both gradients now carry the factor applied since
        n1 = n1 * scaling.applied_factor(n1.device).to(n1.dtype)
    return gsam_coefficient(sum_on_first_device(partials), n1)
