"""The ops' scalar hyperparameters, grouped in immutable objects (docs/design.md, "Kernel contract").

Every backend's ``update_`` takes one ``UpdateHyper``, and the ops of the averaging variants one
``AverageHyper``; the C++ schemas take the same fields flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor


@dataclass(frozen=True)
class UpdateHyper:
    """lr, SGD momentum / dampening / weight decay / nesterov, SANER's alpha and the ratio's eps, and GSAM's
    alpha (used only when the update is given GSAM's coefficient ``gsam_k``)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    alpha: float = 1.0
    eps: float = 1e-8
    nesterov: bool = False
    gsam_alpha: float = 0.0

    @classmethod
    def from_group(cls, group: dict) -> "UpdateHyper":
        """The hyperparameters of one optimizer param group (plain Python numbers)."""
        return cls(
            lr=float(group["lr"]),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            weight_decay=float(group["weight_decay"]),
            alpha=float(group["alpha"]),
            eps=float(group["ratio_eps"]),
            nesterov=bool(group["nesterov"]),
            gsam_alpha=float(group.get("gsam_alpha", 0.0)) if group.get("variant") == "gsam" else 0.0,
        )


@dataclass(frozen=True)
class AverageHyper:
    """A gradient average kept across steps (Friendly-SAM's ``m``, VaSSO's ``ema``) and how it is used.

    The perturbation direction is ``d = dir_g * g + dir_avg * avg`` (``g`` the first gradient, ``avg`` the
    stored average); the step commits ``avg <- keep * avg + take * g``.
    """

    dir_g: float
    dir_avg: float
    keep: float
    take: float

    @classmethod
    def first(cls) -> "AverageHyper":
        """No average yet: the direction is g (plain SAM) and the average becomes g."""
        return cls(dir_g=1.0, dir_avg=0.0, keep=0.0, take=1.0)

    @classmethod
    def fsam(cls, sigma: float, lmbda: float) -> "AverageHyper":
        """Friendly-SAM: d = g - sigma * m, then m <- lmbda * m + (1 - lmbda) * g."""
        return cls(dir_g=1.0, dir_avg=-float(sigma), keep=float(lmbda), take=1.0 - float(lmbda))

    @classmethod
    def vasso(cls, theta: float) -> "AverageHyper":
        """VaSSO: ema <- (1 - theta) * ema + theta * g, and d is that new ema."""
        return cls(dir_g=float(theta), dir_avg=1.0 - float(theta), keep=1.0 - float(theta), take=float(theta))


def gsam_coefficient(dot_norm: Tensor, n1: Tensor) -> Tensor:
    """GSAM's ``k = cos * n1 / (n2 + 1e-12)`` with ``cos = dot / (n2 * n1 + 1e-12)``, on the device.

    ``dot_norm`` is the sum over every bucket of ``gsam_dot_norm``: ``[sum(g1 * g2), n2**2]``; ``n1`` the
    first gradient's norm (the one that set the perturbation). The update then forms
    ``g2 - gsam_alpha * (g1 - k * g2)``: GSAM's ``g2 - alpha * (g1 - cos * n1 * g2 / (n2 + 1e-12))``.
    """
    dot, n2 = dot_norm[0], dot_norm[1].sqrt()
    n1 = n1.to(n2.dtype)
    cos = dot / (n2 * n1 + 1e-12)
    return cos * n1 / (n2 + 1e-12)


@dataclass(frozen=True)
class GroupRule:
    """What the update takes in each region of the ratio ``r = g_SAM / (g_SGD + eps)`` (docs/design.md, "The
    group rule"): the SANER authors' ablations (SAMWO, SAMONLY) are rows of it, SANER's own reweighting too.

    Regions against the bound ``b``: C (``r < 0``), Z (``r == 0``), B (``0 < r < b``), E (``r == b``), A
    (``r > b``); ``r`` is computed by the division, as the authors' classes compute it, and a NaN ratio is in
    none. In the regions of ``regions`` the update takes ``in_sam * g_SAM + in_sgd * g_SGD``, elsewhere
    ``out_sam * g_SAM + out_sgd * g_SGD``. The Group A/B/C counts use the same bound: A ``r >= b``, B
    ``0 < r < b``, C ``r <= 0``.
    """

    regions: int
    bound: float = 1.0
    in_sam: float = 1.0
    in_sgd: float = 0.0
    out_sam: float = 1.0
    out_sgd: float = 0.0

    C: ClassVar[int] = 1  # region bits
    Z: ClassVar[int] = 2
    B: ClassVar[int] = 4
    E: ClassVar[int] = 8
    A: ClassVar[int] = 16
    # The authors' group names (their ``group=`` argument) as regions: "AB" is their ``ratio > 0``.
    NAMED: ClassVar[dict] = {"A": 16, "B": 4, "C": 1, "AB": 4 | 8 | 16}

    @classmethod
    def samwo(cls, group: str, bound: float) -> "GroupRule":
        """SAM without Group ``group``'s g_SAM: g_SGD there (their A is ``r > alpha``, B ``0 < r < alpha``, C
        ``r < 0``, AB ``r > 0``; ``alpha`` is B's upper bound)."""
        return cls(regions=cls.NAMED[group], bound=float(bound), in_sam=0.0, in_sgd=1.0)

    @classmethod
    def samonly(cls, group: str) -> "GroupRule":
        """g_SAM only in Group ``group`` (bound 1), g_SGD elsewhere."""
        return cls(regions=cls.NAMED[group], in_sam=1.0, in_sgd=0.0, out_sam=0.0, out_sgd=1.0)
