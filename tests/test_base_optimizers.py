"""SAM/SANER over any torch base optimizer, the constructor's defaults, clipping and the two closure
conventions, against the plain per-parameter loop (docs/design.md, "Base optimizers", "Gradient clipping",
"Closures")."""

import copy
import io
import warnings

import pytest
import torch
from plain_loop import PlainLoopSANER
from toy_models import MODELS, batches, loss_fn, max_rel_err, twin

from saner_kernels import SAM, SANER, available_backends

CPU_BACKENDS = [name for name, ok in available_backends("cpu").items() if ok]
FP64_TOL = 1e-12
BASES = {
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    "adam": (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    "nadam": (torch.optim.NAdam, dict(lr=1e-2)),
    "adagrad": (torch.optim.Adagrad, dict(lr=1e-2, weight_decay=1e-3)),
    "adamw-fused": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05, fused=True)),
    "adamw-foreach": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05, foreach=True)),
}
SAM_KW = dict(rho=0.1, adaptive=False, ratio_eps=1e-8)


def fp64_model(kind="mlp"):
    return MODELS[kind](dtype=torch.float64)


def plain_base_loop(model, base_cls, base_kw, variant="sam", alpha=0.5, **variant_kw):
    group = dict(params=list(model.parameters()), alpha=alpha, variant=variant, **SAM_KW, **variant_kw)
    return PlainLoopSANER([group]), base_cls(model.parameters(), **base_kw)


def run_plain(model, loop, base, data, clip=None):
    for batch in data:
        loss_fn(model, batch).backward()
        loop.first_step()
        loss_fn(model, batch).backward()
        loop.second_step(base_optimizer=base, clip_max_norm=clip)


def run_two_step(model, opt, data, clip=None):
    for batch in data:
        loss_fn(model, batch).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model, batch).backward()
        if clip is not None:
            opt.clip_grad_norm_(clip)
        opt.second_step(zero_grad=True)


# ----------------------------------------------------------------------------- any base optimizer
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("base", BASES)
def test_any_base_equals_the_plain_loop(base, backend):
    base_cls, base_kw = BASES[base]
    model = fp64_model()
    oracle = twin(model)
    data = batches("mlp", 8, dtype=torch.float64)
    run_two_step(model, SANER(model.parameters(), base_cls, alpha=0.5, backend=backend, **SAM_KW, **base_kw), data)
    run_plain(oracle, *plain_base_loop(oracle, base_cls, base_kw), data)
    assert max_rel_err(model, oracle) < FP64_TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "variant, variant_kw",
    [("fsam", dict(sigma=1.0, lmbda=0.9)), ("vasso", dict(theta=0.2)), ("gsam", dict(gsam_alpha=0.1))],
)
def test_the_sam_family_over_adamw(variant, variant_kw, backend):
    base_cls, base_kw = BASES["adamw"]
    model = fp64_model()
    oracle = twin(model)
    data = batches("mlp", 8, dtype=torch.float64)
    opt = SANER(
        model.parameters(), base_cls, alpha=0.5, variant=variant, backend=backend, **SAM_KW, **variant_kw, **base_kw
    )
    run_two_step(model, opt, data)
    run_plain(oracle, *plain_base_loop(oracle, base_cls, base_kw, variant=variant, **variant_kw), data)
    assert max_rel_err(model, oracle) < FP64_TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adamw_state_is_torch_layout_and_resumes_bit_for_bit(backend):
    base_cls, base_kw = BASES["adamw"]
    data = batches("mlp", 8, dtype=torch.float64)
    model = fp64_model()
    start = twin(model)
    opt = SANER(model.parameters(), base_cls, alpha=0.5, backend=backend, **SAM_KW, **base_kw)
    run_two_step(model, opt, data)

    part = twin(start)
    opt_a = SANER(part.parameters(), base_cls, alpha=0.5, backend=backend, **SAM_KW, **base_kw)
    run_two_step(part, opt_a, data[:4])
    blob = io.BytesIO()
    torch.save({"model": part.state_dict(), "opt": opt_a.state_dict()}, blob)
    blob.seek(0)
    ckpt = torch.load(blob)
    assert set(ckpt["opt"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # AdamW's own layout
    resumed = fp64_model()
    resumed.load_state_dict(ckpt["model"])
    opt_b = SANER(resumed.parameters(), base_cls, alpha=0.5, backend=backend, **SAM_KW, **base_kw)
    opt_b.load_state_dict(ckpt["opt"])
    run_two_step(resumed, opt_b, data[4:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    # torch's own AdamW takes the base state as it is
    plain = torch.optim.AdamW(fp64_model().parameters(), **base_kw)
    plain.load_state_dict({"state": ckpt["opt"]["state"], "param_groups": plain.state_dict()["param_groups"]})


def test_non_finite_gradient_skips_the_base_step_too():
    for base in ("adamw", "adamw-fused"):
        base_cls, base_kw = BASES[base]
        model = fp64_model()
        opt = SANER(model.parameters(), base_cls, alpha=0.5, **SAM_KW, **base_kw)
        run_two_step(model, opt, batches("mlp", 2, dtype=torch.float64))
        before = copy.deepcopy((model.state_dict(), opt.state_dict()))
        x, y = batches("mlp", 1, dtype=torch.float64, seed=9)[0]
        loss_fn(model, (x, y)).backward()
        next(model.parameters()).grad[0, 0] = float("nan")
        opt.first_step(zero_grad=True)
        loss_fn(model, (x, y)).backward()
        opt.second_step(zero_grad=True)
        assert opt.skipped_steps == 1
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[0][k]), (base, k)
        for i, st in opt.state_dict()["state"].items():
            for name, v in st.items():
                assert torch.equal(v, before[1]["state"][i][name]), (base, i, name)


def test_lr_scheduler_on_base_optimizer_acts_on_the_next_step():
    model = fp64_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt.base_optimizer, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*")  # not "called before optimizer.step()"
        run_two_step(model, opt, batches("mlp", 1, dtype=torch.float64))
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups is opt.base_optimizer.param_groups
    opt.base_optimizer.param_groups[0]["lr"] = 0.0  # written by hand: the next step does not move the weights
    frozen = twin(model)
    run_two_step(model, opt, batches("mlp", 1, dtype=torch.float64, seed=4))
    assert max_rel_err(model, frozen) < 1e-15  # w + e - e: the restore's rounding only


# ----------------------------------------------------------------------------- constructor
def test_defaults_are_the_clients_own():
    """SAM(params, torch.optim.SGD, lr=...) reads as davda54's call and takes its values: rho 0.05, no
    adaptive, torch.optim.SGD's momentum 0, dampening 0, weight decay 0. SANER's alpha is the authors' 0."""
    params = list(fp64_model().parameters())
    sam = SAM(params, torch.optim.SGD, lr=0.1)
    group = sam.param_groups[0]
    assert (group["rho"], group["adaptive"], group["momentum"], group["dampening"], group["weight_decay"]) == (
        0.05,
        False,
        0,
        0,
        0,
    )
    assert group["alpha"] == 1.0
    saner = SANER(list(fp64_model().parameters()), lr=0.1)
    assert saner.param_groups[0]["alpha"] == 0.0 and saner.param_groups[0]["rho"] == 0.05
    assert type(saner.base_optimizer) is torch.optim.SGD
    by_keyword = SAM(list(fp64_model().parameters()), base_optimizer=torch.optim.SGD, lr=0.1, rho=0.2)
    assert by_keyword.param_groups[0]["rho"] == 0.2


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda p: SANER(p, 0.05, lr=0.1), "base optimizer class"),
        (lambda p: SANER(p, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)), "class"),
        (lambda p: SAM(p, torch.optim.SGD, lr=0.1, betas=(0.9, 0.99)), "betas"),
        (lambda p: SAM(p, torch.optim.SGD, lr=0.1, maximize=True), "maximize"),
        (lambda p: SAM(p, torch.optim.AdamW, lr=0.1, betas=(0.9, float("nan"))), "beta"),
        (lambda p: SANER(p, closure="lbfgs"), "closure"),
        (lambda p: SANER(p, torch.optim.RMSprop, lr=0.1), "alpha"),
        (lambda p: SANER(p, lr=0.1, eps=1e-6), "ratio_eps"),
    ],
)
def test_constructor_errors_say_what_to_write(call, error):
    with pytest.raises((TypeError, ValueError), match=error):
        call(list(fp64_model().parameters()))


# ----------------------------------------------------------------------------- gradient clipping
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_clip_grad_norm_scales_the_update_and_keeps_the_mask(base):
    base_cls, base_kw = (
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4)) if base == "sgd" else BASES[base]
    )
    model = fp64_model()
    oracle = twin(model)
    data = batches("mlp", 6, dtype=torch.float64)
    opt = SANER(model.parameters(), base_cls, alpha=0.5, track_groups=True, **SAM_KW, **base_kw)
    run_two_step(model, opt, data, clip=0.05)
    group = dict(params=list(oracle.parameters()), alpha=0.5, variant="sam", **SAM_KW)
    if base == "sgd":
        loop = PlainLoopSANER([dict(group, momentum=0.9, dampening=0.0, nesterov=False, lr=0.1, weight_decay=5e-4)])
        run_plain(oracle, loop, None, data, clip=0.05)
    else:
        loop = PlainLoopSANER([group])
        run_plain(oracle, loop, base_cls(oracle.parameters(), **base_kw), data, clip=0.05)
    assert max_rel_err(model, oracle) < FP64_TOL
    fractions = opt.group_fractions()
    assert [round(fractions[k] * sum(loop.counts)) for k in "ABC"] == loop.counts  # the unclipped mask


def test_clip_grad_norm_refused_with_an_average_and_nothing_changes():
    model = fp64_model()
    opt = SANER(model.parameters(), variant="fsam", lr=0.1, **SAM_KW)
    run_two_step(model, opt, batches("mlp", 1, dtype=torch.float64))
    x = batches("mlp", 1, dtype=torch.float64, seed=3)[0]
    loss_fn(model, x).backward()
    opt.first_step(zero_grad=True)
    loss_fn(model, x).backward()
    with pytest.raises(RuntimeError, match="fsam"):
        opt.clip_grad_norm_(1.0)
    opt.second_step(zero_grad=True)  # the step still completes, unclipped


# ----------------------------------------------------------------------------- closure conventions
def closure_both_passes(model, opt, batch):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize(
    "convention, style",
    [("auto", "torch"), ("both_passes", "torch"), ("auto", "davda54"), ("second_pass", "davda54")],
)
def test_closure_step_equals_the_two_step_loop(convention, style):
    """torch's closure (zero_grad, forward, backward; the optimizer calls it at w and at w + e) and davda54's
    (the first backward by the caller, the closure runs the second)."""
    model = fp64_model()
    twin_model = twin(model)
    data = batches("mlp", 5, dtype=torch.float64)
    kw = dict(lr=0.1, momentum=0.9, alpha=0.5, **SAM_KW)
    opt = SANER(model.parameters(), closure=convention, **kw)
    losses = []
    for batch in data:
        if style == "torch":
            losses.append(opt.step(closure_both_passes(model, opt, batch)))
        else:
            loss_fn(model, batch).backward()
            opt.step(lambda batch=batch: loss_fn(model, batch).backward())
            opt.zero_grad()
    run_two_step(twin_model, SANER(twin_model.parameters(), **kw), data)
    assert max_rel_err(model, twin_model) == 0.0
    if style == "torch":  # the returned loss is the one at w, as torch.optim's closure steps return it
        assert torch.isclose(losses[0], loss_fn(fp64_model(), data[0]))


def test_second_pass_convention_without_the_first_backward_is_refused():
    model = fp64_model()
    opt = SANER(model.parameters(), closure="second_pass", lr=0.1)
    before = twin(model)
    with pytest.raises(RuntimeError, match="both_passes"):
        opt.step(lambda: loss_fn(model, batches("mlp", 1, dtype=torch.float64)[0]).backward())
    assert max_rel_err(model, before) == 0.0


@pytest.mark.parametrize("base", ["adamw", "adamw-fused"])
def test_grad_scaler_over_adamw_equals_unscaled_and_an_overflow_skips_and_backs_off(base):
    """GradScaler steps SANER over AdamW: the update unscales both gradients, an overflow found in the first
    pass skips the step (AdamW's own step too: on the device for the fused one) and the scale backs off."""
    base_cls, base_kw = BASES[base]
    model = MODELS["mlp"]()
    plain = twin(model)
    data = batches("mlp", 4)
    opt = SANER(model.parameters(), base_cls, alpha=0.5, **SAM_KW, **base_kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for batch in data:
        scaler.scale(loss_fn(model, batch)).backward()
        opt.first_step(zero_grad=True)
        scaler.scale(loss_fn(model, batch)).backward()
        scaler.step(opt)
        scaler.update()
    run_two_step(plain, SANER(plain.parameters(), base_cls, alpha=0.5, **SAM_KW, **base_kw), data)
    assert max_rel_err(model, plain) < 1e-6 and opt.skipped_steps == 0
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    scale = scaler.get_scale()
    batch = batches("mlp", 1, seed=7)[0]
    scaler.scale(loss_fn(model, batch) * float("inf")).backward()  # the first pass overflows
    opt.first_step(zero_grad=True)
    scaler.scale(loss_fn(model, batch)).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.skipped_steps == 1 and scaler.get_scale() == scale / 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[0][k]), k
    for i, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            assert torch.equal(v, before[1]["state"][i][name]), (i, name)
