#!/usr/bin/env bash
# Torch compatibility check: the C++ build and the CPU test suite against another torch release than the
# main venv's (torch 2.13.0 CPU), to prove the supported range: the oldest supported release (2.11, which
# the GPU test environment runs) and the newest one on the index.
#
#   .ci/torch_compat.sh VERSION [pytest args...]
#
# VERSION: X.Y.Z (exact), X.Y (the newest X.Y.z on the index) or "newest" (the newest release on the
# index, past this machine's local cap in /etc/xdg/pip/constraints.txt).
#
# In <repo>/.venv-torch-X.Y.Z (reused when it already has that torch and this script's dependency list)
# torch==X.Y.Z is installed the ordinary way: PyPI has no CPU-only Linux x86_64 wheel, so this is the CUDA
# build with its pinned nvidia-* and triton wheels (pip takes those that lie on local disk from there; the
# rest, 1.2 GB (2.11) to 2.0 GB (2.15) besides torch's 0.5 GB, comes from PyPI; `import torch` does not
# work without them even with no GPU). Then the extension is built from a clean copy of the sources in a temporary directory,
# as `make test` builds it in the checkout: `pip install --no-build-isolation --no-deps -e .` (the CPU op
# only unless SANER_KERNELS_CUDA=1), in place, because tests/test_native_ops.py inspects the in-tree build
# (build/native/libsaner_kernels_avx2.a, saner_kernels/_C*.so); SANER_COMPAT_INSTALL=wheel installs a
# non-editable one instead and removes the copy's saner_kernels/ so that the tests import the installed
# package. The test suite then runs from that copy: `pytest tests -q`, then the Triton-interpreter process
# `TRITON_INTERPRET=1 pytest tests -q -m interpreter` (tests/conftest.py). pytest args given replace the
# default target `tests` in both processes. Exits non-zero on any failure, or when no test ran at all
# (with no pytest args given, each of the two processes must run tests).
#
# Env: SANER_COMPAT_VENV (default <repo>/.venv-torch-X.Y.Z), PYTHON (default python3), MAX_JOBS (default 2),
# SANER_COMPAT_TRITON (default 3.6.0: installed only when the torch build pins no triton, e.g. a +cpu wheel),
# SANER_KERNELS_CUDA (default 0: the CPU op only; 1 also compiles and links the CUDA op: CUDA_HOME, default
# /usr/local/cuda, TORCH_CUDA_ARCH_LIST, default "8.0;9.0"),
# SANER_COMPAT_REF (a git rev: test that commit's sources instead of the working tree's),
# SANER_COMPAT_INSTALL (editable, the default, or wheel).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
REQUEST="${1:?usage: $0 VERSION [pytest args...]   (VERSION: X.Y.Z, X.Y or newest)}"
shift
T0=$(date +%s)
TAG="torch-compat $REQUEST"
say() { echo "[$TAG +$(( $(date +%s) - T0 ))s] $*"; }
TIMES=()
stage_start() { S0=$(date +%s); }
stage_end() { TIMES+=("$1 $(( $(date +%s) - S0 ))s"); }

export MAX_JOBS="${MAX_JOBS:-2}"
export SANER_KERNELS_CUDA="${SANER_KERNELS_CUDA:-0}"
if [ "$SANER_KERNELS_CUDA" = 1 ]; then
  # torch's guess from nvcc on PATH (/usr/local/bin/nvcc -> /usr/local) finds no libcudart to link
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
fi
INSTALL="${SANER_COMPAT_INSTALL:-editable}"
case "$INSTALL" in editable|wheel) ;; *) echo "SANER_COMPAT_INSTALL must be editable or wheel" >&2; exit 2 ;; esac
# Test and build dependencies; triton comes with torch (each torch pins its own: 2.11 -> 3.6.0,
# 2.15 -> 3.9.x). scikit-learn and matplotlib: tests/test_train_*.py skip without them; lightning and
# accelerate: the client tests (the pins of the Makefile).
DEPS=(setuptools wheel pybind11 ninja numpy pytest scikit-learn matplotlib lightning==2.6.6 accelerate==1.16.0)
TRITON_FALLBACK="${SANER_COMPAT_TRITON:-3.6.0}"  # for a torch that pins none (the Makefile's version)

# ------------------------------------------------------------------ which torch
case "$REQUEST" in
  [0-9]*.[0-9]*.[0-9]*) VERSION="$REQUEST" ;;
  newest|[0-9]*.[0-9]*)
    # `pip index versions` applies no constraints: it lists the index's releases, newest first.
    AVAILABLE="$(PIP_CONSTRAINT=/dev/null "$PYTHON" -m pip index versions torch 2>/dev/null \
      | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' || true)"
    [ -n "$AVAILABLE" ] || { echo "pip index versions torch listed nothing (no index reachable?)" >&2; exit 1; }
    if [ "$REQUEST" = newest ]; then
      VERSION="$(echo "$AVAILABLE" | sed -n 1p)"
    else
      VERSION="$(echo "$AVAILABLE" | grep -E "^${REQUEST//./\\.}\.[0-9]+$" | sed -n 1p || true)"
      [ -n "$VERSION" ] || { echo "no torch $REQUEST.x on the index (has: $(echo $AVAILABLE))" >&2; exit 1; }
    fi ;;
  *) echo "VERSION must be X.Y.Z, X.Y or newest, not '$REQUEST'" >&2; exit 2 ;;
esac
TAG="torch-compat $VERSION"
VENV="${SANER_COMPAT_VENV:-$ROOT/.venv-torch-$VERSION}"
STAMP="$VENV/.torch-compat-deps"
WANT_STAMP="torch==$VERSION ${DEPS[*]} (triton==$TRITON_FALLBACK if torch pins none)"

# ------------------------------------------------------------------ venv
venv_ok() {
  [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT_STAMP" ] &&
    "$VENV/bin/python" - "$VERSION" <<'PY' 2>/dev/null
import sys, torch, triton, setuptools, wheel, pybind11, ninja, numpy, pytest, sklearn, matplotlib  # noqa: F401
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
}
# pip, without the notes about this machine's local file indexes lacking a package
pip_() { "$VENV/bin/pip" "$@" 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }; return "${PIPESTATUS[0]}"; }
stage_start
if venv_ok; then
  say "reusing $VENV"
  stage_end "venv(reused)"
else
  say "creating $VENV (torch==$VERSION with its pinned CUDA libraries and triton; ${DEPS[*]})"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # The local constraint file caps torch at what lies on this machine's disk; the version is pinned here.
  # No pip cache: the wheels (2 GB for 2.15) would stay on disk beside the venv.
  PIP_CONSTRAINT=/dev/null pip_ install -q -U --no-cache-dir --progress-bar off "torch==$VERSION" "${DEPS[@]}"
  # A CPU build of torch (2.13.0+cpu from local disk) brings no triton: the Makefile's pin then.
  "$VENV/bin/python" -c "import triton" 2>/dev/null || pip_ install -q --progress-bar off "triton==$TRITON_FALLBACK"
  echo "$WANT_STAMP" >"$STAMP"
  venv_ok || { echo "$VENV: torch $VERSION with ${DEPS[*]} did not install or does not import" >&2; exit 1; }
  stage_end "venv+downloads"
fi
say "$("$VENV/bin/python" - <<'PY'
import sys, importlib.metadata as md
import torch, numpy, setuptools
import triton
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}, "
      f"numpy {numpy.__version__}, setuptools {setuptools.__version__}, pytest {md.version('pytest')}")
PY
)"

# ------------------------------------------------------------------ build
# A clean copy of the sources: the checkout's tracked and new, not ignored files (no build/, no .so), or
# with SANER_COMPAT_REF=<git rev> that commit's.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$WORK/src"
SRC_PATHS=(setup.py pyproject.toml csrc saner_kernels tests)
if [ -n "${SANER_COMPAT_REF:-}" ]; then
  say "sources: git archive $SANER_COMPAT_REF ($(git -C "$ROOT" rev-parse --short "$SANER_COMPAT_REF"))"
  git -C "$ROOT" archive --format=tar "$SANER_COMPAT_REF" -- "${SRC_PATHS[@]}" | tar xf - -C "$WORK/src"
else
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- "${SRC_PATHS[@]}" \
     | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
     | tar cf - --null -T -) | tar xf - -C "$WORK/src"
fi
stage_start
say "building (SANER_KERNELS_CUDA=$SANER_KERNELS_CUDA, MAX_JOBS=$MAX_JOBS, $INSTALL install)"
"$VENV/bin/pip" uninstall -q -y saner_kernels >/dev/null 2>&1 || true
BUILD_LOG="$VENV/build.log"  # kept for reading after the run
if [ "$INSTALL" = editable ]; then TARGET=(-e .); else TARGET=(.); fi
if ! (cd "$WORK/src" && "$VENV/bin/pip" install -v --no-build-isolation --no-deps "${TARGET[@]}" >"$BUILD_LOG" 2>&1); then
  # The compiler's errors, then the end of the log (pip's traceback).
  grep -E -B2 -A6 'error:|error [A-Z]|FAILED:' "$BUILD_LOG" | grep -v '^\s*$' | sed -n '1,80p' >&2 || true
  echo "..." >&2
  tail -15 "$BUILD_LOG" >&2
  echo "build against torch $VERSION failed (full log: $BUILD_LOG)" >&2
  exit 1
fi
stage_end build
# Compiler warnings in the project's own sources (torch's headers warn too: not shown).
OWN_WARNINGS="$(grep -F "$WORK/src/csrc/" "$BUILD_LOG" | grep 'warning:' | sed "s|$WORK/src/||; s/^ *//" | sort -u || true)"
say "built ($(printf '%s' "$OWN_WARNINGS" | grep -c . || true) warnings in csrc/; log: $BUILD_LOG)"
[ -z "$OWN_WARNINGS" ] || printf '%s\n' "$OWN_WARNINGS" | sed -n '1,30s/^/  /p'

if [ "$INSTALL" = wheel ]; then
  # The tests must import the installed package: drop the copy's (tests/, csrc/ and build/ stay).
  rm -rf "$WORK/src/saner_kernels"
  EXPECT="$VENV/lib/"
else
  EXPECT="$WORK/src/saner_kernels/"
fi
cd "$WORK/src"
"$VENV/bin/python" - "$EXPECT" <<'PY'
import os
import sys
import torch
import saner_kernels
from saner_kernels import _C

assert saner_kernels.__file__.startswith(sys.argv[1]), (saner_kernels.__file__, "expected under", sys.argv[1])
assert _C.__file__.startswith(sys.argv[1]), _C.__file__
if os.environ["SANER_KERNELS_CUDA"] == "1":  # loaded: no undefined symbols; and the CUDA kernels are in
    assert getattr(_C, "WITH_CUDA", True), "the extension was built without its CUDA kernels"
    assert torch.ops.saner_kernels.perturb_.default.has_kernel_for_dispatch_key("CUDA"), "no CUDA kernel"
print("  package:", saner_kernels.__file__, "| extension:", _C.__file__, "| torch:", torch.__file__)
PY

# ------------------------------------------------------------------ tests
if [ $# -gt 0 ]; then ARGS=("$@"); else ARGS=(tests); fi
FAILED=()
run_pytest() {  # name, env..., -- pytest args
  local name="$1"; shift
  local rc=0
  stage_start
  say "pytest ($name): $*"
  env "$@" || rc=$?
  stage_end "$name"
  return $rc
}
rc_main=0; rc_interp=0
run_pytest tests "$VENV/bin/python" -m pytest -q "${ARGS[@]}" || rc_main=$?
run_pytest interpreter TRITON_INTERPRET=1 "$VENV/bin/python" -m pytest -q -m interpreter "${ARGS[@]}" || rc_interp=$?
# pytest exits 5 when no test ran: a failure, except for one of the two processes when pytest args narrowed
# the run to tests of the other kind.
for pair in "tests:$rc_main" "interpreter:$rc_interp"; do
  name="${pair%%:*}"; rc="${pair##*:}"
  if [ "$rc" = 5 ] && [ $# -gt 0 ] && [ "$rc_main" != "$rc_interp" ]; then
    say "$name: no test selected by the given pytest args"
  elif [ "$rc" = 5 ]; then
    FAILED+=("$name (pytest exit 5: no tests ran)")
  elif [ "$rc" != 0 ]; then
    FAILED+=("$name (pytest exit $rc)")
  fi
done

say "stages: ${TIMES[*]}; total $(( $(date +%s) - T0 ))s"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "[$TAG] FAILED: ${FAILED[*]}" >&2
  exit 1
fi
say "OK: torch $VERSION builds the extension and passes the test suite"
