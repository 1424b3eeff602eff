"""What the benchmark times: one row per optimizer and backend, each step run as a training loop runs it.

A row's step is a list of *phases*, one per gradient; between phases a training loop runs a backward
pass, and the benchmark writes the next gradient into ``.grad`` instead (outside the timed region, see
``measure.py``). Every row zeroes its gradients in place inside the timed region, because that is part of
the loop's work between two backward passes and SANER fuses it into its update:

- SANER / SAM: ``first_step(zero_grad=True)`` | ``second_step(zero_grad=True)``;
- ``torch.optim.SGD``: ``step()`` + ``zero_grad(set_to_none=False)``;
- the published loops: ``first_step()`` + ``zero_grad(set_to_none=False)`` | the same for ``second_step``.

In place rather than ``set_to_none``: SANER's gradients are views into its buckets and are always zeroed in
place, so its peers are asked for the same work (``set_to_none`` only moves the cost into the next backward).

Floor traffic in bytes per fp32 element (what the step must read and write at least):

- SANER / SAM, 48: norm reads g (4); perturb reads g, w and writes w (12); update reads w, g, g_sgd, buf
  and writes w, buf, zero g, zero g_sgd (32). The two gradient buffers swap roles at
  ``first_step(zero_grad=True)``, so g is never copied into g_sgd.
- SGD, 24: step reads w, g, buf and writes w, buf (20); ``zero_grad`` writes g (4).

So 48 / 24 = 2.0 is the floor of "x fused SGD" for a bandwidth-bound step. The SAM family (issue 11; the
best backend only):

- Friendly-SAM and VaSSO, 64: the norm also reads the average (8), the perturbation reads it (16), the
  update reads and writes it (40).
- GSAM, 56: one more reduction pass reading g_sgd and g (8).

Over another base optimizer (docs/design.md, "Base optimizers"), against that base alone:

- fused AdamW, 32: its step reads w, g, exp_avg, exp_avg_sq and writes w, exp_avg, exp_avg_sq (28);
  ``zero_grad`` writes g (4).
- SANER over fused AdamW, 80: norm (4), perturb (12), the update in its direction setting reads w, g, g_sgd
  and writes w and the direction (20), the direction copied into the gradient buffer (8), AdamW's step (28),
  zeroing both gradient buffers (8). Its floor ratio to fused AdamW: 80 / 32 = 2.5.

The published loops are given
SANER's floor: their GB/s column is the rate at which they do SANER's necessary work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

import saner_kernels
from saner_kernels.ops import available_backends

from . import peers

HP = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)  # the paper's CIFAR settings
RHO, ALPHA = 0.1, 0.5
SANER_BYTES, SGD_BYTES = 48, 24
ADAMW_HP = dict(lr=1e-3, weight_decay=0.05)
ADAMW_BYTES, SANER_ADAMW_BYTES = 32, 80
VARIANT_BYTES = {"fsam": 64, "vasso": 64, "gsam": 56}

Phase = Callable[[], None]


@dataclass(frozen=True)
class Spec:
    """One row: how to build the optimizer and the phases of one training-loop step."""

    optimizer: str
    backend: str
    bytes_per_elem: int  # fp32 floor traffic of one step, zero_grad included
    timed: str = ""  # what one timed step runs, for the table
    build: Optional[Callable[[list], object]] = None
    phases: Optional[Callable[[object], list[Phase]]] = None
    graph: bool = False  # CUDA only: each phase captured once, replayed
    headline: bool = False  # the SANER row of the README's headline ratio
    skip: str = ""  # why the row is not run

    @property
    def label(self) -> str:
        return f"{self.optimizer} [{self.backend}]"


def sgd_phases(opt) -> list[Phase]:
    def step():
        opt.step()
        opt.zero_grad(set_to_none=False)

    return [step]


def saner_phases(opt) -> list[Phase]:
    return [lambda: opt.first_step(zero_grad=True), lambda: opt.second_step(zero_grad=True)]


def loop_phases(opt) -> list[Phase]:
    """The published loops' ``zero_grad`` sets grads to None; the training loop zeroes them in place here."""

    def first():
        opt.first_step()
        opt.zero_grad(set_to_none=False)

    def second():
        opt.second_step()
        opt.zero_grad(set_to_none=False)

    return [first, second]


SGD_TIMED = "step + zero_grad"
SANER_TIMED = "first_step + second_step (zero_grad=True)"
LOOP_TIMED = "first_step, zero_grad, second_step, zero_grad"
GRAPH_TIMED = "CUDA-graph replay of each phase of " + SANER_TIMED


def anchor_spec() -> Spec:
    """Fused SGD: every row is timed in alternation with it, and its ratio to it is "x fused SGD"."""
    return Spec("SGD fused", "torch", SGD_BYTES, SGD_TIMED, peers.sgd_fused, sgd_phases)


def saner_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(backends that can run on ``device``, {backend: why not} for the others)."""
    ok, not_ok = [], {}
    for name, status in available_backends(device).items():
        if (name, device.type) in (("cuda_cpp", "cpu"), ("cpp", "cuda")):
            continue  # the other device's native op: not a row of this table
        if name == "triton" and device.type == "cpu":
            not_ok[name] = "CPU runs only under the Triton interpreter: never benchmarked"
        elif status:
            ok.append(name)
        else:
            not_ok[name] = status.reason
    return ok, not_ok


def best_backend(device: torch.device) -> Optional[str]:
    """What ``backend="auto"`` picks for fp32 tensors on ``device``."""
    ok, _ = saner_backends(device)
    order = ("triton", "cuda_cpp", "reference") if device.type == "cuda" else ("cpp", "reference")
    return next((b for b in order if b in ok), None)


def saner_factory(backend: str, alpha: float, variant: str = "sam") -> Callable[[list], object]:
    def build(params):
        if alpha == 1.0:
            return saner_kernels.SAM(params, rho=RHO, backend=backend, variant=variant, **HP)
        return saner_kernels.SANER(params, rho=RHO, alpha=alpha, backend=backend, variant=variant, **HP)

    return build


def saner_over_adamw(backend: str) -> Callable[[list], object]:
    def build(params):
        adamw = dict(fused=True, **ADAMW_HP)
        return saner_kernels.SANER(params, torch.optim.AdamW, rho=RHO, alpha=ALPHA, backend=backend, **adamw)

    return build


def sam_loop(params):
    return peers.SAMLoop(params, rho=RHO, **HP)


def paper_loop(params):
    return peers.PaperSANERLoop(params, rho=RHO, alpha=ALPHA, **HP)


def row_specs(device: torch.device) -> list[Spec]:
    """Every row of the table on ``device``, fused SGD first."""
    specs = [anchor_spec(), Spec("SGD foreach", "torch", SGD_BYTES, SGD_TIMED, peers.sgd_foreach, sgd_phases)]
    ok, not_ok = saner_backends(device)
    best = best_backend(device)
    kinds = ((f"SANER a={ALPHA}", ALPHA), ("SAM (a=1)", 1.0))
    for label, alpha in kinds:
        for backend in ok:
            build, headline = saner_factory(backend, alpha), alpha == ALPHA and backend == best
            specs.append(Spec(label, backend, SANER_BYTES, SANER_TIMED, build, saner_phases, headline=headline))
        for backend, reason in not_ok.items():
            specs.append(Spec(label, backend, SANER_BYTES, skip=reason))
    if best is not None:
        for variant, floor in VARIANT_BYTES.items():
            build = saner_factory(best, ALPHA, variant)
            specs.append(Spec(f"SANER a={ALPHA} {variant}", best, floor, SANER_TIMED, build, saner_phases))
    specs.append(Spec("AdamW fused", "torch", ADAMW_BYTES, SGD_TIMED, peers.adamw_fused, sgd_phases))
    if best is not None:
        label = f"SANER a={ALPHA} over AdamW fused"
        specs.append(Spec(label, best, SANER_ADAMW_BYTES, SANER_TIMED, saner_over_adamw(best), saner_phases))
    if device.type == "cuda" and best is not None:
        for label, alpha in kinds:
            build = saner_factory(best, alpha)
            specs.append(Spec(f"{label} graph", best, SANER_BYTES, GRAPH_TIMED, build, saner_phases, graph=True))
    specs.append(Spec("SAM loop (davda54)", "torch", SANER_BYTES, LOOP_TIMED, sam_loop, loop_phases))
    specs.append(Spec("SANER loop (paper)", "torch", SANER_BYTES, LOOP_TIMED, paper_loop, loop_phases))
    return specs
