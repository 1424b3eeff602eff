"""The native ops (csrc/, ``torch.ops.saner_kernels.*``) against ``reference``: the C++ CPU kernels
here, the CUDA C++ kernels in the ``gpu``-marked tests at the end.

CI builds the extension (``pip install --no-build-isolation -e .``) before pytest, so a missing or
stale CPU build is a failure here, not a skip.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from saner_kernels._source_hash import source_hash
from saner_kernels.ops import available_backends, native, reference, resolve_backend

from contract_cases import (DTYPES, EPS, LENGTHS, SWITCHES, assert_same_step, assert_step_skipped, clone_all,
                            make_bucket_tensors, run_step, scale_for, tolerances)

CPU = torch.device("cpu")
ODD_LENGTHS = (1, 7, 1000, 65573)  # not multiples of 128 / of the vector width: the tails


def _id(sw: dict) -> str:
    return "-".join(k for k, v in sw.items() if v is True) + f"-a{sw['alpha']}"


@pytest.fixture(scope="module")
def cpp():
    ok, reason = native.CPP.is_available(CPU)
    assert ok, f"the cpp backend must be available on CPU (CI builds it first): {reason}"
    return native.CPP


@pytest.fixture
def isa(cpp, request):
    """Run a test under one ISA build of the kernels, then restore the default choice."""
    ext = native.extension()
    before = ext.cpu_capability()
    if request.param == "avx2" and before != "avx2":
        pytest.skip("this CPU (or build) has no AVX2 kernels")
    ext.set_cpu_capability(request.param)
    yield request.param
    ext.set_cpu_capability(before)


# ------------------------------------------------------------------------------------ availability
def test_backends_report_availability(cpp):
    status = available_backends("cpu")
    assert status["cpp"] == True  # noqa: E712  (Availability compares to bools)
    assert resolve_backend("auto", CPU, torch.float32) is native.CPP
    assert resolve_backend("cpp", CPU, torch.float64) is native.CPP
    ok, reason = native.CUDA.is_available(CPU)
    assert not ok and "cuda" in reason
    ok, reason = native.CPP.is_available(torch.device("cuda")) if torch.cuda.is_available() else (False, "x")
    assert not ok
    if not torch.cuda.is_available():
        ok, reason = native.CUDA.is_available(torch.device("cuda"))
        assert not ok and reason
    assert cpp.NAME == "cpp" and native.CUDA.NAME == "cuda"
    for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        assert d in cpp.DTYPES


def test_kernels_registered(cpp):
    for op in ("grad_sq_norm", "perturb_", "update_"):
        for key in ("CPU", "Meta"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"saner_kernels::{op}", key), (op, key)


def test_stale_source_hash_is_detected(cpp, tmp_path):
    """A source change after the build must read as stale, naming the rebuild command."""
    csrc = tmp_path / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "a.cpp").write_text("int a;")
    h1 = source_hash(str(csrc))
    (csrc / "cpu" / "b.h").write_text("int b;")
    assert source_hash(str(csrc)) != h1
    repo_csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if os.path.isdir(repo_csrc):
        assert native.extension().SOURCE_HASH == source_hash(repo_csrc)
    assert "pip install --no-build-isolation" in native.BUILD_HINT


# ------------------------------------------------------------------------------------ against reference
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
@pytest.mark.parametrize("n", LENGTHS + ODD_LENGTHS)
def test_grad_sq_norm(cpp, n, dtype, adaptive):
    t = make_bucket_tensors(n, dtype, seed=n)
    w = t["w"] if adaptive else None
    got = cpp.grad_sq_norm(t["g"], w)
    expected = reference.grad_sq_norm(t["g"], w)  # fp64 sum of the fp32 squares
    assert got.dim() == 0 and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got.double(), expected.double(), rtol=rtol, atol=0.0)


@pytest.mark.parametrize("switches", SWITCHES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
def test_step_matches_reference(cpp, n, dtype, switches):
    t = make_bucket_tensors(n, dtype, seed=3, pad=n // 8)
    got = run_step(cpp, t, **switches)
    assert_same_step(got, run_step(reference, t, **switches), dtype)


@pytest.mark.parametrize("switches", SWITCHES[::3], ids=_id)
@pytest.mark.parametrize("n", (128, 65536) + ODD_LENGTHS)
def test_step_matches_reference_fp64(cpp, n, switches):
    t = make_bucket_tensors(n, torch.float64, seed=5)
    assert_same_step(run_step(cpp, t, **switches), run_step(reference, t, **switches), torch.float64)


@pytest.mark.parametrize("switches", SWITCHES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", ODD_LENGTHS)
def test_step_odd_lengths(cpp, n, dtype, switches):
    t = make_bucket_tensors(n, dtype, seed=11)
    assert_same_step(run_step(cpp, t, **switches), run_step(reference, t, **switches), dtype)


@pytest.mark.parametrize("isa", ["avx2"], indirect=True)
@pytest.mark.parametrize("switches", SWITCHES, ids=_id)
def test_fp32_bit_identical_to_reference(cpp, isa, switches):
    """With ATen's vector ISA (AVX2/AVX512: both fuse torch.add's alpha steps) the fp32 step is exact."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"torch runs its {torch.backends.cpu.get_cpu_capability()} kernels here")
    t = make_bucket_tensors(65536, torch.float32, seed=13, pad=100)
    got, exp = run_step(cpp, t, **switches), run_step(reference, t, **switches)
    for name in exp:
        assert torch.equal(got[name], exp[name]), name


@pytest.mark.parametrize("isa", ["default"], indirect=True)
@pytest.mark.parametrize("switches", SWITCHES[::5], ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1024, 65536, 1000))
def test_baseline_isa_build(cpp, isa, n, dtype, switches):
    """The baseline-ISA kernels (CPUs without AVX2, other architectures) within the contract tolerances."""
    t = make_bucket_tensors(n, dtype, seed=17)
    assert_same_step(run_step(cpp, t, **switches), run_step(reference, t, **switches), dtype)
    got = cpp.grad_sq_norm(t["g"], t["w"])
    torch.testing.assert_close(got.double(), reference.grad_sq_norm(t["g"], t["w"]).double(), rtol=1e-6, atol=0.0)


def test_baseline_isa_bit_identical_under_torch_default_isa(cpp):
    """Under ATEN_CPU_CAPABILITY=default torch and the baseline build round alike: exact fp32 steps."""
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from contract_cases import SWITCHES, make_bucket_tensors, run_step\n"
        "from saner_kernels.ops import native, reference\n"
        "assert native.extension().cpu_capability() == 'default'\n"
        "t = make_bucket_tensors(4096, torch.float32, seed=19, pad=64)\n"
        "for sw in SWITCHES:\n"
        "    a, r = run_step(native.CPP, t, **sw), run_step(reference, t, **sw)\n"
        "    bad = [k for k in r if not torch.equal(a[k], r[k])]\n"
        "    assert not bad, (sw, bad)\n"
        "print('ok')\n" % os.path.dirname(os.path.abspath(__file__))
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", SANER_KERNELS_CPU_CAPABILITY="default")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


def test_group_counts_count_padding_as_c(cpp):
    n, pad = 4096, 512
    t = make_bucket_tensors(n, torch.float32, seed=23, pad=pad)
    got = run_step(cpp, t, **SWITCHES[-1])
    exp = run_step(reference, t, **SWITCHES[-1])
    assert torch.equal(got["stats"], exp["stats"])
    a, b, c = got["stats"].tolist()
    assert a > 0 and b > 0 and c >= pad and a + b + c == n


def test_stats_accumulate(cpp):
    t = make_bucket_tensors(1024, torch.float32, seed=29)
    stats = torch.tensor([5, 6, 7], dtype=torch.int64)
    s = scale_for(t)
    cpp.update_(t["w"], t["g_sam"], t["g"], t["buf"], s, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
                alpha=1.0, eps=EPS, nesterov=False, first_momentum_step=False, stats=stats)
    ref = torch.tensor([5, 6, 7], dtype=torch.int64)
    t2 = make_bucket_tensors(1024, torch.float32, seed=29)
    reference.update_(t2["w"], t2["g_sam"], t2["g"], t2["buf"], s, lr=0.1, momentum=0.9, dampening=0.0,
                      weight_decay=0.0, alpha=1.0, eps=EPS, nesterov=False, first_momentum_step=False, stats=ref)
    assert torch.equal(stats, ref) and stats.sum().item() == 18 + 1024


def test_no_momentum_no_weight_decay(cpp):
    t = make_bucket_tensors(1024, torch.float32, seed=31)
    kwargs = dict(lr=0.05, momentum=0.0, dampening=0.0, weight_decay=0.0, alpha=0.5, eps=EPS, nesterov=False,
                  first_momentum_step=False)
    outs = []
    for ops in (cpp, reference):
        x = clone_all(t)
        ops.update_(x["w"], x["g_sam"], x["g"], None, scale_for(t), **kwargs)
        outs.append(x["w"])
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16), ids=str)
def test_fp64_scale(cpp, dtype):
    """The optimizer hands fp64 buckets an fp64 scale; fp32 tensors round it to fp32 like torch does."""
    t = make_bucket_tensors(4096 + 3, dtype, seed=53)
    for sw in SWITCHES[::4]:
        s = scale_for(t, adaptive=sw["adaptive"]).double() * (1 + 1e-12)
        assert_same_step(run_step(cpp, t, scale=s, **sw), run_step(reference, t, scale=s, **sw), dtype)


def test_dampening(cpp):
    t = make_bucket_tensors(1024, torch.float32, seed=37)
    for sw in SWITCHES[:8]:
        got = run_step(cpp, t, dampening=0.3, **sw)
        assert_same_step(got, run_step(reference, t, dampening=0.3, **sw), torch.float32)


# ------------------------------------------------------------------------------------ skip, determinism
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_scale_writes_nothing(cpp, bad, dtype):
    t = make_bucket_tensors(65536 + 5, dtype, seed=41)
    assert_step_skipped(run_step(cpp, t, scale=torch.tensor(bad), **SWITCHES[-1]), t)  # adaptive, momentum, stats


def test_deterministic_across_runs_and_threads(cpp):
    t = make_bucket_tensors(300032 + 77, torch.float32, seed=43)
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in sorted({1, 2, threads}):
            torch.set_num_threads(n_threads)
            for _ in range(2):
                results.append((cpp.grad_sq_norm(t["g"]), cpp.grad_sq_norm(t["g"], t["w"]),
                                run_step(cpp, t, **SWITCHES[-1])))
    finally:
        torch.set_num_threads(threads)
    first = results[0]
    for other in results[1:]:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
        assert all(torch.equal(first[2][k], other[2][k]) for k in first[2])


def test_scale_stays_a_tensor_and_inputs_are_checked(cpp):
    t = make_bucket_tensors(256, torch.float32)
    s = scale_for(t)
    with pytest.raises(RuntimeError, match="dtype"):
        cpp.perturb_(t["w"], t["g"].double(), t["g_sgd"], s)
    with pytest.raises(RuntimeError, match="elements"):
        cpp.perturb_(t["w"], t["g"][:128], t["g_sgd"], s)
    with pytest.raises(RuntimeError, match="scale"):
        cpp.perturb_(t["w"], t["g"], t["g_sgd"], s.half())
    with pytest.raises(RuntimeError, match="stats"):
        cpp.update_(t["w"], t["g_sam"], t["g_sgd"], t["buf"], s, lr=0.1, momentum=0.9, dampening=0.0,
                    weight_decay=0.0, alpha=0.5, eps=EPS, nesterov=False, first_momentum_step=False,
                    stats=torch.zeros(3))


# ------------------------------------------------------------------------------------ opcheck
def _opcheck_args(adaptive: bool):
    t = make_bucket_tensors(1024, torch.float32, seed=47)
    s = scale_for(t, adaptive=adaptive)
    e = torch.zeros(1024) if adaptive else None
    return t, s, e


@pytest.mark.parametrize("adaptive", [False, True])
def test_opcheck(cpp, adaptive):
    from torch.library import opcheck

    t, s, e = _opcheck_args(adaptive)
    opcheck(torch.ops.saner_kernels.grad_sq_norm.default, (t["g"], t["w"] if adaptive else None))
    opcheck(torch.ops.saner_kernels.perturb_.default, (t["w"].clone(), t["g"], t["g_sgd"].clone(), s, e))
    for stats in (None, torch.zeros(3, dtype=torch.int64)):
        opcheck(torch.ops.saner_kernels.update_.default,
                (t["w"].clone(), t["g_sam"], t["g"], t["buf"].clone(), s),
                dict(e=e, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, alpha=0.5, eps=EPS,
                     nesterov=False, first_momentum_step=False, stats=stats))


# ------------------------------------------------------------------------------------ CUDA C++ kernels
@pytest.fixture(scope="module")
def cuda_ops():
    ok, reason = native.CUDA.is_available(torch.device("cuda"))
    assert ok, reason
    return native.CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
@pytest.mark.parametrize("n", LENGTHS + ODD_LENGTHS + (1 << 22,))
def test_grad_sq_norm_cuda(cuda_ops, n, dtype, adaptive):
    t = make_bucket_tensors(n, dtype, seed=n, device="cuda")
    w = t["w"] if adaptive else None
    got = cuda_ops.grad_sq_norm(t["g"], w)
    torch.testing.assert_close(got.double(), reference.grad_sq_norm(t["g"], w).double(),
                               rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0.0)
    assert torch.equal(got, cuda_ops.grad_sq_norm(t["g"], w)), "two runs differ"


@pytest.mark.gpu
@pytest.mark.parametrize("switches", SWITCHES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
@pytest.mark.parametrize("n", LENGTHS + (1000,))
def test_step_cuda(cuda_ops, n, dtype, switches):
    t = make_bucket_tensors(n, dtype, seed=7, device="cuda", pad=n // 8)
    got = run_step(cuda_ops, t, **switches)
    assert_same_step(got, run_step(reference, t, **switches), dtype)
    again = run_step(cuda_ops, t, **switches)
    assert all(torch.equal(got[k], again[k]) for k in got), "two runs differ"


@pytest.mark.gpu
def test_step_cuda_unaligned(cuda_ops):
    """Views that start off a 16-byte boundary take the element-wise path."""
    t = make_bucket_tensors(4097, torch.float32, seed=9, device="cuda")
    t = {k: v[1:] for k, v in t.items()}
    for sw in SWITCHES:
        assert_same_step(run_step(cuda_ops, t, **sw), run_step(reference, t, **sw), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_scale_cuda(cuda_ops, bad):
    t = make_bucket_tensors(65536, device="cuda")
    assert_step_skipped(run_step(cuda_ops, t, scale=torch.tensor(bad, device="cuda"), **SWITCHES[-1]), t)


@pytest.mark.gpu
def test_opcheck_cuda(cuda_ops):
    from torch.library import opcheck

    t = make_bucket_tensors(1024, torch.float32, seed=47, device="cuda")
    s = scale_for(t)
    opcheck(torch.ops.saner_kernels.grad_sq_norm.default, (t["g"], None))
    opcheck(torch.ops.saner_kernels.perturb_.default, (t["w"].clone(), t["g"], t["g_sgd"].clone(), s, None))
    opcheck(torch.ops.saner_kernels.update_.default, (t["w"].clone(), t["g_sam"], t["g"], t["buf"].clone(), s),
            dict(e=None, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, alpha=0.5, eps=EPS,
                 nesterov=False, first_momentum_step=False, stats=torch.zeros(3, dtype=torch.int64, device="cuda")))
