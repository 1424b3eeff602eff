#!/usr/bin/env bash
# CUDA build check: the build a GPU user runs, proven on this GPU-less machine.
#
# In a second virtualenv with a CUDA build of torch (torch==2.14.1 -> 2.14.1+cu130 from local disk; the main
# test venv keeps the light CPU torch), `pip install --no-build-isolation .` must compile and link the CUDA
# op for sm_80 and sm_90; then the installed module must load (undefined symbols show up only there), have
# its six ops registered for CPU, CUDA and Meta, give the reference's CPU results (contract v3, every
# switch and SAM-family variant, gsam_dot_norm, reweight_), and carry sm_80/sm_90 code.
# Exits non-zero on any failure.
#
# Env: SANER_CUDA_VENV (default <repo>/.venv-cuda, created with torch 2.14.1+cu130; any venv that already has
# a CUDA build of torch with setuptools, ninja, pybind11 and numpy is reused as it is: .ci/run passes the
# torch 2.11 compat venv so that CI holds one multi-GB CUDA venv at a time), CUDA_HOME
# (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS (default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${SANER_CUDA_VENV:-$ROOT/.venv-cuda}")"  # absolute: the build runs elsewhere
PYTHON="${PYTHON:-python3}"
T0=$(date +%s)
say() { echo "[cuda-build-check +$(( $(date +%s) - T0 ))s] $*"; }

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export SANER_KERNELS_CUDA=1  # fail instead of quietly building the CPU op only
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2; exit 1; }

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import sys, torch, setuptools, ninja, pybind11, numpy  # noqa: F401
sys.exit(0 if torch.version.cuda else 1)
PY
}
if venv_ok; then
  say "reusing $VENV"
else
  say "creating $VENV (torch==2.14.1, CUDA build)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 setuptools ninja pybind11 numpy
  venv_ok || { echo "$VENV: torch 2.14.1 with CUDA did not install" >&2; exit 1; }
fi
say "$("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'), nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"

# Build from a clean copy of the sources: never touch the checkout's build/ or its in-place CPU extension.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src"
(cd "$ROOT" && tar cf - --exclude='*.so' --exclude='__pycache__' \
   setup.py pyproject.toml csrc saner_kernels tests/contract_cases.py) | tar xf - -C "$WORK/src"
say "building (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
if ! (cd "$WORK/src" && "$VENV/bin/pip" install -q --no-build-isolation --no-deps . >"$WORK/build.log" 2>&1); then
  tail -60 "$WORK/build.log" >&2
  echo "CUDA build failed" >&2
  exit 1
fi
say "built"

# Load the installed module from outside the source tree and check it.
cd "$WORK"
"$VENV/bin/python" - "$WORK/src/tests" <<'PY'
import sys
import torch

sys.path.insert(0, sys.argv[1])  # contract_cases only; saner_kernels comes from site-packages
import saner_kernels
from saner_kernels import _C
from saner_kernels.ops import native, reference, resolve_backend
import contract_cases as cc

OPS = ("grad_sq_norm", "perturb_", "update_", "restore_", "gsam_dot_norm", "reweight_")
assert "site-packages" in saner_kernels.__file__, saner_kernels.__file__
assert _C.WITH_CUDA, "the extension was built without its CUDA kernels"
for op in OPS:
    overload = getattr(torch.ops.saner_kernels, op).default
    for key in ("CPU", "CUDA", "Meta"):
        assert overload.has_kernel_for_dispatch_key(key), (op, key)
ok, reason = native.is_available("cpu")
assert ok, reason
if not torch.cuda.is_available():
    ok, reason = native.is_available("cuda")
    assert not ok and reason == "CUDA is not available", reason
cpp = resolve_backend("cpp", "cpu")
bad = []
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    t = cc.make_bucket_tensors(4096 + 5, dtype, seed=1, pad=64)
    for sw in cc.SWITCHES + cc.VARIANT_SWITCHES:
        try:
            got = cc.run_step(cpp, t, n_valid=4096 + 5 - 64, **sw)
            cc.assert_same_step(got, cc.run_step(reference, t, n_valid=4096 + 5 - 64, **sw), dtype)
        except AssertionError as exc:
            bad.append((dtype, sw, str(exc)[:200]))
    got, exp = cpp.grad_sq_norm(t["g"], t["w"]), reference.grad_sq_norm(t["g"], t["w"])
    torch.testing.assert_close(got.double(), exp.double(), rtol=1e-6, atol=0.0)
    # the contract-v3 ops, through the native module itself
    got, exp = native.gsam_dot_norm(t["g"], t["g_sam"], t["w"]), reference.gsam_dot_norm(t["g"], t["g_sam"], t["w"])
    torch.testing.assert_close(got[1].double(), exp[1].double(), rtol=1e-5, atol=0.0)
    for alpha in (0.5, 1.0):
        x, y = cc.clone_all(t), cc.clone_all(t)
        stats = [torch.zeros(3, dtype=torch.int64) for _ in range(2)]
        native.reweight_(x["g_sam"], x["g"], cc.no_skip("cpu"), alpha, cc.EPS, stats=stats[0])
        reference.reweight_(y["g_sam"], y["g"], cc.no_skip("cpu"), alpha, cc.EPS, stats=stats[1])
        cc.assert_same_step(dict(g_sam=x["g_sam"], stats=stats[0]), dict(g_sam=y["g_sam"], stats=stats[1]), dtype)
assert not bad, bad
print("module", _C.__file__)
print("ops", ", ".join(OPS), "registered for CPU, CUDA and Meta; CPU steps match the reference; cpu isa:",
      _C.cpu_capability(), "of", _C.CPU_CAPABILITIES)
with open("so_path", "w") as f:
    f.write(_C.__file__)
PY

CUOBJDUMP=""
for d in "$VENV" "$ROOT/.venv"; do
  c="$(ls "$d"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1 || true)"
  [ -n "$c" ] && { CUOBJDUMP="$c"; break; }
done
[ -z "$CUOBJDUMP" ] && [ -x "$CUDA_HOME/bin/cuobjdump" ] && CUOBJDUMP="$CUDA_HOME/bin/cuobjdump"
[ -n "$CUOBJDUMP" ] || { echo "no cuobjdump found (triton's package ships one)" >&2; exit 1; }
ELF="$("$CUOBJDUMP" --list-elf "$(cat so_path)")"
echo "$ELF" | sed 's/^/  /'
for arch in sm_80 sm_90; do
  echo "$ELF" | grep -q "$arch" || { echo "no $arch code in the built library" >&2; exit 1; }
done
say "OK: CUDA op built, loads, registered for CPU, CUDA and Meta, sm_80 + sm_90 code present"
