"""A param group's hyperparameters: defaults and validation (docs/design.md, "Semantics").

Every check here reads plain Python values, never a device: it is free to run before each step, which is
how a NaN written into a group by a scheduler or by hand is refused before it can reach the weights.
"""

from __future__ import annotations

import math

from torch import Tensor

# The numbers of a group that must be finite and non-negative; dampening is also at most 1.
NON_NEGATIVE = ("lr", "momentum", "dampening", "weight_decay", "rho", "alpha", "eps")


def _check_number(name: str, value) -> None:
    if isinstance(value, Tensor) or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a Python number)")
    if not math.isfinite(value):
        raise ValueError(
            f"Invalid {name}: {value!r} (must be finite): a non-finite {name} would make every weight NaN in one "
            "step. If an LR or alpha schedule wrote it, check the schedule's inputs."
        )


def check_group(group: dict) -> None:
    """Refuse a group that would train wrong: ``check_numbers``, and non-floating-point parameters."""
    check_numbers(group)
    for p in group["params"]:
        if not p.is_floating_point():
            raise ValueError(f"SANER optimizes floating-point parameters only, got a {p.dtype} parameter")


def check_numbers(group: dict) -> None:
    """Refuse hyperparameters that would train wrong: non-numbers, non-finite or negative values, dampening
    outside [0, 1], Nesterov without momentum."""
    for name in NON_NEGATIVE:
        value = group[name]
        _check_number(name, value)
        if value < 0:
            raise ValueError(f"Invalid {name}: {value!r} (must be a non-negative number)")
    if group["dampening"] > 1:
        raise ValueError(f"Invalid dampening: {group['dampening']!r} (must be in [0, 1])")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def check_finite(name: str, value) -> None:
    """A variant hyperparameter (sigma, lmbda, theta, gsam_alpha): a finite Python number."""
    _check_number(name, value)
