"""Measure every row of one parameter-shape set: memory, then steps interleaved with fused SGD.

Each row gets its own parameters (SANER re-binds ``p.data``/``p.grad`` into buckets), all from the same
seed; one fused-SGD anchor lives for the whole shape set and is timed in alternation with every row, so
"x fused SGD" is always a same-moment ratio (the anchor against itself shows the method's noise).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

import torch

from .measure import StepUnderTest, free_memory, interleaved, median_ratio, spread_pct
from .memory import optimizer_memory
from .rows import Spec, anchor_spec
from .shapes import describe, make_gradients, make_params

HEADLINE_MIN_REPS = 9


@dataclass(frozen=True)
class Timing:
    """How many alternating pairs a row gets: ``reps`` (at least ``HEADLINE_MIN_REPS``), or once ``max_seconds``
    have passed as few as ``min_reps``; the headline rows always get all ``reps``."""

    reps: int
    min_reps: int
    max_seconds: float
    warmup: int

    @classmethod
    def default(cls, device: torch.device, quick: bool) -> "Timing":
        if device.type == "cuda":
            return cls(
                reps=20 if quick else 50, min_reps=HEADLINE_MIN_REPS, max_seconds=3.0 if quick else 10.0, warmup=3
            )
        return cls(reps=HEADLINE_MIN_REPS if quick else 11, min_reps=3, max_seconds=2.0 if quick else 10.0, warmup=1)


@dataclass
class Row:
    model: str
    n_params: int
    n_tensors: int
    optimizer: str
    backend: str
    dtype: str
    timed: str
    headline: bool = False
    status: str = "ok"
    ms: Optional[float] = None  # median per step
    sgd_fused_ms: Optional[float] = None  # median of the anchor's steps alternating with this row's
    vs_sgd_fused: Optional[float] = None  # median of the per-pair ratios
    n_timed: int = 0  # pairs
    spread_pct: Optional[float] = None  # interquartile range of this row's steps over their median
    sgd_fused_spread_pct: Optional[float] = None  # the same for the anchor's steps
    bytes_per_elem: float = 0.0
    gbs: Optional[float] = None
    pct_probe: Optional[float] = None
    extra_bytes_per_param: Optional[float] = None
    memory_method: str = ""
    times_ms: list[float] = field(default_factory=list)
    sgd_fused_times_ms: list[float] = field(default_factory=list)


def error_status(exc: Exception) -> str:
    """A row's status when it raised: the exception's type and first line."""
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"error: {type(exc).__name__}: {first_line}"[:200]


def _run_all_phases(spec: Spec):
    def step(opt):
        for phase in spec.phases(opt):
            phase()

    return step


def measure_row(
    spec: Spec,
    anchor: StepUnderTest,
    grads,
    model: str,
    shapes,
    device: torch.device,
    dtype: torch.dtype,
    timing: Timing,
) -> Row:
    n, k = describe(shapes)
    row = Row(
        model,
        n,
        k,
        spec.optimizer,
        spec.backend,
        str(dtype).replace("torch.", ""),
        spec.timed,
        headline=spec.headline,
        bytes_per_elem=spec.bytes_per_elem * dtype.itemsize / 4,
    )
    if spec.skip:
        row.status = f"skipped: {spec.skip}"
        return row
    params = opt = step = None
    try:
        params, opt, extra, row.memory_method = optimizer_memory(
            lambda: make_params(shapes, device, dtype), spec.build, _run_all_phases(spec), device
        )
        row.extra_bytes_per_param = None if extra is None else extra / n
        step = StepUnderTest(params, spec.phases(opt), device, graph=spec.graph)
        min_reps = timing.reps if spec.headline else timing.min_reps
        row.times_ms, row.sgd_fused_times_ms = interleaved(
            step, anchor, grads, timing.reps, min_reps, timing.max_seconds, timing.warmup
        )
        row.n_timed = len(row.times_ms)
        row.ms = statistics.median(row.times_ms)
        row.sgd_fused_ms = statistics.median(row.sgd_fused_times_ms)
        row.vs_sgd_fused = median_ratio(row.times_ms, row.sgd_fused_times_ms)
        row.spread_pct, row.sgd_fused_spread_pct = spread_pct(row.times_ms), spread_pct(row.sgd_fused_times_ms)
        row.gbs = row.bytes_per_elem * n / (row.ms * 1e-3) / 1e9
    except Exception as exc:  # one broken row must not lose the table
        row.status = error_status(exc)
    finally:
        del params, opt, step
        free_memory(device)
    return row


def measure_model(
    specs: list[Spec], model: str, shapes, device: torch.device, dtype: torch.dtype, timing: Timing, on_row=None
) -> list[Row]:
    """All rows of one shape set, each alternating with one fused-SGD anchor; ``on_row(row)`` as each ends."""
    anchor = anchor_spec()
    anchor_params = make_params(shapes, device, dtype)
    anchor_step = StepUnderTest(anchor_params, anchor.phases(anchor.build(anchor_params)), device)
    grads = make_gradients(shapes, device, dtype)
    rows = []
    for spec in specs:
        row = measure_row(spec, anchor_step, grads, model, shapes, device, dtype, timing)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    del anchor_params, anchor_step, grads
    free_memory(device)
    return rows


def set_pct_probe(rows: list[Row], probe_gbs: float) -> None:
    for r in rows:
        if r.gbs is not None:
            r.pct_probe = 100 * r.gbs / probe_gbs
