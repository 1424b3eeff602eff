#!/usr/bin/env bash
# One-shot GPU check for an H200 machine (torch 2.11 + CUDA 13, Triton 3.6, no network, 16 cores):
# build and install the package, run the GPU-marked tests, run the benchmark table for WRN-28-10 and
# the large bucket, write everything into OUTDIR, print a short summary last. Every stage has its own
# `timeout` and the whole script stays inside a total budget (TOTAL_S, default 450 s < 8 minutes).
#
#   bash benchmarks/device_check.sh [OUTDIR]              # on the GPU machine (OUTDIR: bench-results/)
#   DRY_RUN=1 bash benchmarks/device_check.sh [OUTDIR]     # anywhere, no GPU: the same logic on the CPU
#   bash benchmarks/device_check.sh --dry-run [OUTDIR]     # the same
#
# Dry mode skips the install (it prints the command), runs the GPU-marked tests (they skip without a
# GPU) and runs the table with --device cpu --quick on a small model, so the script's logic is tested
# without a GPU (benchmarks/test_bench_device_check.py does that).
#
# Environment: PYTHON (default python3), TESTS (test folder, default tests), TOTAL_S (total budget, s),
# MODELS (default "wrn-28-10 bucket"), BENCH_ARGS (extra arguments for python -m benchmarks.run).
# At most 7 files land in OUTDIR: device_check.log, summary.txt, table.md, results.csv, results.json,
# train.csv, results.png. Exit status: 0 when no stage failed.
set -u

DRY=${DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUTDIR=${1:-bench-results}
PYTHON=${PYTHON:-python3}
TESTS=${TESTS:-tests}
TOTAL_S=${TOTAL_S:-450}
MODELS=${MODELS:-"wrn-28-10 bucket"}
BENCH_ARGS=${BENCH_ARGS:-}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)  # relative to the caller's folder, then work from the repository root
cd "$(dirname "$0")/.." || exit 2
LOG="$OUTDIR/device_check.log"
SUMMARY="$OUTDIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
START=$(date +%s)
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }
note() { echo "$*" >>"$SUMMARY"; }

# stage NAME CAP_SECONDS COMMAND: run COMMAND under timeout (the cap, or what is left of TOTAL_S
# less a 15 s reserve for the summary), log its output, show its tail, record its status.
stage() {
  local name=$1 cap=$2 cmd=$3
  local left=$((TOTAL_S - ($(date +%s) - START) - 15))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 5 ]; then
    say "== $name: not run, the total budget of ${TOTAL_S}s is spent"
    note "$(printf '%-10s %-8s %s' "$name" "NOTRUN" "budget spent")"
    FAILED=1
    return
  fi
  say "== $name (limit ${limit}s): $cmd"
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" >"$OUTDIR/.stage.log" 2>&1
  rc=$?
  local secs=$(($(date +%s) - t0))
  cat "$OUTDIR/.stage.log" >>"$LOG"
  tail -n 15 "$OUTDIR/.stage.log" | grep -v '^USDT' | sed 's/^/   | /'
  rm -f "$OUTDIR/.stage.log"
  local status=ok
  case "$name:$rc" in
    *:0) status=ok ;;
    tests:5) status=ok; rc="5 (no tests selected)" ;;
    *:124|*:137) status=TIMEOUT; FAILED=1 ;;
    *) status=FAILED; FAILED=1 ;;
  esac
  say "== $name: $status (rc $rc, ${secs}s)"
  note "$(printf '%-10s %-8s rc=%-4s %4ss  %s' "$name" "$status" "${rc%% *}" "$secs" "${cmd:0:110}")"
}

skip() {
  say "== $1: skipped ($2)"
  note "$(printf '%-10s %-8s %s' "$1" "SKIPPED" "$2")"
}

if [ "$DRY" = "1" ]; then
  say "# device_check.sh DRY RUN (CPU, no install), $(date -Iseconds), output in $OUTDIR"
else
  say "# device_check.sh on $(uname -n), $(date -Iseconds), output in $OUTDIR"
fi

# 1. environment
if [ "$DRY" = "1" ]; then
  stage env 30 "$PYTHON -c 'import torch, platform; print(\"torch\", torch.__version__, \"python\", platform.python_version(), \"cuda available\", torch.cuda.is_available())'; nproc"
else
  stage env 30 "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; nvcc --version | tail -n 2; $PYTHON -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__, torch.cuda.get_device_name())'; nproc"
fi

# 2. build and install (no network there: no build isolation, no dependencies, no index)
INSTALL="TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=\$(nproc) $PYTHON -m pip install --no-build-isolation --no-deps --no-index -v -e ."
if [ "$DRY" = "1" ]; then
  skip install "dry run; on the GPU machine: $INSTALL"
else
  stage install 200 "$INSTALL"
fi

# 3. which backends can run
DEV=cuda
[ "$DRY" = "1" ] && DEV=cpu
stage backends 60 "$PYTHON -c 'import saner_kernels as sk; [print(f\"{k:10s} {v!r}\") for k, v in sk.available_backends(\"$DEV\").items()]'"

# 4. the GPU-marked tests (on the CPU they skip)
stage tests 100 "$PYTHON -m pytest -m gpu -q -p no:cacheprovider -rs $TESTS"

# 5. the benchmark table
if [ "$DRY" = "1" ]; then
  BENCH="$PYTHON -m benchmarks.run --device cpu --quick --models wrn-16-2 --train-model wrn-16-2 --train-batch 4 --out $OUTDIR $BENCH_ARGS"
else
  BENCH="$PYTHON -m benchmarks.run --device cuda --models $MODELS --out $OUTDIR $BENCH_ARGS"
fi
stage bench 160 "$BENCH"

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
