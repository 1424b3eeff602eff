"""The SAM family a SANER/SAM param group can run (docs/design.md, "The SAM family").

- ``sam``: the perturbation follows the first gradient g (SAM, or ASAM with ``adaptive``).
- ``fsam`` (Friendly-SAM): it follows ``g - sigma * m``, ``m`` an average of past gradients
  (``m <- lmbda * m + (1 - lmbda) * g`` each step; the first step is plain SAM and sets ``m = g``).
- ``vasso`` (VaSSO): it follows ``ema <- (1 - theta) * ema + theta * g`` (the first step sets ``ema = g``).
- ``gsam``: as SAM, and the second gradient is decomposed against the first before the reweighting:
  ``g2 - gsam_alpha * (g1 - cos * n1 * g2 / (n2 + 1e-12))``.

The defaults are those of the SANER authors' classes (lhchau/saner, ``optimizer/fsaner.py``,
``vassosaner.py``, ``gsaner.py``). This module validates a group's choice and says what the kernels need
for it (the average's state key and its ``AverageHyper``); the optimizer does the rest.
"""

from __future__ import annotations

from typing import Optional

from .finite import check_number
from .ops.hyper import AverageHyper

VARIANTS = ("sam", "fsam", "vasso", "gsam")
# Each variant's own hyperparameters and their defaults (the authors' constructor defaults).
HYPERPARAMETERS = {
    "sam": {},
    "fsam": {"sigma": 1.0, "lmbda": 0.9},
    "vasso": {"theta": 0.2},
    "gsam": {"gsam_alpha": 0.01},
}
ALL_HYPERPARAMETERS = tuple(name for names in HYPERPARAMETERS.values() for name in names)
# The per-parameter optimizer state (``optimizer.state[p][key]``) holding a variant's gradient average.
AVERAGE_STATE_KEYS = {"fsam": "fsam_average", "vasso": "vasso_ema"}


def _owner(name: str) -> str:
    return next(v for v, names in HYPERPARAMETERS.items() if name in names)


def check_arguments(variant: str, given: dict) -> None:
    """Constructor arguments: a known variant, and no hyperparameter of another variant (``given``: the
    variant hyperparameters passed, None for those not passed)."""
    if variant not in VARIANTS:
        raise ValueError(f"Invalid variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    for name, value in given.items():
        if value is not None and name not in HYPERPARAMETERS[variant]:
            raise ValueError(
                f"{name}={value!r} is a hyperparameter of variant {_owner(name)!r}, not of {variant!r}: "
                f"drop it, or pass variant={_owner(name)!r}"
            )


def resolve_group(group: dict, explicit: set) -> None:
    """Validate a param group's variant and fill in its hyperparameters, in place.

    ``explicit``: the keys the user wrote in this group's dict. One of another variant's hyperparameters
    written there is an error; one inherited from the optimizer's defaults is dropped (set to None), so
    that a group can choose another variant than the constructor's.
    """
    variant = group["variant"]
    check_arguments(variant, {k: group.get(k) for k in ALL_HYPERPARAMETERS if k in explicit})
    own = HYPERPARAMETERS[variant]
    for name in ALL_HYPERPARAMETERS:
        if name not in own:
            group[name] = None
        elif group.get(name) is None:
            group[name] = own[name]
    for name in own:
        check_number(name, group[name])
    if variant == "fsam" and not (group["sigma"] >= 0 and 0 <= group["lmbda"] <= 1):
        raise ValueError(f"Invalid Friendly-SAM sigma={group['sigma']!r} (>= 0) or lmbda={group['lmbda']!r} ([0, 1])")
    if variant == "vasso" and not 0 < group["theta"] <= 1:
        raise ValueError(f"Invalid VaSSO theta={group['theta']!r} (must be in (0, 1])")
    if variant == "gsam" and not group["gsam_alpha"] >= 0:
        raise ValueError(f"Invalid gsam_alpha={group['gsam_alpha']!r} (must be >= 0)")


def average_key(group: dict) -> Optional[str]:
    """The state key of the group's gradient average, or None (sam, gsam)."""
    return AVERAGE_STATE_KEYS.get(group.get("variant", "sam"))


def average_hyper(group: dict, started: bool) -> AverageHyper:
    """The kernels' direction/commit coefficients; ``started``: the parameters already have an average."""
    if not started:
        return AverageHyper.first()
    if group["variant"] == "fsam":
        return AverageHyper.fsam(sigma=group["sigma"], lmbda=group["lmbda"])
    return AverageHyper.vasso(theta=group["theta"])
