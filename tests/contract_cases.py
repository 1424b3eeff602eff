"""Shared inputs and checks for testing a backend's contract ops against ``reference``.

Every kernel backend's tests (Triton, C++ CPU, CUDA C++) draw their inputs from here so that they
all face the same edge cases: zeros in g_sgd, exact sign flips, |g_sgd| around eps, equal
magnitudes (the A/B boundary), large magnitudes, and padding zeros at the end of the bucket.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import pytest
import torch
from torch import Tensor

from saner_kernels.ops import reference
from saner_kernels.ops.hyper import AverageHyper, GroupRule, UpdateHyper, gsam_coefficient

# Multiples of 128 (flat buckets) and odd lengths that exercise every vector tail.
LENGTHS = (128, 1003, 65573, 300032)
SMALL = tuple(n for n in LENGTHS if n <= 1024)
LARGE = tuple(n for n in LENGTHS if n > 1024)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EPS = 1e-8

# Every combination of the kernel feature switches. ``swap``: first_step(zero_grad=True) (no g_sgd copy,
# the update zeroes both gradient buffers); otherwise first_step(zero_grad=False) (perturb_ copies g).
SWITCHES = [
    dict(adaptive=a, nesterov=n, first_momentum_step=f, alpha=al, track_groups=t, swap=sw)
    for a, n, f, al, t, sw in itertools.product(
        (False, True), (False, True), (False, True), (0.5, 1.0), (False, True), (False, True)
    )
]

# The SAM-family switches (docs/design.md, "Kernel contract"): a gradient average (``avg``: Friendly-SAM's
# or VaSSO's, or "first", the step that creates one) and GSAM's decomposition, on top of adaptive and alpha.
AVERAGES = {
    "first": AverageHyper.first(),
    "fsam": AverageHyper.fsam(sigma=1.0, lmbda=0.9),
    "vasso": AverageHyper.vasso(theta=0.2),
}
VARIANT_SWITCHES = [
    dict(
        adaptive=a,
        nesterov=False,
        first_momentum_step=False,
        alpha=al,
        track_groups=True,
        swap=a != (al == 1.0),
        avg=avg,
        gsam_alpha=ga,
    )
    for avg, ga in itertools.product((None, "first", "fsam", "vasso"), (None, 0.4))
    if (avg, ga) != (None, None)
    for a, al in itertools.product((False, True), (0.5, 1.0))
]


# Group rules (ops.GroupRule, docs/design.md "Kernel contract"): the authors' classes' rules (FriendlySANER and
# VASSOSANER on Group A or C scale it by alpha; SAMWO; SAMONLY) and one with every coefficient in play, over bounds
# 1, 0.5 and 2 (powers of two: ``rule_edges`` makes r == bound exactly) and 0.3 (a bound fp32 does not hold).
RULES = {
    "saner_A": GroupRule(regions=GroupRule.A, in_sam=0.5),
    "saner_C": GroupRule(regions=GroupRule.C, in_sam=0.5),
    "samwo_AB": GroupRule.samwo("AB", bound=0.5),
    "samwo_B": GroupRule.samwo("B", bound=0.3),
    "samonly_B": GroupRule.samonly("B"),
    "mixed": GroupRule(
        regions=GroupRule.C | GroupRule.Z | GroupRule.E, bound=2.0, in_sam=0.5, in_sgd=0.25, out_sam=1.0, out_sgd=-0.5
    ),
}
# The rule on top of the switches it meets in the update (which gradients are loaded, unscaled, decomposed,
# counted; alpha, which the rule replaces); nesterov and the first momentum step act after it. ``inv_scale``:
# GradScaler's unscaling of both gradients before the ratio.
RULE_SWITCHES = [
    dict(
        adaptive=a,
        nesterov=False,
        first_momentum_step=False,
        alpha=al,
        track_groups=t,
        swap=sw,
        gsam_alpha=ga,
        rule=rule,
        inv_scale=inv,
    )
    for rule in RULES
    for a, al, t, sw, ga, inv in itertools.product(
        (False, True), (0.5, 1.0), (False, True), (False, True), (None, 0.4), (False, True)
    )
]


def rule_edges(tensors: dict[str, Tensor], rule: str, seed: int = 0) -> dict[str, Tensor]:
    """``tensors`` (``make_bucket_tensors``) with the ratio's edge cases for ``RULES[rule]`` mixed in at random
    places (none in the padding): r == bound exactly (|g_sgd| in [1, 2), where ``+ eps`` rounds away in fp32 and
    below, and g_sam = bound * g_sgd: exact for a power-of-two bound, within an ulp of 0.3), r == 0 from -0.0,
    the NaN ratio 0 / 0 (g_sgd = -eps, g_sam = 0: in fp32 and fp64, where -eps + eps is 0) and the infinite ratios
    x / 0 (g_sgd = -eps, g_sam != 0)."""
    t = clone_all(tensors)
    n = t["g"].numel()
    pad = int((t["g"] == 0).flip(0).long().cumprod(0).sum())  # trailing zeros: the padding, left alone
    gen = torch.Generator().manual_seed(seed)
    k = max((n - pad) // 32, 1)
    idx = torch.randperm(n - pad, generator=gen)
    edge, neg_zero, nan, inf = (idx[i * k : (i + 1) * k] for i in range(4))
    dtype = t["g"].dtype
    g, g_sam = t["g"].double(), t["g_sam"].double()
    sign = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0).double()
    g[edge] = (sign * (1 + torch.rand(k, generator=gen).double())).to(dtype).double()
    g_sam[edge] = (g[edge].to(dtype).double() * RULES[rule].bound).to(dtype).double()
    g_sam[neg_zero] = -0.0
    g[nan] = -EPS
    g_sam[nan] = 0.0
    g[inf] = -EPS
    g_sam[inf] = torch.randn(k, generator=gen).double() * 1e-2
    t["g"], t["g_sam"] = g.to(dtype), g_sam.to(dtype)
    return t


def switch_id(sw: dict) -> str:
    """A readable pytest id for a ``SWITCHES`` entry: the switches that are on, and alpha."""
    return "-".join([k for k, v in sw.items() if v is True] + [f"a{sw['alpha']}"])


def variant_switch_id(sw: dict) -> str:
    """A readable pytest id for a ``VARIANT_SWITCHES`` entry: the average, GSAM, then ``switch_id``."""
    rest = {k: v for k, v in sw.items() if k not in ("avg", "gsam_alpha")}
    return f"{sw['avg'] or 'noavg'}-{'gsam' if sw['gsam_alpha'] else 'nogsam'}-" + switch_id(rest)


def rule_switch_id(sw: dict) -> str:
    """A readable pytest id for a ``RULE_SWITCHES`` entry: the rule, GSAM, then ``switch_id``."""
    rest = {k: v for k, v in sw.items() if k not in ("rule", "gsam_alpha")}
    return f"{sw['rule']}-{'gsam' if sw['gsam_alpha'] else 'nogsam'}-" + switch_id(rest)


def _id_part(name: str, value) -> str:
    if isinstance(value, dict):
        if "rule" in value:
            return rule_switch_id(value)
        return variant_switch_id(value) if "avg" in value else switch_id(value)
    if isinstance(value, bool) or value is None:
        return name if value else f"no_{name}"
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, str):
        return value
    return f"{name}{value}" if name == "n" else f"{name}={value}"


def _flat(row: dict) -> dict:
    """A test's arguments as factor -> value; a switches dict contributes each of its switches."""
    flat = {}
    for name, value in row.items():
        flat.update(value if isinstance(value, dict) else {name: value})
    return flat


def all_pairs(rows: Sequence[dict]) -> list[int]:
    """Indices of a subset of ``rows`` that holds every value of every factor, and every pair of values of any
    two factors, that ``rows`` holds.

    Greedy and deterministic: each pick is the first row (in the given order) that covers the most pairs not
    yet covered (pairs hold every value). E.g. 7 of the 128 (length, ``SWITCHES``) rows of the step tests.
    """
    flat = [_flat(row) for row in rows]

    def pairs(row: dict) -> set:  # a single factor has no pairs: its values then
        values = [(name, row[name]) for name in sorted(row)]
        return set(itertools.combinations(values, 2)) or {(v,) for v in values}

    row_pairs = [pairs(row) for row in flat]
    uncovered = set().union(*row_pairs)
    chosen = []
    while uncovered:
        best = max(range(len(rows)), key=lambda i: len(row_pairs[i] & uncovered))
        chosen.append(best)
        uncovered -= row_pairs[best]
    return sorted(chosen)


def pairwise(**axes: Sequence) -> tuple[list[str], list]:
    """``pytest.mark.parametrize`` arguments for every combination of ``axes`` (argument name -> values):
    a pairwise-covering subset runs by default, the rest of the product is marked ``exhaustive`` (selected by
    ``-m exhaustive``; tests/conftest.py deselects them otherwise). A switches dict counts as one factor per
    switch in it, so every pair of switch values, lengths and flags occurs in the default run."""
    names = list(axes)
    rows = [dict(zip(names, values)) for values in itertools.product(*axes.values())]
    default = set(all_pairs(rows))
    params = [
        pytest.param(
            *row.values(),
            id="-".join(_id_part(name, value) for name, value in row.items()),
            marks=() if i in default else pytest.mark.exhaustive,
        )
        for i, row in enumerate(rows)
    ]
    return names, params


# Per-step tolerances, one table for every backend and the optimizer-level tests: fp32 at rtol 1e-6;
# 16-bit storage within about one rounding unit.
TOLERANCES = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
    torch.float16: dict(rtol=2**-10, atol=1e-6),
}
# Whole optimizer runs of a few steps on a toy model: relative error of the weights against the reference.
OPTIMIZER_RTOL = {"reference": 0.0, "kernel": 1e-5}


def tolerances(dtype: torch.dtype) -> dict:
    return TOLERANCES[dtype]


def _truncate_to_bf16(x: Tensor) -> Tensor:
    """fp32 -> bf16 by dropping the low 16 bits, as Triton's interpreter stores bf16 (no rounding)."""
    return (x.float().view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


class _TruncatingStores:
    """``reference``, with every bf16 tensor it writes stored as Triton's interpreter stores it (truncated,
    not rounded to nearest even): the expected values for interpreted bf16 kernels. The arithmetic is the
    reference's own; only the final stores differ."""

    def __getattr__(self, op):
        ref_op = getattr(reference, op)

        def call(*args, **kwargs):
            widened = {}

            def widen(t):
                if isinstance(t, Tensor) and t.dtype == torch.bfloat16:
                    widened[id(t)] = (t, t.float())
                    return widened[id(t)][1]
                return t

            result = ref_op(*[widen(a) for a in args], **{k: widen(v) for k, v in kwargs.items()})
            for original, wide in widened.values():
                original.copy_(_truncate_to_bf16(wide))
            return result

        return call


TRUNCATING_REFERENCE = _TruncatingStores()


def expected_ops(interpreter: bool, dtype: torch.dtype):
    """The ops whose results a backend must match: the reference, with the interpreter's bf16 stores."""
    return TRUNCATING_REFERENCE if interpreter and dtype == torch.bfloat16 else reference


def make_bucket_tensors(
    n: int, dtype: torch.dtype = torch.float32, seed: int = 0, device="cpu", pad: int = 0
) -> dict[str, Tensor]:
    """A bucket's tensors of length n, edge cases mixed into random data; the last ``pad`` are 0.

    ``g`` is the first gradient (it becomes g_sgd in perturb_), ``g_sam`` the second one, built
    relative to ``g`` so that all of Groups A, B and C and their boundaries occur; ``g_sgd`` is
    the (stale) buffer that perturb_ overwrites.
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen) * 1e-2
    g_sam = g * (torch.rand(n, generator=gen) * 3 - 1)  # ratios spread over A, B and C
    buf = torch.randn(n, generator=gen) * 1e-2
    k = max(n // 16, 1)
    idx = torch.randperm(n, generator=gen)
    groups = [idx[i * k : (i + 1) * k] for i in range(9)]
    g[groups[0]] = 0.0  # den == eps
    g_sam[groups[1]] = -g[groups[1]]  # exact sign flips
    g[groups[2]] = EPS * (torch.rand(k, generator=gen) * 4 - 2)  # |g_sgd| around eps
    g_sam[groups[2]] = EPS * (torch.rand(k, generator=gen) * 4 - 2)
    g_sam[groups[3]] = 0.0  # zero SAM gradient
    g_sam[groups[4]] = g[groups[4]]  # r just below/above 1 (den = g_sgd + eps)
    w[groups[5]] *= 1e3  # large magnitudes
    g[groups[5]] *= 1e3
    g_sam[groups[5]] *= 1e3
    g_sam[groups[6]] = g[groups[6]] * 0.5  # clean Group B
    g_sam[groups[7]] = g[groups[7]] * 2.0  # clean Group A
    # r == 1 exactly, the A/B edge (Group A): g_sgd + eps rounds to g_sgd in fp32 at these magnitudes, and
    # they are exact in every storage dtype
    ties = torch.tensor([0.5, -0.75, 1.0, -1.5]).repeat(k)[:k]
    g[groups[8]] = ties
    g_sam[groups[8]] = ties
    avg = g * 0.5 + torch.randn(n, generator=gen) * 1e-2  # a gradient average: correlated with g
    tensors = dict(w=w, g=g, g_sam=g_sam, g_sgd=torch.randn(n, generator=gen), buf=buf, avg=avg)
    if pad:
        for t in tensors.values():
            t[n - pad :] = 0.0
    return {name: t.to(dtype=dtype, device=device) for name, t in tensors.items()}


def clone_all(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in tensors.items()}


def scale_for(
    tensors: dict[str, Tensor], rho: float = 0.1, adaptive: bool = False, avg: Optional[str] = None
) -> Tensor:
    """The device scale s = rho / (||d|| + 1e-12) exactly as the optimizer computes it (d: g, or the
    direction of the average ``avg`` names)."""
    total = reference.grad_sq_norm(tensors["g"], tensors["w"] if adaptive else None, **_average(tensors, avg))
    dtype = torch.float64 if tensors["w"].dtype == torch.float64 else torch.float32
    return (rho / (total.to(dtype).sqrt() + 1e-12)).to(dtype)


def _average(tensors: dict[str, Tensor], avg: Optional[str]) -> dict:
    """The ops' ``avg``/``avg_hyper`` keywords for the average ``avg`` names (none for None)."""
    return {} if avg is None else dict(avg=tensors["avg"], avg_hyper=AVERAGES[avg])


def no_skip(device) -> Tensor:
    return torch.zeros((), device=device)


def run_step(
    ops,
    tensors: dict[str, Tensor],
    *,
    adaptive: bool,
    nesterov: bool,
    first_momentum_step: bool,
    alpha: float,
    track_groups: bool,
    swap: bool = True,
    scale: Optional[Tensor] = None,
    skip: Optional[Tensor] = None,
    update_skip: Optional[Tensor] = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    dampening: float = 0.0,
    weight_decay: float = 5e-4,
    eps: float = EPS,
    n_valid: Optional[int] = None,
    inv_scale: Optional[Tensor] = None,
    avg: Optional[str] = None,
    gsam_alpha: Optional[float] = None,
    rule: Optional[str] = None,
) -> dict[str, Tensor]:
    """perturb_ then update_ with ``ops`` on a copy of ``tensors``; returns the final tensors (+ stats, e).

    ``swap``: the optimizer's zero_grad=True path: g itself becomes g_sgd (no copy) and the update zeroes
    both gradient buffers. Otherwise perturb_ copies g into g_sgd and the update zeroes nothing.
    ``skip`` goes to both ops, ``update_skip`` (default: ``skip``) to the update only: an overflow found in
    the second pass. ``inv_scale``: both gradients are scaled and the update unscales them (``True``: by 0.5).
    ``rule``: the update takes ``RULES[rule]``.
    """
    t = clone_all(tensors)
    device = t["w"].device
    if inv_scale is True:
        inv_scale = torch.tensor(0.5, device=device)
    elif inv_scale is False:
        inv_scale = None
    if scale is None:
        scale = scale_for(t, adaptive=adaptive)
    if skip is None:
        skip = no_skip(device)
    if update_skip is None:
        update_skip = skip
    e = torch.zeros_like(t["w"]) if adaptive else None
    average = _average(t, avg)
    if swap:
        ops.perturb_(t["w"], t["g"], scale, skip, e=e, **average)
        g_sgd = t["g"]
    else:
        ops.perturb_(t["w"], t["g"], scale, skip, e=e, g_sgd=t["g_sgd"], **average)
        g_sgd = t["g_sgd"]
    t["w_perturbed"] = t["w"].clone()
    gsam_k = None
    if gsam_alpha is not None:
        # as the optimizer makes it: n1 at w, the dot product and n2 at w + e (adaptive), from the stored values
        n1 = reference.grad_sq_norm(tensors["g"], tensors["w"] if adaptive else None).sqrt()
        dot_norm = reference.gsam_dot_norm(g_sgd, t["g_sam"], t["w"] if adaptive else None)
        gsam_k = gsam_coefficient(dot_norm, n1).to(device=device, dtype=scale.dtype)
    stats = torch.zeros(3, dtype=torch.int64, device=device) if track_groups else None
    hyper = UpdateHyper(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        alpha=alpha,
        eps=eps,
        nesterov=nesterov,
        gsam_alpha=gsam_alpha or 0.0,
    )
    buf = t["buf"] if momentum != 0 else None
    ops.update_(
        t["w"],
        t["g_sam"],
        g_sgd,
        buf,
        scale,
        update_skip,
        hyper,
        e=e,
        first_momentum_step=first_momentum_step and buf is not None,
        zero_grads=swap,
        stats=stats,
        n_valid=n_valid,
        inv_scale=inv_scale,
        **average,
        **({} if gsam_k is None else dict(gsam_k=gsam_k)),
        **({} if rule is None else dict(rule=RULES[rule])),
    )
    if stats is not None:
        t["stats"] = stats
    if e is not None:
        t["e"] = e
    return t


def assert_same_step(actual: dict[str, Tensor], expected: dict[str, Tensor], dtype: torch.dtype) -> None:
    tol = tolerances(dtype)
    for name, exp in expected.items():
        act = actual[name].cpu()
        exp = exp.cpu()
        if name == "stats":
            assert torch.equal(act, exp), f"group counts differ: {act.tolist()} vs {exp.tolist()}"
        else:
            if act.dtype != torch.float64:  # 16-bit storage compares in fp32; fp64 in its own precision
                act, exp = act.float(), exp.float()
            torch.testing.assert_close(act, exp, **tol, msg=lambda m, name=name: f"{name}: {m}")


def assert_step_skipped(got: dict[str, Tensor], before: dict[str, Tensor], swap: bool) -> None:
    """A step skipped in the first pass (scale 0, both ops skipped) wrote no weight, momentum, e or count;
    the gradient buffers are zero when the update was asked to zero them (swap), untouched otherwise."""
    for name in ("w", "buf"):
        assert torch.equal(got[name], before[name]), f"{name} was written on a skipped step"
    for name in ("g", "g_sam") + (() if swap else ("g_sgd",)):
        if swap and name in ("g", "g_sam"):
            assert not got[name].any(), f"{name} was not zeroed"
        else:
            assert torch.equal(got[name], before[name]), f"{name} was written on a skipped step"
    if "e" in got:
        assert not got["e"].any(), "e was written on a skipped step"
    if "stats" in got:
        assert not got["stats"].any(), "a skipped step counted groups"
