"""The base optimizer SANER/SAM step with (docs/design.md, "Base optimizers").

As in davda54/sam, the base optimizer is built over the SAM optimizer's own param groups and the two share
them, so an LR scheduler on ``optimizer.base_optimizer`` or code writing ``lr`` into either one's groups acts
on the next step. ``torch.optim.SGD`` (the default) is never stepped: its update runs inside the fused
kernel, and its state is SANER's (``momentum_buffer``). Any other base gets the restored weights and the
reweighted gradient in ``p.grad``, then its own ``step()``; it keeps its own per-parameter state (torch's
optimizers build theirs when it is empty), which ``state_dict()`` holds beside SANER's, key by key.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor


def build(base_optimizer, param_groups: list, kwargs: dict, own_keys: Iterable[str]) -> torch.optim.Optimizer:
    """``base_optimizer(param_groups, **kwargs)``, with a clear error for what SANER cannot step."""
    if base_optimizer is None:
        base_optimizer = torch.optim.SGD
    if isinstance(base_optimizer, (int, float)):
        raise TypeError(
            f"SANER/SAM's second argument is the base optimizer class (davda54/sam's order: SAM(params, "
            f"torch.optim.SGD, rho=0.05, lr=...)), got {base_optimizer!r}: pass rho, adaptive and alpha as keywords"
        )
    if isinstance(base_optimizer, torch.optim.Optimizer):
        raise TypeError(
            "pass the base optimizer's class and its arguments (SAM(params, torch.optim.AdamW, lr=...)), not an "
            "optimizer already built: SANER builds it over its own param groups"
        )
    if not callable(base_optimizer):
        raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
    try:
        base = base_optimizer(param_groups, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{getattr(base_optimizer, '__name__', base_optimizer)} refused the keyword arguments "
            f"{sorted(kwargs)} ({exc}); SANER/SAM pass every keyword they do not know to the base optimizer "
            "(SANER's own ratio epsilon is ratio_eps)"
        ) from exc
    if not isinstance(base, torch.optim.Optimizer):
        raise TypeError(f"base_optimizer(...) must build a torch.optim.Optimizer, got {type(base).__name__}")
    shared = sorted(set(own_keys) & set(base.defaults))
    if shared:
        raise TypeError(
            f"{type(base).__name__}'s own hyperparameters {shared} have the names of SANER's in the param groups the "
            "two share (davda54/sam's design): this base optimizer is not supported"
        )
    if any(group.get("maximize", False) for group in base.param_groups):
        raise ValueError("maximize=True is not supported: SAM ascends to w + e to descend from there")
    return base


def is_fused_sgd(base: torch.optim.Optimizer) -> bool:
    """Plain ``torch.optim.SGD``: the fused SGD-momentum update replaces its step (its ``foreach``, ``fused``
    and ``differentiable`` choose an implementation and are accepted as they are)."""
    return type(base) is torch.optim.SGD


def step_unless_skipped(base: torch.optim.Optimizer, skip: Optional[Tensor]) -> None:
    """The base optimizer's own step, skipped when ``skip`` is nonzero. A base that takes GradScaler's
    ``found_inf`` (torch's fused Adam, AdamW, SGD) skips on the device; any other is stepped after one host
    read of the flag."""
    if skip is None:
        base.step()
        return
    if getattr(base, "_step_supports_amp_scaling", False):  # what GradScaler.step hands such an optimizer
        base.grad_scale, base.found_inf = None, skip
        try:
            base.step()
        finally:
            del base.grad_scale, base.found_inf
    elif not bool(skip):
        base.step()
