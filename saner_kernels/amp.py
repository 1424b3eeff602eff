"""The stock ``torch.amp.GradScaler`` with SANER's two gradients (docs/design.md, "Mixed precision").

GradScaler knows one gradient per step: it checks (and, on ``unscale_``, unscales) the ``.grad`` of the
tensors in ``optimizer.param_groups``, and hands a fused optimizer the scale and its ``found_inf`` as
the attributes ``grad_scale`` / ``found_inf`` when it calls ``optimizer.step()``
(``_step_supports_amp_scaling``). SANER's first gradient g_SGD lives in each bucket's second gradient
buffer, where the scaler would never look. So between ``first_step`` and the second step the optimizer
exposes it in one extra param group (``G_SGD_GROUP_KEY``): per bucket a tensor whose ``.grad`` is the
bucket's g_SGD, and per device a one-element "sentinel" gradient set to 1. Then:

- the scaler's own inf check covers both passes, so an overflow in the first pass only also makes
  ``scaler.update()`` back the scale off;
- ``scaler.unscale_(opt)`` (to clip g_SAM) unscales g_SGD too, and the sentinel records the factor it
  applied, so that the update can still recompute the perturbation from the unscaled g_SGD.
The group is withdrawn by the second step (or by undoing a failed closure).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

G_SGD_GROUP_KEY = "saner_g_sgd"
AVERAGES_REFUSE_SCALER = (
    "variant='fsam' and 'vasso' keep an average of past gradients, which a GradScaler's scaled gradients (their "
    "scale changes between steps) would corrupt: use bf16 autocast (no scaler) or variant='sam'/'gsam' with fp16. "
    "The weights were restored and nothing was stepped."
)


def is_g_sgd_group(group: dict) -> bool:
    return bool(group.get(G_SGD_GROUP_KEY, False))


class ScalerBridge:
    """Exposes g_SGD to a GradScaler during a step and reads back what the scaler did."""

    def __init__(self):
        self.group: Optional[dict] = None
        self._sentinels: dict[torch.device, Tensor] = {}

    def expose(self, param_groups: list, carriers: list[Tensor]) -> None:
        """Append the g_SGD group: ``carriers`` (tensors whose .grad is a bucket's g_SGD) and one sentinel
        per device, reset to 1 (the factor the scaler has applied so far)."""
        sentinels = []
        for device in dict.fromkeys(c.device for c in carriers):
            if device not in self._sentinels:
                holder = torch.zeros(1, device=device)
                holder.grad = torch.ones(1, device=device)
                self._sentinels[device] = holder
            self._sentinels[device].grad.fill_(1.0)
            sentinels.append(self._sentinels[device])
        self.group = {"params": carriers + sentinels, G_SGD_GROUP_KEY: True}
        param_groups.append(self.group)

    def withdraw(self, param_groups: list) -> None:
        if self.group is not None:
            param_groups[:] = [g for g in param_groups if g is not self.group]
            self.group = None

    def applied_factor(self, device: torch.device) -> Tensor:
        """0-dim: the factor the scaler multiplied g_SGD by on ``device`` (``1/scale`` after ``unscale_``,
        else 1)."""
        return self._sentinels[device].grad[0]


class Unscaling(NamedTuple):
    """What ``GradScaler.step`` asks of this second step: its overflow flag, and the ``1/scale`` the update
    unscales both gradients by (None after ``scaler.unscale_(optimizer)``: they are unscaled already)."""

    found_inf: Tensor
    inv_scale: Optional[Tensor]
    bridge: ScalerBridge

    def inv_scale_on(self, device: torch.device) -> Optional[Tensor]:
        return self.inv_scale.to(device) if self.inv_scale is not None else None

    def applied_factor(self, device: torch.device) -> Tensor:
        return self.bridge.applied_factor(device)


def unscaling(optimizer, bridge: ScalerBridge) -> Optional[Unscaling]:
    """The ``grad_scale`` and ``found_inf`` that ``GradScaler.step`` set on the optimizer for this call, or None
    when no scaler is stepping it. ``1/scale`` is computed once per step, as GradScaler computes it."""
    grad_scale, found_inf = getattr(optimizer, "grad_scale", None), getattr(optimizer, "found_inf", None)
    if found_inf is None:
        return None
    inv_scale = grad_scale.double().reciprocal().float() if grad_scale is not None else None
    return Unscaling(found_inf, inv_scale, bridge)
