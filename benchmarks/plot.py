"""``results.png``: ms per training-loop step of every row, one panel per shape set (log scale)."""

from __future__ import annotations

import textwrap

from .microbench import Row


def _color(row: Row) -> str:
    if row.optimizer.startswith("SGD"):
        return "tab:gray"
    if "loop" in row.optimizer:
        return "tab:orange"
    if row.backend == "reference":
        return "lightsteelblue"
    return "tab:blue"


def plot(rows: list[Row], path: str, title: str) -> bool:
    """Write the figure; False when matplotlib is missing or nothing was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib is optional
        return False
    ok = [r for r in rows if r.status == "ok" and r.ms]
    if not ok:
        return False
    models = list(dict.fromkeys(r.model for r in ok))
    labels = list(dict.fromkeys(f"{r.optimizer} [{r.backend}]" for r in ok))
    height = 0.35 * len(labels) + 1.8
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), height), squeeze=False)
    for ax, model in zip(axes[0], models):
        here = {f"{r.optimizer} [{r.backend}]": r for r in ok if r.model == model}
        names = [label for label in labels if label in here]
        ax.barh(range(len(names)), [here[n].ms for n in names], color=[_color(here[n]) for n in names])
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per training-loop step incl. zero_grad (log)")
        ax.set_title(model, fontsize=10)
    fig.suptitle(textwrap.fill(title, 90), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
