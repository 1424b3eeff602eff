"""The whole SANER/SAM optimizer with ``backend="cpp"`` (the native ops on CPU tensors) against
``backend="reference"``: 10 training steps on small models, every switch, both gradient-buffer paths
(swapping ``first_step(zero_grad=True)``, copying ``zero_grad=False``) and the closure API; fp32 and fp64
within the shared optimizer tolerance, bf16 within its rounding. The op-level checks are test_contract.py's."""

from __future__ import annotations

import pytest
import torch
from contract_cases import OPTIMIZER_RTOL
from toy_models import MODELS, batches, loss_fn, max_rel_err, run_saner, twin

from saner_kernels import SAM, SANER
from saner_kernels.ops import native

N_STEPS = 10


@pytest.fixture(scope="module", autouse=True)
def cpp_built():
    ok, reason = native.is_available(torch.device("cpu"))
    assert ok, f"the native ops must be available on CPU (CI builds them first): {reason}"


def train(model, opt, data, zero_grad: bool = True):
    for batch in data:
        loss_fn(model, batch).backward()
        opt.first_step(zero_grad=zero_grad)
        if not zero_grad:
            opt.zero_grad()  # g_SGD was copied; the second gradient starts from zero
        loss_fn(model, batch).backward()
        opt.second_step(zero_grad=True)


def run_pair(kind, dtype, make_opt, run=train):
    base = MODELS[kind](dtype=dtype, seed=3)
    data = batches(kind, N_STEPS, dtype=dtype, seed=4)
    out = {}
    for backend in ("cpp", "reference"):
        model = twin(base)
        opt = make_opt(model.parameters(), backend)
        run(model, opt, data)
        assert opt.backends() == [backend] * len(opt.buckets())
        out[backend] = (model, opt)
    return out


def assert_close_runs(out, rtol, atol):
    """Weights within rtol (relative to each parameter's largest entry); momentum and BatchNorm statistics
    within rtol/atol elementwise (a conv bias before BatchNorm gets round-off gradients: atol)."""
    (m_cpp, o_cpp), (m_ref, o_ref) = out["cpp"], out["reference"]
    assert max_rel_err(m_cpp, m_ref) <= rtol
    for a, b in zip(m_cpp.buffers(), m_ref.buffers()):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)
    s_cpp, s_ref = o_cpp.state_dict()["state"], o_ref.state_dict()["state"]
    assert s_cpp.keys() == s_ref.keys()
    for k in s_cpp:
        for name, v in s_cpp[k].items():
            torch.testing.assert_close(
                v.double(),
                s_ref[k][name].double(),
                rtol=rtol,
                atol=atol,
                msg=lambda m, k=k, name=name: f"state {k} {name}: {m}",
            )


CONFIGS = [
    dict(),
    dict(alpha=1.0),
    dict(adaptive=True, rho=0.5),
    dict(nesterov=True),
    dict(momentum=0.0, weight_decay=0.0),
    dict(dampening=0.2, alpha=0.3),
]


@pytest.mark.parametrize("zero_grad", [True, False], ids=["swap", "copy"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_saner_cpp_matches_reference(kind, config, zero_grad):
    out = run_pair(
        kind,
        torch.float32,
        lambda p, b: SANER(p, lr=0.05, backend=b, track_groups=True, **config),
        run=lambda m, o, d: train(m, o, d, zero_grad),
    )
    assert_close_runs(out, OPTIMIZER_RTOL["kernel"], atol=1e-6)
    fa, fb = out["cpp"][1].group_fractions(), out["reference"][1].group_fractions()
    assert abs(fa["B"] - fb["B"]) <= 0.02 and abs(fa["A"] - fb["A"]) <= 0.02, (fa, fb)


# Contract v3 through the optimizer: the gradient averages (direction, norm, commit, state_dict) and GSAM's
# dot/norm pass and decomposition; both gradient-buffer paths.
VARIANTS = [
    dict(variant="fsam", alpha=0.5),
    dict(variant="vasso", adaptive=True, rho=0.5),
    dict(variant="gsam", alpha=0.5),
    dict(variant="gsam", adaptive=True, rho=0.5, alpha=1.0),
]


@pytest.mark.parametrize("zero_grad", [True, False], ids=["swap", "copy"])
@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sam_family_cpp_matches_reference(config, zero_grad):
    out = run_pair(
        "conv",
        torch.float32,
        lambda p, b: SANER(p, lr=0.05, backend=b, **config),
        run=lambda m, o, d: train(m, o, d, zero_grad),
    )
    assert_close_runs(out, OPTIMIZER_RTOL["kernel"], atol=1e-6)


def test_saner_cpp_closure_api():
    out = run_pair(
        "conv",
        torch.float32,
        lambda p, b: SANER(p, lr=0.05, backend=b, alpha=0.5),
        run=lambda m, o, d: run_saner(m, o, d, closure_api=True),
    )
    assert_close_runs(out, OPTIMIZER_RTOL["kernel"], atol=1e-6)


def test_saner_cpp_fp64():
    out = run_pair("mlp", torch.float64, lambda p, b: SANER(p, lr=0.05, backend=b, nesterov=True))
    assert_close_runs(out, 1e-10, atol=1e-12)


def test_saner_cpp_bf16():
    out = run_pair("mlp", torch.bfloat16, lambda p, b: SANER(p, lr=0.05, backend=b))
    assert_close_runs(out, 2**-6, atol=1e-3)


def test_sam_cpp_matches_reference():
    out = run_pair("conv", torch.float32, lambda p, b: SAM(p, lr=0.05, backend=b, adaptive=True))
    assert_close_runs(out, OPTIMIZER_RTOL["kernel"], atol=1e-6)


def test_auto_picks_cpp_on_cpu():
    model = MODELS["mlp"](seed=5)
    opt = SANER(model.parameters(), lr=0.1)
    train(model, opt, batches("mlp", 1, seed=6))
    assert set(opt.backends()) == {"cpp"}
