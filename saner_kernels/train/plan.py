"""Which runs one invocation trains: the optimizers of ``--compare`` or the settings of ``--sweep``, each with its own
name (its folder, log and table row) and its own ``Config``.

Every run of an invocation starts from the same seed, so the runs share their initial weights, noisy labels and data
order (``engine.Run``); a sweep only changes the swept setting in each run's ``Config``, which its checkpoint records,
so ``--resume`` continues each run from its own checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .config import Config

OPTIMIZERS = ("sgd", "sam", "saner", "samwo", "samonly")
TWO_PASS = ("sam", "saner", "samwo", "samonly")  # the optimizers built on saner_kernels' SAM step
ABLATIONS = ("samwo", "samonly")  # the paper's group ablations: they take --group
PERTURBED = ("sam", "saner")  # the optimizers --variant changes


@dataclass(frozen=True)
class RunSpec:
    name: str
    optimizer: str
    cfg: Config


@dataclass(frozen=True)
class Sweepable:
    kind: Callable[[str], float]
    valid: Callable[[float], bool]
    rule: str
    optimizers: tuple


# the settings --sweep may vary: SANER's Group B weight (the paper's Figure 5) and the epochs of its schedule
SWEEPS = {
    "alpha": Sweepable(float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]", ("saner",)),
    "k": Sweepable(int, lambda v: v >= 0, "a whole number of epochs >= 0", ("saner",)),
}


def run_name(optimizer: str, cfg: Config) -> str:
    """``saner-fsam`` for SANER with Friendly-SAM's perturbation, ``samwo-grB`` for the Group B ablation."""
    if optimizer in PERTURBED and cfg.variant != "sam":
        return f"{optimizer}-{cfg.variant}"
    if optimizer in ABLATIONS:
        return f"{optimizer}-gr{cfg.group}"
    return optimizer


def compare_runs(cfg: Config, optimizers: list[str]) -> list[RunSpec]:
    """One run per optimizer; ``group`` is recorded only in the runs it applies to (their checkpoints' settings)."""
    runs = []
    for name in optimizers:
        own = cfg if name in ABLATIONS else dataclasses.replace(cfg, group="")
        runs.append(RunSpec(run_name(name, own), name, own))
    return runs


def parse_sweep(text: str) -> tuple[str, list]:
    """``"alpha=0.25,0.5"`` -> ``("alpha", [0.25, 0.5])``, or a SystemExit saying what is wrong."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or key not in SWEEPS:
        raise SystemExit(f"--sweep {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEPS)}")
    spec = SWEEPS[key]
    try:
        parsed = [spec.kind(v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--sweep {key}: values must be {spec.rule}, got {values!r}") from None
    bad = [v for v in parsed if not spec.valid(v)]
    if bad or not parsed:
        raise SystemExit(f"--sweep {key}: values must be {spec.rule}, got {bad or 'none'}")
    if len(set(parsed)) != len(parsed):
        raise SystemExit(f"--sweep {key}: each value once, got {parsed}")
    return key, parsed


def sweep_runs(cfg: Config, optimizer: str, key: str, values: list) -> list[RunSpec]:
    """One run of ``optimizer`` per value of ``key``, named after it (``saner-alpha0.5``, ``saner-k25``)."""
    if optimizer not in SWEEPS[key].optimizers:
        raise SystemExit(f"--sweep {key} varies a setting of {', '.join(SWEEPS[key].optimizers)}, not {optimizer}")
    (base,) = compare_runs(cfg, [optimizer])
    return [
        RunSpec(f"{base.name}-{key}{value:g}", optimizer, dataclasses.replace(base.cfg, **{key: value}))
        for value in values
    ]
