"""Small models and fixed batches shared by the optimizer tests."""

from __future__ import annotations

import copy

import torch
from torch import nn


def mlp(dtype=torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 33), nn.Tanh(), nn.Linear(33, 17), nn.Tanh(), nn.Linear(17, 4)).to(dtype)


def conv_net(dtype=torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).to(dtype)


MODELS = {"mlp": mlp, "conv": conv_net}


def batches(kind: str, n_steps: int, dtype=torch.float32, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    shape = (16, 10) if kind == "mlp" else (8, 3, 9, 9)
    return [
        (torch.randn(shape, generator=gen).to(dtype), torch.randint(0, 4, (shape[0],), generator=gen))
        for _ in range(n_steps)
    ]


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def max_rel_err(a: nn.Module, b: nn.Module) -> float:
    """max over parameters of ||a - b||_inf / ||b||_inf."""
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pb.numel():
            worst = max(worst, ((pa - pb).abs().max() / pb.abs().max().clamp_min(1e-30)).item())
    return worst


def run_saner(model, opt, data, closure_api: bool = False):
    for batch in data:
        if closure_api:
            loss_fn(model, batch).backward()
            opt.step(lambda batch=batch: loss_fn(model, batch).backward())
            opt.zero_grad()
        else:
            loss_fn(model, batch).backward()
            opt.first_step(zero_grad=True)
            loss_fn(model, batch).backward()
            opt.second_step(zero_grad=True)


def snapshot(model: nn.Module, opt) -> tuple[dict, dict]:
    """Copies of the model's and the optimizer's state dicts, for ``assert_unchanged``."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def assert_unchanged(model: nn.Module, opt, before: tuple[dict, dict]) -> None:
    """The model's weights and buffers and every optimizer state tensor are bit-identical to ``before``."""
    model_sd, opt_sd = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, model_sd[k]), k
    now = opt.state_dict()["state"]
    assert now.keys() == opt_sd["state"].keys()
    for k, st in now.items():
        assert st.keys() == opt_sd["state"][k].keys(), k
        for name, v in st.items():
            assert torch.equal(v, opt_sd["state"][k][name]), (k, name)
