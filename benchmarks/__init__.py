"""Benchmarks for saner_kernels: ``python -m benchmarks.run`` (the table), ``pytest benchmarks/`` (pytest-benchmark
and the benchmark logic checks), ``benchmarks/device_check.sh`` (the one GPU-machine script).

    run.py         command line: arguments, the run's order, what is printed
    rows.py        what is timed: one spec per optimizer and backend, the phases of a training-loop step, byte floors
    shapes.py      parameter shapes from the real models, parameters and gradients to feed them
    peers.py       the published SAM / SANER loops and torch SGD, written from their algorithms
    measure.py     timers (CPU perf_counter, CUDA events, do_bench), refills outside the timing, CUDA graphs,
                   interleaving with the anchor
    memory.py      the optimizer's peak extra memory
    bandwidth.py   the in-place STREAM-style bandwidth probe
    microbench.py  one shape set's rows measured (memory, then steps interleaved with fused SGD)
    train_step.py  the optimizer's share of a whole training step
    environment.py device, versions, load average
    report.py      headline, table.md, results.csv, train.csv, results.json
    plot.py        results.png
    sanitize_ops.py  every kernel op on awkward inputs, for compute-sanitizer (device_check.sh)
    bench_loader.py  saner-train's image-folder loading speed (images/s), on its own

Not part of the test run (``pytest tests``); nothing here is imported by the package.
"""
