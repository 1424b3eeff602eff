"""Timers: one optimizer step with its gradient refills left out, rows interleaved with their anchor.

- A timed step (``StepUnderTest.run``) writes each phase's gradient into ``.grad`` with one
  ``torch._foreach_copy_``, synchronizes, then times the phase alone: ``time.perf_counter`` on the CPU, a
  pair of CUDA events on the GPU. The refill is outside the timed region and is the same copy for every row,
  so it costs every row alike (the copy also leaves the tail of the gradient in cache, as a backward pass
  would). The sync before each phase means host launch latency counts, as it does after a backward pass.
- Rows are timed in alternation with an anchor (``interleaved``): a, b, b, a, a, b, ... so that clock and
  load drift hits both alike; the ratio is the median of the per-pair ratios.
- CUDA-graph rows capture each phase once (after eager warm-up steps) and replay it. The ``.grad``
  tensors a phase read at capture are the ones refilled before its replay: SANER's
  ``first_step(zero_grad=True)`` re-points ``p.grad`` on the host, which a replay does not.
- ``median_call_ms`` (for the bandwidth probe: plain kernels, nothing to refill): ``triton.testing.do_bench``
  on the GPU (CUDA events, L2 flushed between calls; plain CUDA events when Triton is missing), the median
  of ``perf_counter`` times on the CPU.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Optional

import torch

Phase = Callable[[], object]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_once_ms(fn: Phase, device: torch.device) -> float:
    """Milliseconds of one call of ``fn``, started from an idle device."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


class StepUnderTest:
    """An optimizer's training-loop step, ready to be timed with fresh gradients before each phase."""

    def __init__(self, params: list[torch.Tensor], phases: list[Phase], device: torch.device, graph: bool = False):
        self.params = params
        self.device = device
        self.phases = phases
        self._frozen_targets: Optional[list[list[torch.Tensor]]] = None
        if graph:
            captured = capture_cuda_graphs(phases, params)
            self._frozen_targets = [targets for targets, _ in captured]
            self.phases = [replay for _, replay in captured]

    def grad_targets(self, k: int) -> list[torch.Tensor]:
        """The ``.grad`` tensors phase ``k`` reads."""
        if self._frozen_targets is not None:
            return self._frozen_targets[k]
        return [p.grad for p in self.params]

    @torch.no_grad()
    def refill(self, k: int, grads: list[list[torch.Tensor]]) -> None:
        """Write gradient number ``k`` (of ``grads``, one list per backward pass) where phase ``k`` reads it."""
        torch._foreach_copy_(self.grad_targets(k), grads[k % len(grads)])

    def run(self, grads: list[list[torch.Tensor]]) -> float:
        """One step; returns the milliseconds of its phases, refills not counted."""
        total = 0.0
        for k, phase in enumerate(self.phases):
            self.refill(k, grads)
            total += time_once_ms(phase, self.device)
        return total


def capture_cuda_graphs(phases: list[Phase], params: list[torch.Tensor], warmup_steps: int = 3):
    """Run the whole step ``warmup_steps`` times on a side stream, then capture each phase in order.

    Returns one ``(grad tensors bound when the phase was captured, replay)`` pair per phase.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup_steps):
            for phase in phases:
                phase()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    captured = []
    for phase in phases:
        targets = [p.grad for p in params]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            phase()
        captured.append((targets, graph.replay))
    torch.cuda.synchronize()
    return captured


def interleaved(
    a: StepUnderTest,
    b: StepUnderTest,
    grads: list[list[torch.Tensor]],
    reps: int,
    min_reps: int,
    max_seconds: float,
    warmup: int = 1,
) -> tuple[list[float], list[float]]:
    """Per-step milliseconds of ``a`` and ``b`` in alternation (ab, ba, ab, ...); at least ``min_reps`` pairs,
    fewer than ``reps`` only past ``max_seconds``."""
    for _ in range(warmup):
        a.run(grads)
        b.run(grads)
    times_a, times_b = [], []
    start = time.perf_counter()
    for i in range(reps):
        if i % 2 == 0:
            times_a.append(a.run(grads))
            times_b.append(b.run(grads))
        else:
            times_b.append(b.run(grads))
            times_a.append(a.run(grads))
        if i + 1 >= min_reps and time.perf_counter() - start > max_seconds:
            break
    return times_a, times_b


def spread_pct(times: list[float]) -> float:
    """Interquartile range over the median, in percent: how steady the machine was while this was timed."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return 100 * (q3 - q1) / median


def median_ratio(times_a: list[float], times_b: list[float]) -> float:
    """Median of the per-pair ratios a/b: drift between pairs cancels."""
    return statistics.median(x / y for x, y in zip(times_a, times_b))


def median_call_ms(fn: Phase, device: torch.device, quick: bool) -> float:
    """Median milliseconds per call of a self-contained kernel (no refill needed)."""
    if device.type == "cuda":
        return _cuda_median_ms(fn, warmup_ms=10 if quick else 25, rep_ms=50 if quick else 200)
    for _ in range(1 if quick else 2):
        fn()
    times = []
    for _ in range(5 if quick else 11):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cuda_median_ms(fn: Phase, warmup_ms: int, rep_ms: int) -> float:
    try:
        from triton.testing import do_bench
    except Exception:  # Triton missing: CUDA events, the same idea without the L2 flush
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    for _ in range(3):
        fn()
    first = time_once_ms(fn, torch.device("cuda"))
    n = max(5, int(rep_ms / max(first, 1e-3)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in events:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)
