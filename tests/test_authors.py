"""The SANER authors' classes, their keywords and schedule, against a loop written from their code
(tests/authors_loop.py): every class, group and bound, every CPU backend, fp32 and fp64."""

import io

import pytest
import torch
from authors_loop import AuthorsLoop
from toy_models import MODELS, batches, loss_fn, max_rel_err, twin

from saner_kernels import (
    GSANER,
    SAMONLY,
    SAMWO,
    SANER,
    SANERLAST,
    VASSOSANER,
    AlphaScheduler,
    FriendlySANER,
    available_backends,
)

CPU_BACKENDS = [name for name, ok in available_backends("cpu").items() if ok]
SGD = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
STEPS = 20
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}

# (class, its keywords, the loop's kind): every class, every group each takes, bounds other than 1
CASES = {
    "saner": (SANER, dict(alpha=0.5), "saner"),
    "saner-group-kwarg": (SANER, dict(alpha=0.3, group="B"), "saner"),
    "fsaner-A": (FriendlySANER, dict(alpha=0.5, group="A", sigma=1.0, lmbda=0.6), "fsaner"),
    "vassosaner-C": (VASSOSANER, dict(alpha=0.5, group="C", theta=0.4), "vassosaner"),
    "gsaner-B": (GSANER, dict(alpha=0.5, g_alpha=0.3), "gsaner"),
    "samwo-A": (SAMWO, dict(group="A", alpha=0.8), "samwo"),
    "samwo-B": (SAMWO, dict(group="B", alpha=0.8), "samwo"),
    "samwo-C": (SAMWO, dict(group="C"), "samwo"),
    "samwo-AB": (SAMWO, dict(group="AB", alpha=1.0), "samwo"),
    "samonly-A": (SAMONLY, dict(group="A"), "samonly"),
    "samonly-B": (SAMONLY, dict(group="B"), "samonly"),
    "samonly-C": (SAMONLY, dict(group="C"), "samonly"),
}
LOOP_KEYS = {"sigma", "lmbda", "theta", "g_alpha", "group", "alpha"}


def run_both(cls, kwargs, kind, backend, dtype, model_kind="mlp", adaptive=False, alpha_schedule=None):
    model = MODELS[model_kind](dtype=dtype)
    oracle = twin(model)
    data = batches(model_kind, STEPS, dtype=dtype)
    opt = cls(model.parameters(), rho=0.1, adaptive=adaptive, backend=backend, **kwargs, **SGD)
    loop = AuthorsLoop(oracle.parameters(), kind=kind, rho=0.1, adaptive=adaptive, **SGD,
                       **{k: v for k, v in kwargs.items() if k in LOOP_KEYS})  # fmt: skip
    for i, batch in enumerate(data):
        if alpha_schedule:
            opt.set_alpha(alpha_schedule[i])
            loop.set_alpha(alpha_schedule[i])
        loss_fn(model, batch).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model, batch).backward()
        opt.second_step(zero_grad=True)
        loss_fn(oracle, batch).backward()
        loop.first_step()
        loss_fn(oracle, batch).backward()
        loop.second_step()
    return model, oracle


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_class_equals_the_authors_loop(case, backend, dtype):
    cls, kwargs, kind = CASES[case]
    model, oracle = run_both(cls, kwargs, kind, backend, dtype)
    assert max_rel_err(model, oracle) < TOLERANCE[dtype]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adaptive_conv_and_set_alpha_each_step(backend):
    schedule = [1.0 - 0.05 * i for i in range(STEPS)]
    model, oracle = run_both(SAMWO, dict(group="B", alpha=0.9), "samwo", backend, torch.float64, "conv", True, schedule)
    assert max_rel_err(model, oracle) < 1e-12


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sanerlast_reweights_the_last_layer_only(backend):
    model = MODELS["mlp"](dtype=torch.float64)
    oracle = twin(model)
    last = [id(p) for p in list(model.parameters())[-2:]]
    opt = SANERLAST(model.parameters(), rho=0.1, last_linear_param_ids=last, alpha=0.2, backend=backend, **SGD)
    loop = AuthorsLoop(oracle.parameters(), kind="sanerlast", rho=0.1, alpha=0.2, last_ids=(), **SGD)
    loop.last_ids = {id(p) for p in list(oracle.parameters())[-2:]}
    for batch in batches("mlp", STEPS, dtype=torch.float64):
        for m, o in ((model, opt), (oracle, loop)):
            loss_fn(m, batch).backward()
            o.first_step(*(() if o is loop else (True,)))
            loss_fn(m, batch).backward()
            o.second_step(*(() if o is loop else (True,)))
    assert max_rel_err(model, oracle) < 1e-12
    opt.set_alpha(0.7)
    assert [g["alpha"] for g in opt.param_groups] == [0.7, 1.0]  # the last layer's group first; SAM keeps 1


def test_their_defaults():
    params = list(MODELS["mlp"]().parameters())
    assert SANER(params, lr=0.1).param_groups[0]["alpha"] == 0.0  # their SANER's alpha = 0.
    for cls in (FriendlySANER, VASSOSANER, GSANER, SAMWO):
        group = cls(list(MODELS["mlp"]().parameters()), lr=0.1).param_groups[0]
        assert (group["alpha"], group["rho"], group["group"]) == (1.0, 0.05, "B"), cls.__name__
    assert GSANER(list(MODELS["mlp"]().parameters()), lr=0.1, g_alpha=0.2).param_groups[0]["gsam_alpha"] == 0.2


def test_first_grad_is_a_view_of_g_sgd_between_the_steps_and_not_in_state_dict():
    model = MODELS["mlp"](dtype=torch.float64)
    opt = SANER(model.parameters(), lr=0.1, alpha=0.5)
    batch = batches("mlp", 1, dtype=torch.float64)[0]
    loss_fn(model, batch).backward()
    g = [p.grad.clone() for p in model.parameters()]
    opt.first_step(zero_grad=True)
    loss_fn(model, batch).backward()
    for p, expected in zip(model.parameters(), g):
        first_grad = opt.state[p]["first_grad"]
        assert torch.equal(first_grad, expected)
        assert first_grad.untyped_storage().data_ptr() == opt.buckets()[0].flat_g_sgd.untyped_storage().data_ptr()
    assert all("first_grad" not in s for s in opt.state_dict()["state"].values())
    opt.second_step(zero_grad=True)
    assert all("first_grad" not in opt.state[p] for p in model.parameters())


def test_per_parameter_fractions_match_the_loop_masks():
    model = MODELS["mlp"](dtype=torch.float64)
    opt = SAMWO(model.parameters(), group="B", alpha=0.7, track_groups="per_parameter", **SGD)
    batch = batches("mlp", 1, dtype=torch.float64)[0]
    loss_fn(model, batch).backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    opt.first_step(zero_grad=True)
    loss_fn(model, batch).backward()
    g2 = [p.grad.clone() for p in model.parameters()]
    opt.second_step(zero_grad=True)
    per_param = opt.parameter_group_fractions()
    for fractions, a, b in zip(per_param, g1, g2):
        r = b / (a + 1e-8)
        expected = [(r >= 0.7).double().mean(), ((r > 0) & (r < 0.7)).double().mean(), (r <= 0).double().mean()]
        assert [fractions[k] for k in "ABC"] == pytest.approx([float(x) for x in expected], abs=0)


def test_alpha_schedule_is_the_authors():
    """Their loop sets alpha before each epoch, numbered from 1: k = 3, alpha 0.5 gives 0.833, 0.667, 0.5, 0.5."""
    opt = SANER(list(MODELS["mlp"]().parameters()), lr=0.1, alpha=0.5)
    sched = AlphaScheduler(opt, k=3)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["alpha"])
        sched.step()
    assert seen == pytest.approx([1 - 0.5 / 3, 1 - 1.0 / 3, 0.5, 0.5], abs=1e-15)
    old = SANER(list(MODELS["mlp"]().parameters()), lr=0.1, alpha=0.5)
    assert AlphaScheduler(old, k=3, start_at_one=True).get_alpha() == [1.0]  # the option: one epoch behind
    now = SANER(list(MODELS["mlp"]().parameters()), lr=0.1, alpha=0.5)
    assert AlphaScheduler(now, k=0).get_alpha() == [0.5]


def test_alpha_schedule_resumes():
    opt = SANER(list(MODELS["mlp"]().parameters()), lr=0.1, alpha=0.25)
    sched = AlphaScheduler(opt, k=4)
    sched.step()
    blob = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, blob)
    blob.seek(0)
    ckpt = torch.load(blob)
    resumed = SANER(list(MODELS["mlp"]().parameters()), lr=0.1, alpha=0.25)
    resumed.load_state_dict(ckpt["opt"])
    again = AlphaScheduler(resumed, k=4)
    again.load_state_dict(ckpt["sched"])
    assert again.get_alpha() == sched.get_alpha() == [1 - 0.75 * 2 / 4]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda p: SAMWO(p, group="D", lr=0.1), "group"),
        (lambda p: SANER(p, group="AB", lr=0.1), "group"),
        (lambda p: SANER(p, rule="samwho", lr=0.1), "rule"),
    ],
)
def test_bad_group_or_rule_is_refused(call, error):
    with pytest.raises(ValueError, match=error):
        call(list(MODELS["mlp"]().parameters()))


def test_per_parameter_fractions_read_a_gradient_that_replaced_the_view():
    """A second backward after ``zero_grad(set_to_none=True)`` on the model: the counts see that gradient."""
    model = MODELS["mlp"](dtype=torch.float64)
    opt = SANER(model.parameters(), alpha=0.5, track_groups="per_parameter", **SGD)
    batch = batches("mlp", 1, dtype=torch.float64)[0]
    loss_fn(model, batch).backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    opt.first_step(zero_grad=True)
    model.zero_grad(set_to_none=True)
    loss_fn(model, batch).backward()
    g2 = [p.grad.clone() for p in model.parameters()]
    opt.second_step(zero_grad=True)
    for fractions, a, b in zip(opt.parameter_group_fractions(), g1, g2):
        r = b / (a + 1e-8)
        assert fractions["B"] == float(((r > 0) & (r < 1)).double().mean())
