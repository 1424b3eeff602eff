"""Training loops users combine the optimizer with: gradient accumulation and torch.compile'd models."""

from __future__ import annotations

import pytest
import torch
from toy_models import MODELS, batches, loss_fn, max_rel_err, twin

from saner_kernels import SAM, SANER

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1)
# Inductor fuses the forward/backward differently from eager: last-bit differences, grown over 4 steps.
COMPILED_RTOL = 2e-5  # seen: 3.9e-6


@pytest.mark.parametrize("optimizer", [SANER, SAM])
def test_gradient_accumulation_equals_one_large_batch(optimizer):
    """Accumulate g_SGD over micro-batches, first_step, accumulate g_SAM over the same micro-batches,
    second_step: one step on the concatenated batch. fp64 (no BatchNorm) so that only summation order
    differs."""
    model = MODELS["mlp"](dtype=torch.float64)
    big = twin(model)
    data = batches("mlp", 3, dtype=torch.float64)
    opt = optimizer(model.parameters(), backend="reference", **HYPER)
    opt_big = optimizer(big.parameters(), backend="reference", **HYPER)
    for x, y in data:
        micro = list(zip(x.chunk(4), y.chunk(4)))
        for batch in micro:
            (loss_fn(model, batch) / len(micro)).backward()
        opt.first_step(zero_grad=True)
        for batch in micro:
            (loss_fn(model, batch) / len(micro)).backward()
        opt.second_step(zero_grad=True)

        loss_fn(big, (x, y)).backward()
        opt_big.first_step(zero_grad=True)
        loss_fn(big, (x, y)).backward()
        opt_big.second_step(zero_grad=True)
    assert max_rel_err(model, big) < 1e-12


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters  # the compile counters (no public equivalent)

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("optimizer", [SANER, SAM])
def test_compiled_model_trains_like_eager_and_compiles_once(optimizer):
    """Both passes through torch.compile(model), BatchNorm included."""
    torch._dynamo.reset()
    model = MODELS["conv"]()
    eager = twin(model)
    compiled = torch.compile(model)
    data = batches("conv", 4)
    opt = optimizer(model.parameters(), **HYPER)
    opt_eager = optimizer(eager.parameters(), **HYPER)
    for batch in data:
        for m, o in ((compiled, opt), (eager, opt_eager)):
            loss_fn(m, batch).backward()
            o.first_step(zero_grad=True)
            loss_fn(m, batch).backward()
            o.second_step(zero_grad=True)
    assert max_rel_err(model, eager) <= COMPILED_RTOL
    # At most one recompile: when the parameters become bucket views after the first step.
    assert _unique_graphs() <= 2, _unique_graphs()
