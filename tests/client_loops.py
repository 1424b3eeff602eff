"""Shared pieces of the framework client tests (tests/test_client_*.py): a tiny fp64 problem and a plain
two-pass SAM/SANER loop written from the paper's algorithm, one parameter at a time, that never touches
saner_kernels. The frameworks drive SANER; this loop drives plain tensors; the tests compare the weights.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

FEATURES, CLASSES, SAMPLES, BATCH = 4, 3, 16, 4


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, CLASSES)).to(dtype)


def tiny_data(seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=generator, dtype=dtype)
    y = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def batches(dataset, batch_size: int = BATCH) -> list:
    """The batches an unshuffled DataLoader yields, in order."""
    return list(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False))


def loss_of(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class PlainTwoPassSAM:
    """SANER (SAM when alpha = 1) over any torch base optimizer, per parameter, from the algorithm:

    g1 at w; e = (w*w if adaptive else 1) * g1 * rho / ||(|w| if adaptive else 1) * g1||; g2 at w + e;
    back to w (the saved copy); Group B (0 < g2 / (g1 + eps) < 1) of g2 scaled by alpha; the base steps on it.
    ``clip_norm``: each gradient named in ``clip_passes`` ("first": g_SGD, "second": g_SAM) clipped by its own
    norm right after its backward (Lightning's ``gradient_clip_val`` clips both; a clip written between the
    second backward and the second step, as ``accelerator.clip_grad_norm_``, only the second).
    ``clip_update_norm``: the update clipped by g_SAM's norm, the mask from the unclipped gradients (SANER's own
    ``clip_grad_norm_``, docs/design.md "Gradient clipping").
    """

    def __init__(
        self,
        params,
        base_optimizer=torch.optim.SGD,
        *,
        rho: float,
        alpha: float = 1.0,
        adaptive: bool = False,
        eps: float = 1e-8,
        clip_norm: Optional[float] = None,
        clip_passes: tuple = ("first", "second"),
        clip_update_norm: Optional[float] = None,
        **base_kwargs,
    ):
        self.params = list(params)
        self.base = base_optimizer(self.params, **base_kwargs)
        self.rho, self.alpha, self.adaptive, self.eps = rho, alpha, adaptive, eps
        self.clip_norm, self.clip_passes = clip_norm, clip_passes
        self.clip_update_norm = clip_update_norm

    def _gradients(self, forward_backward: Callable[[], torch.Tensor], which: str) -> tuple[torch.Tensor, list]:
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = forward_backward()
        if self.clip_norm is not None and which in self.clip_passes:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        return loss, [p.grad.clone() for p in self.params]

    def step(self, forward_backward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One SAM step; ``forward_backward`` runs forward and backward at the current weights."""
        loss, g_sgd = self._gradients(forward_backward, "first")
        self.ascend(g_sgd)
        _, g_sam = self._gradients(forward_backward, "second")
        self.descend(g_sgd, g_sam)
        return loss

    @torch.no_grad()
    def ascend(self, g_sgd: list) -> None:
        weighted = [(p.abs() if self.adaptive else 1.0) * g for p, g in zip(self.params, g_sgd)]
        norm = torch.stack([w.double().pow(2).sum() for w in weighted]).sum().sqrt()
        self._saved = [p.clone() for p in self.params]
        for p, g in zip(self.params, g_sgd):
            scale = (self.rho / (norm + 1e-12)).to(p.dtype)
            p.add_((p * p if self.adaptive else 1.0) * g * scale)

    @torch.no_grad()
    def descend(self, g_sgd: list, g_sam: list) -> None:
        factor = 1.0
        if self.clip_update_norm is not None:  # the mask from the unclipped gradients; the step clipped
            norm = torch.stack([g.double().pow(2).sum() for g in g_sam]).sum().sqrt()
            # applied as an fp32 factor, like GradScaler's 1/scale (docs/design.md, "Gradient clipping")
            factor = torch.clamp(self.clip_update_norm / (norm + 1e-6), max=1.0).float().double()
        for p, saved, g1, g2 in zip(self.params, self._saved, g_sgd, g_sam):
            p.copy_(saved)
            ratio = g2 / (g1 + self.eps)
            group_b = (ratio > 0) & (ratio < 1)
            p.grad = torch.where(group_b, self.alpha * g2, g2) * factor
        self.base.step()


def plain_run(
    model: nn.Module, data: list, epochs: int = 1, *, loss=loss_of, autocast: Optional[dict] = None, **sam_kwargs
) -> nn.Module:
    """A copy of ``model`` trained by PlainTwoPassSAM over ``data`` (a list of batches) for ``epochs``."""
    model = copy.deepcopy(model)
    optimizer = PlainTwoPassSAM(model.parameters(), **sam_kwargs)
    for _ in range(epochs):
        for batch in data:

            def forward_backward(batch=batch):
                with torch.autocast(**autocast) if autocast else torch.enable_grad():
                    value = loss(model, batch)
                value.backward()
                return value

            optimizer.step(forward_backward)
    return model


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
