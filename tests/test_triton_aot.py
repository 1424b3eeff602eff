"""Ahead-of-time compile of every Triton kernel variant for sm_80 and sm_90, and PTX checks; no GPU.

``triton.compile`` on an ``ASTSource`` with a ``GPUTarget`` runs the whole CUDA pipeline (TTIR, TTGIR,
LLVM, PTX, ptxas to cubin) without a driver. The compile runs in a subprocess started from a module
fixture: this file run as a script, without ``TRITON_INTERPRET`` and with a private Triton cache, so
neither the interpreter tests nor a warm cache from an earlier run can hide a compile problem. The
script compiles in a process pool (one worker per core) and writes one JSON record per variant; the
tests below only read them.

Launch configurations come from the backend's own ``_config`` (the block size and warps a bucket of
that length really gets); pointers and ``n`` carry the divisibility-16 hint that padded, 128-element
aligned buckets give the JIT (``n_valid`` is never specialized). The signatures are the JIT's: unused
pointer arguments get the tensor the wrapper passes in their place.

Runs against any Triton from 3.6 on (the pinned version and the newest one: ``make compat``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

TARGETS = (80, 90)
STORAGE = {"fp32": 4, "bf16": 2, "fp16": 2}  # Triton type name -> bytes
N_LONG = 1 << 20  # any long bucket: the largest block
N_SHORT = 128  # the smallest bucket: the smallest block
N_HUGE = 1 << 31  # beyond int32: an int64 length, still vectorized
VEC = r"\.(v4\.[bfu]32|v2\.[bfu]64)\b"  # a 128-bit access
ATOMIC = r"\b(atom|red)\.global"

# The main update (docs/design.md): later momentum step, mask on, no adaptive, no tracking, the gradient
# buffers zeroed (first_step(zero_grad=True)): 4 vector loads (g, g_sgd, w, buf) and 4 vector stores
# (w, buf, zero g, zero g_sgd) per element vector. With GradScaler (HAS_INV_SCALE): the same, plus one
# scalar load.
MAIN_UPDATE = dict(
    ADAPTIVE=False,
    HAS_MOMENTUM=True,
    NESTEROV=False,
    FIRST_MOMENTUM_STEP=False,
    USE_MASK=True,
    TRACK_GROUPS=False,
    ZERO_GRADS=True,
    HAS_INV_SCALE=False,
    HAS_AVG=False,
    HAS_GSAM=False,
)
MAIN_UPDATE_UNSCALED = dict(MAIN_UPDATE, HAS_INV_SCALE=True)
MAIN_UPDATES = tuple(
    dict(MAIN_UPDATE, ZERO_GRADS=zero, HAS_INV_SCALE=unscale) for unscale in (False, True) for zero in (True, False)
)
MAIN_PERTURB = dict(ADAPTIVE=False, COPY_G=False, HAS_AVG=False)  # first_step(zero_grad=True): 2 loads, 1 store
# Contract v3 (the SAM family). A gradient average (HAS_AVG) adds one vector load and, in the update, one vector
# store of avg: fp32 norm 8 bytes/elem (12 adaptive), perturb 16, main update 40 (32 + avg). GSAM (HAS_GSAM)
# adds one scalar load (gsam_k) and, where the update did not read g_sgd (adaptive without groups), that load.
# gsam_dot_norm: 8 bytes/elem (12 adaptive); reweight_ with the mask: 12 (g, g_sgd; g).
SAM_FAMILY = (dict(HAS_AVG=True, HAS_GSAM=False), dict(HAS_AVG=False, HAS_GSAM=True), dict(HAS_AVG=True, HAS_GSAM=True))
MAIN_REWEIGHT = dict(USE_MASK=True, TRACK_GROUPS=False, HAS_INV_SCALE=False)
# A group rule (RULE: its region bits, ops.GroupRule; 0 is no rule, every variant above) replaces the alpha mask
# (USE_MASK off): the same tensor accesses as the mask (the update loads g_sgd, the reweighting loads g_sgd and
# writes g), no extra scalar load (its bound and coefficients are kernel arguments), no fma (two products and a
# sum each side, the ratio by div_rn). The authors' rules: A (FriendlySANER/VASSOSANER group A; SAMWO A), AB
# (SAMWO AB: B|E|A), C, and C|Z|E (every comparison kind).
RULES = (16, 28, 1, 1 | 2 | 8)


# --------------------------------------------------------------------------- variants
def _update_switches(inv_scale: bool):
    """Every distinct constexpr combination of the update kernel without the SAM-family switches (nesterov/first
    step need momentum)."""
    momentum_modes = [(False, False, False)] + [
        (True, nesterov, first) for nesterov, first in itertools.product((False, True), repeat=2)
    ]
    for adaptive, (has_m, nesterov, first), use_mask, track, zero in itertools.product(
        (False, True), momentum_modes, (False, True), (False, True), (False, True)
    ):
        yield dict(
            ADAPTIVE=adaptive,
            HAS_MOMENTUM=has_m,
            NESTEROV=nesterov,
            FIRST_MOMENTUM_STEP=first,
            USE_MASK=use_mask,
            TRACK_GROUPS=track,
            ZERO_GRADS=zero,
            HAS_INV_SCALE=inv_scale,
            HAS_AVG=False,
            HAS_GSAM=False,
        )


def _sam_family_update_switches():
    """The average and GSAM on top of the switches they interact with (which gradients are loaded, unscaled,
    masked; momentum); nesterov and the first momentum step are orthogonal to them."""
    for base in itertools.chain(_update_switches(False), _update_switches(True)):
        if base["NESTEROV"] or base["FIRST_MOMENTUM_STEP"]:
            continue
        for family in SAM_FAMILY:
            yield dict(base, **family)


def _reweight_switches():
    """Every launched combination (alpha 1 with nothing to unscale or count launches nothing)."""
    for use_mask, track, unscale in itertools.product((False, True), repeat=3):
        if use_mask or track or unscale:
            yield dict(USE_MASK=use_mask, TRACK_GROUPS=track, HAS_INV_SCALE=unscale)


def _rule_update_switches():
    """The rule on the main updates (with and without GradScaler, zeroing or not), counted or not, plain and with
    GSAM (its decomposition comes before the ratio) or adaptive (g_sgd then loaded for the rule alone)."""
    for main, rule, track in itertools.product(MAIN_UPDATES, RULES, (False, True)):
        yield dict(main, USE_MASK=False, TRACK_GROUPS=track, RULE=rule)
    for rule in RULES:
        yield dict(MAIN_UPDATE, USE_MASK=False, HAS_GSAM=True, RULE=rule)
        yield dict(MAIN_UPDATE, USE_MASK=False, ADAPTIVE=True, TRACK_GROUPS=True, RULE=rule)


def _rule_reweight_switches():
    for rule, track, unscale in itertools.product(RULES, (False, True), (False, True)):
        yield dict(USE_MASK=False, TRACK_GROUPS=track, HAS_INV_SCALE=unscale, RULE=rule)


def variants(arch: int):
    """(kernel name, storage type, constexprs, n): every variant at a long bucket, plus short/int64 ones.

    Without GradScaler (HAS_INV_SCALE off), sm_90 gets every switch combination in every dtype; sm_80 every
    combination in fp32, and the 16-bit dtypes on the norm, the perturbation, the restore and the main updates
    only (the switches do not change what the 16-bit conversions lower to, and the compile time adds up).
    With it: every combination in fp32 on sm_90, the main updates in every dtype on both.
    The SAM family (contract v3): the average in the norm, perturbation and restore, the dot-norm and reweight
    kernels in every dtype on both; the average and GSAM in the update: the main updates in every dtype on both,
    and (``_sam_family_update_switches``) in fp32 on sm_90.
    """
    for dtype in STORAGE:
        for adaptive, avg in itertools.product((False, True), repeat=2):
            yield "norm", dtype, dict(ADAPTIVE=adaptive, HAS_AVG=avg), N_LONG
            if not (adaptive and avg):  # a stored e needs no direction: never launched
                yield "restore", dtype, dict(ADAPTIVE=adaptive, HAS_AVG=avg), N_LONG
            for copy_g in (False, True):
                yield "perturb", dtype, dict(ADAPTIVE=adaptive, COPY_G=copy_g, HAS_AVG=avg), N_LONG
        for adaptive in (False, True):
            yield "dot_norm", dtype, dict(ADAPTIVE=adaptive), N_LONG
        for switches in _reweight_switches():
            yield "reweight", dtype, switches, N_LONG
        for main, family in itertools.product(MAIN_UPDATES, SAM_FAMILY):
            yield "update", dtype, dict(main, **family), N_LONG
        if arch == 90 and dtype == "fp32":
            for switches in _sam_family_update_switches():
                if dict(switches, HAS_AVG=False, HAS_GSAM=False) not in MAIN_UPDATES:
                    yield "update", dtype, switches, N_LONG
        for switches in _update_switches(inv_scale=False):
            if arch == 90 or dtype == "fp32" or switches in MAIN_UPDATES:
                yield "update", dtype, switches, N_LONG
        for switches in _update_switches(inv_scale=True):
            if (arch == 90 and dtype == "fp32") or switches in MAIN_UPDATES:
                yield "update", dtype, switches, N_LONG
        # The group rule: every rule variant in fp32, the main ones in the 16-bit dtypes.
        for switches in _rule_update_switches():
            if dtype == "fp32" or (switches["RULE"] == 16 and not switches["ADAPTIVE"] and not switches["HAS_GSAM"]):
                yield "update", dtype, switches, N_LONG
        for switches in _rule_reweight_switches():
            if dtype == "fp32" or switches["RULE"] == 16:
                yield "reweight", dtype, switches, N_LONG
    yield "norm_sum", "fp32", {}, N_LONG
    for main in (MAIN_UPDATE, MAIN_UPDATE_UNSCALED):
        yield "update", "fp32", main, N_SHORT
        yield "update", "fp32", main, N_HUGE
    yield "perturb", "fp32", MAIN_PERTURB, N_HUGE
    yield "norm", "fp32", dict(ADAPTIVE=False, HAS_AVG=False), N_HUGE
    sam_main = dict(MAIN_UPDATE_UNSCALED, HAS_AVG=True, HAS_GSAM=True)
    yield "update", "fp32", sam_main, N_SHORT
    yield "update", "fp32", sam_main, N_HUGE
    yield "perturb", "fp32", dict(MAIN_PERTURB, HAS_AVG=True), N_HUGE
    yield "dot_norm", "fp32", dict(ADAPTIVE=False), N_HUGE
    yield "reweight", "fp32", MAIN_REWEIGHT, N_SHORT
    yield "reweight", "fp32", dict(USE_MASK=True, TRACK_GROUPS=True, HAS_INV_SCALE=True), N_HUGE
    yield "update", "fp32", dict(MAIN_UPDATE_UNSCALED, USE_MASK=False, TRACK_GROUPS=True, RULE=28), N_HUGE
    yield "reweight", "fp32", dict(USE_MASK=False, TRACK_GROUPS=True, HAS_INV_SCALE=True, RULE=28), N_HUGE


def expected_accesses(kernel: str, c: dict) -> tuple[int, int, int, int, int]:
    """(vector tensors loaded, vector tensors stored, scalar loads, scalar stores, atomics) per variant."""
    if kernel == "norm":
        return 1 + c["ADAPTIVE"] + c["HAS_AVG"], 0, 0, 1, 0  # g (w) (avg); one partial sum
    if kernel == "norm_sum":
        return 1, 0, 0, 1, 0  # the partials (per loop iteration); the result
    if kernel == "dot_norm":
        return 2 + c["ADAPTIVE"], 0, 0, 2, 0  # g_sgd, g (w); two partial sums
    if kernel == "perturb":
        # w, g (avg); w (e) (g_sgd); scale and skip
        return 2 + c["HAS_AVG"], 1 + c["ADAPTIVE"] + c["COPY_G"], 2, 0, 0
    if kernel == "restore":
        return 2 + c["HAS_AVG"], 1, 2, 0, 0  # w, e or g_sgd (avg); w; skip and scale (scale 0: nothing to restore)
    if kernel == "reweight":
        # g (g_sgd for the mask or the counts); g when reweighted or unscaled; skip (inv_scale); A/B/C counts
        loads = 1 + (c["USE_MASK"] or c["TRACK_GROUPS"] or bool(c.get("RULE")))
        stores = int(c["USE_MASK"] or c["HAS_INV_SCALE"] or bool(c.get("RULE")))
        return loads, stores, 1 + c["HAS_INV_SCALE"], 0, 3 * c["TRACK_GROUPS"]
    # g, w, (g_sgd: for e, the groups, the average's commit, GSAM) (e) (buf) (avg); adaptive SAM without groups
    # never reads g_sgd. w is also loaded and stored on a skipped step (the restore), under its own bound: the
    # same accesses.
    needs_g_sgd = (
        not c["ADAPTIVE"] or c["USE_MASK"] or c["TRACK_GROUPS"] or c["HAS_AVG"] or c["HAS_GSAM"] or bool(c.get("RULE"))
    )
    loads = 2 + needs_g_sgd + c["ADAPTIVE"] + (c["HAS_MOMENTUM"] and not c["FIRST_MOMENTUM_STEP"]) + c["HAS_AVG"]
    stores = 1 + c["HAS_MOMENTUM"] + 2 * c["ZERO_GRADS"] + c["HAS_AVG"]  # w (buf) (zero g, zero g_sgd) (avg)
    # skip, scale (the recomputed e; e is +0 when it is 0) (inv_scale) (gsam_k)
    scalar_loads = 2 + c["HAS_INV_SCALE"] + c["HAS_GSAM"]
    return loads, stores, scalar_loads, 0, 3 * c["TRACK_GROUPS"]  # A/B/C counts: integer atomics


# --------------------------------------------------------------------------- the compile (subprocess)
def _kernels():
    from saner_kernels.ops import triton as T

    return {
        "norm": (T._sq_norm_kernel, T._GPU_NORM_BLOCK),
        "norm_sum": (T._sum_partials_kernel, None),
        "perturb": (T._perturb_kernel, T._GPU_BLOCK),
        "update": (T._update_kernel, T._GPU_BLOCK),
        "restore": (T._restore_kernel, T._GPU_BLOCK),
        "dot_norm": (T._gsam_dot_norm_kernel, T._GPU_NORM_BLOCK),
        "reweight": (T._reweight_kernel, T._GPU_BLOCK),
    }


def _pointer_type(kernel: str, arg: str, dtype: str, switches: dict) -> str:
    """The JIT's pointer type: float32 scalars, int64 stats (``scale`` or ``skip`` stands in when there are none,
    and for a missing ``inv_scale`` or ``gsam_k``)."""
    if arg in ("scale_ptr", "skip_ptr", "inv_scale_ptr", "gsam_k_ptr", "partial_ptr", "out_ptr"):
        return "*fp32"
    if arg == "stats_ptr":
        return "*i64" if switches["TRACK_GROUPS"] else "*fp32"
    return "*" + dtype


def _resource_usage(cubin: bytes) -> dict:
    """Registers, stack and local memory from cuobjdump (Triton ships it; else one on PATH)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        tool = shutil.which("cuobjdump")
    if tool is None:
        raise RuntimeError("no cuobjdump: neither in triton/backends/nvidia/bin nor on PATH")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", usage.stdout)}


def _compile_one(job: tuple) -> dict:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from saner_kernels.ops import triton as T

    arch, name, dtype, switches, n = job
    fn, gpu_block = _kernels()[name]
    if name == "norm_sum":
        block, num_warps = T._SUM_BLOCK, T._SUM_WARPS
    else:
        block, num_warps, _ = T._config(n, torch.device("cuda"), gpu_block)
    constexprs = dict(switches, BLOCK=block)
    if "RULE" in fn.arg_names:  # no rule unless the variant has one (the wrappers leave the default)
        constexprs.setdefault("RULE", 0)
    int_type = "i32" if n < 2**31 else "i64"
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        if arg.endswith("_ptr"):
            signature[arg] = _pointer_type(name, arg, dtype, switches)
        elif arg in ("n", "n_valid", "n_partials"):
            signature[arg] = int_type if arg != "n_partials" else "i32"
        else:
            signature[arg] = "fp32"
        if arg.endswith("_ptr") or arg in ("n", "n_partials"):  # n_partials: padded to a multiple of 16
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=num_warps, enable_fp_fusion=False),
    )
    ptx = compiled.asm["ptx"]
    return dict(
        arch=arch,
        kernel=name,
        dtype=dtype,
        switches=switches,
        n=n,
        block=block,
        num_warps=num_warps,
        triton=triton.__version__,
        ld_vec=len(re.findall(r"ld\.global(\.\w+)*" + VEC, ptx)),
        st_vec=len(re.findall(r"st\.global(\.\w+)*" + VEC, ptx)),
        ld_all=len(re.findall(r"\bld\.global", ptx)),
        st_all=len(re.findall(r"\bst\.global", ptx)),
        atomics=len(re.findall(ATOMIC, ptx)),
        local=len(re.findall(r"\b(ld|st)\.local", ptx)),
        fma=len(re.findall(r"\bfma\.rn\.f32", ptx)),
        div_rn=len(re.findall(r"\bdiv\.rn\.f32", ptx)),
        **_resource_usage(compiled.asm["cubin"]),
    )


def _compile_all(out_path: str) -> None:
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(arch, *v) for arch in TARGETS for v in variants(arch)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        records = list(pool.map(_compile_one, jobs, chunksize=4))
    with open(out_path, "w") as f:
        json.dump(records, f)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "records.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(out)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"ahead-of-time compile failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- checks
def _vectors_per_thread(r: dict) -> int:
    """128-bit vectors per thread for one bucket tensor of the variant's block."""
    return r["block"] * STORAGE[r["dtype"]] // (r["num_warps"] * 32 * 16)


def _describe(r: dict) -> str:
    on = [k for k, v in r["switches"].items() if v is True]
    if r["switches"].get("RULE"):
        on.append(f"RULE={r['switches']['RULE']}")
    return f"sm_{r['arch']} {r['kernel']:8s} {r['dtype']} n={r['n']} [{' '.join(on) or '-'}]"


def test_every_variant_compiled(records):
    assert len(records) == sum(len(list(variants(arch))) for arch in TARGETS)
    print(f"{len(records)} variants compiled with Triton {records[0]['triton']}")


def test_no_local_memory(records):
    spills = [_describe(r) for r in records if r["local"] or r.get("LOCAL") or r.get("STACK")]
    assert not spills, "local memory / stack use:\n" + "\n".join(spills)


def test_only_128_bit_tensor_accesses(records):
    """Each bucket tensor moves in 128-bit accesses, the expected number of them per thread; the scalars
    (scale, skip; partial sums) are the only other accesses, group counts are integer atomics."""
    bad = []
    for r in records:
        loads, stores, scalar_loads, scalar_stores, atomics = expected_accesses(r["kernel"], r["switches"])
        per_tensor = _vectors_per_thread(r)
        got = (r["ld_vec"], r["st_vec"], r["ld_all"] - r["ld_vec"], r["st_all"] - r["st_vec"], r["atomics"])
        want = (loads * per_tensor, stores * per_tensor, scalar_loads, scalar_stores, atomics)
        if got != want:
            bad.append(f"{_describe(r)}: got {got}, want {want}")
    assert not bad, "(vector loads, vector stores, other loads, other stores, atomics) differ:\n" + "\n".join(bad)


def test_main_variants_ptx(records):
    """The fp32 main update, with and without GradScaler's inv_scale: 4 vector loads and 4 vector stores per
    element vector; the perturbation without the g_sgd copy: 2 and 1; no local memory. Prints the counts and
    registers per main variant."""
    mains = [
        r
        for r in records
        if (r["kernel"] == "update" and r["switches"] in MAIN_UPDATES)
        or (r["kernel"] == "perturb" and r["switches"] == MAIN_PERTURB)
        or (
            r["kernel"] in ("norm", "norm_sum", "restore")
            and not r["switches"].get("ADAPTIVE")
            and not r["switches"].get("HAS_AVG")
        )
    ]
    main_fp32 = [
        r
        for r in mains
        if r["kernel"] == "update" and r["dtype"] == "fp32" and r["switches"] in (MAIN_UPDATE, MAIN_UPDATE_UNSCALED)
    ]
    assert len(main_fp32) == 2 * 3 * len(TARGETS)  # with and without inv_scale; the long, short and int64 buckets
    for r in main_fp32:
        per_tensor = _vectors_per_thread(r)
        assert (r["ld_vec"], r["st_vec"]) == (4 * per_tensor, 4 * per_tensor), r
        assert r["local"] == 0 and r["LOCAL"] == 0, r
    for r in mains:
        if r["kernel"] == "perturb" and r["dtype"] == "fp32":
            per_tensor = _vectors_per_thread(r)
            assert (r["ld_vec"], r["st_vec"]) == (2 * per_tensor, per_tensor), r
        per_tensor = _vectors_per_thread(r)
        print(
            f"{_describe(r)} BLOCK={r['block']} warps={r['num_warps']}: {r['REG']} registers, "
            f"{r['ld_vec'] // per_tensor} vector loads / {r['st_vec'] // per_tensor} vector stores per element "
            f"vector ({r['ld_vec']} ld.global.v4 / {r['st_vec']} st.global.v4 per thread), {r['fma']} fma"
        )


def test_sam_family_main_variants_ptx(records):
    """Contract v3's main fp32 variants, in (vector loads, vector stores) per element vector: the update with an
    average (VaSSO, Friendly-SAM) 5 and 5 (40 bytes/elem), with GSAM only 4 and 4 plus the scalar gsam_k; the
    perturbation with an average 3 and 1 (16 bytes/elem); the norm with an average 2 (8); gsam_dot_norm 2 (8);
    reweight_ 2 and 1 (12). Prints the counts and registers."""
    want = {
        ("update", True, False): (5, 5),
        ("update", False, True): (4, 4),
        ("update", True, True): (5, 5),
        ("perturb", True, False): (3, 1),
        ("norm", True, False): (2, 0),
        ("dot_norm", False, False): (2, 0),
        ("reweight", False, False): (2, 1),
    }
    seen = set()
    for r in records:
        c = r["switches"]
        if r["dtype"] != "fp32" or c.get("ADAPTIVE"):
            continue
        base = dict(c, HAS_AVG=False, HAS_GSAM=False)
        if r["kernel"] == "update" and base not in (MAIN_UPDATE, MAIN_UPDATE_UNSCALED):
            continue
        if (r["kernel"] == "perturb" and c != dict(MAIN_PERTURB, HAS_AVG=True)) or (
            r["kernel"] == "reweight" and c != MAIN_REWEIGHT
        ):
            continue
        key = (r["kernel"], bool(c.get("HAS_AVG")), bool(c.get("HAS_GSAM")))
        if key not in want:
            continue
        seen.add(key)
        per_tensor = _vectors_per_thread(r)
        loads, stores = want[key]
        assert (r["ld_vec"], r["st_vec"]) == (loads * per_tensor, stores * per_tensor), _describe(r)
        print(
            f"{_describe(r)} BLOCK={r['block']} warps={r['num_warps']}: {r['REG']} registers, "
            f"{loads} vector loads / {stores} vector stores per element vector, {r['fma']} fma"
        )
    assert seen == set(want)


def test_group_rule_variants_ptx(records):
    """The group rule's main fp32 variants: the update 4 vector loads and 4 vector stores per element vector, as
    without a rule (32 bytes/elem with zero_grads: the rule moves no extra bytes), reweight_ 2 and 1 (12); the ratio
    is one correctly rounded division (div.rn.f32) per element. Prints the counts and registers next to the same
    variant without a rule."""
    by_key = {
        (r["arch"], r["kernel"], r["dtype"], r["n"], json.dumps(r["switches"], sort_keys=True)): r for r in records
    }
    seen = 0
    for r in records:
        c = r["switches"]
        if r["dtype"] != "fp32" or r["n"] != N_LONG or not c.get("RULE"):
            continue
        per_tensor = _vectors_per_thread(r)
        if r["kernel"] == "update" and dict(c, USE_MASK=True, TRACK_GROUPS=False, RULE=0) in (
            dict(MAIN_UPDATE, RULE=0),
            dict(MAIN_UPDATE_UNSCALED, RULE=0),
        ):
            assert (r["ld_vec"], r["st_vec"]) == (4 * per_tensor, 4 * per_tensor), _describe(r)
        elif r["kernel"] == "reweight" and not c["HAS_INV_SCALE"]:
            assert (r["ld_vec"], r["st_vec"]) == (2 * per_tensor, per_tensor), _describe(r)
        else:
            continue
        seen += 1
        assert r["div_rn"] == r["block"] // (r["num_warps"] * 32), _describe(r)
        plain = {k: v for k, v in c.items() if k != "RULE"}
        plain["USE_MASK"] = True
        twin = by_key.get((r["arch"], r["kernel"], r["dtype"], r["n"], json.dumps(plain, sort_keys=True)))
        print(
            f"{_describe(r)}: {r['REG']} registers (the alpha mask: {twin['REG'] if twin else '-'}), "
            f"{r['ld_vec'] // per_tensor} vector loads / {r['st_vec'] // per_tensor} vector stores per element vector"
        )
    assert seen >= 2 * len(TARGETS) * len(RULES)


def test_explicit_fma_only(records):
    """Contraction is off (enable_fp_fusion=False): the only fma are the explicit tl.fma of torch's SGD steps
    (weight decay, momentum, nesterov, the step), one per element and step."""
    bad = []
    for r in records:
        c = r["switches"]
        per_thread = r["block"] // (r["num_warps"] * 32)
        if r["kernel"] != "update":
            want = 0
        else:
            momentum = c["HAS_MOMENTUM"] and not c["FIRST_MOMENTUM_STEP"]
            want = (1 + momentum + c["NESTEROV"] + 1) * per_thread  # decay (momentum) (nesterov) step
        if r["fma"] != want:
            bad.append(f"{_describe(r)}: {r['fma']} fma.rn.f32, want {want}")
    assert not bad, "\n".join(bad)


def test_register_counts(records):
    """Print the register use of every variant; elementwise kernels should stay far below spilling."""
    for r in sorted(records, key=lambda r: -r["REG"])[:10]:
        print(f"{_describe(r)}: {r['REG']} registers")
    worst = max(records, key=lambda r: r["REG"])
    assert worst["REG"] <= 128, worst


if __name__ == "__main__":
    _compile_all(sys.argv[1])
