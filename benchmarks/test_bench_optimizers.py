"""pytest-benchmark suite: one training-loop step per row of the table (``pytest benchmarks/``).

    pytest benchmarks/test_bench_optimizers.py                        # CPU: wrn-16-2 shapes
    SANER_BENCH_DEVICE=cuda SANER_BENCH_MODEL=wrn-28-10 pytest benchmarks/ --benchmark-columns=median,iqr
    pytest benchmarks/ --benchmark-save=NAME   /  --benchmark-compare   (pytest-benchmark's history)

Rows and steps are those of ``python -m benchmarks.run`` (``rows.py``: zero_grad included). pytest-benchmark
times whole calls, so the first gradient is written before each round, untimed (``setup``), and a second
phase runs on the zeroed gradient its first phase left: the same traffic, which is what these branch-free
steps' time depends on. ``python -m benchmarks.run`` refills before every phase and interleaves with fused
SGD; use it for ratios. ``extra_info`` carries the model, parameter count and floor bytes per element, so
GB/s = bytes * n / median. Not part of ``pytest tests``; the default shapes are small so the suite is quick.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from benchmarks.measure import StepUnderTest, sync  # noqa: E402
from benchmarks.rows import row_specs  # noqa: E402
from benchmarks.shapes import describe, make_gradients, make_params, param_shapes  # noqa: E402

DEVICE = torch.device(os.environ.get("SANER_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
MODEL = os.environ.get("SANER_BENCH_MODEL", "wrn-16-8" if DEVICE.type == "cuda" else "wrn-16-2")
ROUNDS = int(os.environ.get("SANER_BENCH_ROUNDS", "50" if DEVICE.type == "cuda" else "5"))
SPECS = row_specs(DEVICE)


@pytest.mark.parametrize("spec", SPECS, ids=[s.label.replace(" ", "_") for s in SPECS])
def test_optimizer_step(benchmark, spec):
    if spec.skip:
        pytest.skip(spec.skip)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("SANER_BENCH_DEVICE=cuda but no CUDA device")
    shapes = param_shapes(MODEL, device=DEVICE.type)
    n, k = describe(shapes)
    params = make_params(shapes, DEVICE)
    grads = make_gradients(shapes, DEVICE)
    opt = spec.build(params)
    phases = spec.phases(opt)
    for _ in range(2):  # packing, momentum allocation, JIT compilation
        for phase in phases:
            phase()
    step = StepUnderTest(params, phases, DEVICE, graph=spec.graph)

    def setup():
        step.refill(0, grads)
        sync(DEVICE)

    def timed():
        for phase in step.phases:
            phase()
        sync(DEVICE)

    benchmark.extra_info.update(
        model=MODEL, n_params=n, n_tensors=k, device=DEVICE.type, bytes_per_elem=spec.bytes_per_elem, timed=spec.timed
    )
    benchmark.group = f"{MODEL} {DEVICE.type}"
    benchmark.pedantic(timed, setup=setup, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    for p in params:
        assert torch.isfinite(p).all()
