"""Counting skipped steps without a host sync in the step (docs/design.md, "Semantics", skipped steps)."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor


class SkipCounter:
    """Counts skipped steps without a host sync in the step.

    On CUDA the count is copied to pinned memory after each step, on the count's own device's current
    stream, and read at a later step once that copy's event has completed; on CPU it is read directly.
    Nothing is recorded while a CUDA graph is being captured: a replay never re-records an event, and
    querying an event last recorded during capture is an error (CUDA error 907).
    """

    def __init__(self):
        self.count: Optional[Tensor] = None
        self._host: Optional[Tensor] = None
        self._event = None
        self._recorded = False
        self._warned = False

    def expect_skips(self) -> None:
        """A GradScaler steps this optimizer: skipped steps are its routine (scale backoff), not worth a warning."""
        self._warned = True

    def add(self, skip: Tensor) -> None:
        if self.count is None:
            self.count = torch.zeros((), dtype=torch.int64, device=skip.device)
        self.count += skip.to(torch.int64)
        if not self.count.is_cuda:
            return
        with torch.cuda.device(self.count.device):
            if torch.cuda.is_current_stream_capturing():
                return
            if self._host is None:
                self._host = torch.zeros((), dtype=torch.int64, pin_memory=True)
                self._event = torch.cuda.Event()
            stream = torch.cuda.current_stream(self.count.device)
            self._host.copy_(self.count, non_blocking=True)
            self._event.record(stream)
            self._recorded = True

    def poll(self) -> None:
        """Warn once if a skip has been seen; never blocks."""
        if self._warned or self.count is None:
            return
        if self.count.is_cuda:
            with torch.cuda.device(self.count.device):
                if not self._recorded or torch.cuda.is_current_stream_capturing() or not self._event.query():
                    return
            seen = int(self._host)
        else:
            seen = int(self.count)
        if seen:
            self._warned = True
            warnings.warn(
                "SANER skipped a step because the first gradient's norm was not finite (inf/NaN "
                "gradients); weights and momentum were left unchanged. `optimizer.skipped_steps` counts "
                "such steps.",
                RuntimeWarning,
                stacklevel=3,
            )

    def total(self) -> int:
        return 0 if self.count is None else int(self.count)
