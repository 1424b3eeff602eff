"""What only the native ops (csrc/, ``torch.ops.saner_kernels.*``) have: two ISA builds of the CPU kernels and
their bit-exactness, the AVX2 library's symbols, thread-count determinism, stale-build detection, the backend
names, and the torch.library checks. Results against the reference are tests/test_contract.py's (``cpp-cpu``).

CI builds the extension (``pip install --no-build-isolation -e .``) before pytest, so a missing or stale
CPU build is a failure here, not a skip.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from contract_cases import (
    AVERAGES,
    DTYPES,
    EPS,
    RULE_SWITCHES,
    RULES,
    SWITCHES,
    VARIANT_SWITCHES,
    assert_same_step,
    clone_all,
    make_bucket_tensors,
    no_skip,
    pairwise,
    rule_edges,
    run_step,
    scale_for,
)

import saner_kernels
from saner_kernels._source_hash import source_hash
from saner_kernels.ops import available_backends, backend_status, check_backend_name, native, reference, resolve_backend
from saner_kernels.ops.hyper import AverageHyper, UpdateHyper

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# setup.py builds the AVX2 kernels into this static library (NATIVE_LIB_DIR) and links it into _C.
AVX2_LIBRARY = REPO / "build" / "native" / "libsaner_kernels_avx2.a"


@pytest.fixture(scope="module")
def cpp():
    ok, reason = native.is_available(CPU)
    assert ok, f"the native ops must be available on CPU (CI builds them first): {reason}"
    return resolve_backend("cpp", CPU)


@pytest.fixture
def isa(cpp, request):
    """Run a test under one ISA build of the CPU kernels, then restore the choice made at load."""
    ext = native.extension()
    before = ext.cpu_capability()
    if request.param not in ext.CPU_CAPABILITIES or (request.param == "avx2" and before != "avx2"):
        pytest.skip(f"no {request.param} kernels on this machine (builds: {ext.CPU_CAPABILITIES}, using {before})")
    ext.set_cpu_capability(request.param)
    yield request.param
    ext.set_cpu_capability(before)


# ------------------------------------------------------------------------------------ names and availability
def test_one_native_backend_under_two_names(cpp):
    assert available_backends("cpu")["cpp"] == True  # noqa: E712  (Availability compares to bools)
    assert cpp.NAME == "cpp" and resolve_backend("auto", CPU, torch.float32) is cpp
    assert resolve_backend("cpp", CPU, torch.float64) is cpp
    assert cpp.update_ is native.update_, "cpp is the native implementation, not a copy"
    ok, reason = resolve_backend("reference", CPU).is_available(CPU)
    assert ok
    status = available_backends("cpu")["cuda_cpp"]
    assert not status and "cuda" in status.reason
    if not torch.cuda.is_available():
        ok, reason = native.is_available(torch.device("cuda"))
        assert not ok and reason


def test_old_cuda_backend_name_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'cuda_cpp'"):
        status = backend_status("cuda", "cuda")
    assert status == backend_status("cuda_cpp", "cuda")
    with pytest.warns(DeprecationWarning, match="'cuda_cpp'"):
        check_backend_name("cuda")
    if torch.cuda.is_available() and status:
        with pytest.warns(DeprecationWarning, match="'cuda_cpp'"):
            assert resolve_backend("cuda", "cuda").NAME == "cuda_cpp"


# ------------------------------------------------------------------------------------ ISA builds
@pytest.mark.skipif(not X86_64, reason="the AVX2 build exists on x86-64 only")
def test_avx2_build_is_linked_and_chosen():
    ext = native.extension()
    assert ext.CPU_CAPABILITIES == ("default", "avx2")
    if os.environ.get("SANER_KERNELS_CPU_CAPABILITY") != "default" and torch.backends.cpu.get_cpu_capability() in (
        "AVX2",
        "AVX512",
    ):
        assert ext.cpu_capability() == "avx2"


@pytest.mark.skipif(not X86_64, reason="the AVX2 build exists on x86-64 only")
def test_avx2_library_defines_only_avx2_symbols():
    """No ODR hazard: every global or weak symbol the AVX2 library defines is in namespace
    saner_kernels::cpu::AVX2, or is one of its avx2_table entry points. An inline function from a shared
    header (c10's Half/BFloat16 conversions, say) compiled for AVX2 would show up here as a weak symbol,
    and the linker could keep that copy for the baseline code too."""
    assert AVX2_LIBRARY.is_file(), f"no {AVX2_LIBRARY}: build with `{native.BUILD_HINT}`"
    nm = shutil.which("nm")
    assert nm, "nm (binutils) is needed to inspect the AVX2 library"
    out = subprocess.run([nm, "--defined-only", "-P", str(AVX2_LIBRARY)], capture_output=True, text=True, check=True)
    exported = []
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and (fields[1].isupper() or fields[1] in "uvw"):  # global, weak or unique
            exported.append(fields[0])
    assert exported, out.stdout[:2000]
    in_namespace = re.compile(r"_Z[ZGVTHSI]*N[rVKO]*13saner_kernels3cpu4AVX2")
    entry_point = re.compile(r"_ZN13saner_kernels3cpu10avx2_tableI")
    stray = [s for s in exported if not in_namespace.match(s) and not entry_point.match(s)]
    if stray:
        names = subprocess.run(["c++filt"], input="\n".join(stray), capture_output=True, text=True).stdout
        pytest.fail(f"the AVX2 library defines symbols outside saner_kernels::cpu::AVX2:\n{names}")
    assert sum(bool(entry_point.match(s)) for s in exported) == 4  # fp32, fp64, bf16, fp16 tables


# Besides a plain step: GradScaler's scaled gradients unscaled in the update, and an overflow found in the
# second pass (the update only restores w). Each ISA build has its own loops for these.
STEP_VARIANTS = ("plain", "inv_scale", "update_skip")


def _variant(t: dict, variant: str) -> tuple[dict, dict]:
    if variant == "inv_scale":
        t = dict(t, g=t["g"] * 1024, g_sam=t["g_sam"] * 1024)
        return t, dict(inv_scale=torch.tensor(2.0**-10))
    if variant == "update_skip":
        return t, dict(update_skip=torch.ones(()))
    return t, {}


def _restore_roundtrip(ops, t: dict, adaptive: bool) -> torch.Tensor:
    w = t["w"].clone()
    e = torch.zeros_like(w) if adaptive else None
    s = scale_for(t, adaptive=adaptive)
    ops.perturb_(w, t["g"], s, no_skip(CPU), e=e)
    ops.restore_(w, s, no_skip(CPU), g_sgd=t["g"], e=e)
    return w


@pytest.mark.parametrize("isa", ["avx2"], indirect=True)
@pytest.mark.parametrize(*pairwise(switches=SWITCHES))
def test_avx2_fp32_bit_identical_to_reference(cpp, isa, switches):
    """With ATen's vector ISA (AVX2/AVX512: both fuse torch.add's alpha steps) every fp32 result is exact."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"torch runs its {torch.backends.cpu.get_cpu_capability()} kernels here")
    for variant in STEP_VARIANTS:
        t, kwargs = _variant(make_bucket_tensors(65536 + 77, torch.float32, seed=13, pad=100), variant)
        got, exp = run_step(cpp, t, **kwargs, **switches), run_step(reference, t, **kwargs, **switches)
        for name in exp:
            assert torch.equal(got[name], exp[name]), (variant, name)
    adaptive = switches["adaptive"]
    assert torch.equal(_restore_roundtrip(cpp, t, adaptive), _restore_roundtrip(reference, t, adaptive))


def _reweight_twice(ops, t: dict, alpha: float) -> dict:
    """reweight_ counted over a prefix, then again unscaling: g_sam and the counts."""
    x = clone_all(t)
    stats = torch.zeros(3, dtype=torch.int64)
    ops.reweight_(x["g_sam"], x["g"], no_skip(CPU), alpha, EPS, stats=stats, n_valid=t["g"].numel() - 100)
    ops.reweight_(x["g_sam"], x["g"], no_skip(CPU), alpha, EPS, inv_scale=torch.tensor(2.0**-3))
    return dict(g_sam=x["g_sam"], g=x["g"], stats=stats)


def _restore_with_average(ops, t: dict, avg: str) -> torch.Tensor:
    w, kw = t["w"].clone(), dict(avg=t["avg"], avg_hyper=AVERAGES[avg])
    s = scale_for(t, avg=avg)
    ops.perturb_(w, t["g"], s, no_skip(CPU), **kw)
    ops.restore_(w, s, no_skip(CPU), g_sgd=t["g"], **kw)
    return w


@pytest.mark.parametrize("isa", ["avx2"], indirect=True)
@pytest.mark.parametrize(*pairwise(switches=VARIANT_SWITCHES))
def test_avx2_fp32_sam_family_bit_identical_to_reference(cpp, isa, switches):
    """The SAM family (averages, GSAM, reweight_): every fp32 result exact on AVX2, like the other switches'."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"torch runs its {torch.backends.cpu.get_cpu_capability()} kernels here")
    for variant in STEP_VARIANTS:
        t, kwargs = _variant(make_bucket_tensors(65536 + 77, torch.float32, seed=13, pad=100), variant)
        got, exp = run_step(cpp, t, **kwargs, **switches), run_step(reference, t, **kwargs, **switches)
        for name in exp:
            assert torch.equal(got[name], exp[name]), (variant, name)
    if switches["avg"]:
        assert torch.equal(
            _restore_with_average(cpp, t, switches["avg"]), _restore_with_average(reference, t, switches["avg"])
        )
    got, exp = _reweight_twice(native, t, switches["alpha"]), _reweight_twice(reference, t, switches["alpha"])
    for name in exp:
        assert torch.equal(got[name], exp[name]), ("reweight_", name)


@pytest.mark.parametrize("isa", ["default"], indirect=True)
@pytest.mark.parametrize(*pairwise(switches=VARIANT_SWITCHES[::3], dtype=DTYPES + (torch.float64,)))
def test_baseline_isa_build_sam_family(cpp, isa, dtype, switches):
    """The baseline-ISA update loop with an average and GSAM, and its reweight_ loop."""
    n = 65536 + 77
    t = make_bucket_tensors(n, dtype, seed=17, pad=n // 8)
    got, exp = run_step(cpp, t, **switches), run_step(reference, t, **switches)
    got_rw, exp_rw = _reweight_twice(native, t, switches["alpha"]), _reweight_twice(reference, t, switches["alpha"])
    if dtype == torch.float64:  # compared in fp64: unfused fmadds differ from torch's by an fp64 ulp
        for name in exp:
            torch.testing.assert_close(got[name], exp[name], rtol=1e-12, atol=1e-12)
        for name in exp_rw:
            torch.testing.assert_close(got_rw[name], exp_rw[name], rtol=0, atol=0)
    else:
        assert_same_step(got, exp, dtype)
        assert_same_step(got_rw, exp_rw, dtype)


@pytest.mark.parametrize("isa", ["default"], indirect=True)
@pytest.mark.parametrize(*pairwise(switches=SWITCHES[::5], dtype=DTYPES + (torch.float64,), n=(1024, 65536 + 77)))
def test_baseline_isa_build(cpp, isa, n, dtype, switches):
    """The baseline-ISA kernels (CPUs without AVX2, other architectures) within the contract tolerances."""
    for variant in STEP_VARIANTS:
        t, kwargs = _variant(make_bucket_tensors(n, dtype, seed=17, pad=n // 8), variant)
        got, exp = run_step(cpp, t, **kwargs, **switches), run_step(reference, t, **kwargs, **switches)
        if dtype == torch.float64:  # compared in fp64: unfused fmadds differ from torch's by an fp64 ulp
            for name in exp:
                torch.testing.assert_close(
                    got[name], exp[name], rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}"
                )
        else:
            assert_same_step(got, exp, dtype)
    got = cpp.grad_sq_norm(t["g"], t["w"])
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got.double(), reference.grad_sq_norm(t["g"], t["w"]).double(), rtol=rtol, atol=0.0)


def _python(code: str, cwd=None, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


def test_baseline_isa_bit_identical_under_torch_default_isa(cpp):
    """SANER_KERNELS_CPU_CAPABILITY=default picks the baseline build at load; under ATEN_CPU_CAPABILITY=default
    torch and that build round alike: exact fp32 steps and restores."""
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from contract_cases import SWITCHES, make_bucket_tensors, run_step\n"
        "from saner_kernels.ops import native, reference, resolve_backend\n"
        "assert native.extension().cpu_capability() == 'default'\n"
        "cpp = resolve_backend('cpp', 'cpu')\n"
        "from test_native_ops import STEP_VARIANTS, _variant\n"
        "for variant in STEP_VARIANTS:\n"
        "    t, kw = _variant(make_bucket_tensors(4096 + 7, torch.float32, seed=19, pad=64), variant)\n"
        "    for sw in SWITCHES:\n"
        "        a, r = run_step(cpp, t, **kw, **sw), run_step(reference, t, **kw, **sw)\n"
        "        bad = [k for k in r if not torch.equal(a[k], r[k])]\n"
        "        assert not bad, (variant, sw, bad)\n"
        "print('ok')\n" % str(TESTS)
    )
    res = _python(code, ATEN_CPU_CAPABILITY="default", SANER_KERNELS_CPU_CAPABILITY="default")
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


# ------------------------------------------------------------------------------------ determinism
def test_deterministic_across_thread_counts(cpp):
    t = make_bucket_tensors(300032 + 77, torch.float32, seed=43, pad=1000)
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in sorted({1, 2, 3, threads}):
            torch.set_num_threads(n_threads)
            results.append(
                (
                    cpp.grad_sq_norm(t["g"]),
                    cpp.grad_sq_norm(t["g"], t["w"]),
                    run_step(cpp, t, n_valid=300032 - 1000, **SWITCHES[-1]),
                    native.grad_sq_norm(t["g"], t["w"], avg=t["avg"], avg_hyper=AVERAGES["fsam"]),
                    native.gsam_dot_norm(t["g"], t["g_sam"], t["w"]),
                    run_step(cpp, t, n_valid=300032 - 1000, **VARIANT_SWITCHES[-1]),
                )
            )
    finally:
        torch.set_num_threads(threads)
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first, other):
            if isinstance(a, dict):
                assert all(torch.equal(a[k], b[k]) for k in a)
            else:
                assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ stale builds
def test_build_matches_sources(cpp):
    """The loaded build is the one of these sources and this ABI; a source change changes the hash."""
    ext = native.extension()
    assert ext.ABI_VERSION == native.ABI_VERSION and ext.TORCH_VERSION == torch.__version__
    assert ext.SOURCE_HASH == source_hash(str(REPO / "csrc"))
    assert "pip install --no-build-isolation" in native.BUILD_HINT


def _spoil_copy(tmp_path: Path, how: str) -> Path:
    """A copy of the package and csrc/ whose extension is stale, broken or missing."""
    root = tmp_path / how
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(saner_kernels.__file__).parent, root / "saner_kernels", ignore=ignore)  # with its _C
    shutil.copytree(REPO / "csrc", root / "csrc", ignore=ignore)
    (so,) = (root / "saner_kernels").glob("_C.*")
    if how == "stale":
        with open(root / "csrc" / "front_end.h", "a") as f:
            f.write("// an edit after the build\n")
    elif how == "broken":
        so.write_bytes(b"not a shared library")
    else:
        so.unlink()
    return root


@pytest.mark.parametrize("how", ["stale", "broken", "missing"])
def test_auto_warns_once_about_an_unusable_build(cpp, tmp_path, how):
    """backend='auto' warns once (naming the reason and the rebuild command) before falling back from a built
    but stale or broken extension; a missing one falls back quietly. Asking for 'cpp' raises with the reason."""
    root = _spoil_copy(tmp_path, how)
    code = (
        "import json, sys, warnings\n"
        "# only the copy: an editable install's finder would supply the checkout's extension module\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith('__editable__')]\n"
        "import saner_kernels\n"
        "from saner_kernels.ops import reference, resolve_backend\n"
        "assert saner_kernels.__file__.startswith(%r), saner_kernels.__file__\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    picks = [resolve_backend('auto', 'cpu') is reference for _ in range(3)]\n"
        "try:\n"
        "    resolve_backend('cpp', 'cpu')\n"
        "    error = ''\n"
        "except RuntimeError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps(dict(picks=picks, error=error,\n"
        "                      warnings=[(w.category.__name__, str(w.message)) for w in caught])))\n" % str(root)
    )
    res = _python(code, cwd=str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["picks"] == [True] * 3
    reason = {"stale": "csrc/ changed since it was built", "broken": "does not load", "missing": "not built"}[how]
    assert reason in out["error"] and "pip install --no-build-isolation" in out["error"]
    if how == "missing":
        assert out["warnings"] == []
    else:
        assert len(out["warnings"]) == 1, out["warnings"]
        category, message = out["warnings"][0]
        assert category == "RuntimeWarning" and reason in message and "pip install --no-build-isolation" in message


# ------------------------------------------------------------------------------------ beyond test_contract's checks
# tests/test_contract.py checks the arguments every op shares (dtype, length, scale, skip, stats, inv_scale) and
# empty buckets without the SAM family's arguments; these two add the average, gsam_k, gsam_dot_norm and reweight_.
def test_average_gsam_and_reweight_arguments_are_checked(cpp):
    """A clear error naming the argument, nothing written."""
    t = make_bucket_tensors(256, torch.float32, seed=3)
    s, skip, hyper, fsam = scale_for(t), no_skip(CPU), UpdateHyper(lr=0.1, momentum=0.9), AVERAGES["fsam"]
    before = clone_all(t)

    def update(**kw):
        native.update_(t["w"], t["g_sam"], t["g_sgd"], t["buf"], s, skip, hyper, **kw)

    bad_calls = {
        "avg and avg_hyper go together": lambda: native.perturb_(t["w"], t["g"], s, skip, avg=t["avg"]),
        "avg and avg_hyper go together ": lambda: update(avg_hyper=fsam),
        "avg has dtype": lambda: native.grad_sq_norm(t["g"], avg=t["avg"].double(), avg_hyper=fsam),
        "avg has 128 elements": lambda: native.perturb_(t["w"], t["g"], s, skip, avg=t["avg"][:128], avg_hyper=fsam),
        "avg must be a contiguous": lambda: native.restore_(
            t["w"], s, skip, g_sgd=t["g"], avg=t["avg"].view(2, 128), avg_hyper=fsam
        ),
        "avg has 255": lambda: update(avg=t["avg"][1:], avg_hyper=fsam),
        "gsam_k must be a 0-dim torch.float32": lambda: update(gsam_k=s.half()),
        "gsam_k must be": lambda: update(gsam_k=torch.ones(2)),
        "g_sam has dtype": lambda: native.gsam_dot_norm(t["g"], t["g_sam"].half()),
        "w has 128": lambda: native.gsam_dot_norm(t["g"], t["g_sam"], t["w"][:128]),
        "unsupported dtype": lambda: native.gsam_dot_norm(t["g"].int(), t["g_sam"].int()),
        "g_sgd has 128": lambda: native.reweight_(t["g_sam"], t["g"][:128], skip, 0.5, EPS),
        "skip must be": lambda: native.reweight_(t["g_sam"], t["g"], s.double(), 0.5, EPS),
        "stats must be": lambda: native.reweight_(t["g_sam"], t["g"], skip, 0.5, EPS, stats=torch.zeros(3)),
        "inv_scale must be": lambda: native.reweight_(t["g_sam"], t["g"], skip, 0.5, EPS, inv_scale=s.double()),
        "n_valid must be": lambda: native.reweight_(t["g_sam"], t["g"], skip, 0.5, EPS, n_valid=257),
    }
    for what, call in bad_calls.items():
        with pytest.raises((RuntimeError, ValueError, TypeError), match=re.escape(what.strip())):
            call()
    for name in before:
        assert torch.equal(t[name], before[name]), f"{name} changed by a rejected call"


def test_cpp_front_end_checks_what_reaches_it(cpp):
    """The C++ op itself (not through the Python checks) rejects what would be unsafe to run."""
    t = make_bucket_tensors(256, torch.float32, seed=3)
    s, skip, ops = scale_for(t), no_skip(CPU), torch.ops.saner_kernels
    before = clone_all(t)
    bad_calls = {
        "g_sgd has 128 elements": lambda: ops.reweight_(t["g_sam"], t["g"][:128], skip, alpha=0.5, eps=EPS),
        "avg has dtype": lambda: ops.grad_sq_norm(t["g"], None, avg=t["avg"].double()),
        "skip must be": lambda: ops.perturb_(t["w"], t["g"], s, s.double()),
        "stats must be": lambda: ops.reweight_(t["g_sam"], t["g"], skip, alpha=0.5, eps=EPS, stats=torch.zeros(2)),
        "n_valid must be": lambda: ops.reweight_(t["g_sam"], t["g"], skip, alpha=0.5, eps=EPS, n_valid=257),
        "restore_ needs g_sgd": lambda: ops.restore_(t["w"], s, skip),
    }
    for what, call in bad_calls.items():
        with pytest.raises(RuntimeError, match=re.escape(what)):
            call()
    for name in before:
        assert torch.equal(t[name], before[name]), f"{name} changed by a rejected call"


def test_average_gsam_and_reweight_on_empty_buckets(cpp):
    x, s, skip, fsam = torch.zeros(0), torch.tensor(0.1), no_skip(CPU), AVERAGES["fsam"]
    assert native.grad_sq_norm(x, x, avg=x.clone(), avg_hyper=fsam).item() == 0.0
    assert native.gsam_dot_norm(x, x, x).tolist() == [0.0, 0.0]
    native.perturb_(x, x, s, skip, avg=x.clone(), avg_hyper=fsam)
    stats = torch.zeros(3, dtype=torch.int64)
    native.update_(
        x,
        x.clone(),
        x.clone(),
        x.clone(),
        s,
        skip,
        UpdateHyper(lr=0.1, momentum=0.9, gsam_alpha=0.4),
        avg=x.clone(),
        avg_hyper=fsam,
        gsam_k=torch.tensor(0.5),
        stats=stats,
    )
    native.restore_(x, s, skip, g_sgd=x.clone(), avg=x.clone(), avg_hyper=fsam)
    native.reweight_(x, x.clone(), skip, 0.5, EPS, stats=stats, n_valid=0)
    assert not stats.any()


# ------------------------------------------------------------------------------------ torch.library checks
def _opcheck_all(device: str, adaptive: bool) -> None:
    from torch.library import opcheck

    ops = torch.ops.saner_kernels
    t = make_bucket_tensors(1024 + 3, torch.float32, seed=47, device=device)
    s, skip = scale_for(t, adaptive=adaptive), no_skip(device)
    e = torch.zeros_like(t["w"]) if adaptive else None
    hyper = UpdateHyper(lr=0.1, momentum=0.9, weight_decay=5e-4, alpha=0.5)
    opcheck(ops.grad_sq_norm.default, (t["g"], t["w"] if adaptive else None))
    opcheck(ops.perturb_.default, (t["w"].clone(), t["g"], s, skip), dict(e=e, g_sgd=t["g_sgd"].clone()))
    for stats, zero_grads, inv_scale in (
        (None, False, None),
        (torch.zeros(3, dtype=torch.int64, device=device), True, torch.tensor(0.5, device=device)),
    ):
        opcheck(
            ops.update_.default,
            (t["w"].clone(), t["g_sam"].clone(), t["g"].clone(), t["buf"].clone(), s, skip),
            dict(
                lr=hyper.lr,
                momentum=hyper.momentum,
                dampening=hyper.dampening,
                weight_decay=hyper.weight_decay,
                alpha=hyper.alpha,
                eps=hyper.eps,
                nesterov=hyper.nesterov,
                e=e,
                first_momentum_step=False,
                zero_grads=zero_grads,
                stats=stats,
                n_valid=1000,
                inv_scale=inv_scale,
            ),
        )
    opcheck(ops.restore_.default, (t["w"].clone(), s, skip), dict(g_sgd=t["g"], e=e))
    # the SAM family: the average's and GSAM's arguments, gsam_dot_norm, reweight_
    fsam = AverageHyper.fsam(sigma=1.0, lmbda=0.9)
    direction = dict(avg=t["avg"], dir_g=fsam.dir_g, dir_avg=fsam.dir_avg)
    opcheck(ops.grad_sq_norm.default, (t["g"], t["w"] if adaptive else None), direction)
    opcheck(ops.perturb_.default, (t["w"].clone(), t["g"], s, skip), dict(e=e, **direction))
    opcheck(
        ops.update_.default,
        (t["w"].clone(), t["g_sam"].clone(), t["g"].clone(), t["buf"].clone(), s, skip),
        dict(
            lr=0.1,
            momentum=0.9,
            dampening=0.0,
            weight_decay=5e-4,
            alpha=0.5,
            eps=EPS,
            nesterov=False,
            e=e,
            stats=torch.zeros(3, dtype=torch.int64, device=device),
            zero_grads=True,
            gsam_k=torch.tensor(0.7, device=device),
            gsam_alpha=0.4,
            avg_keep=fsam.keep,
            avg_take=fsam.take,
            **dict(direction, avg=t["avg"].clone()),
        ),
    )
    opcheck(ops.restore_.default, (t["w"].clone(), s, skip), dict(g_sgd=t["g"], e=e, **direction))
    opcheck(ops.gsam_dot_norm.default, (t["g"], t["g_sam"], t["w"] if adaptive else None))
    opcheck(
        ops.reweight_.default,
        (t["g_sam"].clone(), t["g"], skip),
        dict(alpha=0.5, eps=EPS, stats=torch.zeros(3, dtype=torch.int64, device=device), n_valid=1000),
    )
    # a group rule's flat fields
    rule = dict(has_rule=True, rule_regions=28, rule_bound=0.5, rule_in_sam=0.0, rule_in_sgd=1.0)
    opcheck(
        ops.reweight_.default,
        (t["g_sam"].clone(), t["g"], skip),
        dict(alpha=1.0, eps=EPS, stats=torch.zeros(3, dtype=torch.int64, device=device), n_valid=1000, **rule),
    )
    opcheck(
        ops.update_.default,
        (t["w"].clone(), t["g_sam"].clone(), t["g"].clone(), t["buf"].clone(), s, skip),
        dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, alpha=1.0, eps=EPS, nesterov=False, e=e, **rule),
    )


@pytest.mark.parametrize("adaptive", [False, True])
def test_opcheck(cpp, adaptive):
    _opcheck_all("cpu", adaptive)


@pytest.mark.gpu
@pytest.mark.parametrize("adaptive", [False, True])
def test_opcheck_cuda(adaptive):
    ok, reason = native.is_available(torch.device("cuda"))
    assert ok, reason
    _opcheck_all("cuda", adaptive)


# ------------------------------------------------------------------------------------ the group rule
def _reweight_twice_ruled(ops, t: dict, rule: str) -> dict:
    """reweight_ with a rule counted over a prefix, then again unscaling: g_sam and the counts."""
    x = clone_all(t)
    stats = torch.zeros(3, dtype=torch.int64)
    kw = dict(rule=RULES[rule])
    ops.reweight_(x["g_sam"], x["g"], no_skip(CPU), 0.5, EPS, stats=stats, n_valid=t["g"].numel() - 100, **kw)
    ops.reweight_(x["g_sam"], x["g"], no_skip(CPU), 0.5, EPS, inv_scale=torch.tensor(2.0**-3), **kw)
    return dict(g_sam=x["g_sam"], g=x["g"], stats=stats)


@pytest.mark.parametrize("isa", ["avx2"], indirect=True)
@pytest.mark.parametrize(*pairwise(switches=RULE_SWITCHES))
def test_avx2_fp32_group_rule_bit_identical_to_reference(cpp, isa, switches):
    """A group rule (every region, r == 0 and r == bound exactly, NaN ratios): every fp32 result exact on AVX2."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"torch runs its {torch.backends.cpu.get_cpu_capability()} kernels here")
    t = rule_edges(make_bucket_tensors(65536 + 77, torch.float32, seed=13, pad=100), switches["rule"], seed=5)
    for update_skip in (None, torch.ones(())):
        got = run_step(cpp, t, update_skip=update_skip, **switches)
        exp = run_step(reference, t, update_skip=update_skip, **switches)
        for name in exp:
            assert torch.equal(got[name], exp[name]), name
    got, exp = _reweight_twice_ruled(native, t, switches["rule"]), _reweight_twice_ruled(reference, t, switches["rule"])
    for name in exp:
        assert torch.equal(got[name], exp[name]), ("reweight_", name)


@pytest.mark.parametrize("isa", ["default"], indirect=True)
@pytest.mark.parametrize(*pairwise(switches=RULE_SWITCHES[::37], dtype=DTYPES + (torch.float64,)))
def test_baseline_isa_build_group_rule(cpp, isa, dtype, switches):
    """The baseline-ISA update and reweight_ loops with a group rule."""
    n = 65536 + 77
    t = rule_edges(make_bucket_tensors(n, dtype, seed=17, pad=n // 8), switches["rule"], seed=7)
    got, exp = run_step(cpp, t, **switches), run_step(reference, t, **switches)
    got_rw, exp_rw = (
        _reweight_twice_ruled(native, t, switches["rule"]),
        _reweight_twice_ruled(reference, t, switches["rule"]),
    )
    if dtype == torch.float64:  # compared in fp64: unfused fmadds differ from torch's by an fp64 ulp
        for name in exp:
            torch.testing.assert_close(got[name], exp[name], rtol=1e-12, atol=1e-12, equal_nan=True)
        for name in exp_rw:
            torch.testing.assert_close(got_rw[name], exp_rw[name], rtol=0, atol=0, equal_nan=True)
    else:
        assert_same_step(got, exp, dtype)
        assert_same_step(got_rw, exp_rw, dtype)


def test_cpp_front_end_checks_the_rule(cpp):
    """The C++ op itself refuses an empty region set and a non-finite bound or coefficient."""
    t = make_bucket_tensors(256, torch.float32, seed=3)
    skip, ops = no_skip(CPU), torch.ops.saner_kernels
    before = clone_all(t)
    for what, kw in {
        "rule_regions must be": dict(rule_regions=0),
        "rule_regions must be ": dict(rule_regions=32),
        "rule_bound must be finite": dict(rule_regions=4, rule_bound=float("inf")),
        "coefficients must be finite": dict(rule_regions=4, rule_out_sgd=float("nan")),
    }.items():
        with pytest.raises(RuntimeError, match=re.escape(what.strip())):
            ops.reweight_(t["g_sam"], t["g"], skip, alpha=0.5, eps=EPS, has_rule=True, **kw)
    for name in before:
        assert torch.equal(t[name], before[name]), f"{name} changed by a rejected call"
