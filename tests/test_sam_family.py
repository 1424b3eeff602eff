"""The SAM family (Friendly-SAM, VaSSO, GSAM; issue 11) through the optimizer, against the plain loop written
from the authors' classes (tests/plain_loop.py): every switch, 16-bit storage, resume, skip, rebuild, the
mixed-precision loop and bad input. The kernels themselves are checked op by op in tests/test_contract.py."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from contract_cases import OPTIMIZER_RTOL
from plain_loop import PlainLoopSANER
from toy_models import MODELS, assert_unchanged, batches, loss_fn, max_rel_err, run_saner, snapshot, twin

from saner_kernels import SAM, SANER, available_backends

CPU_BACKENDS = [name for name, ok in available_backends("cpu").items() if ok]
VARIANT_HYPER = {"fsam": dict(sigma=1.0, lmbda=0.9), "vasso": dict(theta=0.2), "gsam": dict(gsam_alpha=0.4)}
HYPER = dict(
    lr=0.05, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False, rho=0.1, alpha=0.5, ratio_eps=1e-8
)


def hyper(variant: str, **overrides) -> dict:
    return {**HYPER, "adaptive": False, "variant": variant, **VARIANT_HYPER[variant], **overrides}


def run_both(model, opt, loop_model, loop, data):
    for batch in data:
        for m, o in ((model, opt), (loop_model, loop)):
            loss_fn(m, batch).backward()
            o.first_step() if o is loop else o.first_step(zero_grad=True)
            loss_fn(m, batch).backward()
            o.second_step() if o is loop else o.second_step(zero_grad=True)


def rtol(backend: str, dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return 1e-10  # the plain loop's per-tensor sums against the kernels' flat ones
    return OPTIMIZER_RTOL["kernel"] if dtype == torch.float32 else 2e-2


SWITCHES = [
    dict(),
    dict(adaptive=True, rho=0.5),
    dict(alpha=1.0),
    dict(nesterov=True),
    dict(dampening=0.3, momentum=0.8),
    dict(momentum=0.0, weight_decay=0.0),
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda sw: "-".join(f"{k}{v}" for k, v in sw.items()) or "base")
@pytest.mark.parametrize("variant", ["fsam", "vasso", "gsam"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_optimizer_matches_the_plain_loop(backend, variant, switches):
    """Six steps (the average exists from the second on) against the authors' per-parameter math."""
    model = MODELS["mlp"]()
    loop_model = twin(model)
    h = hyper(variant, **switches)
    opt = SANER(model.parameters(), backend=backend, **h)
    loop = PlainLoopSANER([dict(params=list(loop_model.parameters()), **h)])
    run_both(model, opt, loop_model, loop, batches("mlp", 6))
    assert max_rel_err(model, loop_model) < rtol(backend, torch.float32)
    key = {"fsam": "fsam_average", "vasso": "vasso_ema", "gsam": None}[variant]
    for p in model.parameters():
        assert (key in opt.state[p]) == (key is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["fsam", "vasso", "gsam"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_storage_dtypes(backend, variant, dtype):
    """fp64 against the loop in fp64; 16-bit storage against the loop in fp32 on the same start (the kernels
    compute in fp32 and round once per stored value; a 16-bit loop would round after every op)."""
    model = MODELS["mlp"](dtype=dtype)
    loop_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    loop_model = twin(model).to(loop_dtype)
    h = hyper(variant)
    opt = SANER(model.parameters(), backend=backend, **h)
    loop = PlainLoopSANER([dict(params=list(loop_model.parameters()), **h)])
    for batch in batches("mlp", 4, dtype=dtype):
        run_both(model, opt, loop_model, loop, [batch]) if dtype == loop_dtype else _run_mixed(
            model, opt, loop_model, loop, batch, loop_dtype
        )
    assert max_rel_err(model.to(loop_dtype), loop_model) < rtol(backend, dtype)


def _run_mixed(model, opt, loop_model, loop, batch, loop_dtype):
    x, y = batch
    run_saner(model, opt, [batch])
    loss_fn(loop_model, (x.to(loop_dtype), y)).backward()
    loop.first_step()
    loss_fn(loop_model, (x.to(loop_dtype), y)).backward()
    loop.second_step()


@pytest.mark.parametrize("variant", ["fsam", "vasso", "gsam"])
def test_sam_class_runs_the_variant_with_alpha_one(variant):
    model = MODELS["mlp"]()
    loop_model = twin(model)
    h = hyper(variant)
    opt = SAM(model.parameters(), **{k: v for k, v in h.items() if k != "alpha"})
    loop = PlainLoopSANER([dict(params=list(loop_model.parameters()), **{**h, "alpha": 1.0})])
    run_both(model, opt, loop_model, loop, batches("mlp", 4))
    assert max_rel_err(model, loop_model) < rtol("kernel", torch.float32)


@pytest.mark.parametrize("variant", ["fsam", "vasso", "gsam"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_resume_is_bitwise(backend, variant):
    """The averages are in state_dict under their own keys; a resumed run continues bit for bit."""
    data = batches("conv", 6)
    model = MODELS["conv"]()
    resumed = twin(model)
    opt = SANER(model.parameters(), backend=backend, **hyper(variant))
    for batch in data:
        run_saner(model, opt, [batch])

    opt_a = SANER(resumed.parameters(), backend=backend, **hyper(variant))
    run_saner(resumed, opt_a, data[:3])
    saved_model, saved_opt = copy.deepcopy(resumed.state_dict()), copy.deepcopy(opt_a.state_dict())
    keys = {name for st in saved_opt["state"].values() for name in st}
    assert keys == {"momentum_buffer"} | ({"fsam_average"} if variant == "fsam" else set()) | (
        {"vasso_ema"} if variant == "vasso" else set()
    )
    fresh = twin(resumed)
    fresh.load_state_dict(saved_model)
    opt_b = SANER(fresh.parameters(), backend=backend, **hyper(variant))
    opt_b.load_state_dict(saved_opt)
    run_saner(fresh, opt_b, data[3:])
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["fsam", "vasso", "gsam"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_skipped_step_leaves_weights_and_averages_alone(backend, variant):
    """A non-finite first gradient skips the step: no average is created (first step) or changed (later)."""
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), backend=backend, **hyper(variant))
    data = batches("mlp", 3)
    for i, batch in enumerate(data):
        before = snapshot(model, opt)
        loss_fn(model, batch).backward()
        if i != 1:
            next(model.parameters()).grad[0, 0] = float("inf")
        opt.first_step(zero_grad=True)
        loss_fn(model, batch).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "SANER skipped a step": expected here
            opt.second_step(zero_grad=True)
        if i != 1:
            assert_unchanged(model, opt, before)
    assert opt.skipped_steps == 2


@pytest.mark.parametrize("variant", ["fsam", "vasso"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_failed_closure_leaves_the_average_alone(backend, variant):
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), backend=backend, **hyper(variant))
    data = batches("mlp", 2)
    run_saner(model, opt, data[:1])
    before = snapshot(model, opt)
    loss_fn(model, data[1]).backward()

    def closure():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    model_sd, opt_sd = before
    for name, v in opt.state_dict()["state"].items():
        for key, t in v.items():
            assert torch.equal(t, opt_sd["state"][name][key]), (name, key)
    assert max_rel_err(model, _loaded(model_sd)) < 1e-6


def _loaded(state_dict):
    model = MODELS["mlp"]()
    model.load_state_dict(state_dict)
    return model


@pytest.mark.parametrize("variant", ["fsam", "vasso"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_average_survives_a_bucket_rebuild_and_a_late_parameter_starts_plain(backend, variant):
    """A layer that joins late takes a first step of plain SAM (and of momentum, with dampening) while the
    others continue: the bucket runs both kinds of parameters. Freezing another layer for a step rebuilds the
    buckets; every parameter keeps its average (the frozen one too, as the authors' loop does)."""
    model = MODELS["mlp"]()
    loop_model = twin(model)
    h = hyper(variant, dampening=0.2)
    opt = SANER(model.parameters(), backend=backend, **h)
    loop = PlainLoopSANER([dict(params=list(loop_model.parameters()), **h)])
    data = batches("mlp", 6)
    for i, batch in enumerate(data):
        for m in (model, loop_model):
            for layer, frozen in ((m[2], i < 3), (m[0], i == 4)):
                layer.weight.requires_grad_(not frozen)
                if frozen:
                    layer.weight.grad = None
        run_both(model, opt, loop_model, loop, [batch])
    assert max_rel_err(model, loop_model) < rtol(backend, torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gsam_with_grad_scaler_equals_unscaled(backend):
    """fp16's GradScaler with GSAM: scaling cancels in the decomposition (a power-of-two scale), also after
    ``scaler.unscale_``."""
    for unscale in (False, True):
        model = MODELS["mlp"]()
        plain = twin(model)
        opt = SANER(model.parameters(), backend=backend, **hyper("gsam"))
        opt_plain = SANER(plain.parameters(), backend=backend, **hyper("gsam"))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for batch in batches("mlp", 4):
            scaler.scale(loss_fn(model, batch)).backward()
            opt.first_step(zero_grad=True)
            scaler.scale(loss_fn(model, batch)).backward()
            if unscale:
                scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
            run_saner(plain, opt_plain, [batch])
        assert max_rel_err(model, plain) < 1e-5


@pytest.mark.parametrize("variant", ["fsam", "vasso"])
def test_averaging_variants_refuse_a_grad_scaler_and_lose_nothing(variant):
    model = MODELS["mlp"]()
    opt = SANER(model.parameters(), **hyper(variant))
    data = batches("mlp", 2)
    run_saner(model, opt, data[:1])
    before = snapshot(model, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(loss_fn(model, data[1])).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(loss_fn(model, data[1])).backward()
    with pytest.raises(RuntimeError, match="GradScaler"):
        scaler.step(opt)
    model_sd, opt_sd = before
    assert max_rel_err(model, _loaded(model_sd)) < 1e-6  # restored as w + e - e
    for name, v in opt.state_dict()["state"].items():
        for key, t in v.items():
            assert torch.equal(t, opt_sd["state"][name][key]), (name, key)


# ---------------------------------------------------------------------------------------- bad input
def test_unknown_variant_and_foreign_hyperparameters_are_clear_errors():
    params = list(MODELS["mlp"]().parameters())
    with pytest.raises(ValueError, match="variant 'asam'.*sam, fsam, vasso, gsam"):
        SANER(params, lr=0.1, variant="asam")
    with pytest.raises(ValueError, match="sigma=0.5 is a hyperparameter of variant 'fsam', not of 'vasso'"):
        SANER(params, lr=0.1, variant="vasso", sigma=0.5)
    with pytest.raises(ValueError, match="theta.*'vasso', not of 'sam'"):
        SAM(params, lr=0.1, theta=0.3)
    with pytest.raises(ValueError, match="gsam_alpha.*not of 'fsam'"):
        SANER([{"params": params, "variant": "fsam", "gsam_alpha": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="theta"):
        SANER(params, lr=0.1, variant="vasso", theta=1.5)
    with pytest.raises(ValueError, match="every param group or of none"):
        SANER([{"params": params[:2], "variant": "gsam"}, {"params": params[2:]}], lr=0.1)


def test_per_group_variants_and_inherited_defaults():
    """A group may choose another variant than the constructor's; the constructor's own hyperparameters do
    not leak into it; the resolved values are in param_groups (and so in state_dict)."""
    params = list(MODELS["mlp"]().parameters())
    opt = SANER([{"params": params[:2]}, {"params": params[2:], "variant": "vasso"}], lr=0.1, variant="fsam", sigma=0.5)
    g0, g1 = opt.param_groups
    assert (g0["variant"], g0["sigma"], g0["lmbda"], g0["theta"]) == ("fsam", 0.5, 0.9, None)
    assert (g1["variant"], g1["sigma"], g1["theta"]) == ("vasso", None, 0.2)
    assert opt.state_dict()["param_groups"][1]["theta"] == 0.2


def test_a_checkpoint_from_before_the_family_takes_the_constructors_variant():
    """An SGD (or pre-family SANER) checkpoint has no variant keys: the group gets the constructor's variant
    with its hyperparameters filled in, and trains."""
    model = MODELS["mlp"]()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn(model, batches("mlp", 1)[0]).backward()
    sgd.step()
    opt = SANER(model.parameters(), lr=0.1, variant="fsam", sigma=0.5)
    opt.load_state_dict(sgd.state_dict())
    group = opt.param_groups[0]
    assert (group["variant"], group["sigma"], group["lmbda"], group["theta"]) == ("fsam", 0.5, 0.9, None)
    run_saner(model, opt, batches("mlp", 2))
    assert all("fsam_average" in opt.state[p] for p in model.parameters())
