"""Group A/B/C fractions per layer kind (conv, linear, batchnorm): the paper's per-layer view of which gradient
components SANER reweights.

The optimizer counts the groups per parameter (``parameter_group_fractions()``, one ``{"A", "B", "C"}`` per parameter
in ``model.parameters()`` order); here they are pooled per kind of the layer that owns the parameter, weighted by the
parameter's number of elements, so each kind's fractions are over all of its elements and sum to 1.
"""

from __future__ import annotations

import math

import torch.nn as nn

LAYER_KINDS = ("conv", "linear", "batchnorm", "other")
GROUPS = ("A", "B", "C")


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    return "other"


def parameter_kinds(model: nn.Module) -> list[tuple[str, int]]:
    """(layer kind, number of elements) of each parameter, in ``model.parameters()`` order."""
    owner = {id(p): layer_kind(m) for m in model.modules() for p in m.parameters(recurse=False)}
    return [(owner[id(p)], p.numel()) for p in model.parameters()]


def fractions_by_kind(kinds: list[tuple[str, int]], per_parameter: list[dict]) -> dict[str, float]:
    """Flat history keys ``group_b_conv`` ...: each group's fraction of each present kind's elements. A skipped step
    (NaN fractions) gives NaN, which the log writes as null."""
    if len(kinds) != len(per_parameter):
        raise ValueError(f"{len(per_parameter)} parameter fractions for {len(kinds)} parameters")
    sums: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for (kind, n), fractions in zip(kinds, per_parameter):
        pooled = sums.setdefault(kind, dict.fromkeys(GROUPS, 0.0))
        for g in GROUPS:
            pooled[g] += fractions[g] * n
        sizes[kind] = sizes.get(kind, 0) + n
    return {
        f"group_{g.lower()}_{kind}": (sums[kind][g] / sizes[kind] if sizes[kind] else math.nan)
        for kind in LAYER_KINDS
        if kind in sums
        for g in GROUPS
    }
