"""pytest-benchmark suite: one full optimizer step per row of the table (``pytest benchmarks/``).

    pytest benchmarks/test_bench_optimizers.py                        # CPU: wrn-16-2 shapes
    SANER_BENCH_DEVICE=cuda SANER_BENCH_MODEL=wrn-28-10 pytest benchmarks/ --benchmark-columns=median,iqr
    pytest benchmarks/ --benchmark-save=NAME   /  --benchmark-compare   (pytest-benchmark's history)

Rows are those of ``python -m benchmarks.run`` (every available SANER/SAM backend, torch SGD fused
and foreach, the SAM loop, the paper's SANER loop; CUDA-graph replay on CUDA). ``extra_info``
carries the model, parameter count and floor bytes per element, so GB/s = bytes * n / median.
Not part of ``pytest tests``; the default shapes are small so the suite stays quick on a CPU.
"""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from benchmarks.measure import free_memory, sync  # noqa: E402
from benchmarks.run import cuda_graph, row_specs  # noqa: E402
from benchmarks.shapes import describe, make_params, param_shapes  # noqa: E402

DEVICE = torch.device(os.environ.get("SANER_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
MODEL = os.environ.get("SANER_BENCH_MODEL", "wrn-16-8" if DEVICE.type == "cuda" else "wrn-16-2")
ROUNDS = int(os.environ.get("SANER_BENCH_ROUNDS", "50" if DEVICE.type == "cuda" else "5"))
SPECS = row_specs(DEVICE)


@pytest.mark.parametrize("spec", SPECS, ids=[f"{s.optimizer}[{s.backend}]".replace(" ", "_") for s in SPECS])
def test_optimizer_step(benchmark, spec):
    if spec.skip:
        pytest.skip(spec.skip)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("SANER_BENCH_DEVICE=cuda but no CUDA device")
    shapes = param_shapes(MODEL, device=DEVICE.type)
    n, k = describe(shapes)
    params = make_params(shapes, DEVICE)
    opt = spec.build(params)
    for _ in range(2):  # packing, momentum allocation, JIT compilation
        spec.step(opt)
    fn = (lambda: spec.step(opt))
    if spec.graph:
        fn = cuda_graph(fn)

    def timed():
        fn()
        sync(DEVICE)

    benchmark.extra_info.update(model=MODEL, n_params=n, n_tensors=k, device=DEVICE.type,
                                bytes_per_elem=spec.bytes_per_elem)
    benchmark.group = f"{MODEL} {DEVICE.type}"
    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    for p in params:
        assert torch.isfinite(p).all()
    del opt, params
    free_memory(DEVICE)
