"""``optimizer.clip_grad_norm_``: the clip scales the update, the Group B mask stays the unclipped gradients'
(docs/design.md, "Gradient clipping")."""

from __future__ import annotations

import torch
from torch import Tensor

from . import variants


def norm_and_coefficient(grads: list[Tensor], max_norm: float, norm_type: float) -> tuple[Tensor, Tensor]:
    """The total norm as ``torch.nn.utils.clip_grad_norm_`` computes it, and its clip coefficient
    ``min(1, max_norm / (norm + 1e-6))``, both on the device."""
    if not grads:
        zero = torch.zeros(())
        return zero, torch.ones(())
    total = torch.nn.utils.get_total_norm(grads, norm_type)
    return total, torch.clamp(max_norm / (total + 1e-6), max=1.0)


def check_variants(groups: list[dict]) -> None:
    """The update applies the coefficient to both gradients, and the averaging variants commit g_SGD."""
    if any(variants.average_key(g) for g in groups):
        raise RuntimeError(
            "clip_grad_norm_ with variant='fsam' or 'vasso' is not supported: the clip coefficient would also "
            "scale the gradient average. Clip with variant='sam' or 'gsam', or do not clip."
        )
