"""The reference backend, driven by the optimizer, against oracles written from docs/design.md, "Semantics"."""

import pytest
import torch
from plain_loop import PlainLoopSANER, davda54_sam_step
from toy_models import MODELS, batches, loss_fn, max_rel_err, run_saner, twin

from saner_kernels import SAM, SANER

VARIANTS = [
    dict(momentum=0.9, dampening=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.0, nesterov=True),
    dict(momentum=0.8, dampening=0.3, nesterov=False),
    dict(momentum=0.0, dampening=0.0, nesterov=False),
]


def run_loop(model, hyper, data):
    loop = PlainLoopSANER([dict(params=list(model.parameters()), **hyper)])
    for batch in data:
        loss_fn(model, batch).backward()
        loop.first_step()
        loss_fn(model, batch).backward()
        loop.second_step()


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_reference_matches_plain_loop(kind, dtype, alpha, adaptive, variant):
    hyper = dict(
        lr=0.05,
        weight_decay=5e-4,
        rho=0.5 if adaptive else 0.1,
        alpha=alpha,
        adaptive=adaptive,
        ratio_eps=1e-8,
        **VARIANTS[variant],
    )
    model = MODELS[kind](dtype)
    oracle = twin(model)
    data = batches(kind, 10, dtype)
    run_saner(model, SANER(model.parameters(), backend="reference", **hyper), data)
    run_loop(oracle, hyper, data)
    assert max_rel_err(model, oracle) <= (1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_rho0_alpha1_is_torch_sgd(variant, weight_decay):
    hyper = dict(lr=0.05, weight_decay=weight_decay, **VARIANTS[variant])
    model = MODELS["conv"]()
    twin_model = twin(model)
    data = batches("conv", 6)
    run_saner(model, SANER(model.parameters(), rho=0.0, alpha=1.0, backend="reference", **hyper), data)
    sgd = torch.optim.SGD(twin_model.parameters(), **hyper)
    for batch in data:
        # the same two forward passes, so BatchNorm running statistics move alike
        loss_fn(twin_model, batch).backward()
        sgd.zero_grad()
        loss_fn(twin_model, batch).backward()
        sgd.step()
        sgd.zero_grad()
    for p, q in zip(model.parameters(), twin_model.parameters()):
        # bit for bit or one unit in the last place
        assert torch.allclose(p, q, rtol=2**-23, atol=0), (p - q).abs().max()


@pytest.mark.parametrize("closure_api", [False, True])
def test_sam_matches_davda54_loop(closure_api):
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
    model = MODELS["conv"]()
    oracle = twin(model)
    data = batches("conv", 8)
    run_saner(model, SAM(model.parameters(), rho=0.1, backend="reference", **hyper), data, closure_api)
    sgd = torch.optim.SGD(oracle.parameters(), **hyper)
    for batch in data:
        loss_fn(oracle, batch).backward()
        davda54_sam_step(list(oracle.parameters()), sgd, 0.1, lambda batch=batch: loss_fn(oracle, batch).backward())
        sgd.zero_grad()
    assert max_rel_err(model, oracle) <= 1e-6


def test_two_groups_with_their_own_hyperparameters():
    model = MODELS["mlp"]()
    oracle = twin(model)
    data = batches("mlp", 10)

    def groups(m):
        layers = list(m.children())
        return [
            dict(params=list(layers[0].parameters()), lr=0.1, alpha=0.3, rho=0.2),
            dict(
                params=list(layers[2].parameters()) + list(layers[4].parameters()),
                lr=0.02,
                alpha=0.8,
                rho=0.05,
                adaptive=True,
            ),
        ]

    run_saner(model, SANER(groups(model), lr=1.0, momentum=0.9, weight_decay=5e-4, backend="reference"), data)
    defaults = dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=5e-4, adaptive=False, ratio_eps=1e-8)
    run_loop_groups = PlainLoopSANER([{**defaults, **g} for g in groups(oracle)])
    for batch in data:
        loss_fn(oracle, batch).backward()
        run_loop_groups.first_step()
        loss_fn(oracle, batch).backward()
        run_loop_groups.second_step()
    assert max_rel_err(model, oracle) <= 1e-6
