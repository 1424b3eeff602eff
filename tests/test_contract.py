"""Every kernel backend against ``reference``: one test matrix over (backend, device, dtype).

Within each (backend, dtype), tests over several switches run a pairwise-covering subset of their
combinations by default (``contract_cases.pairwise``); the rest of the product is marked ``exhaustive``
and runs with ``-m exhaustive`` (``make test-exhaustive``, ``make compat``).

Parameters:
- ``cpp-cpu``: the C++ CPU op (csrc/), built before pytest runs: a missing build is a failure here.
- ``cuda_cpp-cuda`` and ``triton-cuda``: marked ``gpu``, skipped without CUDA.
- ``triton-interpreter``: Triton's interpreter on CPU tensors, marked ``interpreter``: it runs only in the
  pytest process that ``make test`` starts with ``TRITON_INTERPRET=1`` (set before anything imports
  triton; tests/conftest.py deselects these items in every other process, and everything else in that one).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from contract_cases import (
    AVERAGES,
    DTYPES,
    EPS,
    LARGE,
    LENGTHS,
    RULE_SWITCHES,
    RULES,
    SMALL,
    SWITCHES,
    VARIANT_SWITCHES,
    assert_same_step,
    assert_step_skipped,
    clone_all,
    expected_ops,
    make_bucket_tensors,
    no_skip,
    pairwise,
    rule_edges,
    run_step,
    scale_for,
    tolerances,
)

from saner_kernels.ops import reference, resolve_backend
from saner_kernels.ops.hyper import GroupRule, UpdateHyper

ALL_DTYPES = DTYPES + (torch.float64,)
# (backend name, device, test id, marks, the storage dtypes it takes: the matrix holds only these pairs)
BACKENDS = [
    ("cpp", "cpu", "cpp-cpu", (), ALL_DTYPES),
    ("cuda_cpp", "cuda", "cuda_cpp-cuda", (pytest.mark.gpu,), ALL_DTYPES),
    ("triton", "cuda", "triton-cuda", (pytest.mark.gpu,), DTYPES),
    ("triton", "cpu", "triton-interpreter", (pytest.mark.interpreter,), DTYPES),
]
# A representative subset for the long buckets: plain SAM, SANER with tracking, everything on.
LARGE_SWITCHES = [
    sw
    for sw in SWITCHES
    if sw == dict(sw, adaptive=False, nesterov=False, first_momentum_step=False)
    and sw["alpha"] == 1.0
    and not sw["track_groups"]
]
LARGE_SWITCHES += [
    dict(adaptive=False, nesterov=False, first_momentum_step=False, alpha=0.5, track_groups=True, swap=True),
    dict(adaptive=True, nesterov=True, first_momentum_step=True, alpha=0.5, track_groups=True, swap=False),
]


class Backend:
    """One (backend, device) under test: its ops module, its device, and whether it interprets."""

    def __init__(self, name: str, device: str):
        self.name, self.device = name, torch.device(device)
        self.ops = resolve_backend(name, self.device, torch.float32)
        self.interpreter = name == "triton" and device == "cpu"
        declared = next(dtypes for b, d, _, _, dtypes in BACKENDS if (b, d) == (name, device))
        assert set(self.ops.DTYPES) == set(declared), f"{name} takes {self.ops.DTYPES}; update BACKENDS"

    def tensors(self, n: int, dtype: torch.dtype, **kwargs) -> dict:
        return make_bucket_tensors(n, dtype, device=self.device, **kwargs)

    def expected(self, dtype: torch.dtype):
        return expected_ops(self.interpreter, dtype)

    def check(self, n: int, dtype: torch.dtype, switches: dict, **kwargs) -> dict:
        t = self.tensors(n, dtype, **kwargs)
        got = run_step(self.ops, t, **switches)
        assert_same_step(got, run_step(self.expected(dtype), t, **switches), dtype)
        return got


def pytest_generate_tests(metafunc):
    """Every test taking ``backend`` runs on each backend; with ``dtype`` too, on each (backend, dtype) pair
    the backend takes (``@pytest.mark.dtypes(...)`` narrows the dtypes; default: all four)."""
    if "backend" not in metafunc.fixturenames:
        return
    if "dtype" not in metafunc.fixturenames:
        params = [pytest.param((b, d), id=i, marks=m) for b, d, i, m, _ in BACKENDS]
        metafunc.parametrize("backend", params, indirect=True)
        return
    marker = metafunc.definition.get_closest_marker("dtypes")
    wanted = marker.args[0] if marker else ALL_DTYPES
    params = [
        pytest.param((b, d), dt, id=f"{i}-{str(dt).replace('torch.', '')}", marks=m)
        for b, d, i, m, takes in BACKENDS
        for dt in wanted
        if dt in takes
    ]
    metafunc.parametrize(("backend", "dtype"), params, indirect=["backend"])


@pytest.fixture
def backend(request) -> Backend:
    return Backend(*request.param)


# --------------------------------------------------------------------------- the default subset
def test_pairwise_default_run_holds_every_pair_of_switch_values():
    """The step tests' default items hold every pair of (length, switch) values; the rest are exhaustive."""
    _, params = pairwise(n=SMALL, switches=SWITCHES)
    assert len(params) == len(SMALL) * len(SWITCHES)

    def value_pairs(n, switches) -> set:
        return set(itertools.combinations(sorted(dict(switches, n=n).items()), 2))

    every = set().union(*(value_pairs(*p.values) for p in params))
    default = [p for p in params if not p.marks]
    assert set().union(*(value_pairs(*p.values) for p in default)) == every
    assert len(default) <= 8 and all(mark.name == "exhaustive" for p in params if p.marks for mark in p.marks)


# --------------------------------------------------------------------------- norm
@pytest.mark.parametrize(*pairwise(n=LENGTHS, adaptive=(False, True), avg=(None, *sorted(AVERAGES))))
def test_grad_sq_norm(backend, n, dtype, adaptive, avg):
    """The squared norm of the direction: g, or the average's (Friendly-SAM, VaSSO); |w|-weighted if adaptive."""
    t = backend.tensors(n, dtype, seed=n if avg is None else n + 1)
    w = t["w"] if adaptive else None
    kw = {} if avg is None else dict(avg=t["avg"], avg_hyper=AVERAGES[avg])
    got = backend.ops.grad_sq_norm(t["g"], w, **kw)
    assert got.dim() == 0 and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if dtype == torch.float64:
        rtol = 1e-12
    else:  # the average's direction is two products and a sum per element before the square
        rtol = 1e-6 if avg is None else 1e-5
    torch.testing.assert_close(
        got.double().cpu(), reference.grad_sq_norm(t["g"], w, **kw).double().cpu(), rtol=rtol, atol=0.0
    )
    assert torch.equal(got, backend.ops.grad_sq_norm(t["g"], w, **kw)), "two runs differ"


# --------------------------------------------------------------------------- whole step vs reference
@pytest.mark.parametrize(*pairwise(n=SMALL, switches=SWITCHES))
def test_step_switch_combinations(backend, n, dtype, switches):
    backend.check(n, dtype, switches, seed=7, pad=n // 8)


@pytest.mark.parametrize(*pairwise(n=LARGE, switches=LARGE_SWITCHES))
def test_step_long_buckets(backend, n, dtype, switches):
    backend.check(n, dtype, switches, seed=3, pad=n // 8)


def test_step_unaligned_views(backend, dtype):
    """Views that start one element into a buffer (off any vector boundary) give the same results."""
    t = {k: v[1:] for k, v in backend.tensors(4097, dtype, seed=9).items()}
    for sw in SWITCHES[::7]:
        got = run_step(backend.ops, t, **sw)
        assert_same_step(got, run_step(backend.expected(dtype), t, **sw), dtype)


@pytest.mark.parametrize(*pairwise(first_momentum_step=(False, True)))
def test_step_runtime_scalars(backend, dtype, first_momentum_step):
    """Dampening, no weight decay, other lr/eps/momentum: runtime arguments, not just run_step's defaults.
    With dampening, the first momentum step is the one that tells ``buf = d`` (torch.optim.SGD's first step)
    from ``(1 - dampening) * d`` (every other test has dampening 0)."""
    kw = dict(
        adaptive=False,
        nesterov=False,
        first_momentum_step=first_momentum_step,
        alpha=0.25,
        track_groups=True,
        lr=0.03,
        momentum=0.8,
        dampening=0.3,
        weight_decay=0.0,
        eps=1e-3,
    )
    backend.check(1024, dtype, kw, seed=11)


@pytest.mark.parametrize("adaptive", [False, True])
def test_update_without_momentum(backend, dtype, adaptive):
    """momentum == 0: ``buf`` is None (no buffer read or written)."""
    sw = dict(adaptive=adaptive, nesterov=False, first_momentum_step=False, alpha=0.5, track_groups=True)
    got = backend.check(1024, dtype, dict(sw, momentum=0.0), seed=5)
    assert torch.equal(got["buf"], backend.tensors(1024, dtype, seed=5)["buf"])


@pytest.mark.dtypes((torch.float64,))
def test_fp64_scale_rounds_like_torch(backend, dtype):
    """fp64 buckets get an fp64 scale; the kernels use it at full precision."""
    t = backend.tensors(4096 + 3, torch.float64, seed=53)
    for sw in SWITCHES[::9]:
        s = scale_for(t, adaptive=sw["adaptive"]) * (1 + 1e-12)
        assert_same_step(run_step(backend.ops, t, scale=s, **sw), run_step(reference, t, scale=s, **sw), torch.float64)


# --------------------------------------------------------------------------- group counts
def test_group_counts_cover_valid_elements_only(backend):
    n, pad = 4096, 512
    t = backend.tensors(n, torch.float32, seed=23, pad=pad)
    sw = dict(SWITCHES[-1])
    got = run_step(backend.ops, t, n_valid=n - pad, **sw)
    exp = run_step(reference, t, n_valid=n - pad, **sw)
    assert torch.equal(got["stats"].cpu(), exp["stats"].cpu())
    a, b, c = got["stats"].tolist()
    assert a > 0 and b > 0 and c > 0 and a + b + c == n - pad


def test_stats_accumulate(backend):
    t = backend.tensors(1024, torch.float32, seed=29)
    results = []
    for ops in (backend.ops, reference):
        x = clone_all(t)
        stats = torch.tensor([5, 6, 7], dtype=torch.int64, device=backend.device)
        ops.update_(
            x["w"],
            x["g_sam"],
            x["g"],
            x["buf"],
            scale_for(t),
            no_skip(backend.device),
            UpdateHyper(lr=0.1, momentum=0.9, alpha=1.0, eps=EPS),
            stats=stats,
        )
        results.append(stats.cpu())
    assert torch.equal(results[0], results[1]) and results[0].sum().item() == 18 + 1024


# --------------------------------------------------------------------------- skip, restore, edge cases
@pytest.mark.dtypes(DTYPES)
@pytest.mark.parametrize("swap", [False, True])
def test_skip_in_the_first_pass_writes_nothing(backend, dtype, swap):
    """The optimizer's first-pass skip: both ops skipped, scale 0; g_sgd may hold inf."""
    t = backend.tensors(65536 + 5, dtype, seed=41)
    t["g"][3] = float("inf")
    skip, zero = torch.ones((), device=backend.device), torch.zeros((), device=backend.device)
    for sw in (SWITCHES[-1], SWITCHES[4]):
        got = run_step(backend.ops, t, skip=skip, scale=zero, **dict(sw, swap=swap))
        assert_step_skipped(got, t, swap)


@pytest.mark.dtypes(DTYPES)
@pytest.mark.parametrize("swap", [False, True])
def test_skip_in_the_second_pass_restores_only(backend, dtype, swap):
    """An overflow found in the second pass: the update only restores w (w + e - e), no momentum, no counts."""
    t = backend.tensors(65536 + 5, dtype, seed=43)
    skip = torch.ones((), device=backend.device)
    for sw in (SWITCHES[-1], SWITCHES[4], SWITCHES[0]):
        sw = dict(sw, swap=swap)
        got = run_step(backend.ops, t, update_skip=skip, **sw)
        exp = run_step(backend.expected(dtype), t, update_skip=skip, **sw)
        assert_same_step(got, exp, dtype)
        assert torch.equal(got["buf"], t["buf"])
        if "stats" in got:
            assert not got["stats"].any()


@pytest.mark.parametrize(*pairwise(switches=SWITCHES))
def test_update_unscales_both_gradients(backend, dtype, switches):
    """``inv_scale``: GradScaler's scaled gradients (x 2^10 here) are unscaled inside the update."""
    t = backend.tensors(1003, dtype, seed=71)
    for name in ("g", "g_sam"):
        t[name] = t[name] * 1024
    inv = torch.tensor(2.0**-10, device=backend.device)
    got = run_step(backend.ops, t, inv_scale=inv, **switches)
    assert_same_step(got, run_step(backend.expected(dtype), t, inv_scale=inv, **switches), dtype)


@pytest.mark.parametrize("adaptive", [False, True])
def test_restore_undoes_perturb(backend, dtype, adaptive):
    """perturb_ then restore_ gives w + e - e, exactly what the update starts from (reference's rounding)."""
    t = backend.tensors(1003, dtype, seed=61)
    scale = scale_for(t, adaptive=adaptive)
    results = []
    for ops in (backend.ops, backend.expected(dtype)):
        x = clone_all(t)
        e = torch.zeros_like(x["w"]) if adaptive else None
        ops.perturb_(x["w"], x["g"], scale, no_skip(backend.device), e=e)
        ops.restore_(x["w"], scale, no_skip(backend.device), g_sgd=x["g"], e=e)
        results.append(x["w"].cpu())
        untouched = clone_all(x)
        ops.restore_(x["w"], scale, torch.ones((), device=backend.device), g_sgd=x["g"], e=e)
        assert torch.equal(x["w"], untouched["w"]), "restore_ wrote on a skipped step"
    torch.testing.assert_close(results[0].float(), results[1].float(), **tolerances(dtype))


def test_empty_bucket_is_a_no_op(backend):
    x = torch.zeros(0, device=backend.device)
    s, skip = torch.tensor(0.1, device=backend.device), no_skip(backend.device)
    assert backend.ops.grad_sq_norm(x).item() == 0.0
    backend.ops.perturb_(x, x, s, skip, e=x.clone(), g_sgd=x.clone())
    backend.ops.update_(
        x,
        x.clone(),
        x.clone(),
        x.clone(),
        s,
        skip,
        UpdateHyper(lr=0.1, momentum=0.9),
        stats=torch.zeros(3, dtype=torch.int64, device=backend.device),
        zero_grads=True,
    )
    backend.ops.restore_(x, s, skip, g_sgd=x.clone())


@pytest.mark.dtypes(DTYPES)
def test_zero_weight_decay_keeps_inf_and_negative_zero(backend, dtype):
    """weight_decay == 0 adds no ``0 * w`` term: an infinite weight stays infinite, -0 stays -0."""
    t = backend.tensors(1024, dtype, seed=67)
    t["w"][:4] = torch.tensor([float("inf"), float("-inf"), -0.0, -0.0])
    t["g"][:4] = 0.0
    t["g_sam"][:4] = torch.tensor([0.0, 0.0, -0.0, 0.0])
    sw = dict(adaptive=False, nesterov=False, first_momentum_step=True, alpha=0.5, track_groups=False)
    got = run_step(backend.ops, t, weight_decay=0.0, **sw)
    exp = run_step(backend.expected(dtype), t, weight_decay=0.0, **sw)
    assert torch.equal(got["w"][:4].cpu(), exp["w"][:4].cpu())
    assert torch.equal(torch.signbit(got["w"][:4]).cpu(), torch.signbit(exp["w"][:4]).cpu())


def test_deterministic(backend):
    t = backend.tensors(65573, torch.float32, seed=12)
    runs = [run_step(backend.ops, t, **SWITCHES[-1]) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), f"{name} differs between two runs"


def test_arguments_are_checked(backend):
    """Wrong dtype, length, scale or skip: a clear error naming the argument, before anything is written."""
    t = backend.tensors(256, torch.float32)
    s, skip, dev = scale_for(t), no_skip(backend.device), backend.device
    before = clone_all(t)
    bad_calls = {
        "dtype": lambda: backend.ops.perturb_(t["w"], t["g"].half(), s, skip),
        "elements": lambda: backend.ops.perturb_(t["w"], t["g"][:128], s, skip),
        "scale": lambda: backend.ops.perturb_(t["w"], t["g"], s.half(), skip),
        "scale ": lambda: backend.ops.perturb_(t["w"], t["g"], torch.full((2,), 0.1, device=dev), skip),
        "skip": lambda: backend.ops.perturb_(t["w"], t["g"], s, torch.zeros(2, device=dev)),
        "stats": lambda: backend.ops.update_(
            t["w"],
            t["g_sam"],
            t["g_sgd"],
            t["buf"],
            s,
            skip,
            UpdateHyper(lr=0.1, momentum=0.9),
            stats=torch.zeros(3, device=dev),
        ),
        "inv_scale": lambda: backend.ops.update_(
            t["w"], t["g_sam"], t["g_sgd"], t["buf"], s, skip, UpdateHyper(lr=0.1, momentum=0.9), inv_scale=s.double()
        ),
    }
    if backend.device.type != "cpu":
        bad_calls["scale  "] = lambda: backend.ops.perturb_(t["w"], t["g"], s.cpu(), skip)
    for what, call in bad_calls.items():
        with pytest.raises((RuntimeError, ValueError, TypeError), match=what.strip()):
            call()
    for name in before:
        assert torch.equal(t[name], before[name]), f"{name} changed by a rejected call"


# --------------------------------------------------------------------------- the SAM family (contract v3)


@pytest.mark.parametrize(*pairwise(n=SMALL, switches=VARIANT_SWITCHES))
def test_step_sam_family(backend, n, dtype, switches):
    """Friendly-SAM / VaSSO averages (direction, norm, commit) and GSAM's decomposition, every backend."""
    got = backend.check(n, dtype, switches, seed=17, pad=n // 8)
    if switches["avg"]:
        assert not torch.equal(got["avg"], backend.tensors(n, dtype, seed=17, pad=n // 8)["avg"]), "avg not committed"


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("n", LENGTHS)
def test_gsam_dot_norm(backend, n, dtype, adaptive):
    t = backend.tensors(n, dtype, seed=n + 2)
    w = t["w"] if adaptive else None
    got = backend.ops.gsam_dot_norm(t["g"], t["g_sam"], w)
    assert got.shape == (2,) and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    exp = reference.gsam_dot_norm(t["g"], t["g_sam"], w)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    # the dot product sums terms of both signs: its error is relative to the sum of their magnitudes
    atol = rtol * float((t["g"].double() * t["g_sam"].double()).abs().sum())
    torch.testing.assert_close(got[0].double().cpu(), exp[0].double().cpu(), rtol=rtol, atol=atol)
    torch.testing.assert_close(got[1].double().cpu(), exp[1].double().cpu(), rtol=rtol, atol=0.0)
    assert torch.equal(got, backend.ops.gsam_dot_norm(t["g"], t["g_sam"], w)), "two runs differ"


@pytest.mark.parametrize("avg", sorted(AVERAGES))
def test_restore_with_an_average_leaves_it_alone(backend, dtype, avg):
    """perturb_ then restore_ along the average's direction: w + e - e, the average never written."""
    t = backend.tensors(1003, dtype, seed=81)
    kw = dict(avg=t["avg"], avg_hyper=AVERAGES[avg])
    scale = scale_for(t, avg=avg)
    results = []
    for ops in (backend.ops, backend.expected(dtype)):
        x = clone_all(t)
        kw = dict(avg=x["avg"], avg_hyper=AVERAGES[avg])
        ops.perturb_(x["w"], x["g"], scale, no_skip(backend.device), **kw)
        assert torch.equal(x["avg"], t["avg"]), "perturb_ wrote the average"
        ops.restore_(x["w"], scale, no_skip(backend.device), g_sgd=x["g"], **kw)
        assert torch.equal(x["avg"], t["avg"]), "restore_ wrote the average"
        results.append(x["w"].cpu())
    torch.testing.assert_close(results[0].float(), results[1].float(), **tolerances(dtype))


@pytest.mark.dtypes(DTYPES)
@pytest.mark.parametrize("avg", ["fsam", "vasso"])
def test_skipped_update_keeps_the_average(backend, dtype, avg):
    t = backend.tensors(4099, dtype, seed=83)
    got = run_step(backend.ops, t, update_skip=torch.ones((), device=backend.device), avg=avg, **SWITCHES[-1])
    assert torch.equal(got["avg"], t["avg"])


@pytest.mark.parametrize(*pairwise(n=SMALL, alpha=(0.5, 1.0), track_groups=(False, True)))
def test_reweight(backend, n, dtype, alpha, track_groups):
    """reweight_ (local distributed mode): Group B of g scaled by alpha in place, counts as update_."""
    t = backend.tensors(n, dtype, seed=87, pad=n // 8)
    inv = torch.tensor(0.5, device=backend.device)
    results = []
    for ops in (backend.ops, backend.expected(dtype)):
        x = clone_all(t)
        stats = torch.zeros(3, dtype=torch.int64, device=backend.device) if track_groups else None
        ops.reweight_(x["g_sam"], x["g"], no_skip(backend.device), alpha, EPS, stats=stats, n_valid=n - n // 8)
        ops.reweight_(x["g_sam"], x["g"], no_skip(backend.device), alpha, EPS, inv_scale=inv)
        results.append((x, stats))
    (got, got_stats), (exp, exp_stats) = results
    assert torch.equal(got["g"], t["g"]), "g_sgd was written"
    torch.testing.assert_close(got["g_sam"].float().cpu(), exp["g_sam"].float().cpu(), **tolerances(dtype))
    if track_groups:
        assert torch.equal(got_stats.cpu(), exp_stats.cpu())
    x = clone_all(t)
    backend.ops.reweight_(x["g_sam"], x["g"], torch.ones((), device=backend.device), alpha, EPS)
    assert torch.equal(x["g_sam"], t["g_sam"]), "a skipped reweight_ wrote"


# --------------------------------------------------------------------------- the group rule
@pytest.mark.parametrize(*pairwise(n=SMALL, switches=RULE_SWITCHES))
def test_step_group_rule(backend, n, dtype, switches):
    """A group rule (ops.GroupRule) in place of the alpha reweighting, every region and its boundaries hit: r == 0,
    r == bound exactly, NaN (0 / 0) and infinite ratios (``contract_cases.rule_edges``); after GSAM's decomposition
    and the unscaling; counts A as r >= bound, B as 0 < r < bound."""
    t = rule_edges(backend.tensors(n, dtype, seed=19, pad=n // 8), switches["rule"], seed=n)
    got = run_step(backend.ops, t, **switches)
    assert_same_step(got, run_step(backend.expected(dtype), t, **switches), dtype)


@pytest.mark.parametrize(*pairwise(n=SMALL, rule=sorted(RULES), track_groups=(False, True)))
def test_reweight_group_rule(backend, n, dtype, rule, track_groups):
    """reweight_ with a group rule: the rule's gradient in place, counts as update_ makes them; unscaled too."""
    t = rule_edges(backend.tensors(n, dtype, seed=89, pad=n // 8), rule, seed=n)
    inv = torch.tensor(0.5, device=backend.device)
    results = []
    for ops in (backend.ops, backend.expected(dtype)):
        x = clone_all(t)
        stats = torch.zeros(3, dtype=torch.int64, device=backend.device) if track_groups else None
        kw = dict(stats=stats, n_valid=n - n // 8, rule=RULES[rule])
        ops.reweight_(x["g_sam"], x["g"], no_skip(backend.device), 0.5, EPS, **kw)
        ops.reweight_(x["g_sam"], x["g"], no_skip(backend.device), 0.5, EPS, inv_scale=inv, rule=RULES[rule])
        results.append((x, stats))
    (got, got_stats), (exp, exp_stats) = results
    assert torch.equal(got["g"], t["g"]), "g_sgd was written"
    torch.testing.assert_close(got["g_sam"].float().cpu(), exp["g_sam"].float().cpu(), **tolerances(dtype))
    if track_groups:
        assert torch.equal(got_stats.cpu(), exp_stats.cpu())
    x = clone_all(t)
    backend.ops.reweight_(x["g_sam"], x["g"], torch.ones((), device=backend.device), 0.5, EPS, rule=RULES[rule])
    assert torch.equal(x["g_sam"], t["g_sam"]), "a skipped reweight_ wrote"


def test_group_rule_edges_hit_every_region():
    """The rule tests' inputs hold every region of every rule's bound, its exact boundaries and NaN ratios."""
    for name, rule in RULES.items():
        t = rule_edges(make_bucket_tensors(1003, torch.float32, seed=19, pad=125), name, seed=1003)
        r = t["g_sam"] / (t["g"] + EPS)
        b = torch.tensor(rule.bound, dtype=torch.float32)
        for region, mask in dict(C=r < 0, Z=r == 0, B=(r > 0) & (r < b), E=r == b, A=r > b, nan=r.isnan()).items():
            assert mask[:-125].any(), (name, region)


def test_group_rule_is_checked(backend):
    """A rule that is not a GroupRule, an empty region set, a non-finite bound: refused before anything is written."""
    t = backend.tensors(256, torch.float32)
    s, skip = scale_for(t), no_skip(backend.device)
    before = clone_all(t)
    hyper = UpdateHyper(lr=0.1, momentum=0.9)
    for rule in ("A", GroupRule(regions=0), GroupRule(regions=4, bound=float("nan"))):
        with pytest.raises((TypeError, ValueError), match="rule|GroupRule"):
            backend.ops.update_(t["w"], t["g_sam"], t["g_sgd"], t["buf"], s, skip, hyper, rule=rule)
        with pytest.raises((TypeError, ValueError), match="rule|GroupRule"):
            backend.ops.reweight_(t["g_sam"], t["g_sgd"], skip, 0.5, EPS, rule=rule)
    for name in before:
        assert torch.equal(t[name], before[name]), f"{name} changed by a rejected call"
