"""SANER under DistributedDataParallel: two gloo ranks on CPU, both modes, both CPU backends.

One pair of spawned processes runs every scenario of phase 1 (each rank writes what it saw after every step
to a file); a second pair resumes from phase 1's checkpoints in fresh processes. The tests then compare, in
this process:

- global mode (plain DDP, both backward passes all-reduced) against one process running SANER on the
  concatenated global batch: fp64 model without BatchNorm, within 1e-12, with ``gradient_as_bucket_view``
  True and False;
- local mode (per-replica perturbation) against a single-process simulation of the two shards written
  from the math below (each shard's own norm, perturbation and Group B mask; the reweighted gradients
  averaged; then weight decay and one SGD-momentum step), within 1e-12;
- rank identity: weights and optimizer state bit-identical on both ranks after every step;
- resume: a checkpoint taken mid-run and loaded into fresh ranks continues bit for bit;
- the skip agreement: a non-finite first gradient on one rank skips the step on every rank;
- ``group_fractions(all_ranks=True)``; DTensor (``fully_shard``) parameters refused with an error naming DDP.

Every launch is bounded (``LAUNCH_TIMEOUT_S``); a rank that hangs is killed and the test fails saying so.
"""

from __future__ import annotations

import datetime
import math
import os
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 5
SAVE_AT = 2  # the checkpoint for the resume test is taken after this many steps
INF_AT = 1  # the skip scenarios put a non-finite first gradient on rank 1 at this step
LAUNCH_TIMEOUT_S = 120
COLLECTIVE_TIMEOUT_S = 60
BACKENDS = ("reference", "cpp")
HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.2, alpha=0.5, ratio_eps=1e-8)
TOL = 1e-12
ADAMW = dict(lr=0.01, weight_decay=0.05)  # SANER over AdamW: the base's own arguments


# ---------------------------------------------------------------------------------------------- shared
def make_model() -> nn.Module:
    """fp64, no BatchNorm: one process on the global batch and the ranks on its shards compute the same
    function, so their gradients agree to fp64 round-off."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 12), nn.Tanh(), nn.Linear(12, 4)).double()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 10, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 4, (GLOBAL_BATCH,), generator=gen)


def shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    per = GLOBAL_BATCH // WORLD
    return t[rank * per : (rank + 1) * per]


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def flat_state(opt) -> torch.Tensor:
    state = opt.state_dict()["state"]
    parts = [state[k]["momentum_buffer"].reshape(-1) for k in sorted(state) if "momentum_buffer" in state[k]]
    return torch.cat(parts).clone() if parts else torch.zeros(0, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- ranks
def _make_optimizer(ddp, case: dict):
    from saner_kernels import SANER

    kwargs = dict(HYPER, backend=case["backend"], track_groups=True)
    if case.get("base") == "adamw":
        kwargs = dict(_over_adamw(), backend=case["backend"], track_groups=True)
    if case["mode"] == "local":
        kwargs.update(ddp=ddp, ddp_mode="local")
    elif case.get("explicit_ddp"):
        kwargs.update(ddp=ddp, ddp_mode="global")
    return SANER(ddp.parameters(), **kwargs)


def _over_adamw() -> dict:
    """SANER's arguments over torch.optim.AdamW (positional base given as a keyword)."""
    sam = {k: HYPER[k] for k in ("rho", "alpha", "ratio_eps")}
    return dict(sam, base_optimizer=torch.optim.AdamW, **ADAMW)


def _fractions(opt) -> dict:
    out = {"local": opt.group_fractions()}
    try:
        out["all"] = opt.group_fractions(all_ranks=True)
    except TypeError as exc:  # an optimizer without the keyword (both ranks raise before any collective)
        out["all"] = f"error: {exc}"
    return out


def _run_case(rank: int, case: dict, ckpt_dir: str) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    start = 0
    if case.get("resume_from"):
        src = case.get("ckpt_dir", ckpt_dir)
        ck = torch.load(os.path.join(src, case["resume_from"] + ".pt"), weights_only=True)
        model.load_state_dict(ck["model"])
        start = ck["step"]
    ddp = DDP(model, gradient_as_bucket_view=case["gabv"])
    opt = _make_optimizer(ddp, case)
    if case.get("resume_from"):
        opt.load_state_dict(ck["optimizer"])
    rec = {"params": [], "state": [], "fractions": [], "skipped": [], "start": start}
    rec["initial"] = flat_params(model)
    if case["mode"] == "local":
        rec["grad_sync_off"] = ddp.require_backward_grad_sync is False
    for step in range(start, case["steps"]):
        x, y = global_batch(step)
        xs, ys = shard(x, rank), shard(y, rank)
        factor = math.inf if (step == case.get("inf_at") and rank == 1) else 1.0
        (loss_fn(ddp(xs), ys) * factor).backward()
        opt.first_step(zero_grad=True)
        loss_fn(ddp(xs), ys).backward()
        opt.second_step(zero_grad=True)
        rec["params"].append(flat_params(model))
        rec["state"].append(flat_state(opt))
        rec["fractions"].append(_fractions(opt))
        rec["skipped"].append(opt.skipped_steps)
        if case.get("save") and step + 1 == SAVE_AT and rank == 0:
            ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}
            torch.save(ck, os.path.join(ckpt_dir, case["name"] + ".pt"))
        dist.barrier()  # the checkpoint exists before any rank goes on
    return rec


def _fsdp_case() -> dict:
    """DTensor parameters (``fully_shard``): the optimizer must refuse them with an error that names DDP."""
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6 spells it differently
        from torch.distributed._composable.fsdp import fully_shard

    from saner_kernels import SANER

    model = make_model()
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    try:
        opt = SANER(model.parameters(), **HYPER)
        loss_fn(model(shard(global_batch(0)[0], 0)), shard(global_batch(0)[1], 0)).backward()
        opt.first_step(zero_grad=True)
    except Exception as exc:
        return {"error_type": type(exc).__name__, "message": str(exc)}
    return {"error_type": None, "message": "no error"}


def _worker(rank: int, init_file: str, out_dir: str, cases: list) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    results = {}
    try:
        for case in cases:
            dist.barrier()
            try:
                results[case["name"]] = _fsdp_case() if case["mode"] == "fsdp" else _run_case(rank, case, out_dir)
            except Exception:
                results[case["name"]] = {"error": traceback.format_exc()}
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def launch(out_dir, cases: list) -> list[dict]:
    """Runs ``cases`` on WORLD spawned gloo ranks; returns each rank's results. Fails on a hang or a crash."""
    os.makedirs(out_dir, exist_ok=True)
    ctx = mp.get_context("spawn")
    init_file = os.path.join(out_dir, "init")
    procs = [ctx.Process(target=_worker, args=(r, init_file, str(out_dir), cases), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=LAUNCH_TIMEOUT_S)
    for p in procs:
        p.join(max(0.0, (deadline - datetime.datetime.now()).total_seconds()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join(10)
    assert not hung, f"ranks {hung} did not finish within {LAUNCH_TIMEOUT_S} s (a collective hung?)"
    codes = [p.exitcode for p in procs]
    assert codes == [0] * WORLD, f"rank exit codes {codes}"
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------- scenarios
def phase1_cases() -> list[dict]:
    cases = []
    for b in BACKENDS:
        for gabv in (True, False):
            cases.append(dict(name=f"global-{b}-gabv{int(gabv)}", mode="global", backend=b, gabv=gabv, steps=STEPS))
        cases[-1]["save"] = True
        cases.append(dict(name=f"local-{b}", mode="local", backend=b, gabv=False, steps=STEPS, save=True))
        for mode in ("global", "local"):
            cases.append(dict(name=f"skip-{mode}-{b}", mode=mode, backend=b, gabv=False, steps=3, inf_at=INF_AT))
        for mode in ("global", "local"):  # SANER over AdamW: the reweighted gradient, then AdamW's own step
            cases.append(dict(name=f"{mode}-adamw-{b}", mode=mode, backend=b, gabv=False, steps=STEPS, base="adamw"))
    cases.append(dict(name="global-explicit-ddp", mode="global", backend="reference", gabv=False, steps=STEPS))
    cases[-1]["explicit_ddp"] = True
    cases.append(dict(name="fsdp", mode="fsdp"))
    return cases


def phase2_cases() -> list[dict]:
    cases = []
    for b in BACKENDS:
        for mode, source in (("global", f"global-{b}-gabv0"), ("local", f"local-{b}")):
            name = f"resume-{mode}-{b}"
            cases.append(dict(name=name, mode=mode, backend=b, gabv=False, steps=STEPS, resume_from=source))
    return cases


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, launch(out, phase1_cases())


@pytest.fixture(scope="module")
def phase2(phase1):
    out, _ = phase1
    return launch(out / "resume", [dict(c, ckpt_dir=str(out)) for c in phase2_cases()])


def results_of(ranks: list[dict], name: str) -> list[dict]:
    recs = [r[name] for r in ranks]
    for rank, rec in enumerate(recs):
        assert "error" not in rec, f"rank {rank}, {name}:\n{rec['error']}"
    return recs


# ---------------------------------------------------------------------------------------------- references
def single_process_saner(backend: str, steps: int = STEPS, base: str = "sgd") -> list[tuple]:
    """One process, SANER on the whole global batch: (weights, momentum, group fractions) after each step."""
    from saner_kernels import SANER

    model = make_model()
    kwargs = _over_adamw() if base == "adamw" else HYPER
    opt = SANER(model.parameters(), **kwargs, backend=backend, track_groups=True)
    out = []
    for step in range(steps):
        x, y = global_batch(step)
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
        out.append((flat_params(model), flat_state(opt), opt.group_fractions()))
    return out


def simulate_local(steps: int = STEPS, base: str = "sgd") -> list[tuple]:
    """Per-replica SANER from the math, one process, no optimizer: per shard r, g1 = grad at w,
    e = rho * g1 / (||g1|| + 1e-12), g2 = grad at w + e, d_r = alpha * g2 on Group B (0 < g2 / (g1 + eps) < 1)
    else g2; then d = mean_r d_r, d += wd * w, buf = d (first step) or mu * buf + d, w -= lr * buf.
    Returns (weights, momentum, group counts [A, B, C] over both shards) after each step."""
    model = make_model()
    params = list(model.parameters())
    h = HYPER
    bufs = None
    out = []

    def grads_at(weights, x, y):
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        return torch.autograd.grad(loss_fn(model(x), y), params)

    w = [p.detach().clone() for p in params]
    adamw_weights = [wi.clone().requires_grad_() for wi in w]
    adamw = torch.optim.AdamW(adamw_weights, **ADAMW)  # the base steps on the averaged reweighted gradient
    for step in range(steps):
        x, y = global_batch(step)
        ds, counts = [], torch.zeros(3, dtype=torch.int64)
        for rank in range(WORLD):
            xs, ys = shard(x, rank), shard(y, rank)
            g1 = grads_at(w, xs, ys)
            norm = torch.sqrt(sum((g * g).sum() for g in g1))
            s = h["rho"] / (norm + 1e-12)
            g2 = grads_at([wi + gi * s for wi, gi in zip(w, g1)], xs, ys)
            d_rank = []
            for a, b in zip(g2, g1):
                ratio = a / (b + h["ratio_eps"])
                in_b = (ratio > 0) & (ratio < 1)
                in_a = ratio >= 1
                counts += torch.stack([in_a.sum(), in_b.sum(), (~in_a & ~in_b).sum()])
                d_rank.append(torch.where(in_b, a * h["alpha"], a))
            ds.append(d_rank)
        d = [(a / WORLD) + (b / WORLD) for a, b in zip(*ds)]  # divided, then summed: as the all-reduce does
        if base == "adamw":
            for p, di in zip(adamw_weights, d):
                p.grad = di
            adamw.step()
            w = [p.detach().clone() for p in adamw_weights]
            out.append((torch.cat([t.reshape(-1) for t in w]), torch.zeros(0, dtype=torch.float64), counts))
            continue
        d = [di + h["weight_decay"] * wi for di, wi in zip(d, w)]
        bufs = d if bufs is None else [h["momentum"] * bi + di for bi, di in zip(bufs, d)]
        w = [wi - h["lr"] * bi for wi, bi in zip(w, bufs)]
        out.append((torch.cat([t.reshape(-1) for t in w]), torch.cat([t.reshape(-1) for t in bufs]), counts))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------------- tests
def assert_ranks_identical(recs: list[dict]) -> None:
    r0, r1 = recs
    assert len(r0["params"]) == len(r1["params"]) > 0
    for step, (a, b) in enumerate(zip(r0["params"], r1["params"])):
        assert torch.equal(a, b), f"weights differ between the ranks after step {step}"
    for step, (a, b) in enumerate(zip(r0["state"], r1["state"])):
        assert torch.equal(a, b), f"momentum differs between the ranks after step {step}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gabv", [True, False], ids=["bucket_view", "no_bucket_view"])
def test_global_mode_equals_one_process_on_the_global_batch(phase1, backend, gabv):
    recs = results_of(phase1[1], f"global-{backend}-gabv{int(gabv)}")
    assert_ranks_identical(recs)
    ref = single_process_saner(backend)
    for step, (w_ref, buf_ref, fr_ref) in enumerate(ref):
        assert rel_err(recs[0]["params"][step], w_ref) <= TOL, step
        assert rel_err(recs[0]["state"][step], buf_ref) <= TOL, step
        # both ranks hold the same all-reduced gradients, so the same masks as the one process
        assert recs[0]["fractions"][step]["local"] == pytest.approx(fr_ref, abs=1e-15), step
    assert not torch.equal(recs[0]["params"][-1], recs[0]["initial"])


def test_global_mode_with_the_ddp_given_to_the_optimizer(phase1):
    explicit = results_of(phase1[1], "global-explicit-ddp")
    plain = results_of(phase1[1], "global-reference-gabv0")
    assert_ranks_identical(explicit)
    for a, b in zip(explicit[0]["params"], plain[0]["params"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_mode_equals_the_simulation_of_the_shards(phase1, backend):
    recs = results_of(phase1[1], f"local-{backend}")
    assert all(r["grad_sync_off"] for r in recs), "local mode: DDP's own gradient sync must be off on every rank"
    assert_ranks_identical(recs)
    sim = simulate_local()
    for step, (w_sim, buf_sim, _) in enumerate(sim):
        assert rel_err(recs[0]["params"][step], w_sim) <= TOL, step
        assert rel_err(recs[0]["state"][step], buf_sim) <= TOL, step
    # per-replica SANER is not global SANER: the two must differ (else this test could not tell them apart)
    ref = single_process_saner(backend)
    assert rel_err(recs[0]["params"][-1], ref[-1][0]) > 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_fractions_all_ranks(phase1, backend):
    recs = results_of(phase1[1], f"local-{backend}")
    sim = simulate_local()
    for step, (_, _, counts) in enumerate(sim):
        fr = [r["fractions"][step] for r in recs]
        assert not isinstance(fr[0]["all"], str), fr[0]["all"]
        assert fr[0]["all"] == fr[1]["all"], "every rank gets the same aggregate"
        total = int(counts.sum())
        expected = {k: int(c) / total for k, c in zip("ABC", counts)}
        assert fr[0]["all"] == pytest.approx(expected, abs=1e-15), step
        for k in "ABC":  # the same number of elements on each rank: the aggregate is the mean of the ranks'
            assert fr[0]["all"][k] == pytest.approx((fr[0]["local"][k] + fr[1]["local"][k]) / 2, abs=1e-15)
        assert fr[0]["local"] != fr[1]["local"], "each rank's own mask (different shards)"
    glob = results_of(phase1[1], f"global-{backend}-gabv0")
    for step in range(STEPS):
        assert glob[0]["fractions"][step]["all"] == glob[0]["fractions"][step]["local"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["global", "local"])
def test_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(phase1, mode, backend):
    recs = results_of(phase1[1], f"skip-{mode}-{backend}")
    assert_ranks_identical(recs)
    for r in recs:
        before = r["params"][INF_AT - 1]
        assert torch.equal(r["params"][INF_AT], before), "the skipped step left the weights bit-identical"
        assert torch.equal(r["state"][INF_AT], r["state"][INF_AT - 1]), "and the momentum"
        assert r["skipped"] == [0, 1, 1]
        assert math.isnan(r["fractions"][INF_AT]["local"]["B"])
        assert not torch.equal(r["params"][INF_AT + 1], before), "the next step runs"
        assert torch.isfinite(r["params"][-1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["global", "local"])
def test_resume_in_fresh_ranks_continues_bit_for_bit(phase1, phase2, mode, backend):
    source = f"global-{backend}-gabv0" if mode == "global" else f"local-{backend}"
    full = results_of(phase1[1], source)
    resumed = results_of(phase2, f"resume-{mode}-{backend}")
    assert_ranks_identical(resumed)
    assert resumed[0]["start"] == SAVE_AT
    assert torch.equal(resumed[0]["initial"], full[0]["params"][SAVE_AT - 1])
    for rank in range(WORLD):
        for i, step in enumerate(range(SAVE_AT, STEPS)):
            assert torch.equal(resumed[rank]["params"][i], full[rank]["params"][step]), (rank, step)
            assert torch.equal(resumed[rank]["state"][i], full[rank]["state"][step]), (rank, step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_over_adamw_global_mode_equals_one_process_and_local_mode_the_simulation(phase1, backend):
    glob = results_of(phase1[1], f"global-adamw-{backend}")
    assert_ranks_identical(glob)
    for step, (w_ref, _, _) in enumerate(single_process_saner(backend, base="adamw")):
        assert rel_err(glob[0]["params"][step], w_ref) <= TOL, step
    local = results_of(phase1[1], f"local-adamw-{backend}")
    assert_ranks_identical(local)
    for step, (w_sim, _, _) in enumerate(simulate_local(base="adamw")):
        assert rel_err(local[0]["params"][step], w_sim) <= TOL, step
    assert rel_err(local[0]["params"][-1], glob[0]["params"][-1]) > 1e-6  # per-replica is not global


def test_fsdp_parameters_are_refused_with_an_error_naming_ddp(phase1):
    for rank, rec in enumerate(phase1[1]):
        got = rec["fsdp"]
        assert "error" not in got, got.get("error")
        assert got["error_type"] is not None, f"rank {rank}: SANER accepted DTensor parameters"
        assert "DistributedDataParallel" in got["message"] or "DDP" in got["message"], got["message"]
