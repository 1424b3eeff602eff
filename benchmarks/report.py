"""What a run writes and prints: the headline, the tables (``table.md``), ``results.csv``, ``train.csv`` and
``results.json``."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, fields
from typing import Optional

from .microbench import Row
from .rows import SANER_BYTES, SGD_BYTES
from .train_step import TrainRow

HEADLINE_LABEL = "train-loop step incl. zero_grad"
WHAT_IS_TIMED = (
    "Every row times one training-loop step including zero_grad (in place), gradients written before each "
    "phase outside the timing: SANER/SAM `first_step(zero_grad=True)` + `second_step(zero_grad=True)`; SGD "
    "`step()` + `zero_grad(set_to_none=False)`; the loops `first_step()`, `zero_grad`, `second_step()`, "
    f"`zero_grad`. B/elem: floor traffic ({SANER_BYTES} SANER/SAM, {SGD_BYTES} SGD). x fused SGD: median of "
    "per-pair ratios, each row timed in alternation with fused SGD. Spread: interquartile range over the median "
    "of the timed steps; more than a few percent means a busy machine."
)
# per-rep times are in results.json; the CSV keeps one value per cell
CSV_SKIP = ("times_ms", "sgd_fused_times_ms")


def fmt(value: Optional[float], spec: str = "{:.2f}") -> str:
    return "-" if value is None else spec.format(value)


def fmt_ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def headline(rows: list[Row]) -> list[dict]:
    """The SANER (alpha 0.5, best backend) rows against fused SGD, one per shape set."""
    out = []
    for r in rows:
        if r.headline and r.status == "ok":
            out.append(
                {
                    "label": HEADLINE_LABEL,
                    "model": r.model,
                    "n_params": r.n_params,
                    "optimizer": r.optimizer,
                    "backend": r.backend,
                    "saner_ms": r.ms,
                    "sgd_fused_ms": r.sgd_fused_ms,
                    "ratio": r.vs_sgd_fused,
                    "floor_ratio": SANER_BYTES / SGD_BYTES,
                    "saner_bytes_per_elem": r.bytes_per_elem,
                    "sgd_bytes_per_elem": r.bytes_per_elem * SGD_BYTES / SANER_BYTES,
                    "n_pairs": r.n_timed,
                    "saner_spread_pct": r.spread_pct,
                    "sgd_fused_spread_pct": r.sgd_fused_spread_pct,
                }
            )
    return out


def headline_table(items: list[dict]) -> str:
    header = [
        "model",
        HEADLINE_LABEL,
        "backend",
        "SANER ms",
        "SGD fused ms",
        "x fused SGD",
        "byte floor",
        "pairs",
        "spread % SANER / SGD",
    ]
    cells = [
        [
            h["model"],
            f"{h['optimizer']} vs SGD fused, interleaved",
            h["backend"],
            fmt_ms(h["saner_ms"]),
            fmt_ms(h["sgd_fused_ms"]),
            f"**{h['ratio']:.2f}**",
            f"{h['floor_ratio']:.2f}",
            str(h["n_pairs"]),
            f"{h['saner_spread_pct']:.0f} / {h['sgd_fused_spread_pct']:.0f}",
        ]
        for h in items
    ]
    return markdown(header, cells)


def rows_table(rows: list[Row]) -> str:
    header = [
        "model",
        "optimizer",
        "backend",
        "ms/step",
        "B/elem",
        "GB/s",
        "x fused SGD",
        "% of probe",
        "extra B/param",
    ]
    cells = [
        [
            r.model,
            r.optimizer,
            r.backend,
            fmt_ms(r.ms),
            fmt(r.bytes_per_elem, "{:.0f}"),
            fmt(r.gbs, "{:.1f}"),
            fmt(r.vs_sgd_fused),
            fmt(r.pct_probe, "{:.0f}"),
            fmt(r.extra_bytes_per_param, "{:.1f}"),
        ]
        for r in rows
        if r.status == "ok"
    ]
    return markdown(header, cells)


def train_table(rows: list[TrainRow]) -> str:
    header = ["model", "batch", "variant", "backend", "ms/step", "optimizer ms", "optimizer share"]
    cells = [
        [
            r.model,
            str(r.batch),
            r.variant,
            r.backend,
            fmt_ms(r.ms),
            fmt_ms(r.optimizer_ms),
            fmt(r.optimizer_share_pct, "{:.1f}%"),
        ]
        for r in rows
        if r.status == "ok"
    ]
    return markdown(header, cells)


def not_run(rows: list) -> list[str]:
    """One line per distinct (row, backend, reason) that was skipped or failed."""
    seen, out = set(), []
    for r in rows:
        if r.status != "ok":
            key = (getattr(r, "optimizer", getattr(r, "variant", "")), r.backend, r.status)
            if key not in seen:
                seen.add(key)
                out.append(f"{key[0]} [{key[1]}]: {r.status}")
    return out


def summary_header(meta: dict) -> str:
    probe = meta["probe"]
    return (
        f"{meta['device']}; torch {meta['torch']}; {meta['dtype']}; probe {probe['best_gbs']:.1f} GB/s "
        f"({probe['best_kernel']}, in place); load {meta['load_average_start']} -> {meta['load_average_end']}; "
        f"{meta['date']}"
    )


def markdown_report(meta: dict, rows: list[Row], trows: list[TrainRow]) -> str:
    parts = [summary_header(meta)]
    items = headline(rows)
    if items:
        parts.append(headline_table(items))
    parts += [WHAT_IS_TIMED, rows_table(rows)]
    if trows:
        parts.append(train_table(trows))
    skipped = not_run(rows + trows)
    if skipped:
        parts.append("Not run: " + "; ".join(skipped))
    return "\n\n".join(parts)


def _write_csv(path: str, records: list, cls) -> None:
    names = [f.name for f in fields(cls) if f.name not in CSV_SKIP]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow(asdict(record))


def write_all(out: str, meta: dict, rows: list[Row], trows: list[TrainRow]) -> list[str]:
    """table.md, results.csv, results.json and (with a training table) train.csv; returns the names written."""
    written = ["table.md", "results.csv", "results.json"]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(f"<!-- {meta['command']} -->\n" + markdown_report(meta, rows, trows) + "\n")
    _write_csv(os.path.join(out, "results.csv"), rows, Row)
    if trows:
        _write_csv(os.path.join(out, "train.csv"), trows, TrainRow)
        written.append("train.csv")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(
            {
                "meta": meta,
                "headline": headline(rows),
                "rows": [asdict(r) for r in rows],
                "train": [asdict(r) for r in trows],
            },
            f,
            indent=1,
        )
    return written
