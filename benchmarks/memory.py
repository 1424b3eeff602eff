"""The optimizer's peak extra memory beyond its parameters and gradients.

Extra bytes = persistent growth over construction and a warm-up step (buckets, momentum, saved copies,
net of what the optimizer freed, such as the parameters' original storage after bucketing) + the transient
peak of one steady-state step. GPU: ``torch.cuda`` allocator statistics. CPU: the allocation and free events
of the PyTorch profiler (``profile_memory=True``), summed in time order.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .measure import sync

Step = Callable[[object], object]


def _cpu_memory_timeline(make, build, step: Step, holder: dict) -> Optional[tuple[int, int]]:
    """Profiled run of make -> build -> warm-up step -> measured step on the CPU.

    Returns (persistent bytes from after ``make`` to the measured step, transient peak of the measured step),
    or None when the profiler's events cannot be read. The parameters are made inside the profiled region so
    that frees of their original storage are seen too.
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
    except Exception:  # the profiler's private event API moved: report "unavailable", keep the row
        return None
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    persistent = sum(n for t, n in memory if t_built <= t < t_step)
    running, peak = 0, 0
    for t, n in memory:
        if t >= t_step:
            running += n
            peak = max(peak, running)
    return persistent, peak


def optimizer_memory(make: Callable[[], list], build: Callable[[list], object], step: Step, device: torch.device):
    """Make the parameters (with grads), build the optimizer, run a warm-up and a measured step.

    Returns ``(params, optimizer, extra_bytes or None, method)``.
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
    except Exception:  # the profiler itself failed: measure nothing, keep the row
        result = None
    if "opt" not in holder:  # it failed before anything was built
        holder.clear()
        holder["params"] = make()
        holder["opt"] = build(holder["params"])
        step(holder["opt"])
        step(holder["opt"])
    if result is None:
        return holder["params"], holder["opt"], None, "unavailable"
    return holder["params"], holder["opt"], result[0] + result[1], "profiler"
