"""The SANER authors' optimizer classes (lhchau/saner, ``optimizer/*.py``) with their keywords and defaults,
over the fused optimizer (docs/design.md, "The group rule"; docs/authors.md says what differs).

Their ``**kwargs`` are SGD-momentum's settings (``lr``, ``momentum``, ``weight_decay``), as in their classes;
``set_alpha(alpha)`` sets what their classes keep as ``self.alpha``. Their SANER is ``saner_kernels.SANER``
itself (its defaults are theirs: rho 0.05, alpha 0).
"""

from __future__ import annotations

from typing import Iterable, Optional

from torch import Tensor

from .optimizer import SANER

# SANERLAST's ratio epsilon: its class divides by g_SGD + 1e-12 where the others add 1e-8.
_SANERLAST_RATIO_EPS = 1e-12


class FriendlySANER(SANER):
    """Friendly-SAM's perturbation, Group ``group``'s g_SAM scaled by ``alpha``."""

    def __init__(self, params, rho=0.05, sigma=1.0, lmbda=0.9, adaptive=False, group="B", alpha=1.0, **kwargs):
        kwargs.update(variant="fsam", sigma=sigma, lmbda=lmbda)
        super().__init__(params, rho=rho, adaptive=adaptive, alpha=alpha, group=group, **kwargs)


class VASSOSANER(SANER):
    """VaSSO's perturbation, Group ``group``'s g_SAM scaled by ``alpha``."""

    def __init__(self, params, rho=0.05, theta=0.2, adaptive=False, group="B", alpha=1.0, **kwargs):
        kwargs.update(variant="vasso", theta=theta)
        super().__init__(params, rho=rho, adaptive=adaptive, alpha=alpha, group=group, **kwargs)


class GSANER(SANER):
    """GSAM's decomposition of g_SAM, Group ``group``'s g_SAM scaled by ``alpha``."""

    def __init__(self, params, rho=0.05, adaptive=False, g_alpha=0.01, group="B", alpha=1.0, **kwargs):
        kwargs.update(variant="gsam", gsam_alpha=g_alpha)
        super().__init__(params, rho=rho, adaptive=adaptive, alpha=alpha, group=group, **kwargs)


class SAMWO(SANER):
    """SAM without Group ``group``'s g_SAM: g_SGD there ("SGD-GrA/GrB/GrC", the paper's Figures 2-4). ``alpha``
    is Group B's upper bound (A: ``ratio > alpha``, B: ``0 < ratio < alpha``, C: ``ratio < 0``, AB: ``ratio > 0``)."""

    def __init__(self, params, rho=0.05, adaptive=False, group="B", alpha=1.0, **kwargs):
        super().__init__(params, rho=rho, adaptive=adaptive, alpha=alpha, group=group, rule="samwo", **kwargs)


class SAMONLY(SANER):
    """g_SAM only in Group ``group``, g_SGD elsewhere."""

    def __init__(self, params, rho=0.05, adaptive=False, group="B", **kwargs):
        super().__init__(params, rho=rho, adaptive=adaptive, alpha=1.0, group=group, rule="samonly", **kwargs)


class SANERLAST(SANER):
    """SANER's reweighting on the parameters whose ``id`` is in ``last_linear_param_ids`` (their last linear
    layer), SAM on the others: each param group is split into the two (``last`` marks the first kind)."""

    def __init__(
        self,
        params,
        rho=0.05,
        last_linear_param_ids: Optional[Iterable[int]] = None,
        adaptive=False,
        alpha=1.0,
        **kwargs,
    ):
        ids = set(last_linear_param_ids or ())
        groups = []
        for group in _as_groups(params):
            tensors = list(group["params"])
            last = [p for p in tensors if id(p) in ids]
            rest = [p for p in tensors if id(p) not in ids]
            if last:
                groups.append(dict(group, params=last, last=True, alpha=alpha, ratio_eps=_SANERLAST_RATIO_EPS))
            if rest:
                groups.append(dict(group, params=rest, last=False, alpha=1.0))
        super().__init__(groups, rho=rho, adaptive=adaptive, alpha=alpha, **kwargs)

    def set_alpha(self, alpha: float) -> None:
        for group in self.param_groups:
            if group.get("last"):
                group["alpha"] = alpha


def _as_groups(params) -> list[dict]:
    params = [params] if isinstance(params, Tensor) else list(params)
    return params if params and isinstance(params[0], dict) else [dict(params=params)]
