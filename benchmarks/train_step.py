"""The optimizer's share of a whole SANER training step: two forward/backward passes on random 32x32
batches plus ``first_step(zero_grad=True)`` and ``second_step(zero_grad=True)``, each part synchronized and
timed on its own."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from saner_kernels.train.models import build_model

from .measure import free_memory, sync
from .microbench import error_status
from .rows import ALPHA, best_backend, sam_loop, saner_factory


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


def _variants(device: torch.device) -> list[tuple[str, str, object]]:
    best = best_backend(device)
    variants = [(f"SANER a={ALPHA}", best, saner_factory(best, ALPHA))]
    if best != "reference":
        variants.append((f"SANER a={ALPHA}", "reference", saner_factory("reference", ALPHA)))
    variants.append(("SAM loop (davda54)", "torch", sam_loop))
    return variants


def _timed_step(model, opt, x, y, device) -> tuple[float, float]:
    """(ms of the whole step, ms of its two optimizer calls)."""
    marks = []

    def mark():
        sync(device)
        marks.append(time.perf_counter())

    mark()
    F.cross_entropy(model(x), y).backward()
    mark()
    opt.first_step(zero_grad=True)
    mark()
    F.cross_entropy(model(x), y).backward()
    mark()
    opt.second_step(zero_grad=True)
    mark()
    t = marks
    return (t[4] - t[0]) * 1e3, ((t[2] - t[1]) + (t[4] - t[3])) * 1e3


def train_rows(device: torch.device, model_name: str, batch: int, iters: int, warmup: int) -> list[TrainRow]:
    torch.manual_seed(0)
    template = build_model(model_name, num_classes=10).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    rows = []
    for variant, backend, build in _variants(device):
        row = TrainRow(model_name, batch, variant, backend)
        model = opt = None
        try:
            model = copy.deepcopy(template)
            params = list(model.parameters())
            opt = build(params)
            with torch.no_grad():  # optimizer-only warm-up (buckets, momentum, JIT) without the slow passes
                for p in params:
                    p.grad = torch.randn_like(p).mul_(1e-3)
            opt.first_step(zero_grad=True)
            opt.second_step(zero_grad=True)
            for _ in range(warmup):
                _timed_step(model, opt, x, y, device)
            results = [_timed_step(model, opt, x, y, device) for _ in range(iters)]
            row.ms = statistics.median(total for total, _ in results)
            row.optimizer_ms = statistics.median(part for _, part in results)
            row.optimizer_share_pct = 100 * row.optimizer_ms / row.ms
            row.n_timed = len(results)
        except Exception as exc:  # one broken variant must not lose the table
            row.status = error_status(exc)
        finally:
            del model, opt
            free_memory(device)
        rows.append(row)
    return rows
