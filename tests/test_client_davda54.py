"""davda54/sam's code runs on saner_kernels with one import line changed (docs/migrating.md, "From davda54/sam").

The training loop is written the way davda54/sam's README and example/train.py write it: ``SAM(params,
torch.optim.SGD, rho=2.0, adaptive=True, lr=0.1, momentum=0.9, weight_decay=5e-4)`` (the base optimizer
positional), a step-wise LR schedule on ``optimizer.base_optimizer``, the BatchNorm momentum bypass for the
second pass, label-smoothed cross-entropy, ``first_step(zero_grad=True)``/``second_step(zero_grad=True)``, and
the README's ``step(closure)`` form. The reference is davda54's SAM class itself (copied below, per
parameter), on a small Wide-ResNet-like net in fp64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from saner_kernels import SAM

TIGHT = 1e-12
SETTINGS = dict(rho=2.0, adaptive=True, lr=0.1, momentum=0.9, weight_decay=5e-4)  # example/train.py's


class Davda54SAM(torch.optim.Optimizer):
    """davda54/sam's sam.py, as published (the reference; only its assertions and comments left out)."""

    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        closure()
        self.second_step()

    def _grad_norm(self):
        shared_device = self.param_groups[0]["params"][0].device
        return torch.norm(
            torch.stack(
                [
                    ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2).to(shared_device)
                    for group in self.param_groups
                    for p in group["params"]
                    if p.grad is not None
                ]
            ),
            p=2,
        )


# ---------------------------------------------------------------- davda54's example/utility, as published
def smooth_crossentropy(pred, gold, smoothing=0.1):
    n_class = pred.size(1)
    one_hot = torch.full_like(pred, fill_value=smoothing / (n_class - 1))
    one_hot.scatter_(dim=1, index=gold.unsqueeze(1), value=1.0 - smoothing)
    log_prob = F.log_softmax(pred, dim=1)
    return F.kl_div(input=log_prob, target=one_hot, reduction="none").sum(-1)


def disable_running_stats(model):
    def _disable(module):
        if isinstance(module, _BatchNorm):
            module.backup_momentum = module.momentum
            module.momentum = 0

    model.apply(_disable)


def enable_running_stats(model):
    def _enable(module):
        if isinstance(module, _BatchNorm) and hasattr(module, "backup_momentum"):
            module.momentum = module.backup_momentum

    model.apply(_enable)


class BasicBlock(nn.Module):
    """A pre-activation Wide-ResNet block (BN-ReLU-conv twice, a 1x1 shortcut when the shape changes)."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, 3, stride, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(out_channels), nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        same_shape = in_channels == out_channels and stride == 1
        self.shortcut = None if same_shape else nn.Conv2d(in_channels, out_channels, 1, stride)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


def tiny_wide_resnet(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        BasicBlock(4, 8, 1),
        BasicBlock(8, 8, 2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).double()


def image_batches(count=3, batch=4, classes=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, 6, 6, generator=generator, dtype=torch.float64),
            torch.randint(0, classes, (batch,), generator=generator),
        )
        for _ in range(count)
    ]


def train_two_step(model, optimizer, data, epochs):
    """example/train.py's loop (the schedule stepped every batch, on the base optimizer)."""
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer.base_optimizer, step_size=2, gamma=0.2)
    model.train()
    for _ in range(epochs):
        for inputs, targets in data:
            enable_running_stats(model)
            predictions = model(inputs)
            loss = smooth_crossentropy(predictions, targets, smoothing=0.1)
            loss.mean().backward()
            optimizer.first_step(zero_grad=True)

            disable_running_stats(model)
            smooth_crossentropy(model(inputs), targets, smoothing=0.1).mean().backward()
            optimizer.second_step(zero_grad=True)
            scheduler.step()


def train_closure(model, optimizer, data, epochs):
    """The README's step(closure) form."""
    model.train()
    for _ in range(epochs):
        for inputs, targets in data:

            def closure(inputs=inputs, targets=targets):
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                return loss

            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step(closure)
            optimizer.zero_grad()


@pytest.mark.parametrize("train", [train_two_step, train_closure], ids=["first_step-second_step", "closure"])
def test_davda54_training_loop_equals_davda54s_sam(train):
    model = tiny_wide_resnet()
    reference = copy.deepcopy(model)
    data = image_batches()
    train(model, SAM(model.parameters(), torch.optim.SGD, **SETTINGS), data, epochs=2)
    train(reference, Davda54SAM(reference.parameters(), torch.optim.SGD, **SETTINGS), data, epochs=2)

    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:  # weights and the BatchNorm running statistics
        assert (ours[name] - theirs[name]).abs().max().item() < TIGHT, name
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), tiny_wide_resnet().parameters()))
    assert moved > 1e-3


def test_the_schedule_on_base_optimizer_reaches_the_step():
    """StepLR on optimizer.base_optimizer writes the lr SAM steps with (the groups are shared)."""
    model = tiny_wide_resnet()
    optimizer = SAM(model.parameters(), torch.optim.SGD, **SETTINGS)
    train_two_step(model, optimizer, image_batches(), epochs=2)  # 6 steps, step_size 2: three decays
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.2**3, rel=1e-12)
    assert optimizer.param_groups is optimizer.base_optimizer.param_groups
