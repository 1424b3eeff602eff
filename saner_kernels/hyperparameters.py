"""A param group's hyperparameters: validation (docs/design.md, "Bad input").

Every check here reads plain Python values, never a device: it is free to run before each step, which is
how a NaN written into a group by a scheduler or by hand is refused before it can reach the weights.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.optim.optimizer import required

from . import group_rules, variants
from .finite import check_number
from .replicas import DDP_MODES, check_not_sharded

OWN_NON_NEGATIVE = ("rho", "alpha", "ratio_eps")  # SANER's own numbers
SGD_NON_NEGATIVE = ("lr", "momentum", "dampening", "weight_decay")  # what the fused SGD update reads


def _check_non_negative(group: dict, names: tuple) -> None:
    for name in names:
        check_number(name, group[name])
        if group[name] < 0:
            raise ValueError(f"Invalid {name}: {group[name]!r} (must be a non-negative number)")


def check_own(group: dict) -> None:
    """SANER's own numbers, and floating-point parameters."""
    _check_non_negative(group, OWN_NON_NEGATIVE)
    for p in group["params"]:
        if not p.is_floating_point():
            raise ValueError(f"SANER optimizes floating-point parameters only, got a {p.dtype} parameter")


def check_base(group: dict, fused_sgd: bool) -> None:
    """The base optimizer's numbers: with the fused SGD update, SGD's ranges; with any base, every float of
    the group (and of a tuple such as Adam's betas) finite."""
    if fused_sgd:
        _check_non_negative(group, SGD_NON_NEGATIVE)
        if group["dampening"] > 1:
            raise ValueError(f"Invalid dampening: {group['dampening']!r} (must be in [0, 1])")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    for name, value in group.items():
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float):
                check_number(name, v)


def check_numbers(group: dict, fused_sgd: bool) -> None:
    """Everything ``check_own`` and ``check_base`` check but the parameters: what a step re-checks."""
    _check_non_negative(group, OWN_NON_NEGATIVE)
    check_base(group, fused_sgd)


def check_options(*, track_groups, ddp, ddp_mode: str) -> None:
    """The constructor's options that are not per group."""
    if track_groups not in (False, True, "per_parameter"):
        raise ValueError(f"Invalid track_groups={track_groups!r}: False, True or 'per_parameter'")
    if ddp_mode not in DDP_MODES:
        raise ValueError(f"Invalid ddp_mode {ddp_mode!r}: expected 'global' or 'local'")
    if ddp_mode == "local" and ddp is None:
        raise ValueError(
            "ddp_mode='local' needs the DistributedDataParallel model: SANER(ddp_model.parameters(), ..., "
            "ddp=ddp_model, ddp_mode='local')"
        )


def resolve_group(
    param_group: dict, defaults: dict, explicit: set, others: list, *, ddp_mode: str, fused_sgd: Optional[bool]
) -> dict:
    """A copy of ``param_group`` with ``defaults`` filled in, validated: SANER's numbers, its group rule, the
    base optimizer's numbers (unless ``fused_sgd`` is None: the base is not built yet), the variant (
    ``explicit``: the keys the caller wrote), and GSAM on every group or none (``others``: the groups
    resolved so far). A refusal changes nothing."""
    group = dict(param_group)
    params = group["params"]
    group["params"] = [params] if isinstance(params, Tensor) else list(params)
    for name, default in defaults.items():
        if default is required and name not in group:
            raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
        group.setdefault(name, default)
    check_own(group)
    group_rules.check(group)
    if fused_sgd is not None:
        check_base(group, fused_sgd)
    check_not_sharded(group["params"])
    variants.resolve_group(group, explicit)
    if ddp_mode == "local" and group["variant"] == "gsam":
        raise ValueError("ddp_mode='local' supports variant 'sam', 'fsam' and 'vasso', not 'gsam'")
    gsam = [g["variant"] == "gsam" for g in others]
    if gsam and any(gsam) != (group["variant"] == "gsam"):
        raise ValueError(
            "GSAM decomposes the whole second gradient against the whole first one: variant='gsam' must be "
            "the variant of every param group or of none"
        )
    return group
