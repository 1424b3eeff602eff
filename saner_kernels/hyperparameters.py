"""A param group's hyperparameters: validation (docs/design.md, "Bad input").

Every check here reads plain Python values, never a device: it is free to run before each step, which is
how a NaN written into a group by a scheduler or by hand is refused before it can reach the weights.
"""

from __future__ import annotations

import math

from torch import Tensor

OWN_NON_NEGATIVE = ("rho", "alpha", "ratio_eps")  # SANER's own numbers
SGD_NON_NEGATIVE = ("lr", "momentum", "dampening", "weight_decay")  # what the fused SGD update reads


def _check_number(name: str, value) -> None:
    if isinstance(value, Tensor) or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a Python number)")
    if not math.isfinite(value):
        raise ValueError(
            f"Invalid {name}: {value!r} (must be finite): a non-finite {name} would make every weight NaN in one "
            "step. If an LR or alpha schedule wrote it, check the schedule's inputs."
        )


def _check_non_negative(group: dict, names: tuple) -> None:
    for name in names:
        _check_number(name, group[name])
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
                _check_number(name, v)


def check_numbers(group: dict, fused_sgd: bool) -> None:
    """Everything ``check_own`` and ``check_base`` check but the parameters: what a step re-checks."""
    _check_non_negative(group, OWN_NON_NEGATIVE)
    check_base(group, fused_sgd)


def check_finite(name: str, value) -> None:
    """A variant hyperparameter (sigma, lmbda, theta, gsam_alpha): a finite Python number."""
    _check_number(name, value)
