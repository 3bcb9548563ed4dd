"""Peak memory of one sweep trial per recipe family: `python -m benchmarks.trial_memory [--model full|half|tiny]`.

Each family's recipe trains a few steps of one epoch (`sedaug.train.train`, as a sweep trial does), then is evaluated
on a DESED-sized eval split (692 clips, as a final trial ends), in a fresh process over a feature store of DESED's
training sizes (the tiny synthetic store tiled: 2.71 GiB of features), on this machine's device. Sampled every 0.1 s
from /proc: peak RSS, peak anonymous RSS (the process's own memory) and peak file-backed RSS (libraries, and the
pages of the mapped store read so far: page cache that every trial on a node shares); on CUDA also
`torch.cuda.max_memory_allocated`. Printed beside sedaug's default `resources.memory` for that recipe
(sedaug.sweep.plan.default_memory), which must stay above the measured anonymous peak. Figures: docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.__main__ import DESED_SIZES, FAMILIES, REPO, _status, tiled_store, tiny_store

MODELS = {
    "full": [],
    "half": ["model.cnn_filters=[8,16,32,64,64,64,64]", "model.rnn_hidden=64"],
    "tiny": ["model.cnn_filters=[4,8]", "model.cnn_pooling=[[4,4],[1,32]]", "model.rnn_hidden=8"],
}
_CHILD = """
import json, sys, torch
from sedaug.evaluate import evaluate_run
from sedaug.recipe import load_recipe
from sedaug.train import train
recipe = load_recipe(sys.argv[1], sys.argv[4:])
train(recipe, sys.argv[2], device=sys.argv[3], progress=False)
evaluate_run(sys.argv[2], split="eval", device=sys.argv[3], progress=False)  # a final trial's last work
print(json.dumps({"cuda_peak": torch.cuda.max_memory_allocated() if sys.argv[3] == "cuda" else None}))
"""


def measure(family: str, overrides: list[str], device: str, workdir: Path) -> dict:
    """Peaks of one training process (a fresh run directory)."""
    run_dir = workdir / "runs" / f"{family}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-c", _CHILD, str(REPO / "recipes" / f"{family}.yaml"), str(run_dir), device, *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        try:
            status = _status(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        for key in peaks:
            peaks[key] = max(peaks[key], status.get(key, 0))
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{family}: training failed: {err[-2000:]}")
    cuda = json.loads(out.strip().splitlines()[-1])["cuda_peak"]
    return {"peak_rss": peaks["VmHWM"], "peak_anon": peaks["RssAnon"], "peak_file": peaks["RssFile"], "cuda_peak": cuda}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trial_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--model", choices=list(MODELS), default="full")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "trial_memory.json")
    args = parser.parse_args(argv)
    from sedaug.recipe import load_recipe
    from sedaug.sweep.plan import default_memory

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _, source = tiny_store(workdir)
        store = tiled_store(source, workdir / "desed_sized", {**DESED_SIZES, "synthetic_valid": 12, "validation": 12,
                                                              "eval": 692})
        feature_bytes = sum((store / s / "mels.npy").stat().st_size for s in DESED_SIZES)
        for family in args.families.split(","):
            overrides = [f"data.features={store}", "optim.epochs=1", f"optim.max_steps_per_epoch={args.steps}",
                         *MODELS[args.model]]
            recipe = load_recipe(REPO / "recipes" / f"{family}.yaml", overrides)
            peaks = measure(family, overrides, args.device, workdir)
            gpus = 1.0 if args.device == "cuda" else 0.0
            rows.append({"family": family, **peaks, "default_memory": default_memory(recipe, gpus)})
    results = {"model": args.model, "device": args.device, "steps": args.steps, "feature_bytes": feature_bytes,
               "cpus": torch.get_num_threads(), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    gib = 2**30
    table = Table("family", "peak RSS", "anonymous", "file-backed", "CUDA allocated", "default memory",
                  title=f"one trial, {args.model} CRNN, {args.device}, {feature_bytes / gib:.2f} GiB store")
    for r in rows:
        cuda = "" if r["cuda_peak"] is None else f"{r['cuda_peak'] / gib:.2f}"
        table.add_row(r["family"], f"{r['peak_rss'] / gib:.2f}", f"{r['peak_anon'] / gib:.2f}",
                      f"{r['peak_file'] / gib:.2f}", cuda, f"{r['default_memory'] / gib:.2f}")
    Console().print(table)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
