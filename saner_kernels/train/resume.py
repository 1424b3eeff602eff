"""What ``--resume`` finds in the output folder, checked before anything trains.

A run's checkpoint is ``<out>/<run name>/checkpoint.pt``, and the run name follows the flags (``saner``,
``saner-fsam``, ...). Flags that name another run than the one in the folder would find no checkpoint and quietly
train from epoch 0 beside it; so when the folder holds checkpoints of other runs and none of this invocation's,
``--resume`` is refused with the runs that are there and the options that differ. An empty (or new) folder may
start fresh (a job array's first task launches with ``--resume`` like the others); each run's log says so.
"""

from __future__ import annotations

import os
from typing import Optional

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, settings_differences
from .distributed import Dist

CHECKPOINT = "checkpoint.pt"


def checkpoints_in(out: str) -> dict[str, str]:
    """{run name: checkpoint path} of the runs with a checkpoint in ``out``."""
    if not os.path.isdir(out):
        return {}
    names = sorted(e.name for e in os.scandir(out) if e.is_dir())
    return {n: os.path.join(out, n, CHECKPOINT) for n in names if os.path.isfile(os.path.join(out, n, CHECKPOINT))}


def describe(path: str, cfg: Config) -> str:
    """How the run that wrote ``path`` differs from ``cfg``."""
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        return f"unreadable: {exc}"
    diff = settings_differences(ck["config"], cfg)
    optimizer = f"optimizer {ck['optimizer_name']!r}; "
    return optimizer + (", ".join(diff) if diff else "the same settings")


def refusal(out: str, runs: list[str], cfg: Config) -> Optional[str]:
    """Why ``--resume`` of ``runs`` into ``out`` must be refused, or None."""
    found = checkpoints_in(out)
    if not found or any(run in found for run in runs):
        return None  # an empty folder starts fresh: each run logs that it found no checkpoint
    others = "; ".join(f"{name} ({describe(path, cfg)})" for name, path in found.items())
    return (
        f"--resume: {out} holds checkpoints of other runs than {', '.join(runs)}: {others}. Give the options of the "
        f"run to continue (the settings shown are the checkpoint's vs this command's), or another --out, or drop "
        f"--resume to start {', '.join(runs)} beside them"
    )


def check_resume_target(out: str, runs: list[str], cfg: Config, dist: Dist) -> None:
    """A ``CheckpointError`` on every rank when rank 0 (which holds the files) finds ``refusal``."""
    error = dist.broadcast_object(refusal(out, runs, cfg) if dist.is_main else None)
    if error is not None:
        raise CheckpointError(error)
