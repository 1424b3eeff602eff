"""The whole SANER/SAM optimizer with ``backend="cpp"`` (the C++ CPU op) against ``backend="reference"``:
10 training steps on small models, every switch, fp32/fp64 exact-ish and bf16 within its rounding."""
from __future__ import annotations

import copy

import pytest
import torch

from saner_kernels import SAM, SANER
from saner_kernels.ops import native

from toy_models import MODELS, batches, loss_fn

N_STEPS = 10


@pytest.fixture(scope="module", autouse=True)
def cpp_built():
    ok, reason = native.CPP.is_available(torch.device("cpu"))
    assert ok, f"the cpp backend must be available on CPU (CI builds it first): {reason}"


def train(model, opt, data):
    for batch in data:
        loss_fn(model, batch).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model, batch).backward()
        opt.second_step(zero_grad=True)


def run_pair(kind, dtype, make_opt):
    base = MODELS[kind](dtype=dtype, seed=3)
    data = batches(kind, N_STEPS, dtype=dtype, seed=4)
    out = {}
    for backend in ("cpp", "reference"):
        model = copy.deepcopy(base)
        opt = make_opt(model.parameters(), backend)
        train(model, opt, data)
        assert opt.backends() == [backend] * len(opt.buckets())
        out[backend] = (model, opt)
    return out


def assert_close_models(out, rtol, atol):
    (m_cpp, o_cpp), (m_ref, o_ref) = out["cpp"], out["reference"]
    for (name, a), b in zip(m_cpp.state_dict().items(), m_ref.state_dict().values()):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    s_cpp, s_ref = o_cpp.state_dict()["state"], o_ref.state_dict()["state"]
    assert s_cpp.keys() == s_ref.keys()
    for k in s_cpp:
        for name, v in s_cpp[k].items():
            torch.testing.assert_close(v.double(), s_ref[k][name].double(), rtol=rtol, atol=atol)


CONFIGS = [
    dict(),
    dict(alpha=1.0),
    dict(adaptive=True, rho=0.5),
    dict(nesterov=True),
    dict(momentum=0.0, weight_decay=0.0),
    dict(dampening=0.2, alpha=0.3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_saner_cpp_matches_reference(kind, config):
    out = run_pair(kind, torch.float32,
                   lambda p, b: SANER(p, lr=0.05, backend=b, track_groups=True, **config))
    assert_close_models(out, rtol=1e-5, atol=1e-6)
    fa, fb = out["cpp"][1].group_fractions(), out["reference"][1].group_fractions()
    assert abs(fa["B"] - fb["B"]) <= 0.02 and abs(fa["A"] - fb["A"]) <= 0.02, (fa, fb)


def test_saner_cpp_fp64():
    out = run_pair("mlp", torch.float64, lambda p, b: SANER(p, lr=0.05, backend=b, nesterov=True))
    assert_close_models(out, rtol=1e-10, atol=1e-12)


def test_saner_cpp_bf16():
    out = run_pair("mlp", torch.bfloat16, lambda p, b: SANER(p, lr=0.05, backend=b))
    assert_close_models(out, rtol=2 ** -6, atol=1e-3)


def test_sam_cpp_matches_reference():
    out = run_pair("conv", torch.float32, lambda p, b: SAM(p, lr=0.05, backend=b, adaptive=True))
    assert_close_models(out, rtol=1e-5, atol=1e-6)


def test_auto_picks_cpp_on_cpu():
    model = MODELS["mlp"](seed=5)
    opt = SANER(model.parameters(), lr=0.1)
    train(model, opt, batches("mlp", 1, seed=6))
    assert set(opt.backends()) == {"cpp"}
