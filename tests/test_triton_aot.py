"""Ahead-of-time compile of every Triton kernel variant for sm_80 and sm_90, and PTX checks; no GPU.

``triton.compile`` on an ``ASTSource`` with a ``GPUTarget`` runs the whole CUDA pipeline (TTIR, TTGIR,
LLVM, PTX, ptxas to cubin) without a driver. The compile runs once, in a subprocess started from a
module fixture: this file run as a script, without ``TRITON_INTERPRET`` and with a private Triton
cache, so neither the interpreter tests nor a warm cache from an earlier run can hide a compile
problem. The script writes one JSON record per variant; the tests below only read them.

Launch configurations come from the backend's own ``_config`` (the block size and warps a bucket of
that length really gets); pointers and ``n`` carry the divisibility-16 hint that padded, 128-element
aligned buckets give the JIT.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

TARGETS = (80, 90)
STORAGE = {"fp32": 4, "bf16": 2, "fp16": 2}  # Triton type name -> bytes
N_LONG = 1 << 20   # any long bucket: the largest block
N_SHORT = 128      # the smallest bucket: the smallest block
VEC = r"\.(v4\.[bfu]32|v2\.[bfu]64)\b"  # a 128-bit access


# --------------------------------------------------------------------------- variants
def _update_switches():
    """Every distinct constexpr combination of the update kernel (nesterov/first step need momentum)."""
    momentum_modes = [(False, False, False)] + [(True, nesterov, first)
                                                for nesterov, first in itertools.product((False, True), repeat=2)]
    for adaptive, (has_m, nesterov, first), use_mask, track in itertools.product(
            (False, True), momentum_modes, (False, True), (False, True)):
        yield dict(ADAPTIVE=adaptive, HAS_MOMENTUM=has_m, NESTEROV=nesterov, FIRST_MOMENTUM_STEP=first,
                   USE_MASK=use_mask, TRACK_GROUPS=track)


def variants(arch: int):
    """(kernel name, storage type, constexprs, n): every variant at a long bucket, plus short/int64 ones.

    sm_90 gets every switch combination in every dtype; sm_80 every combination in fp32 and the
    16-bit dtypes on the norm, the perturbation and the main update only (the switches do not
    change what the 16-bit conversions lower to, and the compile time adds up).
    """
    for dtype in STORAGE:
        for adaptive in (False, True):
            yield "norm", dtype, dict(ADAPTIVE=adaptive), N_LONG
            yield "perturb", dtype, dict(ADAPTIVE=adaptive), N_LONG
        for switches in _update_switches():
            if arch == 90 or dtype == "fp32" or switches == MAIN_UPDATE:
                yield "update", dtype, switches, N_LONG
    yield "update", "fp32", MAIN_UPDATE, N_SHORT
    yield "update", "fp32", MAIN_UPDATE, 1 << 31  # n > int32: int64 length, still vectorized


# The DESIGN.md section 3 update: later momentum step, mask on, no adaptive, no tracking: 4 loads, 2 stores.
MAIN_UPDATE = dict(ADAPTIVE=False, HAS_MOMENTUM=True, NESTEROV=False, FIRST_MOMENTUM_STEP=False,
                   USE_MASK=True, TRACK_GROUPS=False)


def expected_accesses(kernel: str, c: dict) -> tuple[int, int, int, int]:
    """(vector tensors loaded, vector tensors stored, scalar loads, scalar stores) per variant."""
    if kernel == "norm":
        return 1 + c["ADAPTIVE"], 0, 0, 1                      # g (w); one partial sum
    if kernel == "perturb":
        return 2, 2 + c["ADAPTIVE"], 1, 0                      # w, g; w, g_sgd (e); the scale
    # g, w, (g_sgd: for e, or for the groups) (e) (buf); adaptive SAM without groups never reads g_sgd
    needs_g_sgd = not c["ADAPTIVE"] or c["USE_MASK"] or c["TRACK_GROUPS"]
    loads = 2 + needs_g_sgd + c["ADAPTIVE"] + (c["HAS_MOMENTUM"] and not c["FIRST_MOMENTUM_STEP"])
    stores = 1 + c["HAS_MOMENTUM"]                             # w (buf)
    return loads, stores, 1, 3 * c["TRACK_GROUPS"]             # the scale; A/B/C counts


# --------------------------------------------------------------------------- the compile (subprocess)
def _compile_all(out_path: str) -> None:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from saner_kernels.ops import triton as T

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    kernels = {"norm": (T._sq_norm_kernel, T._GPU_NORM_BLOCK), "perturb": (T._perturb_kernel, T._GPU_BLOCK),
               "update": (T._update_kernel, T._GPU_BLOCK)}
    records = []
    for arch in TARGETS:
        for name, dtype, switches, n in variants(arch):
            kernel, gpu_block = kernels[name]
            fn = kernel.jit
            block, num_warps, _ = T._config(n, torch.device("cuda"), gpu_block)
            constexprs = dict(switches, BLOCK=block)
            if name != "norm":
                constexprs["RNE_BY_HAND"] = False
            signature, attrs = {}, {}
            for i, arg in enumerate(fn.arg_names):
                if arg in constexprs:
                    signature[arg] = "constexpr"
                    continue
                if arg.endswith("_ptr"):
                    signature[arg] = {"scale_ptr": "*fp32", "partial_ptr": "*fp32",
                                      "counts_ptr": "*i32"}.get(arg, "*" + dtype)
                elif arg == "n":
                    signature[arg] = "i32" if n < 2 ** 31 else "i64"
                else:
                    signature[arg] = "fp32"
                if arg.endswith("_ptr") or arg == "n":
                    attrs[(i,)] = [["tt.divisibility", 16]]
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                      target=GPUTarget("cuda", arch, 32),
                                      options=dict(num_warps=num_warps, enable_fp_fusion=False))
            ptx = compiled.asm["ptx"]
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", f.name],
                                       capture_output=True, text=True, check=True).stdout
            resources = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", usage)}
            records.append(dict(
                arch=arch, kernel=name, dtype=dtype, switches=switches, n=n, block=block, num_warps=num_warps,
                ld_vec=len(re.findall(r"ld\.global(\.\w+)*" + VEC, ptx)),
                st_vec=len(re.findall(r"st\.global(\.\w+)*" + VEC, ptx)),
                ld_all=len(re.findall(r"\bld\.global", ptx)), st_all=len(re.findall(r"\bst\.global", ptx)),
                local=len(re.findall(r"\b(ld|st)\.local", ptx)), **resources))
    with open(out_path, "w") as f:
        json.dump(records, f)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "records.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"ahead-of-time compile failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- checks
def test_every_variant_compiled(records):
    assert len(records) == sum(len(list(variants(arch))) for arch in TARGETS)


def test_no_local_memory(records):
    spills = [r for r in records if r["local"] or r.get("LOCAL") or r.get("STACK")]
    assert not spills, f"local memory / stack use: {spills}"


def test_only_128_bit_tensor_accesses(records):
    """Each bucket tensor moves in 128-bit accesses, the expected number of them per thread."""
    bad = []
    for r in records:
        loads, stores, scalar_loads, scalar_stores = expected_accesses(r["kernel"], r["switches"])
        per_tensor = r["block"] * STORAGE[r["dtype"]] // (r["num_warps"] * 32 * 16)  # 128-bit vectors per thread
        got = (r["ld_vec"], r["st_vec"], r["ld_all"] - r["ld_vec"], r["st_all"] - r["st_vec"])
        want = (loads * per_tensor, stores * per_tensor, scalar_loads, scalar_stores)
        if got != want:
            bad.append((r["arch"], r["kernel"], r["dtype"], r["n"], r["switches"], got, want))
    assert not bad, "(vector loads, vector stores, other loads, other stores) differ:\n" + "\n".join(map(str, bad))


def test_fp32_update_ptx(records):
    """DESIGN.md section 3 for fp32: 4 vector loads and 2 vector stores per element vector, no local memory."""
    main = [r for r in records if r["kernel"] == "update" and r["dtype"] == "fp32" and r["switches"] == MAIN_UPDATE]
    assert len(main) == 3 * len(TARGETS)
    for r in main:
        per_tensor = r["block"] * 4 // (r["num_warps"] * 32 * 16)
        assert r["ld_vec"] == 4 * per_tensor and r["st_vec"] == 2 * per_tensor, r
        assert r["ld_all"] == r["ld_vec"] + 1 and r["st_all"] == r["st_vec"], r  # + the scale
        assert r["local"] == 0 and r["LOCAL"] == 0, r
        print(f"sm_{r['arch']} fp32 update_ n={r['n']} BLOCK={r['block']} warps={r['num_warps']}: "
              f"{r['REG']} registers, {r['ld_vec']} ld.global.v4 / {r['st_vec']} st.global.v4 per thread")


def test_register_counts(records):
    """Print the register use of every variant; elementwise kernels should stay far below spilling."""
    worst = max(records, key=lambda r: r["REG"])
    for r in records:
        if r["n"] == N_LONG:
            print(f"sm_{r['arch']} {r['kernel']:7s} {r['dtype']} {r['switches']}: {r['REG']} registers")
    assert worst["REG"] <= 128, worst


if __name__ == "__main__":
    _compile_all(sys.argv[1])
