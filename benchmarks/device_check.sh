#!/usr/bin/env bash
# One-shot GPU check for an H200 machine (torch 2.11 + CUDA 13, Triton 3.6, no network, 16 cores): print the
# toolchain, build and install the package, run the GPU-marked tests in parallel, run the benchmark table for
# WRN-28-10 and the large bucket, run every kernel op of both CUDA backends under compute-sanitizer's memcheck,
# write everything into OUTDIR and print a short summary last.
#
#   bash benchmarks/device_check.sh [OUTDIR]              # on the GPU machine (OUTDIR: bench-results/)
#   DRY_RUN=1 bash benchmarks/device_check.sh [OUTDIR]     # anywhere, no GPU: the same logic on the CPU
#   bash benchmarks/device_check.sh --dry-run [OUTDIR]     # the same
#
# Stages, each under `timeout` with its own limit (printed as it starts), inside a total budget TOTAL_S
# (default 465 s, so the script ends before 8 minutes even when every stage runs to its limit):
#   env 20 s, install 120 s, backends 20 s, tests 120 s, bench 100 s, sanitize 70 s (450 s; 15 s kept for the
#   summary). The GPU tests (about 2,600) run in 8 processes with a 60 s limit per test when pytest-xdist and
#   pytest-timeout are installed, in one process without a per-test limit when they are not.
# Dry mode prints the install command instead of running it, runs the GPU-marked tests (they skip without a
# GPU), the table with --device cpu --quick on a small model, and the sanitizer script's logic with the
# reference and C++ CPU backends and without compute-sanitizer (benchmarks/test_bench_device_check.py).
#
# Environment: PYTHON (default python3), TESTS (test folder, default tests), TOTAL_S (total budget, s),
# MODELS (default "wrn-28-10 bucket"), BENCH_ARGS (extra arguments for python -m benchmarks.run), CUDA_HOME
# (default /usr/local/cuda when it exists). At most 7 files land in OUTDIR: device_check.log, summary.txt,
# table.md, results.csv, results.json, train.csv, results.png. Exit status: 0 when no stage failed.
set -u

DRY=${DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUTDIR=${1:-bench-results}
PYTHON=${PYTHON:-python3}
TESTS=${TESTS:-tests}
TOTAL_S=${TOTAL_S:-465}
MODELS=${MODELS:-"wrn-28-10 bucket"}
BENCH_ARGS=${BENCH_ARGS:-}
RESERVE_S=15 # kept for the summary
STAGES="env install backends tests bench sanitize"
declare -A LIMIT=([env]=20 [install]=120 [backends]=20 [tests]=120 [bench]=100 [sanitize]=70) # seconds
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -n "${CUDA_HOME:-}" ]; then export PATH="$PATH:$CUDA_HOME/bin"; fi

mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd) # relative to the caller's folder, then work from the repository root
cd "$(dirname "$0")/.." || exit 2
LOG="$OUTDIR/device_check.log"
SUMMARY="$OUTDIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
START=$(date +%s)
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }
note() { echo "$*" >>"$SUMMARY"; }

# stage NAME COMMAND: run COMMAND under timeout (the stage's LIMIT, or what is left of TOTAL_S less the
# reserve), log its output, show its tail, record its status.
stage() {
  local name=$1 cmd=$2 cap=${LIMIT[$1]}
  local shown=${cmd%%$'\n'*} # the first line of a multi-line command
  local left=$((TOTAL_S - ($(date +%s) - START) - RESERVE_S))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 5 ]; then
    say "== $name: not run, the total budget of ${TOTAL_S}s is spent"
    note "$(printf '%-10s %-8s %s' "$name" "NOTRUN" "budget spent")"
    FAILED=1
    return
  fi
  say "== $name (limit ${limit}s): $shown"
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" >"$OUTDIR/.stage.log" 2>&1
  rc=$?
  local secs=$(($(date +%s) - t0))
  cat "$OUTDIR/.stage.log" >>"$LOG"
  grep -v '^USDT' "$OUTDIR/.stage.log" | tail -n 15 | sed 's/^/   | /'
  rm -f "$OUTDIR/.stage.log"
  local status=ok
  case "$name:$rc" in
    *:0) status=ok ;;
    tests:5)
      status=ok
      rc="5 (no tests selected)"
      ;;
    *:124 | *:137)
      status=TIMEOUT
      FAILED=1
      ;;
    *)
      status=FAILED
      FAILED=1
      ;;
  esac
  say "== $name: $status (rc $rc, ${secs}s of ${limit}s)"
  note "$(printf '%-10s %-8s rc=%-4s %4ss/%-4s %s' "$name" "$status" "${rc%% *}" "$secs" "${limit}s" "${shown:0:100}")"
}

skip() {
  say "== $1: skipped ($2)"
  note "$(printf '%-10s %-8s %s' "$1" "SKIPPED" "$2")"
}

MODE="on $(uname -n)"
[ "$DRY" = "1" ] && MODE="DRY RUN (CPU, no install)"
say "# device_check.sh $MODE, $(date -Iseconds), output in $OUTDIR"
say "# stage limits (s): $(for n in $STAGES; do printf '%s %s, ' "$n" "${LIMIT[$n]}"; done)total budget ${TOTAL_S}"

# 1. environment, first: what the rest runs with
ENV_PY="import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
try:
    import triton; print('triton', triton.__version__)
except Exception as exc: print('triton: not importable:', exc)
if torch.cuda.is_available(): print('gpu', torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for plugin in ('xdist', 'pytest_timeout'):
    try:
        __import__(plugin); print(plugin, 'yes')
    except ImportError: print(plugin, 'missing')"
ENV_CMD="echo CUDA_HOME=\${CUDA_HOME:-unset}; (nvcc --version | tail -n 2) || echo 'nvcc: not found'; \
echo compute-sanitizer: \$(command -v compute-sanitizer || echo 'not found'); \
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
|| echo 'nvidia-smi: not available'); $PYTHON -c \"$ENV_PY\"; echo cores \$(nproc)"
stage env "$ENV_CMD"

# 2. build and install (no network there: no build isolation, no dependencies, no index); CUDA is required
INSTALL="SANER_KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=\$(nproc) $PYTHON -m pip install --no-build-isolation --no-deps --no-index -v -e ."
if [ "$DRY" = "1" ]; then
  skip install "dry run; on the GPU machine: $INSTALL"
else
  stage install "$INSTALL"
fi

# 3. which backends can run; on the GPU both CUDA backends must
DEV=cuda
NEEDED="triton cuda_cpp"
if [ "$DRY" = "1" ]; then
  DEV=cpu
  NEEDED="reference"
fi
BACKENDS_PY="import sys, saner_kernels as sk
status = sk.available_backends('$DEV')
for k, v in status.items(): print(f'{k:10s} {v!r}')
sys.exit(0 if all(status[b] for b in '$NEEDED'.split()) else 1)"
stage backends "$PYTHON -c \"$BACKENDS_PY\""

# 4. the GPU-marked tests, 8 processes and a per-test timeout when the plugins are there (on the CPU they skip)
PYTEST="$PYTHON -m pytest -m gpu -q -p no:cacheprovider -rs"
if $PYTHON -c "import xdist" 2>/dev/null; then PYTEST="$PYTEST -n 8"; else say "# pytest-xdist missing: tests run in one process"; fi
if $PYTHON -c "import pytest_timeout" 2>/dev/null; then PYTEST="$PYTEST --timeout 60"; else say "# pytest-timeout missing: no per-test timeout"; fi
stage tests "$PYTEST $TESTS"

# 5. the benchmark table
if [ "$DRY" = "1" ]; then
  BENCH="$PYTHON -m benchmarks.run --device cpu --quick --models wrn-16-2 --train-model wrn-16-2 --train-batch 4 --out $OUTDIR $BENCH_ARGS"
else
  BENCH="$PYTHON -m benchmarks.run --device cuda --models $MODELS --out $OUTDIR $BENCH_ARGS"
fi
stage bench "$BENCH"

# 6. every op of both CUDA backends under memcheck; without the caching allocator each tensor is its own
# allocation, so a read or write past a tensor's end is out of bounds for memcheck
if [ "$DRY" = "1" ]; then
  stage sanitize "$PYTHON -m benchmarks.sanitize_ops --device cpu"
elif command -v compute-sanitizer >/dev/null; then
  stage sanitize "PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
--print-limit 20 --target-processes application-only $PYTHON -m benchmarks.sanitize_ops --device cuda"
else
  skip sanitize "compute-sanitizer not found (CUDA_HOME=${CUDA_HOME:-unset})"
  FAILED=1
fi

# summary, last
{
  echo
  echo "==================== device_check summary ($(($(date +%s) - START))s, $([ "$DRY" = "1" ] && echo 'DRY RUN, CPU' || echo GPU)) ===================="
  cat "$SUMMARY"
  if [ -f "$OUTDIR/table.md" ]; then
    echo
    grep -v '^<!--' "$OUTDIR/table.md"
  else
    echo "no benchmark table was written"
  fi
  echo "files: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
} | tee -a "$LOG"
exit $FAILED
