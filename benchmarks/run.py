"""The benchmark table: every SANER/SAM backend and its peers, one training-loop step each, same process.

    python -m benchmarks.run --device cpu --models wrn-28-10 --out bench-results/cpu
    python -m benchmarks.run --device cuda --models wrn-28-10 bucket --out bench-results/h200

For each parameter-shape set (``--models``) every row (``rows.py``) is timed in alternation with fused
``torch.optim.SGD``; the headline is SANER (alpha 0.5, best backend) against it, "train-loop step incl.
zero_grad" (byte floor 48 / 24 = 2.0). Columns: ms per step (median), B/elem (floor traffic), GB/s at that
floor, x fused SGD (median of per-pair ratios), % of probe (GB/s over the best in-place STREAM-style kernel
of the same run, ``bandwidth.py``), extra B/param (peak optimizer memory beyond parameters and gradients).
A second table (``--train-model``) gives the optimizer's share of a whole training step. Writes
``table.md``, ``results.csv``, ``results.json``, ``train.csv`` and (with matplotlib) ``results.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .bandwidth import bandwidth_probe
from .environment import load_average, run_meta
from .microbench import Row, Timing, measure_model, set_pct_probe
from .plot import plot
from .report import fmt, fmt_ms, markdown_report, summary_header, write_all
from .rows import row_specs, saner_backends
from .shapes import DEFAULT_MODELS, describe, param_shapes
from .train_step import train_rows

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"shape sets: wrn-D-K, resnet18, bucket (default: {' '.join(DEFAULT_MODELS)}); commas also separate",
    )
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument(
        "--bucket-numel",
        type=int,
        default=None,
        help="elements of the synthetic bucket (default 2**26 on CUDA, 2**24 on CPU)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke runs)")
    ap.add_argument("--out", default="bench-results", help="folder for the tables, CSV, JSON and PNG")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step table")
    ap.add_argument("--train-model", default="wrn-16-8")
    ap.add_argument("--train-batch", type=int, default=None, help="default 128 (CPU --quick: 32)")
    ap.add_argument("--train-iters", type=int, default=None, help="timed training steps (default CUDA 20, CPU 1)")
    ap.add_argument("--rows", default=None, help="only rows whose 'optimizer [backend]' contains this text")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    args.models = [m for item in (args.models or DEFAULT_MODELS) for m in item.split(",") if m]
    return args


def _print_row(row: Row) -> None:
    if row.status == "ok":
        print(
            f"  {row.optimizer:<22} {row.backend:<10} {fmt_ms(row.ms):>9} ms  {row.gbs:7.1f} GB/s  "
            f"x{row.vs_sgd_fused:5.2f} SGD ({row.n_timed} pairs, spread {row.spread_pct:.0f}%)  "
            f"{fmt(row.extra_bytes_per_param, '{:.1f}'):>6} B/param",
            flush=True,
        )
    elif not row.status.startswith("skipped"):
        print(f"  {row.optimizer:<22} {row.backend:<10} {row.status}", flush=True)


def _print_probe(probe: dict) -> None:
    kernels = ", ".join(f"{k} {v:.1f}" for k, v in probe["kernels"].items())
    print(
        f"# bandwidth probe, in place (GB/s): {kernels}; copy {probe['copy_gbs_2_streams']:.1f} counting 2 "
        f"streams, {probe['copy_gbs_3_streams']:.1f} counting 3",
        flush=True,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    os.makedirs(args.out, exist_ok=True)
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = run_meta(device, command, args.dtype, args.quick)
    ok, not_ok = saner_backends(device)
    meta["saner_backends"], meta["saner_backends_unavailable"] = ok, not_ok
    print(f"# {meta['device']}, torch {meta['torch']}, {args.dtype}, load {meta['load_average_start']}", flush=True)
    print(f"# SANER backends on {device.type}: {ok or 'none'}" + (f"; not run: {not_ok}" if not_ok else ""), flush=True)

    probes = [bandwidth_probe(device, quick=args.quick)]
    _print_probe(probes[0])

    specs = row_specs(device)
    if args.rows:
        specs = [s for s in specs if args.rows.lower() in s.label.lower()]
    timing = Timing.default(device, args.quick)
    rows: list[Row] = []
    for model in args.models:
        shapes = param_shapes(model, args.bucket_numel, args.device)
        n, k = describe(shapes)
        print(f"# {model}: {n:,} params in {k} tensors", flush=True)
        rows += measure_model(specs, model, shapes, device, dtype, timing, on_row=_print_row)
    probes.append(bandwidth_probe(device, quick=args.quick))  # the machine may have changed meanwhile
    _print_probe(probes[1])
    meta["probe"] = max(probes, key=lambda p: p["best_gbs"])
    meta["probes"] = probes
    set_pct_probe(rows, meta["probe"]["best_gbs"])

    trows = []
    if not args.no_train:
        cpu = device.type == "cpu"
        batch = args.train_batch or (32 if (cpu and args.quick) else 128)
        iters = args.train_iters or (1 if cpu else (5 if args.quick else 20))
        print(f"# training step: {args.train_model}, batch {batch}, {iters} timed", flush=True)
        trows = train_rows(device, args.train_model, batch, iters, warmup=0 if cpu else 3)
    meta["load_average_end"] = load_average()

    written = write_all(args.out, meta, rows, trows)
    if not args.no_plot and plot(rows, os.path.join(args.out, "results.png"), summary_header(meta)):
        written.append("results.png")
    print()
    print(markdown_report(meta, rows, trows))
    print(f"\nwrote {args.out}/: {' '.join(written)}")
    errors = [r for r in rows + trows if r.status.startswith("error")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
