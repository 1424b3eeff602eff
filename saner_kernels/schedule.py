"""The paper's alpha schedule: linear from 1 to each group's target over ``k`` epochs (docs/usage.md)."""

from __future__ import annotations

import torch


def scheduled_alpha(target: float, epoch: int, k: int) -> float:
    """``1 - (1 - target) * min(epoch, k) / k``; epoch 0 gives exactly 1.0, ``k == 0`` the target."""
    if k == 0:
        return float(target)
    if epoch <= 0:
        return 1.0
    if epoch >= k:
        return float(target)
    return 1.0 - (1.0 - target) * epoch / k


class AlphaScheduler:
    """Sets each param group's ``alpha`` once per epoch, like an LR scheduler, on the SANER authors' schedule.

    Their loop numbers epochs from 1 and sets alpha before each (``optimizer.set_alpha(get_alpha(epoch))``):
    epoch ``e`` trains at ``scheduled_alpha(target, e, k)``, so the first epoch at ``1 - (1 - target) / k``
    and epoch ``k`` on at the target; ``k = 0`` trains at the target from the start. Construction sets the
    first epoch's alpha; ``step()`` after each epoch moves to the next. ``start_at_one=True`` numbers the
    first epoch 0 instead (it trains at exactly 1.0, plain SAM), one epoch behind the authors' schedule.

    The target of a group is its ``alpha`` when the scheduler is made (kept as ``alpha_target`` in the
    group, so an optimizer checkpoint carries it).

        sched = AlphaScheduler(opt, k=50)
        for epoch in range(epochs):
            train_one_epoch(...)
            sched.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int, start_at_one: bool = False):
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"AlphaScheduler: k must be a non-negative int (epochs of warm-up), got {k!r}")
        for group in optimizer.param_groups:
            if "alpha" not in group:
                raise TypeError("AlphaScheduler needs an optimizer whose param groups have 'alpha' (SANER)")
            group.setdefault("alpha_target", group["alpha"])
        self.optimizer = optimizer
        self.k = k
        self.first_epoch = 0 if start_at_one else 1
        self.epoch = self.first_epoch
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            if "alpha_target" in group:
                group["alpha"] = scheduled_alpha(group["alpha_target"], self.epoch, self.k)

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def get_alpha(self) -> list[float]:
        return [group["alpha"] for group in self.optimizer.param_groups if "alpha_target" in group]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "k": self.k, "first_epoch": self.first_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.k = int(state["epoch"]), int(state["k"])
        self.first_epoch = int(state.get("first_epoch", 0))  # checkpoints before the authors' schedule: epoch 0
        self._apply()
