"""The two closure conventions of ``step(closure)`` and how the optimizer tells them apart (docs/design.md,
"Closures").

- ``second_pass`` (davda54/sam): the caller ran the first forward and backward; the closure runs the
  second, at ``w + e``.
- ``both_passes`` (torch.optim's, as LBFGS and PyTorch Lightning use it): the closure computes the loss and
  its gradient at the current weights; the optimizer calls it at ``w`` and again at ``w + e``.

``auto`` decides by whether a backward has produced gradients since the last step (or ``zero_grad``): a
flag set by a post-accumulate-grad hook on every parameter, so no device value is read. A closure from
PyTorch Lightning's automatic optimization always means ``both_passes``; Lightning with fresh gradients
before the step is gradient accumulation, which cannot give SAM both gradients over the window.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable, Iterable

from torch import Tensor

CONVENTIONS = ("auto", "second_pass", "both_passes")
STEP_API_HELP = (
    "SANER/SAM need two gradients per step. Either\n"
    "  loss_fn(model(x)).backward(); opt.first_step(zero_grad=True)\n"
    "  loss_fn(model(x)).backward(); opt.second_step(zero_grad=True)\n"
    "or opt.step(closure): after the first backward with a closure that runs forward and backward (davda54/sam), "
    "or with a closure that runs forward and backward itself (torch.optim's convention)."
)
SCALER_WITHOUT_FIRST_STEP = (
    "GradScaler.step(optimizer) came without first_step(): SAM/SANER need two gradients per step. PyTorch "
    "Lightning's precision='16-mixed' runs the training closure once itself and then steps the optimizer: use "
    "precision='bf16-mixed' (no scaler), or manual optimization with first_step/second_step (docs/migrating.md)."
)


def check_convention(name: str) -> None:
    if name not in CONVENTIONS:
        raise ValueError(
            f"Invalid closure={name!r}: 'second_pass' (davda54/sam: you run the first backward, the closure the "
            "second), 'both_passes' (torch/Lightning: the closure runs forward and backward at the current weights; "
            "the optimizer calls it twice) or 'auto' (decided by whether a backward ran since the last step)"
        )


class BackwardWatch:
    """Whether a backward has accumulated gradients into any watched parameter since ``reset``."""

    def __init__(self):
        self.seen = False
        self._watched: set[int] = set()

    def watch(self, params: Iterable[Tensor]) -> None:
        ref = weakref.ref(self)

        def mark(_param, ref=ref):
            watch = ref()
            if watch is not None:
                watch.seen = True

        for p in params:
            if p.requires_grad and id(p) not in self._watched:
                p.register_post_accumulate_grad_hook(mark)
                self._watched.add(id(p))

    def reset(self) -> None:
        self.seen = False


def from_lightning(closure: Callable) -> bool:
    """A closure made by PyTorch Lightning's automatic optimization: Lightning's precision plugin wraps the
    training closure in ``functools.partial(plugin._wrap_closure, model, optimizer, closure)``. Under manual
    optimization the same wrapper carries the user's closure, which follows ``closure=``."""
    models = []
    while isinstance(closure, functools.partial):
        models += [a for a in closure.args if hasattr(a, "automatic_optimization")]
        closure = closure.func
    owner = getattr(closure, "__self__", closure)
    module = getattr(type(owner), "__module__", "") or ""
    if not module.startswith(("lightning.", "pytorch_lightning.", "lightning_fabric.")):
        return False
    return all(model.automatic_optimization for model in models)


def resolve(convention: str, closure: Callable, backward_seen: bool) -> str:
    """The convention this ``step(closure)`` call follows, or a clear error where it cannot be told."""
    if from_lightning(closure):
        if backward_seen:
            raise RuntimeError(
                "PyTorch Lightning called step(closure) with gradients already accumulated (accumulate_grad_batches "
                "> 1): SAM needs every micro-batch's gradient at w and at w + e, and Lightning's automatic "
                "optimization computes the earlier ones at w only. Use manual optimization "
                "(docs/migrating.md, 'Lightning') or accumulate_grad_batches=1."
            )
        return "both_passes"
    if convention == "auto":
        return "second_pass" if backward_seen else "both_passes"
    if convention == "second_pass" and not backward_seen:
        raise RuntimeError(
            "step(closure) with closure='second_pass' (davda54/sam's convention) needs the first forward and "
            "backward before it: loss_fn(model(x), y).backward(); optimizer.step(closure). If your closure runs "
            "forward and backward itself, construct the optimizer with closure='both_passes'."
        )
    return convention
