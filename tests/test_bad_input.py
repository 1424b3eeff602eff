"""Bad input to the optimizer: refused with an error that names it, and nothing changed (docs/design.md,
"Bad input")."""

import copy
import math
import re
import warnings

import pytest
import torch
from toy_models import MODELS, assert_unchanged, batches, run_saner, snapshot

from saner_kernels import SAM, SANER

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, alpha=0.5)
NON_FINITE = [float("nan"), float("inf"), -float("inf")]
GROUP_NUMBERS = ["lr", "momentum", "dampening", "weight_decay", "rho", "alpha", "ratio_eps"]


def stepped(opt_kwargs=None, model_kind="mlp", steps=2, cls=SANER, seed=0):
    model = MODELS[model_kind](seed=seed)
    opt = cls(model.parameters(), **(opt_kwargs or HYPER))
    run_saner(model, opt, batches(model_kind, steps))
    return model, opt


# ----------------------------------------------------------------------------- non-finite hyperparameters
@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", GROUP_NUMBERS)
def test_non_finite_hyperparameter_refused_at_construction_and_in_add_param_group(name, value):
    with pytest.raises(ValueError, match=f"{name}|learning rate"):  # torch.optim.SGD's own message for lr < 0
        SANER(MODELS["mlp"]().parameters(), **{**HYPER, name: value})
    opt = SANER(MODELS["mlp"]().parameters(), **HYPER)
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], name: value})
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before


@pytest.mark.parametrize(
    "variant, name", [("fsam", "sigma"), ("fsam", "lmbda"), ("vasso", "theta"), ("gsam", "gsam_alpha")]
)
def test_non_finite_variant_hyperparameter_refused(variant, name):
    for value in NON_FINITE:
        with pytest.raises(ValueError, match=name):
            SANER(MODELS["mlp"]().parameters(), variant=variant, **{**HYPER, name: value})


@pytest.mark.parametrize("name", ["lr", "rho", "alpha"])
def test_non_finite_value_written_into_a_group_is_refused_before_the_step(name):
    """A scheduler or user writing NaN into a group: the next step refuses and changes nothing."""
    model, opt = stepped()
    before = snapshot(model, opt)
    opt.param_groups[0][name] = float("nan")
    with pytest.raises(ValueError, match=name):
        run_saner(model, opt, batches("mlp", 1, seed=5))
    opt.zero_grad()
    assert_unchanged(model, opt, before)
    assert opt.skipped_steps == 0


def test_non_finite_value_written_between_the_two_steps_is_refused_and_undone_by_the_caller():
    """Written after first_step: second_step refuses before touching anything; the weights stay at w + e and
    the caller can fix the value and call second_step again."""
    model, opt = stepped()
    x, y = batches("mlp", 1, seed=5)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    perturbed = snapshot(model, opt)
    opt.param_groups[0]["lr"] = float("inf")
    with pytest.raises(ValueError, match="lr"):
        opt.second_step(zero_grad=True)
    assert_unchanged(model, opt, perturbed)
    opt.param_groups[0]["lr"] = 0.05
    opt.second_step(zero_grad=True)  # the step completes once the value is fixed
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------- state from another model
def test_state_of_another_model_is_refused_into_a_fresh_optimizer():
    _, other = stepped(model_kind="conv")
    model = MODELS["conv"](seed=3)
    # The same number of parameters, other shapes: a conv net of another width.
    wide = torch.nn.Sequential(*[copy.deepcopy(m) for m in model])
    wide[0] = torch.nn.Conv2d(3, 9, 3, padding=1)
    opt = SANER(wide.parameters(), **HYPER)
    with pytest.raises(ValueError, match=r"momentum_buffer.*shape \(8, 3, 3, 3\)"):
        opt.load_state_dict(other.state_dict())
    assert opt.state_dict()["state"] == {}


@pytest.mark.parametrize("broadcastable", [False, True])
def test_state_of_another_model_is_refused_into_a_stepped_optimizer_and_changes_nothing(broadcastable):
    """Into an optimizer that has stepped: refused, the momentum buffers unchanged, and training goes on as
    if nothing happened. Broadcastable shapes ((3,) into (4, 3)) are refused too (torch's SGD fails there)."""
    shape = (3,) if broadcastable else (2,)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    opt = SANER(model.parameters(), **HYPER)
    x, y = torch.randn(5, 3), torch.randint(0, 4, (5,))
    for _ in range(2):
        run_saner(model, opt, [(x, y)])
    before = snapshot(model, opt)
    foreign = copy.deepcopy(opt.state_dict())
    foreign["state"][0]["momentum_buffer"] = torch.zeros(shape)
    expected = rf"parameter 0 of group 0 \(shape \(4, 3\)\) has shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=expected):
        opt.load_state_dict(foreign)
    assert_unchanged(model, opt, before)
    twin_model = copy.deepcopy(model)
    twin_opt = SANER(twin_model.parameters(), **HYPER)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no tensor shared with `opt`
    run_saner(model, opt, [(x, y)])
    run_saner(twin_model, twin_opt, [(x, y)])
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)


def test_not_an_optimizer_state_dict_is_refused():
    model, opt = stepped()
    with pytest.raises(ValueError, match="not an optimizer state_dict"):
        opt.load_state_dict(model.state_dict())


def test_checkpoint_with_a_nan_hyperparameter_is_refused():
    model, opt = stepped()
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["rho"] = float("nan")
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="rho"):
        opt.load_state_dict(bad)
    assert_unchanged(model, opt, before)
    assert opt.param_groups[0]["rho"] == HYPER["rho"]


def test_checkpoint_of_another_variant_loads_with_a_warning():
    _, fsam = stepped(dict(HYPER, variant="fsam"))
    opt = SANER(MODELS["mlp"]().parameters(), **HYPER)
    with pytest.warns(UserWarning, match="variant is 'fsam'"):
        opt.load_state_dict(fsam.state_dict())
    assert opt.param_groups[0]["variant"] == "fsam"
    assert opt.param_groups[0]["sigma"] == 1.0


def test_checkpoint_of_the_same_variant_loads_silently():
    _, a = stepped()
    b = SANER(MODELS["mlp"]().parameters(), **HYPER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.load_state_dict(a.state_dict())


def test_sam_refuses_a_saner_checkpoint_and_keeps_alpha_one():
    _, saner_gsam = stepped(dict(HYPER, variant="gsam"))
    model, sam = stepped(dict(lr=0.05), cls=SAM)
    before = snapshot(model, sam)
    with pytest.raises(ValueError, match="SANER"):
        sam.load_state_dict(saner_gsam.state_dict())
    assert_unchanged(model, sam, before)
    assert all(g["alpha"] == 1.0 for g in sam.param_groups)
    assert math.isclose(sam.param_groups[0]["rho"], 0.05)


def test_adamw_state_of_another_model_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    opt = SANER(model.parameters(), torch.optim.AdamW, lr=1e-2)
    x, y = torch.randn(5, 3), torch.randint(0, 4, (5,))
    run_saner(model, opt, [(x, y)])
    foreign = copy.deepcopy(opt.state_dict())
    foreign["state"][0]["exp_avg"] = torch.zeros(3)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"'exp_avg' for parameter 0 of group 0 \(shape \(4, 3\)\) has shape \(3,\)"):
        opt.load_state_dict(foreign)
    assert_unchanged(model, opt, before)
