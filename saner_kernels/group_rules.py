"""A param group's group rule: which components are reweighted and how (docs/design.md, "The group rule").

Two keys of a param group choose it, as the SANER authors' classes take them (lhchau/saner, ``optimizer/``):
``rule`` is ``"saner"`` (the Group's g_SAM scaled by alpha: SANER, FriendlySANER, VASSOSANER, GSANER),
``"samwo"`` (SAM with the Group's g_SAM replaced by g_SGD; alpha is Group B's upper bound) or ``"samonly"``
(g_SAM only in the Group, g_SGD elsewhere), and ``group`` names the Group (``"A"``, ``"B"``, ``"C"``; SAMWO
also ``"AB"``). SANER on Group B is the fused kernels' own path; every other choice is an ``ops.GroupRule``.
"""

from __future__ import annotations

from typing import Optional

from .ops.hyper import GroupRule

RULES = {"saner": ("A", "B", "C"), "samwo": ("A", "B", "C", "AB"), "samonly": ("A", "B", "C")}


def check(group: dict) -> None:
    rule, name = group["rule"], group["group"]
    if rule not in RULES:
        raise ValueError(f"Invalid rule {rule!r}: expected one of {', '.join(RULES)}")
    if name not in RULES[rule]:
        raise ValueError(f"Invalid group {name!r} for rule {rule!r}: expected one of {', '.join(RULES[rule])}")


def rule_of(group: dict) -> Optional[GroupRule]:
    """The ops' ``rule`` for a param group; None for SANER on Group B (the kernels' own reweighting by alpha)."""
    rule, name, alpha = group["rule"], group["group"], float(group["alpha"])
    if rule == "saner":
        return None if name == "B" else GroupRule(regions=GroupRule.NAMED[name], in_sam=alpha)
    if rule == "samwo":
        return GroupRule.samwo(name, bound=alpha)
    return GroupRule.samonly(name)
