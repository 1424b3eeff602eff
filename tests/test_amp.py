"""Mixed precision (docs/design.md, "Mixed precision"): the stock torch.amp.GradScaler, CPU autocast.

Every CPU-runnable backend: the C++ op, the reference, and Triton under the interpreter (that parameter
runs in the TRITON_INTERPRET=1 pytest process, see tests/conftest.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from toy_models import MODELS, batches, loss_fn, twin

from saner_kernels import SANER

BACKENDS = ["reference", "cpp", pytest.param("triton", marks=pytest.mark.interpreter)]
HYPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, alpha=0.5)


def scaler(init_scale: float = 2.0**12, growth_interval: int = 2000) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)


def plain_step(model, opt, batch, clip=None):
    loss_fn(model, batch).backward()
    opt.first_step(zero_grad=True)
    loss_fn(model, batch).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.second_step(zero_grad=True)


def scaled_step(model, opt, sc, batch, inject=(), clip=None, autocast=None):
    """The issue's loop; ``inject`` names the passes ("first", "second") whose gradient gets an inf."""

    def backward():
        if autocast is None:
            loss = loss_fn(model, batch)
        else:
            with torch.autocast("cpu", dtype=autocast):
                loss = loss_fn(model, batch)
        sc.scale(loss).backward()

    backward()
    if "first" in inject:
        next(model.parameters()).grad[0, 0] = float("inf")
    opt.first_step(zero_grad=True)
    backward()
    if "second" in inject:
        next(model.parameters()).grad[0, 1] = float("inf")
    if clip is not None:
        sc.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    sc.step(opt)
    sc.update()


def max_abs_diff_over_largest(a, b) -> float:
    largest = max(p.abs().max().item() for p in b.parameters())
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) / largest


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_scaled_loop_equals_unscaled_saner(backend, kind):
    """Power-of-two scale, fp32 parameters: 12 steps equal SANER fed the unscaled gradients."""
    model = MODELS[kind]()
    other = twin(model)
    data = batches(kind, 12)
    opt = SANER(model.parameters(), backend=backend, track_groups=True, **HYPER)
    ref = SANER(other.parameters(), backend=backend, track_groups=True, **HYPER)
    sc = scaler()
    for batch in data:
        scaled_step(model, opt, sc, batch)
        plain_step(other, ref, batch)
    assert max_abs_diff_over_largest(model, other) <= 1e-6
    assert opt.group_fractions() == pytest.approx(ref.group_fractions(), abs=1e-3)
    assert opt.skipped_steps == 0 and sc.get_scale() == 2.0**12
    for p in model.parameters():
        assert not p.grad.any(), "scaler.step(opt) zeroes the gradients like second_step(zero_grad=True)"


def _state(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inject", [("first",), ("second",), ("first", "second")], ids="+".join)
def test_overflow_skips_the_step_and_backs_off(backend, inject):
    model = MODELS["mlp"]()
    data = batches("mlp", 4)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    sc = scaler()
    scaled_step(model, opt, sc, data[0])  # momentum exists now
    model_before, opt_before = _state(model, opt)
    scaled_step(model, opt, sc, data[1], inject=inject)

    assert sc.get_scale() == 2.0**11, "scaler.update() backs off in every overflow case"
    assert opt.skipped_steps == 1
    after = opt.state_dict()
    for k, st in after["state"].items():
        assert torch.equal(st["momentum_buffer"], opt_before["state"][k]["momentum_buffer"])
    for name, w in model.state_dict().items():
        if "first" in inject:  # nothing was perturbed: bit-identical
            assert torch.equal(w, model_before[name]), name
        else:  # perturbed, then restored as the update restores: w + e - e
            torch.testing.assert_close(w, model_before[name], rtol=1e-6, atol=1e-7)
    # The next step trains normally.
    scaled_step(model, opt, sc, data[2])
    assert opt.skipped_steps == 1
    assert any(not torch.equal(w, model_before[n]) for n, w in model.state_dict().items())


def test_second_pass_overflow_restores_exactly_as_the_update_does():
    """w + e - e with the reference's rounding: compare with restore_ on the same perturbation."""
    model = MODELS["mlp"]()
    twin_model = twin(model)
    batch = batches("mlp", 1)[0]
    opt = SANER(model.parameters(), backend="reference", **HYPER)
    sc = scaler()
    scaled_step(model, opt, sc, batch, inject=("second",))
    other = SANER(twin_model.parameters(), backend="reference", **HYPER)
    loss_fn(twin_model, batch).backward()
    for p in twin_model.parameters():
        p.grad.mul_(2.0**12)  # the same scaled gradient the scaler's loop produced

    def failing_closure():
        raise KeyError("no second pass")

    with pytest.raises(KeyError):
        other.step(failing_closure)  # perturbs, then undoes with restore_: w + e - e
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unscale_then_clip_equals_unscaled_clipping(backend):
    model = MODELS["mlp"]()
    other = twin(model)
    data = batches("mlp", 8)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    ref = SANER(other.parameters(), backend=backend, **HYPER)
    sc = scaler()
    for batch in data:
        scaled_step(model, opt, sc, batch, clip=0.05)
        plain_step(other, ref, batch, clip=0.05)
    assert max_abs_diff_over_largest(model, other) <= 1e-6


def test_scale_trajectory():
    """Growth every 2 good steps, backoff on each overflow, whichever pass it hit."""
    model = MODELS["mlp"]()
    data = batches("mlp", 8)
    opt = SANER(model.parameters(), **HYPER)
    sc = scaler(init_scale=2.0**8, growth_interval=2)
    plan = [(), (), ("first",), (), (), ("second",), ("first", "second"), ()]
    scales = []
    for batch, inject in zip(data, plan):
        scaled_step(model, opt, sc, batch, inject=inject)
        scales.append(sc.get_scale())
    assert scales == [2.0**8, 2.0**9, 2.0**8, 2.0**8, 2.0**9, 2.0**8, 2.0**7, 2.0**7]
    assert opt.skipped_steps == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_training_run(backend, dtype):
    """A short CPU autocast run (fp16 with the scaler, bf16 without): finite, and the loss goes down."""
    model = MODELS["conv"]()
    data = batches("conv", 1) * 15
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    sc = scaler(init_scale=2.0**16, growth_interval=5) if dtype == torch.float16 else None
    losses = []
    for batch in data:
        if sc is not None:
            scaled_step(model, opt, sc, batch, autocast=dtype)
        else:
            with torch.autocast("cpu", dtype=dtype):
                loss = loss_fn(model, batch)
            loss.backward()
            opt.first_step(zero_grad=True)
            with torch.autocast("cpu", dtype=dtype):
                loss_fn(model, batch).backward()
            opt.second_step(zero_grad=True)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            losses.append(loss_fn(model, batch).item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]


def test_g_sgd_group_exists_only_between_the_steps():
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    batch = batches("mlp", 1)[0]
    groups = len(opt.param_groups)
    loss_fn(model, batch).backward()
    opt.first_step(zero_grad=True)
    assert len(opt.param_groups) == groups + 1
    assert len(opt.state_dict()["param_groups"]) == groups
    opt.zero_grad()  # between the steps: leaves g_SGD alone
    loss_fn(model, batch).backward()
    opt.step()
    assert len(opt.param_groups) == groups


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda_cpp"])
def test_scaled_loop_has_no_host_sync_on_cuda(backend):
    """The issue's fp16 loop on CUDA under set_sync_debug_mode("error"), past the first momentum step."""
    model = MODELS["conv"]().cuda()
    data = [(x.cuda(), y.cuda()) for x, y in batches("conv", 4)]
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    sc = torch.amp.GradScaler("cuda")

    def step(batch, inject=()):
        for pass_ in ("first", "second"):
            with torch.autocast("cuda", dtype=torch.float16):
                loss = loss_fn(model, batch)
            sc.scale(loss).backward()
            if pass_ in inject:
                next(model.parameters()).grad[0, 0, 0, 0] = float("inf")
            if pass_ == "first":
                opt.first_step(zero_grad=True)
        sc.step(opt)
        sc.update()

    step(data[0])  # buckets, momentum buffers, compiled kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(data[1])
        step(data[2], inject=("first",))
        step(data[3], inject=("second",))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps >= 2
