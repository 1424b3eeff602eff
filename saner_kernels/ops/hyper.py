"""The update's scalar hyperparameters, grouped in one immutable object (docs/design.md, "Contract v2").

Every backend's ``update_`` takes one ``UpdateHyper``; the C++ schemas take the same fields flat.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UpdateHyper:
    """lr, SGD momentum / dampening / weight decay / nesterov, SANER's alpha and the ratio's eps."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    alpha: float = 1.0
    eps: float = 1e-8
    nesterov: bool = False

    @classmethod
    def from_group(cls, group: dict) -> "UpdateHyper":
        """The hyperparameters of one optimizer param group (plain Python numbers)."""
        return cls(
            lr=float(group["lr"]),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            weight_decay=float(group["weight_decay"]),
            alpha=float(group["alpha"]),
            eps=float(group["eps"]),
            nesterov=bool(group["nesterov"]),
        )
