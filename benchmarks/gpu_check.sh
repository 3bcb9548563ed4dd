#!/usr/bin/env bash
# The GPU path proven in one call (docs/speed.md): (1) the CUDA tests (pytest -m cuda), (2) trials packed per GPU
# (benchmarks/packing.py), (3) each step configuration's speed (benchmarks/gpu_speed.py); then one JSON and one
# markdown report under benchmarks/results/ (benchmarks/gpu_report.py) with what they decide. Under 9 minutes on one
# H100 or H200: each stage has a time limit, and a stage cut short keeps what it measured.
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run] [--features DIR]
#     --out       where the report goes (default benchmarks/results)
#     --dry-run   every stage on the CPU with tiny sizes (make test runs it, so that this script does not rot)
#     --features  a tiny feature store to start from (default: one generated here)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results
DRY=0
FEATURES=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --features) FEATURES=$2; shift 2 ;;
    *) echo "error: unknown argument $1 (usage: benchmarks/gpu_check.sh [--out DIR] [--dry-run] [--features DIR])" >&2
       exit 1 ;;
  esac
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
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
  VAT_LIMIT=180 TEST_LIMIT=180 PACK_LIMIT=300 SPEED_LIMIT=300
else
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: no CUDA GPU here (benchmarks/gpu_check.sh --dry-run runs every stage on the CPU)" >&2; exit 1; }
  DEVICE=(--device cuda)
  PACKING=(--packing 1,2,4,8 --budget-s 110)
  SPEED=(--budget-s 45)
  # Seconds: the limits (470 s) and the set-up stay under 9 minutes, and with gpu_device.sh's install under the
  # device tool's 10 minutes a call.
  VAT_LIMIT=130 TEST_LIMIT=140 PACK_LIMIT=140 SPEED_LIMIT=60
fi
if [ -z "$FEATURES" ]; then
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
# pytest cut by SIGTERM writes no JUnit XML; cut by SIGINT it writes the tests that finished.
# The VAT tests first and apart: the CUDA default is chosen from them, whatever becomes of the others' time limit.
stage "cuda tests: VAT" timeout -s INT -k 15 "$VAT_LIMIT" "$PY" -m pytest -m cuda tests/test_cuda.py -k vat_direction \
  -q -p no:cacheprovider --junitxml "$RAW/tests-vat.xml"
stage "cuda tests: the others" timeout -s INT -k 15 "$TEST_LIMIT" "$PY" -m pytest -m cuda tests/test_cuda.py \
  -k "not vat_direction" -q -p no:cacheprovider --junitxml "$RAW/tests-others.xml"
stage "packing" timeout -k 10 "$PACK_LIMIT" "$PY" -m benchmarks.packing "${DEVICE[@]}" "${PACKING[@]}" \
  --source "$FEATURES" --json "$RAW/packing.json"
stage "step speed" timeout -k 10 "$SPEED_LIMIT" "$PY" -m benchmarks.gpu_speed "${DEVICE[@]}" "${SPEED[@]}" \
  --features "$FEATURES" --json "$RAW/speed.json"
"$PY" -m benchmarks.gpu_report --tests "$RAW/tests-vat.xml" "$RAW/tests-others.xml" --packing "$RAW/packing.json" \
  --speed "$RAW/speed.json" --stages "$RAW/stages.tsv" --date "$STAMP" --json "$OUT/gpu_check-$STAMP.json" \
  --markdown "$OUT/gpu_check-$STAMP.md"
echo "wrote $OUT/gpu_check-$STAMP.json and $OUT/gpu_check-$STAMP.md"
