"""Group A/B/C statistics of the last step, counted on the device by the update (docs/design.md, "Semantics")."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import group_rules
from .ops import reference
from .replicas import sum_over_ranks_

_NAN = {"A": float("nan"), "B": float("nan"), "C": float("nan")}


class GroupStats:
    """Holds the last step's per-device A/B/C counters and its skip flag; reads them only when asked."""

    def __init__(self):
        self._counts: Optional[list[Tensor]] = None
        self._skip: Optional[Tensor] = None
        self._per_parameter: dict[int, Tensor] = {}  # id(param) -> [A, B, C] counts of the last step
        self._per_parameter_skip: Optional[Tensor] = None

    def record_per_parameter(self, entries: list, factor_on, skip: Optional[Tensor]) -> None:
        """Each parameter's counts, from its views of both gradients, before the update reads them (an extra
        pass, on the device). ``factor_on(device)``: the update's common factor on both gradients, or None."""
        self._per_parameter = {}
        for group, bucket, _ in entries:
            rule = group_rules.rule_of(group)
            factor = factor_on(bucket.device)
            for p, g_sam, g_sgd in zip(bucket.params, bucket.grad_views, bucket.g_sgd_views()):
                counts = reference.group_counts(g_sam, g_sgd, float(group["ratio_eps"]), rule, factor)
                self._per_parameter[id(p)] = counts
        self._per_parameter_skip = skip

    def parameter_fractions(self, params: list) -> list[dict[str, float]]:
        skipped = self._per_parameter_skip is not None and bool(self._per_parameter_skip)
        out = []
        for p in params:
            counts = self._per_parameter.get(id(p))
            if counts is None or skipped or int(counts.sum()) == 0:
                out.append(dict(_NAN))
                continue
            counts = counts.cpu()
            total = int(counts.sum())
            out.append({name: int(c) / total for name, c in zip("ABC", counts)})
        return out

    def record(self, counts: list[Tensor], skip: Optional[Tensor]) -> None:
        self._counts, self._skip = counts, skip

    def fractions(self, all_ranks: bool, process_group=None) -> dict[str, float]:
        """NaN for a skipped step or one without parameters. Reads the device (a host sync)."""
        if self._counts is None:
            raise RuntimeError("no second_step() has run yet, so there are no group statistics")
        if self._skip is None or bool(self._skip):
            return dict(_NAN)
        counts = sum(c.to(self._counts[0].device) for c in self._counts)
        if all_ranks:
            sum_over_ranks_(counts, process_group)
        counts = counts.cpu()
        total = int(counts.sum())
        return {name: int(c) / total for name, c in zip("ABC", counts)} if total else dict(_NAN)
