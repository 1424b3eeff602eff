"""Outputs: a JSONL log per run, the summary table, the PNG of the curves (when matplotlib is there)."""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

from .checkpoint import atomic_write_bytes
from .layer_groups import GROUPS, LAYER_KINDS


class JsonlLog:
    """One JSON object a line: a ``{"type": "config", ...}`` header, then one ``{"type": "epoch", ...}`` per epoch."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def rewrite(self, records: Sequence[dict]) -> None:
        atomic_write_bytes(self.path, "".join(_dumps(r) + "\n" for r in records).encode())

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(_dumps(record) + "\n")
            f.flush()


def _dumps(record: dict) -> str:
    """Strict JSON: NaN/inf (e.g. group fractions of a skipped step) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, default=_json_default, allow_nan=False)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _pct(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def summary_rows(histories: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, hist in histories.items():
        if not hist:
            continue
        last = hist[-1]
        best = max(hist, key=lambda r: r["test_acc"])
        rows.append(
            {
                "run": name,
                "epochs": last["epoch"],
                "test_final": last["test_acc"],
                "test_best": best["test_acc"],
                "best_epoch": best["epoch"],
                "clean_train": last["train_clean_acc"],
                "noisy_fit": last["noisy_fit_acc"],
                "noisy_true": last["noisy_true_acc"],
                "group_b": last.get("group_b"),
                "time_s": sum(r["epoch_time"] for r in hist),
            }
        )
    return rows


TABLE_COLUMNS = [
    ("run", "optimizer"),
    ("test_final", "test acc %"),
    ("test_best", "best test %"),
    ("best_epoch", "@ep"),
    ("clean_train", "clean-train %"),
    ("noisy_fit", "noisy fit % (memorised)"),
    ("noisy_true", "noisy->true %"),
    ("group_b", "group B %"),
    ("time_s", "time s"),
]


def format_table(rows: list[dict]) -> str:
    cells = [[h for _, h in TABLE_COLUMNS]]
    for r in rows:
        line = []
        for key, _ in TABLE_COLUMNS:
            v = r.get(key)
            if key == "run":
                line.append(str(v))
            elif key in ("best_epoch",):
                line.append(str(v))
            elif key == "time_s":
                line.append(f"{v:.0f}")
            else:
                line.append(_pct(v))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_COLUMNS))]

    def fmt(c):
        return "| " + " | ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(c) for c in cells[1:]])


def _pyplot():
    """matplotlib's pyplot on the file backend, or None when matplotlib is not installed (plots are then skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    return plt


def _save(plt, fig, path: str, title: str) -> str:
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _plot_runs(ax, histories: dict[str, list[dict]], key: str, label: str) -> None:
    """One curve per run of ``key`` over the epochs."""
    for name, hist in histories.items():
        pts = [(r["epoch"], r[key]) for r in hist if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_curves(histories: dict[str, list[dict]], path: str, title: str = "") -> Optional[str]:
    """Test accuracy, noisy-sample fit (memorisation), clean-train accuracy and Group B fraction per epoch.

    Returns the path, or None when matplotlib is not installed (the plot is then silently skipped).
    """
    plt = _pyplot()
    if plt is None:
        return None
    panels = [
        ("test_acc", "test accuracy"),
        ("noisy_fit_acc", "noisy samples: fit to noisy labels (memorisation)"),
        ("train_clean_acc", "clean training samples: accuracy"),
        ("group_b", "Group B fraction"),
    ]
    # without clean labels (Animal-10N, WebVision) the memorisation panels would be empty: left out
    panels = [p for p in panels if any(r.get(p[0]) is not None for h in histories.values() for r in h)]
    if len(panels) == 4:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    else:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        _plot_runs(ax, histories, key, label)
    return _save(plt, fig, path, title)


def group_fraction_panels(histories: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(history key, title) of each panel of the per-layer-kind plot: a row per group, a column per layer kind
    that some run recorded (``layer_groups.fractions_by_kind``)."""
    recorded = {k for hist in histories.values() for r in hist for k, v in r.items() if v is not None}
    kinds = [kind for kind in LAYER_KINDS if f"group_b_{kind}" in recorded]
    return [(f"group_{g.lower()}_{kind}", f"Group {g}: {kind}") for g in GROUPS for kind in kinds]


def plot_group_fractions(histories: dict[str, list[dict]], path: str, title: str = "") -> Optional[str]:
    """Group A/B/C fractions per layer kind over the epochs (the epoch's last step), one curve per run.

    Returns the path, or None when matplotlib is not installed or no run recorded them (SGD, torchrun)."""
    panels = group_fraction_panels(histories)
    plt = _pyplot() if panels else None
    if plt is None:
        return None
    cols = len(panels) // len(GROUPS)
    fig, axes = plt.subplots(len(GROUPS), cols, figsize=(4.5 * cols, 3.2 * len(GROUPS)), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        _plot_runs(ax, histories, key, label)
    return _save(plt, fig, path, title)
