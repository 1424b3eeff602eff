"""Timers, the bandwidth probe and the optimizer-memory measurement used by the benchmarks.

- GPU: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls), median; CUDA events
  when Triton is missing. CPU: ``time.perf_counter`` around each call, median after warm-up.
- Bandwidth probe: a large device copy, bytes read + written over time (same run, same process).
- Memory: the optimizer's peak extra memory, from where the parameters and gradients exist:
  persistent state after a warm-up step (buckets, momentum, saved copies) plus the transient peak
  of one steady-state step. GPU: ``torch.cuda`` allocator statistics. CPU: the allocation and free
  events of the PyTorch profiler (``profile_memory=True``), summed in time order.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(fn: Callable[[], object], warmup: int, iters: int, max_seconds: Optional[float] = None) -> list[float]:
    """Per-call wall times in ms (after ``warmup`` untimed calls); stops early past ``max_seconds``."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return times


def time_cuda(fn: Callable[[], object], warmup_ms: int, rep_ms: int) -> float:
    """Median ms per call on the current CUDA device."""
    try:
        from triton.testing import do_bench
    except Exception:  # Triton missing: CUDA events, same idea without the L2 flush
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    n = max(5, int(rep_ms / max(start.elapsed_time(end), 1e-3)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in events:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def median_ms(fn: Callable[[], object], device: torch.device, quick: bool) -> tuple[float, int]:
    """(median ms per call, number of timed calls; 0 when do_bench chose it)."""
    if device.type == "cuda":
        return time_cuda(fn, warmup_ms=10 if quick else 25, rep_ms=50 if quick else 200), 0
    times = time_cpu(fn, warmup=1 if quick else 2, iters=3 if quick else 10, max_seconds=2.0 if quick else 10.0)
    return statistics.median(times), len(times)


def bandwidth_probe(device: torch.device, numel: Optional[int] = None, quick: bool = False) -> float:
    """GB/s of a large device copy, counting bytes read and written (fp32 ``dst.copy_(src)``)."""
    if numel is None:
        numel = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda: dst.copy_(src), device, quick)
    del src, dst
    free_memory(device)
    return 2 * numel * 4 / (ms * 1e-3) / 1e9


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cpu_memory_timeline(make, build, step, holder) -> Optional[tuple[int, int]]:
    """Profiled run of make -> build -> warm-up step -> measured step on the CPU.

    Returns (persistent bytes from after ``make`` to the measured step, transient peak of the
    measured step), or None when the profiler's events cannot be read. The parameters are made
    inside the profiled region so that frees of their original storage are seen too.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        holder["params"] = make()
        with record_function("saner_bench_built"):
            holder["opt"] = build(holder["params"])
        step(holder["opt"])
        with record_function("saner_bench_step"):
            step(holder["opt"])
    try:
        events = list(prof.profiler.kineto_results.events())
        t_built = min(e.start_ns() for e in events if e.name() == "saner_bench_built")
        t_step = min(e.start_ns() for e in events if e.name() == "saner_bench_step")
    except Exception:
        return None
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    persistent = sum(n for t, n in memory if t_built <= t < t_step)
    running, peak = 0, 0
    for t, n in memory:
        if t >= t_step:
            running += n
            peak = max(peak, running)
    return persistent, peak


def optimizer_memory(make: Callable[[], list], build: Callable[[list], object],
                     step: Callable[[object], object], device: torch.device):
    """Make the parameters (with grads), build the optimizer, run a warm-up and a measured step.

    Returns ``(params, optimizer, extra_bytes or None, method)``. Extra bytes = persistent growth
    over construction and the first step (the optimizer's state, including any re-packing of
    parameters and gradients net of what it freed) + the transient peak of one steady-state step.
    """
    holder: dict = {}
    if device.type == "cuda":
        sync(device)
        holder["params"] = make()
        sync(device)
        base = torch.cuda.memory_allocated(device)
        holder["opt"] = build(holder["params"])
        step(holder["opt"])
        sync(device)
        persistent = torch.cuda.memory_allocated(device) - base
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(holder["opt"])
        sync(device)
        transient = max(0, torch.cuda.max_memory_allocated(device) - before)
        return holder["params"], holder["opt"], persistent + transient, "cuda allocator"
    try:
        result = _cpu_memory_timeline(make, build, step, holder)
    except Exception:
        result = None
    if "opt" not in holder:  # the profiler failed before anything was built
        holder.clear()
        holder["params"] = make()
        holder["opt"] = build(holder["params"])
        step(holder["opt"])
        step(holder["opt"])
    if result is None:
        return holder["params"], holder["opt"], None, "unavailable"
    return holder["params"], holder["opt"], result[0] + result[1], "profiler"
