"""The Triton kernels against ``reference``, on CPU tensors through Triton's interpreter.

Why no subprocess or conftest: ``saner_kernels.ops.triton`` keeps each kernel both compiled and
interpreted and picks per launch (CUDA tensors: compiled; CPU tensors: interpreted, allowed only while
``TRITON_INTERPRET=1``, read at call time). So it does not matter which module imported Triton or the
backend first; an autouse fixture sets ``TRITON_INTERPRET=1`` for these tests only, and the plain
``python -m pytest tests`` runs them in its one process.

Interpreted bf16 stores round to nearest even by hand (the interpreter would truncate), so every
dtype is held to ``contract_cases.tolerances`` for a whole perturb + update step.
"""
from __future__ import annotations

import pytest
import torch

from saner_kernels.buckets import FlatBucket
from saner_kernels.ops import reference
from saner_kernels.ops import triton as triton_ops

from contract_cases import (DTYPES, LENGTHS, SWITCHES, assert_same_step, assert_step_skipped, clone_all,
                            make_bucket_tensors, run_step, scale_for, tolerances)

SMALL = [n for n in LENGTHS if n <= 1024]
LARGE = [n for n in LENGTHS if n > 1024]
# A representative subset for the long buckets (the interpreter is slow): plain SAM, SANER with every
# other switch off, and everything on (adaptive, nesterov, tracking), later momentum steps.
LARGE_SWITCHES = [
    dict(adaptive=False, nesterov=False, first_momentum_step=False, alpha=1.0, track_groups=False),
    dict(adaptive=False, nesterov=False, first_momentum_step=False, alpha=0.5, track_groups=True),
    dict(adaptive=True, nesterov=True, first_momentum_step=True, alpha=0.5, track_groups=True),
]


def _id(sw: dict) -> str:
    return "-".join(k for k, v in sw.items() if v is True) + f"-a{sw['alpha']}"


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# --------------------------------------------------------------------------- norm
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
def test_grad_sq_norm(n, dtype, adaptive):
    t = make_bucket_tensors(n, dtype, seed=n)
    w = t["w"] if adaptive else None
    got = triton_ops.grad_sq_norm(t["g"], w)
    assert got.dim() == 0 and got.dtype == torch.float32
    # fp32 block partial sums, added in a fixed order: within 1e-6 of an fp64 sum.
    x = t["g"].double() * (t["w"].double().abs() if adaptive else 1.0)
    torch.testing.assert_close(got.double(), torch.dot(x, x), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(got.double(), reference.grad_sq_norm(t["g"], w).double(), rtol=1e-6, atol=0.0)
    assert torch.equal(got, triton_ops.grad_sq_norm(t["g"], w)), "two runs differ"


# --------------------------------------------------------------------------- whole step vs reference
@pytest.mark.parametrize("switches", SWITCHES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SMALL)
def test_step_every_switch(n, dtype, switches):
    t = make_bucket_tensors(n, dtype, seed=7, pad=n // 8)
    assert_same_step(run_step(triton_ops, t, **switches), run_step(reference, t, **switches), dtype)


@pytest.mark.parametrize("switches", LARGE_SWITCHES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LARGE)
def test_step_long_buckets(n, dtype, switches):
    t = make_bucket_tensors(n, dtype, seed=3)
    assert_same_step(run_step(triton_ops, t, **switches), run_step(reference, t, **switches), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_step_runtime_scalars(dtype):
    """Dampening, no weight decay, other lr/eps: runtime arguments, not just run_step's defaults."""
    t = make_bucket_tensors(1024, dtype, seed=11)
    kw = dict(adaptive=False, nesterov=False, first_momentum_step=False, alpha=0.25, track_groups=True,
              lr=0.03, momentum=0.8, dampening=0.3, weight_decay=0.0, eps=1e-3)
    assert_same_step(run_step(triton_ops, t, **kw), run_step(reference, t, **kw), dtype)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_update_without_momentum(dtype, adaptive):
    """momentum == 0: ``buf`` is None (no buffer read or written)."""
    t = make_bucket_tensors(1024, dtype, seed=5)
    scale = scale_for(t, adaptive=adaptive)
    results = []
    for ops in (triton_ops, reference):
        c = clone_all(t)
        e = torch.zeros_like(c["w"]) if adaptive else None
        stats = torch.zeros(3, dtype=torch.int64)
        ops.perturb_(c["w"], c["g"], c["g_sgd"], scale, e)
        ops.update_(c["w"], c["g_sam"], c["g_sgd"], None, scale, e=e, lr=0.1, momentum=0.0, dampening=0.0,
                    weight_decay=5e-4, alpha=0.5, eps=1e-8, nesterov=False, first_momentum_step=False,
                    stats=stats)
        results.append(dict(w=c["w"], g_sgd=c["g_sgd"], buf=c["buf"], stats=stats))
    assert torch.equal(results[0]["buf"], t["buf"])
    assert_same_step(*results, dtype)


# --------------------------------------------------------------------------- buckets, skips, determinism
# Masked lanes still compute (0 * inf) in numpy under the interpreter; nothing of it is stored.
_NUMPY_NAN_WARNINGS = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def test_odd_shaped_bucket():
    """A real FlatBucket of odd shapes (padding included) through both backends."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 5, 7), (11,), (1,), (13, 17), (2, 3, 1, 9)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    bucket = FlatBucket(params, [None] * len(params))
    assert bucket.n_pad > 0
    src = make_bucket_tensors(bucket.n, seed=2, pad=bucket.n_pad)
    bucket.flat_grad.copy_(src["g"])
    t = dict(src, w=bucket.flat_param)
    for switches in (SWITCHES[0], SWITCHES[-1], SWITCHES[5]):
        got = run_step(triton_ops, t, **switches)
        assert_same_step(got, run_step(reference, t, **switches), torch.float32)
        assert torch.equal(got["w"][bucket.n_valid:], torch.zeros(bucket.n_pad)), "padding must stay zero"
        if switches["track_groups"]:
            assert got["stats"].sum().item() == bucket.n and got["stats"][2] >= bucket.n_pad


@_NUMPY_NAN_WARNINGS
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_scale_writes_nothing(dtype, bad):
    t = make_bucket_tensors(1024, dtype, seed=9)
    scale = torch.tensor(bad, dtype=torch.float32)
    for switches in (SWITCHES[-1], SWITCHES[2]):
        assert_step_skipped(run_step(triton_ops, t, scale=scale, **switches), t)


@_NUMPY_NAN_WARNINGS
def test_nonfinite_first_gradient_skips_step():
    """NaN/inf in the first gradient: a non-finite norm makes the scale NaN (as the optimizer does)."""
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = make_bucket_tensors(1024, seed=4)
        t["g"][17] = bad
        norm = triton_ops.grad_sq_norm(t["g"])
        assert not torch.isfinite(norm)
        scale = torch.where(torch.isfinite(norm), 0.1 / (norm.sqrt() + 1e-12), float("nan")).float()
        got = run_step(triton_ops, t, scale=scale, **SWITCHES[-1])
        assert torch.equal(got["w"], t["w"]) and torch.equal(got["buf"], t["buf"])
        assert torch.equal(got["g_sgd"], t["g_sgd"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic(dtype):
    t = make_bucket_tensors(65536, dtype, seed=12)
    runs = [run_step(triton_ops, t, **SWITCHES[-1]) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), f"{name} differs between two runs"


# --------------------------------------------------------------------------- availability, errors
def test_availability(monkeypatch):
    assert triton_ops.is_available(torch.device("cpu")) == (True, "")
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, reason = triton_ops.is_available(torch.device("cpu"))
    assert not ok and "TRITON_INTERPRET" in reason
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_ops.grad_sq_norm(torch.zeros(128))


def test_rejects_other_dtypes_and_shapes():
    with pytest.raises(TypeError):
        triton_ops.grad_sq_norm(torch.zeros(128, dtype=torch.float64))
    with pytest.raises(ValueError):
        triton_ops.perturb_(torch.zeros(128), torch.zeros(256), torch.zeros(128), torch.tensor(1.0))


# --------------------------------------------------------------------------- the optimizer on this backend
@pytest.mark.parametrize("hyper", [
    dict(lr=0.05, alpha=0.5, track_groups=True),
    dict(lr=0.05, alpha=0.5, adaptive=True, rho=0.5, nesterov=True),
    dict(lr=0.05, alpha=1.0, momentum=0.0),
], ids=["saner", "adaptive-nesterov", "sam-no-momentum"])
def test_optimizer_matches_reference_backend(hyper):
    from saner_kernels import SANER
    from toy_models import batches, conv_net, loss_fn, max_rel_err, twin

    model = conv_net()
    other = twin(model)
    data = batches("conv", 5)
    opts = [SANER(m.parameters(), backend=b, **hyper) for m, b in ((model, "triton"), (other, "reference"))]
    for batch in data:
        for m, opt in zip((model, other), opts):
            loss_fn(m, batch).backward()
            opt.first_step(zero_grad=True)
            loss_fn(m, batch).backward()
            opt.second_step(zero_grad=True)
    assert set(opts[0].backends()) == {"triton"} and set(opts[1].backends()) == {"reference"}
    assert max_rel_err(model, other) < 1e-5
    if hyper.get("track_groups"):
        # Not equal: the conv biases before BatchNorm get round-off gradients whose signs (hence groups)
        # follow the last bits of the fp32 vs fp64 norm. The op tests check exact counts.
        got, expected = (opt.group_fractions() for opt in opts)
        assert all(abs(got[k] - expected[k]) < 0.03 for k in "ABC"), (got, expected)
