"""Group A/B/C statistics of the last step, counted on the device by the update (docs/design.md, "Semantics")."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .replicas import sum_over_ranks_

_NAN = {"A": float("nan"), "B": float("nan"), "C": float("nan")}


class GroupStats:
    """Holds the last step's per-device A/B/C counters and its skip flag; reads them only when asked."""

    def __init__(self):
        self._counts: Optional[list[Tensor]] = None
        self._skip: Optional[Tensor] = None

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
