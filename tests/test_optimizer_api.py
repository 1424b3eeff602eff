"""The optimizer's torch.optim behaviour: resume, buckets and views, edge cases, bad input, schedule."""

import copy
import io
import math
import warnings

import pytest
import torch
from contract_cases import OPTIMIZER_RTOL
from plain_loop import PlainLoopSANER
from torch import nn
from toy_models import MODELS, assert_unchanged, batches, loss_fn, max_rel_err, run_saner, snapshot, twin

from saner_kernels import SAM, SANER, AlphaScheduler, available_backends

HYPER = dict(
    lr=0.05,
    momentum=0.9,
    dampening=0.0,
    weight_decay=5e-4,
    nesterov=False,
    rho=0.1,
    alpha=0.5,
    adaptive=False,
    ratio_eps=1e-8,
)
CPU_BACKENDS = [name for name, ok in available_backends("cpu").items() if ok]


def tolerance(backend: str) -> float:
    """The reference is bitwise equal to the plain loop; kernels may differ in the last bits."""
    return OPTIMIZER_RTOL["reference" if backend == "reference" else "kernel"]


def loop_for(model, **overrides):
    return PlainLoopSANER([dict(params=list(model.parameters()), **{**HYPER, **overrides})])


def run_loop(model, loop, data, between=None):
    for i, batch in enumerate(data):
        if between:
            between(model, i)
        loss_fn(model, batch).backward()
        loop.first_step()
        loss_fn(model, batch).backward()
        loop.second_step()


# ---------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_resume_is_bitwise(backend):
    data = batches("conv", 10)
    model = MODELS["conv"]()
    fresh = twin(model)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    sched = AlphaScheduler(opt, k=3)
    for i in range(10):
        run_saner(model, opt, data[i : i + 1])
        sched.step()

    part = twin(fresh)
    opt_a = SANER(part.parameters(), backend=backend, **HYPER)
    sched_a = AlphaScheduler(opt_a, k=3)
    for i in range(5):
        run_saner(part, opt_a, data[i : i + 1])
        sched_a.step()
    blob = io.BytesIO()
    torch.save({"model": part.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, blob)
    blob.seek(0)
    ckpt = torch.load(blob)

    resumed = MODELS["conv"](seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt_b = SANER(resumed.parameters(), backend=backend, **HYPER)
    sched_b = AlphaScheduler(opt_b, k=3)
    opt_b.load_state_dict(ckpt["opt"])
    sched_b.load_state_dict(ckpt["sched"])
    for i in range(5, 10):
        run_saner(resumed, opt_b, data[i : i + 1])
        sched_b.step()
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_checkpoint_loads_into_torch_sgd_and_back():
    data = batches("mlp", 3)
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    run_saner(model, opt, data)
    sd = copy.deepcopy(opt.state_dict())

    sgd_model = twin(model)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1.0)
    sgd.load_state_dict(sd)
    for p, q in zip(model.parameters(), sgd_model.parameters()):
        assert torch.equal(sgd.state[q]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    assert sgd.param_groups[0]["lr"] == HYPER["lr"]
    loss_fn(sgd_model, data[0]).backward()
    sgd.step()  # runs with the loaded buffers

    back = SANER(twin(sgd_model).parameters(), lr=0.3)
    back.load_state_dict(sgd.state_dict())  # an SGD checkpoint: rho/alpha/... take SANER's defaults
    assert back.param_groups[0]["rho"] == 0.1 and back.param_groups[0]["alpha"] == 0.5


# ------------------------------------------------------------------------------------- buckets
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_params_and_grads_become_bucket_views_and_keep_channels_last(backend):
    model = MODELS["conv"]().to(memory_format=torch.channels_last)
    oracle = twin(model)
    data = batches("conv", 3)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    run_saner(model, opt, data)
    run_loop(oracle, loop_for(oracle), data)
    # Not bitwise: oneDNN convolves a channels_last weight that lives at an offset inside a larger
    # buffer with another algorithm, so the forward/backward (not the optimizer) differ in the 7th digit.
    assert max_rel_err(model, oracle) <= OPTIMIZER_RTOL["kernel"]
    conv = model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    (bucket,) = opt.buckets()
    assert bucket.n % 128 == 0 and bucket.n - bucket.n_valid < 128
    assert conv.untyped_storage().data_ptr() == bucket.flat_param.untyped_storage().data_ptr()
    assert conv.grad.untyped_storage().data_ptr() == bucket.flat_grad.untyped_storage().data_ptr()
    assert opt.state[conv]["momentum_buffer"].stride() == conv.stride()


def test_zero_grad_zeroes_in_place_whatever_set_to_none_says():
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    run_saner(model, opt, batches("mlp", 1))
    loss_fn(model, batches("mlp", 1)[0]).backward()
    views = [p.grad for p in model.parameters()]
    opt.zero_grad(set_to_none=True)
    for p, v in zip(model.parameters(), views):
        assert p.grad is v and not p.grad.any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_set_to_none_between_steps_is_gathered(backend):
    data = batches("mlp", 6)
    model = MODELS["mlp"]()
    oracle = twin(model)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    for batch in data:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        opt.first_step()
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        opt.second_step()
    run_loop(oracle, loop_for(oracle), data)
    assert max_rel_err(model, oracle) <= tolerance(backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_replaced_param_storage_rebuilds_the_bucket(backend):
    data = batches("mlp", 4)
    model = MODELS["mlp"]()
    oracle = twin(model)
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    run_saner(model, opt, data[:2])
    first = next(model.parameters())
    first.data = first.data.clone()  # what module.to()/_apply does
    run_saner(model, opt, data[2:])
    run_loop(oracle, loop_for(oracle), data)
    assert max_rel_err(model, oracle) <= tolerance(backend)
    assert first.data_ptr() == opt.buckets()[0].flat_param.data_ptr()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_size_and_gradless_params(backend):
    model = MODELS["mlp"]()
    empty = nn.Parameter(torch.empty(0, 3))
    unused = nn.Parameter(torch.randn(5))
    unused_before = unused.detach().clone()
    oracle = twin(model)
    data = batches("mlp", 4)
    opt = SANER([{"params": list(model.parameters()) + [empty, unused]}], backend=backend, **HYPER)

    def closure(batch):
        return loss_fn(model, batch) + 0.0 * empty.sum()

    for batch in data:
        closure(batch).backward()
        opt.first_step(zero_grad=True)
        closure(batch).backward()
        opt.second_step(zero_grad=True)
    run_loop(oracle, loop_for(oracle), data)
    assert max_rel_err(model, oracle) <= tolerance(backend)
    assert torch.equal(unused, unused_before) and unused.grad is None and unused not in opt.state


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_layer_frozen_then_unfrozen(dampening, backend):
    data = batches("mlp", 6)
    model = MODELS["mlp"]()
    oracle = twin(model)

    def freeze_schedule(m, i):
        for p in m[0].parameters():
            p.requires_grad_(i >= 3)

    opt = SANER(model.parameters(), backend=backend, **{**HYPER, "dampening": dampening})
    for i, batch in enumerate(data):
        freeze_schedule(model, i)
        run_saner(model, opt, [batch])
    run_loop(oracle, loop_for(oracle, dampening=dampening), data, between=freeze_schedule)
    assert max_rel_err(model, oracle) <= tolerance(backend)


def test_two_dtypes_in_one_group_get_two_buckets():
    lin32, lin64 = nn.Linear(4, 3), nn.Linear(3, 2).double()
    opt = SANER(list(lin32.parameters()) + list(lin64.parameters()), **HYPER)
    x = torch.randn(5, 4)
    for _ in range(2):
        lin64(lin32(x).double()).sum().backward()
        opt.first_step(zero_grad=True)
        lin64(lin32(x).double()).sum().backward()
        opt.second_step(zero_grad=True)
    assert sorted(str(b.dtype) for b in opt.buckets()) == ["torch.float32", "torch.float64"]


# -------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_group_fractions_match_the_plain_loop(backend):
    data = batches("mlp", 3)
    model = MODELS["mlp"]()
    oracle = twin(model)
    opt = SANER(model.parameters(), track_groups=True, backend=backend, **HYPER)
    loop = loop_for(oracle)
    for batch in data:
        run_saner(model, opt, [batch])
        run_loop(oracle, loop, [batch])
        fractions = opt.group_fractions()
        assert opt.group_fractions() == fractions  # reading does not change the counts
        total = sum(loop.counts)
        assert total == sum(p.numel() for p in model.parameters())
        expected = {k: c / total for k, c in zip("ABC", loop.counts)}
        if backend == "reference":  # kernels' last-bit differences may move a boundary element
            assert fractions == pytest.approx(expected, abs=1e-12)
        else:
            assert fractions == pytest.approx(expected, abs=0.02)
        assert 0 < fractions["B"] < 1


def test_group_fractions_need_tracking():
    with pytest.raises(RuntimeError, match="track_groups=True"):
        SANER(MODELS["mlp"]().parameters(), lr=0.1).group_fractions()


# ------------------------------------------------------------------------------ non-finite
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_first_gradient_skips_the_step(bad, backend):
    data = batches("mlp", 3)
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), backend=backend, **HYPER)
    run_saner(model, opt, data[:1])
    for first in (False, True):  # with and without initialised momentum
        if first:
            model = MODELS["mlp"](seed=3)
            opt = SANER(model.parameters(), backend=backend, track_groups=True, **HYPER)
        before = snapshot(model, opt)
        loss_fn(model, data[1]).backward()
        next(model.parameters()).grad[0, 0] = bad
        opt.first_step(zero_grad=True)
        loss_fn(model, data[1]).backward()
        with pytest.warns(RuntimeWarning, match="skipped a step"):
            opt.second_step(zero_grad=True)
        assert_unchanged(model, opt, before)
        assert opt.skipped_steps == 1
        if first:
            assert all(math.isnan(f) for f in opt.group_fractions().values())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            run_saner(model, opt, data[2:])
        assert not torch.equal(next(model.parameters()), before[0]["0.weight"])


# ----------------------------------------------------------------------------- bad input
# SANER's own numbers are checked by SANER, the base optimizer's by the base (torch.optim.SGD's messages).
NEGATIVE_REFUSED = {
    "rho": "rho",
    "ratio_eps": "ratio_eps",
    "alpha": "alpha",
    "lr": "lr|learning rate",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
}


@pytest.mark.parametrize("name", NEGATIVE_REFUSED)
def test_negative_hyperparameter_is_rejected(name):
    kwargs = {**HYPER, name: -0.1}
    with pytest.raises(ValueError, match=NEGATIVE_REFUSED[name]):
        SANER(MODELS["mlp"]().parameters(), **kwargs)
    with pytest.raises(ValueError, match=NEGATIVE_REFUSED[name]):
        SANER([{"params": MODELS["mlp"]().parameters(), name: -1.0}], lr=0.1)


@pytest.mark.parametrize("kwargs", [dict(nesterov=True, momentum=0.0), dict(nesterov=True, dampening=0.1)])
def test_nesterov_rules(kwargs):
    with pytest.raises(ValueError, match="Nesterov"):
        SANER(MODELS["mlp"]().parameters(), lr=0.1, **kwargs)


def test_unknown_backend_lists_available_ones():
    with pytest.raises(ValueError, match="available_backends"):
        SANER(MODELS["mlp"]().parameters(), lr=0.1, backend="fastest")


def test_sam_has_alpha_one():
    model = MODELS["mlp"]()
    opt = SAM(model.parameters(), lr=0.1)
    assert opt.param_groups[0]["alpha"] == 1.0
    with pytest.raises(ValueError, match="alpha"):
        SAM([{"params": model.parameters(), "alpha": 0.5}], lr=0.1)


def test_sparse_gradients_are_rejected_and_nothing_changes():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = SANER(emb.parameters(), lr=0.1)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.first_step()
    assert torch.equal(emb.weight, before) and not opt.state


def test_step_order_errors():
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="before first_step"):
        opt.second_step()
    loss_fn(model, batches("mlp", 1)[0]).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()


def test_failing_closure_restores_the_weights():
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    run_saner(model, opt, batches("mlp", 2))
    before = snapshot(model, opt)
    loss_fn(model, batches("mlp", 1)[0]).backward()

    def closure():
        raise KeyError("data loader broke")

    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(KeyError):
        opt.step(closure)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[0][k], rtol=1e-6, atol=1e-7)
    for p, g in zip(model.parameters(), grads):  # p.grad holds the first gradient again
        assert torch.equal(p.grad, g)
    run_saner(model, opt, batches("mlp", 1))  # usable afterwards


# ------------------------------------------------------------------------------- schedule
def test_alpha_scheduler():
    model = MODELS["mlp"]()
    opt = SANER([{"params": model[0].parameters(), "alpha": 0.2}, {"params": model[2].parameters()}], lr=0.1, alpha=0.6)
    sched = AlphaScheduler(opt, k=4)
    seen = [sched.get_alpha()]
    for _ in range(6):
        sched.step()
        seen.append(sched.get_alpha())
    # each group towards its own target, epochs numbered from 1 (the authors' schedule)
    assert seen[0] == pytest.approx([0.8, 0.9])
    assert seen[1] == pytest.approx([0.6, 0.8])
    assert seen[3] == pytest.approx([0.2, 0.6]) and seen[6] == seen[3]
    assert AlphaScheduler(SANER(model.parameters(), lr=0.1, alpha=0.3), k=0).get_alpha() == [0.3]
    with pytest.raises(ValueError, match="k"):
        AlphaScheduler(opt, k=-1)


def test_torch_lr_scheduler_sees_second_step_as_the_step():
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **HYPER)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    run_saner(model, opt, batches("mlp", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        sched.step()
    assert opt.param_groups[0]["lr"] == HYPER["lr"] * 0.5
