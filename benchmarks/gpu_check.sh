#!/usr/bin/env bash
# The GPU path proven in one call (docs/speed.md): (1) the CUDA tests (pytest -m cuda), (2) each step configuration's
# speed (benchmarks/gpu_speed.py), (3) trials packed per GPU (benchmarks/packing.py); then one JSON and one markdown
# report under benchmarks/results/ (benchmarks/gpu_report.py) with what they decide. Under 9 minutes on one H100 or
# H200: each stage has a time limit, and a stage cut short keeps what it measured.
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run] [--features DIR] [--stages LIST] [--limits T,S,P]
#     --out       where the report goes (default benchmarks/results)
#     --dry-run   every stage on the CPU with tiny sizes (make test runs it, so that this script does not rot)
#     --features  a tiny feature store to start from (default: one generated here)
#     --stages    which of tests,speed,packing to run (default all): a second device call finishes what a first
#                 one's limits cut, and gpu_report merges the two calls' results
#     --limits    the stages' time limits in seconds (default 240,90,130 on a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results
DRY=0
FEATURES=
STAGES=tests,speed,packing
LIMITS=
usage="usage: benchmarks/gpu_check.sh [--out DIR] [--dry-run] [--features DIR] [--stages tests,speed,packing] [--limits T,S,P]"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --features) FEATURES=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --limits) LIMITS=$2; shift 2 ;;
    *) echo "error: unknown argument $1 ($usage)" >&2; exit 1 ;;
  esac
done
for s in ${STAGES//,/ }; do
  case "$s" in tests|speed|packing) ;; *) echo "error: --stages: unknown stage $s ($usage)" >&2; exit 1 ;; esac
done
if [ -n "$LIMITS" ] && ! [[ "$LIMITS" =~ ^[0-9]+,[0-9]+,[0-9]+$ ]]; then
  echo "error: --limits $LIMITS: expected three numbers of seconds, tests,speed,packing ($usage)" >&2; exit 1
fi
runs() { [[ ",$STAGES," == *",$1,"* ]]; }  # runs STAGE: whether --stages holds it
WORK=$(mktemp -d)
# An MPS daemon that packing.py could not quit (killed at its limit) is told to here.
trap 'if [ -d "$WORK/mps/mps-pipe" ] && command -v nvidia-cuda-mps-control >/dev/null; then
        echo quit | CUDA_MPS_PIPE_DIRECTORY=$WORK/mps/mps-pipe timeout 10 nvidia-cuda-mps-control >/dev/null 2>&1 || true
      fi; rm -rf "$WORK"' EXIT
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
# Each stage's own results, kept beside the report: a call cut short still brings back what finished, and
# gpu_report can be run on them anywhere.
RAW=$OUT/gpu_check-$STAMP
mkdir -p "$RAW"
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=  # the CPU even where a GPU is: the CUDA tests skip, every stage stays small
  # One thread per process: two trials' OpenMP threads on a loaded 2-core CPU wait on each other (measured: a tiny
  # step 1 s with one thread, 15 s with two).
  export OMP_NUM_THREADS=1
  DEVICE=(--dry-run)
  PACKING=(--packing 1,2 --recipes vat_latent)
  SPEED=(--families vat_latent)
  TEST_LIMIT=240 SPEED_LIMIT=300 PACK_LIMIT=300
  [ -z "$LIMITS" ] || IFS=, read -r TEST_LIMIT SPEED_LIMIT PACK_LIMIT <<< "$LIMITS"
  SPEED_BUDGET=$SPEED_LIMIT PACK_BUDGET=$PACK_LIMIT
else
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: no CUDA GPU here (benchmarks/gpu_check.sh --dry-run runs every stage on the CPU)" >&2; exit 1; }
  DEVICE=(--device cuda)
  # Seconds: the limits (240 + 90 + 130 = 460 s) and the set-up stay under 9 minutes, and with gpu_device.sh's
  # install under the device tool's 10 minutes a call. No measurement starts within the last 15 s (speed: one
  # configuration) or 30 s (packing: one row of trials) of its stage.
  TEST_LIMIT=240 SPEED_LIMIT=90 PACK_LIMIT=130
  [ -z "$LIMITS" ] || IFS=, read -r TEST_LIMIT SPEED_LIMIT PACK_LIMIT <<< "$LIMITS"
  SPEED_BUDGET=$(( SPEED_LIMIT - 15 )) PACK_BUDGET=$(( PACK_LIMIT - 30 ))
  PACKING=(--packing 1,2,4,8)
  SPEED=(--families baseline,vat_latent)
fi
if [ -z "$FEATURES" ] && { runs speed || runs packing; }; then
  "$PY" -c "import sys; from pathlib import Path; from benchmarks.__main__ import tiny_store; tiny_store(Path(sys.argv[1]))" "$WORK"
  FEATURES=$WORK/features16000_tiny
fi

stage() {  # stage NAME COMMAND...: a failing stage is recorded in the report (124: its time limit), the next one runs
  local name=$1 start status=0
  shift
  start=$(date +%s)
  echo "[gpu-check] $name ..."
  "$@" || status=$?
  echo "[gpu-check] $name: exit $status, $(( $(date +%s) - start )) s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$RAW/stages.tsv"
}
# The two test runs at once on the one GPU (correctness, not timing: neither slows the other's verdicts much), each
# until SEDAUG_TESTS_DEADLINE (tests/conftest.py: no test starts after it, and pytest ends), 20 s before `timeout`'s
# SIGINT (a test inside `train` takes it as its own Ctrl-C, after its current step) and SIGKILL; each test's outcome
# goes to a log as it ends (SEDAUG_TESTS_LOG), whatever becomes of pytest. The VAT tests apart: the CUDA default is
# chosen from them. In the other run, tests/test_cuda.py's order: the bf16 steps, VAT at CNN blocks and CUDA graphs
# (they decide too) before resume, detect and extract.
tests() {  # tests NAME LOG SELECTION: one pytest run of the CUDA tests that pytest's -k SELECTION picks
  SEDAUG_TESTS_LOG=$RAW/$2 SEDAUG_TESTS_DEADLINE=$(( $(date +%s) + TEST_LIMIT - 20 )) stage "cuda tests: $1" \
    timeout -s INT -k 15 "$TEST_LIMIT" "$PY" -m pytest -m cuda tests/test_cuda.py -k "$3" -q -p no:cacheprovider
}
if runs tests; then
  tests "VAT" tests-vat.jsonl vat_direction &
  tests "the others" tests-others.jsonl "not vat_direction" &
  wait
fi
# Timed alone, one after the other: the step speed (it decides the default with the tests), then the packing.
runs speed && stage "step speed" timeout -k 10 "$SPEED_LIMIT" "$PY" -m benchmarks.gpu_speed "${DEVICE[@]}" \
  "${SPEED[@]}" --budget-s "$SPEED_BUDGET" --features "$FEATURES" --json "$RAW/speed.json"
runs packing && stage "packing" timeout -k 10 "$PACK_LIMIT" "$PY" -m benchmarks.packing "${DEVICE[@]}" \
  "${PACKING[@]}" --budget-s "$PACK_BUDGET" --source "$FEATURES" --mps-dir "$WORK/mps" --json "$RAW/packing.json"
"$PY" -m benchmarks.gpu_report --tests "$RAW/tests-vat.jsonl" "$RAW/tests-others.jsonl" --packing "$RAW/packing.json" \
  --speed "$RAW/speed.json" --stages "$RAW/stages.tsv" --date "$STAMP" --json "$OUT/gpu_check-$STAMP.json" \
  --markdown "$OUT/gpu_check-$STAMP.md"
echo "wrote $OUT/gpu_check-$STAMP.json and $OUT/gpu_check-$STAMP.md"
