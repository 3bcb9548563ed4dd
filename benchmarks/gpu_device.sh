#!/usr/bin/env bash
# benchmarks/gpu_check.sh on a lent GPU machine (docs/speed.md, "On a lent GPU machine"): no registry there, so
# sedaug runs from this source tree on the image's Python (torch 2.11.0 in it), with the wheels that
# `python -m benchmarks.gpu_wheels` put in .whl/ (carried along) installed in front of the image's packages.
#
#   benchmarks/gpu_device.sh                  # the report, its stages' results and a log go to $OUT
#   benchmarks/gpu_device.sh --dry-run        # on a CPU only: its limits add up to more than a device call's
#
# It checks every import first and stops within seconds, naming what is missing, rather than minutes later.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
SITE=${SITE:-/tmp/sedaug-site}
[ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null || {
  echo "error: no wheels in .whl/: run python -m benchmarks.gpu_wheels here first, and carry .whl" >&2; exit 1; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the image's Python is the one that has torch
  for candidate in python3 python python3.12; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then PY=$candidate; break; fi
  done
  [ -n "$PY" ] || { echo "error: no python3, python or python3.12 here imports torch" >&2; exit 1; }
fi
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The image's pytest plugins (cov, xdist, hypothesis, ...) load with every pytest; sedaug's tests use none of them.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
# Noise in the log: dcase_util's and sed_scores_eval's regexes, uncompiled (--no-compile), and dcase_util's pkg_resources.
export PYTHONWARNINGS="ignore::SyntaxWarning,ignore:pkg_resources is deprecated:UserWarning"
mkdir -p "$OUT"
"$PY" - 2>&1 <<'EOF' | tee "$OUT/gpu_check.log"
import importlib, sys
names = ["numpy", "pandas", "torch", "torchaudio", "pydantic", "typer", "click", "rich", "yaml", "soundfile", "scipy",
         "matplotlib", "pkg_resources", "sed_eval", "psds_eval", "sed_scores_eval.intersection_based", "pytest",
         "typer.testing", "torch.utils.tensorboard", "sedaug.cli", "sedaug.train", "sedaug.detect", "sedaug.evaluate"]
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - every failure named, then one exit
        failed.append(f"{name}: {type(e).__name__}: {e}")
if failed:
    sys.exit("error: imports failed on this machine:\n  " + "\n  ".join(failed))
import numpy, pandas, shutil, sysconfig, torch
from pathlib import Path
print(f"[gpu-device] python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}, CUDA available: {torch.cuda.is_available()}", flush=True)
# What torch.compile needs on a GPU (triton builds its launcher with a C compiler against Python.h): without them
# every compiled configuration fails its tests, and the report says so; said here first.
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "MISSING"
compiler = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), "MISSING")
header = Path(sysconfig.get_paths()["include"], "Python.h")
print(f"[gpu-device] for torch.compile: triton {triton_version}, C compiler {compiler}, "
      f"{header if header.exists() else 'Python.h MISSING'}", flush=True)
EOF
"$PY" -m pytest --collect-only -q -m cuda tests/test_cuda.py -p no:cacheprovider >/dev/null || {
  echo "error: pytest cannot collect tests/test_cuda.py here (run it without -q to see why)" >&2; exit 1; }
PYTHON=$PY PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh --out "$OUT" "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
