"""The two gradient buffers of a bucket (docs/design.md, "Gradient buffers"): what ``p.grad`` is after
each call, in every mix of ``zero_grad`` arguments, and that every mix trains like the plain loop."""

from __future__ import annotations

import pytest
import torch
from contract_cases import OPTIMIZER_RTOL
from plain_loop import PlainLoopSANER
from toy_models import MODELS, batches, loss_fn, max_rel_err, twin

from saner_kernels import SANER, available_backends

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, alpha=0.5)
CPU_BACKENDS = [name for name, ok in available_backends("cpu").items() if ok]


def grad_storages(model) -> set:
    return {p.grad.untyped_storage().data_ptr() for p in model.parameters()}


def test_first_step_zero_grad_swaps_instead_of_copying():
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    batch = batches("mlp", 1)[0]
    loss_fn(model, batch).backward()
    opt.first_step(zero_grad=True)  # builds the buckets on this first call
    bucket = opt.buckets()[0]
    loss_fn(model, batch).backward()
    opt.second_step(zero_grad=True)
    assert not bucket.flat_grad.any() and not bucket.flat_g_sgd.any(), "the update zeroes both buffers"

    loss_fn(model, batch).backward()
    old_grads = [p.grad for p in model.parameters()]
    g_sgd = [g.clone() for g in old_grads]
    storage_before = grad_storages(model)
    opt.first_step(zero_grad=True)
    # p.grad is a new, zero tensor in the other buffer; the old reference still holds g_SGD.
    assert grad_storages(model).isdisjoint(storage_before) and len(grad_storages(model)) == 1
    for p, old, g in zip(model.parameters(), old_grads, g_sgd):
        assert p.grad is not old and not p.grad.any()
        assert torch.equal(old, g)
    assert bucket.flat_g_sgd.data_ptr() in storage_before
    loss_fn(model, batch).backward()
    opt.second_step(zero_grad=True)
    for old in old_grads:  # zeroed by the update: ready to become the gradient buffer again
        assert not old.any()


def test_zero_grad_false_keeps_the_documented_semantics():
    """first_step(zero_grad=False): p.grad keeps g (the same tensors), g_sgd is a copy."""
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    batch = batches("mlp", 1)[0]
    _train(model, opt, [batch], [(True, True)])  # the buckets exist: p.grad are their views from now on
    loss_fn(model, batch).backward()
    grads = [p.grad for p in model.parameters()]
    values = [g.clone() for g in grads]
    opt.first_step(zero_grad=False)
    for p, g, v in zip(model.parameters(), grads, values):
        assert p.grad is g and torch.equal(p.grad, v)
    opt.zero_grad()
    loss_fn(model, batch).backward()
    opt.second_step(zero_grad=False)
    assert all(p.grad.any() for p in model.parameters()), "second_step(zero_grad=False) keeps g_SAM"


def _train(model, opt, data, pattern):
    """One SANER step per batch, zero_grad arguments and user zero_grad() calls as ``pattern`` says."""
    for i, batch in enumerate(data):
        first_zero, second_zero = pattern[i % len(pattern)]
        loss_fn(model, batch).backward()
        opt.first_step(zero_grad=first_zero)
        if not first_zero:
            opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.second_step(zero_grad=second_zero)
        if not second_zero:
            opt.zero_grad()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "pattern",
    [
        [(True, True)],
        [(False, False)],
        [(True, False)],
        [(False, True)],
        [(True, True), (False, False), (True, False), (False, True), (True, True)],
    ],
    ids=["swap", "copy", "swap-then-keep", "copy-then-zero", "mixed"],
)
def test_every_zero_grad_mix_trains_like_the_plain_loop(backend, pattern):
    data = batches("mlp", 7)
    model = MODELS["mlp"]()
    oracle = twin(model)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    _train(model, opt, data, pattern)
    loop = PlainLoopSANER(
        [dict(params=list(oracle.parameters()), dampening=0.0, nesterov=False, adaptive=False, ratio_eps=1e-8, **HYPER)]
    )
    for batch in data:
        loss_fn(oracle, batch).backward()
        loop.first_step()
        loss_fn(oracle, batch).backward()
        loop.second_step()
    assert max_rel_err(model, oracle) <= OPTIMIZER_RTOL["reference" if backend == "reference" else "kernel"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unfrozen_layer_goes_through_the_buckets_own_backend(backend, monkeypatch):
    """The mixed first-momentum case (dampening, a layer unfrozen) never calls another backend's ops."""
    from saner_kernels.ops import reference

    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), backend=backend, dampening=0.3, **HYPER)
    data = batches("mlp", 3)
    for p in model[0].parameters():
        p.requires_grad_(False)
    _train(model, opt, data[:1], [(True, True)])
    for p in model[0].parameters():
        p.requires_grad_(True)
    calls = []
    if backend != "reference":
        monkeypatch.setattr(reference, "update_", lambda *a, **k: calls.append("reference"))
    _train(model, opt, data[1:], [(True, True)])
    assert not calls
    assert opt.backends() == [backend]
