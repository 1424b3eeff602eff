"""The benchmark table of DESIGN.md section 5: every SANER/SAM backend against its peers, same run.

    python -m benchmarks.run --device cpu --quick --out bench-results/cpu
    python -m benchmarks.run --device cuda --models wrn-28-10 bucket --out bench-results/h200

For each parameter-shape set (``--models``) and each row (SANER alpha=0.5 and SAM alpha=1 on every
available backend, ``torch.optim.SGD`` fused and foreach, the davda54-style SAM loop, the paper's
per-parameter SANER loop; on CUDA also the CUDA-graph replay of the fused steps) it reports

- ``ms``: median milliseconds per full optimizer step (SANER/SAM: ``first_step`` + ``second_step``
  on gradients already in ``p.grad``; SGD: ``step``), after warm-up;
- ``GB/s``: effective bandwidth at the step's floor traffic, 44 bytes/elem for SANER/SAM and
  20 for SGD in fp32 (scaled by the element size for 16-bit parameters);
- ``x SGD``: time relative to fused ``torch.optim.SGD`` on the same shapes (the SANER floor is 2.2);
- ``% copy``: GB/s as a percentage of a large device copy measured in the same run;
- ``B/param``: the optimizer's peak extra memory beyond parameters and gradients, bytes per parameter.

plus a training-step table (``--train-model``, WRN-16-8 on random 32x32 batches): two forward/backward
passes and the step, with the optimizer's share of the step time. Writes ``results.csv``,
``results.json``, ``train.csv``, ``table.md`` and (with matplotlib) ``results.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import json
import os
import platform
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import peers
from .measure import bandwidth_probe, free_memory, median_ms, optimizer_memory, sync
from saner_kernels.train.models import build_model
from .shapes import DEFAULT_MODELS, describe, make_params, param_shapes

HP = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)  # the paper's CIFAR settings
RHO, ALPHA = 0.1, 0.5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- rows
@dataclass
class Spec:
    """One row to measure: how to build the optimizer and run one full step."""

    optimizer: str
    backend: str
    bytes_per_elem: int  # fp32 floor traffic of one full step
    build: Optional[Callable[[list], object]] = None
    step: Optional[Callable[[object], object]] = None
    graph: bool = False
    skip: str = ""  # reason the row is not run


def _two_pass(opt) -> None:
    opt.first_step(zero_grad=False)
    opt.second_step(zero_grad=False)


def _one_pass(opt) -> None:
    opt.step()


def import_saner():
    """(saner_kernels module, "") or (None, why not)."""
    try:
        import saner_kernels
        getattr(saner_kernels, "SANER")
        return saner_kernels, ""
    except Exception as exc:  # not written yet, or broken: the peers still run
        return None, f"saner_kernels.SANER not importable: {exc}"


def saner_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(backends that can run on ``device``, {backend: why not} for the others)."""
    sk, why = import_saner()
    if sk is None:
        return [], {"all": why}
    from saner_kernels.ops import available_backends

    ok, not_ok = [], {}
    for name, status in available_backends(device).items():
        if (name, device.type) in (("cuda", "cpu"), ("cpp", "cuda")):
            continue  # the other device's native op: not a row of this table
        if name == "triton" and device.type == "cpu":
            not_ok[name] = "CPU runs only under the Triton interpreter: never benchmarked"
        elif status:
            ok.append(name)
        else:
            not_ok[name] = status.reason
    return ok, not_ok


def best_backend(device: torch.device) -> Optional[str]:
    """What ``backend="auto"`` picks for fp32 tensors on ``device`` (DESIGN.md section 2)."""
    ok, _ = saner_backends(device)
    order = ("triton", "cuda", "reference") if device.type == "cuda" else ("cpp", "reference")
    return next((b for b in order if b in ok), None)


def _saner_factory(backend: str, alpha: float) -> Callable[[list], object]:
    def build(params):
        sk, _ = import_saner()
        if alpha == 1.0 and hasattr(sk, "SAM"):
            try:
                return sk.SAM(params, rho=RHO, backend=backend, **HP)
            except TypeError:  # a SAM signature without momentum/weight decay: same thing via SANER
                pass
        return sk.SANER(params, rho=RHO, alpha=alpha, backend=backend, **HP)

    return build


def row_specs(device: torch.device) -> list[Spec]:
    specs = [
        Spec("SGD fused", "torch", 20, peers.sgd_fused, _one_pass),
        Spec("SGD foreach", "torch", 20, peers.sgd_foreach, _one_pass),
    ]
    ok, not_ok = saner_backends(device)
    for label, alpha in ((f"SANER a={ALPHA}", ALPHA), ("SAM (a=1)", 1.0)):
        for backend in ok:
            specs.append(Spec(label, backend, 44, _saner_factory(backend, alpha), _two_pass))
        for backend, reason in not_ok.items():
            specs.append(Spec(label, backend, 44, skip=reason))
    if device.type == "cuda" and ok:
        best = best_backend(device)
        for label, alpha in ((f"SANER a={ALPHA}", ALPHA), ("SAM (a=1)", 1.0)):
            specs.append(Spec(label + " graph", best, 44, _saner_factory(best, alpha), _two_pass, graph=True))
    specs += [
        Spec("SAM loop (davda54)", "torch", 44,
             lambda ps: peers.SAMLoop(ps, rho=RHO, **HP), _two_pass),
        Spec("SANER loop (paper)", "torch", 44,
             lambda ps: peers.PaperSANERLoop(ps, rho=RHO, alpha=ALPHA, **HP), _two_pass),
    ]
    return specs


@dataclass
class Row:
    model: str
    n_params: int
    n_tensors: int
    optimizer: str
    backend: str
    dtype: str
    status: str = "ok"
    ms: Optional[float] = None
    n_timed: int = 0
    bytes_per_elem: float = 0.0
    gbs: Optional[float] = None
    vs_sgd_fused: Optional[float] = None
    pct_copy: Optional[float] = None
    extra_bytes_per_param: Optional[float] = None
    memory_method: str = ""


def cuda_graph(step: Callable[[], object]) -> Callable[[], object]:
    """Capture one call of ``step`` into a CUDA graph (after warm-up on a side stream); returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph.replay


def measure_row(spec: Spec, model: str, shapes, device, dtype, quick: bool) -> Row:
    n, k = describe(shapes)
    row = Row(model, n, k, spec.optimizer, spec.backend, str(dtype).replace("torch.", ""),
              bytes_per_elem=spec.bytes_per_elem * dtype.itemsize / 4)
    if spec.skip:
        row.status = f"skipped: {spec.skip}"
        return row
    params = opt = None
    try:
        params, opt, extra, method = optimizer_memory(
            lambda: make_params(shapes, device, dtype), spec.build, spec.step, device)
        row.extra_bytes_per_param = None if extra is None else extra / n
        row.memory_method = method
        fn = lambda: spec.step(opt)  # noqa: E731
        if spec.graph:
            fn = cuda_graph(fn)
        row.ms, row.n_timed = median_ms(fn, device, quick)
        row.gbs = row.bytes_per_elem * n / (row.ms * 1e-3) / 1e9
    except Exception as exc:  # one broken row must not lose the table
        row.status = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    finally:
        del params, opt
        free_memory(device)
    return row


# ----------------------------------------------------------------------------- training step
@dataclass
class TrainRow:
    model: str
    batch: int
    variant: str
    backend: str
    status: str = "ok"
    ms: Optional[float] = None
    optimizer_ms: Optional[float] = None
    optimizer_share_pct: Optional[float] = None
    n_timed: int = 0


def train_rows(device, model_name: str, batch: int, iters: int, warmup: int) -> list[TrainRow]:
    """Two forward/backward passes + the step on random 32x32 batches; optimizer share of the time."""
    torch.manual_seed(0)
    template = build_model(model_name, num_classes=10).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants: list[tuple[str, str, Optional[Callable]]] = []
    best = best_backend(device)
    sk, why = import_saner()
    if sk is not None and best is not None:
        variants.append(("SANER fused", best, _saner_factory(best, ALPHA)))
        if best != "reference":
            variants.append(("SANER reference", "reference", _saner_factory("reference", ALPHA)))
    else:
        variants.append(("SANER", "-", None))
    variants.append(("SAM loop (davda54)", "torch", lambda ps: peers.SAMLoop(ps, rho=RHO, **HP)))

    rows = []
    for variant, backend, build in variants:
        row = TrainRow(model_name, batch, variant, backend)
        if build is None:
            row.status = f"skipped: {why}"
            rows.append(row)
            continue
        model = opt = None
        try:
            model = copy.deepcopy(template)
            params = list(model.parameters())
            opt = build(params)
            with torch.no_grad():  # optimizer-only warm-up: buckets, momentum, JIT, without the slow passes
                for p in params:
                    p.grad = torch.randn_like(p).mul_(1e-3)
            _two_pass(opt)
            opt.zero_grad()

            def step():
                sync(device)
                t0 = time.perf_counter()
                F.cross_entropy(model(x), y).backward()
                sync(device)
                t1 = time.perf_counter()
                opt.first_step(zero_grad=True)
                sync(device)
                t2 = time.perf_counter()
                F.cross_entropy(model(x), y).backward()
                sync(device)
                t3 = time.perf_counter()
                opt.second_step(zero_grad=True)
                sync(device)
                t4 = time.perf_counter()
                return (t4 - t0) * 1e3, ((t2 - t1) + (t4 - t3)) * 1e3

            for _ in range(warmup):
                step()
            results = [step() for _ in range(iters)]
            totals = sorted(results)
            row.ms, row.optimizer_ms = totals[len(totals) // 2]
            row.optimizer_share_pct = 100 * row.optimizer_ms / row.ms
            row.n_timed = len(results)
        except Exception as exc:
            row.status = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        finally:
            del model, opt
            free_memory(device)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output
def _fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def markdown_table(rows: list[Row]) -> str:
    head = "| model | optimizer | backend | ms/step | GB/s | x fused SGD | % of copy | extra B/param |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if r.status != "ok":
            continue
        lines.append(f"| {r.model} | {r.optimizer} | {r.backend} | {_ms(r.ms)} | {_fmt(r.gbs, '{:.1f}')} | "
                     f"{_fmt(r.vs_sgd_fused)} | {_fmt(r.pct_copy, '{:.0f}')} | {_fmt(r.extra_bytes_per_param, '{:.1f}')} |")
    return "\n".join(lines)


def markdown_train(rows: list[TrainRow]) -> str:
    lines = ["| model | batch | variant | backend | ms/step | optimizer ms | optimizer share |", "|" + "---|" * 7]
    for r in rows:
        if r.status != "ok":
            continue
        lines.append(f"| {r.model} | {r.batch} | {r.variant} | {r.backend} | {_ms(r.ms)} | {_ms(r.optimizer_ms)} | "
                     f"{_fmt(r.optimizer_share_pct, '{:.1f}')}% |")
    return "\n".join(lines)


def not_run(rows) -> list[str]:
    seen, out = set(), []
    for r in rows:
        if r.status != "ok":
            key = (getattr(r, "optimizer", getattr(r, "variant", "")), r.backend, r.status)
            if key not in seen:
                seen.add(key)
                out.append(f"{key[0]} [{key[1]}]: {r.status}")
    return out


def _color(label: str) -> str:
    if label.startswith("SGD"):
        return "tab:gray"
    if "loop" in label:
        return "tab:orange"
    if "[reference]" in label:
        return "lightsteelblue"
    return "tab:blue"


def plot(rows: list[Row], path: str, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    ok = [r for r in rows if r.status == "ok" and r.ms]
    models = list(dict.fromkeys(r.model for r in ok))
    labels = list(dict.fromkeys(f"{r.optimizer} [{r.backend}]" for r in ok))
    if not ok:
        return False
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 0.35 * len(labels) + 1.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        data = {f"{r.optimizer} [{r.backend}]": r.ms for r in ok if r.model == model}
        names = [lab for lab in labels if lab in data]
        ax.barh(range(len(names)), [data[lab] for lab in names], color=[_color(lab) for lab in names])
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per optimizer step (log)")
        ax.set_title(model, fontsize=10)
    fig.suptitle(textwrap.fill(title, 90), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=None,
                    help=f"shape sets: wrn-D-K, resnet18, bucket (default: {' '.join(DEFAULT_MODELS)}); "
                         "commas also separate")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument("--bucket-numel", type=int, default=None,
                    help="elements of the synthetic bucket (default 2**26 on CUDA, 2**24 on CPU)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke runs, CPU)")
    ap.add_argument("--out", default="bench-results", help="folder for results.csv/json, train.csv, table.md, results.png")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step table")
    ap.add_argument("--train-model", default="wrn-16-8")
    ap.add_argument("--train-batch", type=int, default=None, help="default 128 (CPU --quick: 32)")
    ap.add_argument("--train-iters", type=int, default=None, help="timed training steps (default CUDA 20, CPU 1)")
    ap.add_argument("--rows", default=None, help="only rows whose 'optimizer [backend]' contains this text")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    models = args.models or list(DEFAULT_MODELS)
    args.models = [m for item in models for m in item.split(",") if m]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    os.makedirs(args.out, exist_ok=True)
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": load_average(),
        "quick": args.quick,
        "dtype": args.dtype,
    }
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception:
        meta["triton"] = None
    ok, not_ok = saner_backends(device)
    meta["saner_backends"] = ok
    meta["saner_backends_unavailable"] = not_ok
    print(f"# {meta['device']}, torch {meta['torch']}, {args.dtype}, load {meta['load_average_start']}", flush=True)
    print(f"# SANER backends on {device.type}: {ok or 'none'}" + (f"; not run: {not_ok}" if not_ok else ""), flush=True)

    probes = [bandwidth_probe(device)]
    print(f"# bandwidth probe (device copy): {probes[0]:.1f} GB/s", flush=True)

    specs = row_specs(device)
    if args.rows:
        specs = [s for s in specs if args.rows.lower() in f"{s.optimizer} [{s.backend}]".lower()]
    rows: list[Row] = []
    for model in args.models:
        shapes = param_shapes(model, args.bucket_numel, args.device)
        n, k = describe(shapes)
        print(f"# {model}: {n:,} params in {k} tensors", flush=True)
        for spec in specs:
            row = measure_row(spec, model, shapes, device, dtype, args.quick)
            rows.append(row)
            if row.status == "ok":
                print(f"  {spec.optimizer:<22} {spec.backend:<10} {_ms(row.ms):>9} ms  {row.gbs:7.1f} GB/s"
                      f"  {_fmt(row.extra_bytes_per_param, '{:.1f}'):>6} B/param", flush=True)
            elif not row.status.startswith("skipped"):
                print(f"  {spec.optimizer:<22} {spec.backend:<10} {row.status}", flush=True)
    probes.append(bandwidth_probe(device))
    probe = max(probes)
    meta["copy_gbs"] = [round(p, 2) for p in probes]
    for model in args.models:
        anchor = next((r for r in rows if r.model == model and r.optimizer == "SGD fused" and r.status == "ok"), None)
        for r in rows:
            if r.model != model or r.status != "ok":
                continue
            r.pct_copy = 100 * r.gbs / probe
            if anchor is not None:
                r.vs_sgd_fused = r.ms / anchor.ms

    trows: list[TrainRow] = []
    if not args.no_train:
        cpu = device.type == "cpu"
        batch = args.train_batch or (32 if (cpu and args.quick) else 128)
        iters = args.train_iters or (1 if cpu else (5 if args.quick else 20))
        warmup = 0 if cpu else 3
        print(f"# training step: {args.train_model}, batch {batch}, {iters} timed", flush=True)
        trows = train_rows(device, args.train_model, batch, iters, warmup)
    meta["load_average_end"] = load_average()

    table = markdown_table(rows)
    train_table = markdown_train(trows) if trows else ""
    skipped = not_run(rows + trows)
    header = (f"{meta['device']}; torch {meta['torch']}; {args.dtype}; copy probe {probe:.1f} GB/s; "
              f"load {meta['load_average_start']} -> {meta['load_average_end']}; {meta['date']}")
    md = [f"<!-- {meta['command']} -->", header, "", table]
    if train_table:
        md += ["", train_table]
    if skipped:
        md += ["", "Not run: " + "; ".join(skipped)]
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) if rows else list(Row.__dataclass_fields__))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    if trows:
        with open(os.path.join(args.out, "train.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(trows[0]).keys()))
            w.writeheader()
            for r in trows:
                w.writerow(asdict(r))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows], "train": [asdict(r) for r in trows]}, f, indent=1)
    plotted = (not args.no_plot) and plot(rows, os.path.join(args.out, "results.png"), header)

    print()
    print(header)
    print(table)
    if train_table:
        print()
        print(train_table)
    if skipped:
        print("\nNot run:\n  " + "\n  ".join(skipped))
    print(f"\nwrote {args.out}/: table.md results.csv results.json" + (" train.csv" if trows else "")
          + (" results.png" if plotted else ""))
    errors = [r for r in rows + trows if r.status.startswith("error")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
