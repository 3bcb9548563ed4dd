"""How many trials share one GPU, and at what gain (docs/speed.md): N real `sedaug train` processes at once on one
device (the full-size CRNN over a DESED-sized synthetic store: 18,057 training clips, resident on the device), for
`baseline` and `vat_latent`, with N = 1, 2, 4, 8; without, then with CUDA MPS when `nvidia-cuda-mps-control` can
start a daemon. The result decides sweeps/table1.yaml's `resources.gpus` (1 / the best N).

    python -m benchmarks --device cuda --packing 1,2,4,8        (or python -m benchmarks.packing ...)
    python -m benchmarks.packing --dry-run                       # CPU, tiny CRNN and store: does every part run?

Each trial trains two epochs of --steps steps: epoch 1 warms up (cuDNN, the allocator, the store's copy), epoch 2
is measured. The trials start training together (each imports torch and starts CUDA, then waits for the others), at
2 threads each (a sweep trial's `cpus: 2`). The aggregate rate is N·steps over the span from the first trial's end of
epoch 1 to the last one's end of epoch 2 (each end the time metrics.jsonl was written). Per trial: peak GPU memory
(torch.cuda.max_memory_allocated, read in the trial's own process at exit) and peak host RSS; GPU utilisation is
nvidia-smi's, sampled over that span by a thread.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from sedaug.files import write_json

REPO = Path(__file__).resolve().parents[1]
# DESED 2020's training splits (benchmarks/__main__.py's DESED_SIZES): 263 steps an epoch at batch 24 (weak 1578 / 6).
TRAIN_SIZES = {"unlabeled": 14412, "weak": 1578, "synthetic_train": 2067}
STEPS_PER_TRIAL = 200 * 263  # a Table 1 trial: 200 epochs of DESED
DRY_SIZES = {"unlabeled": 24, "weak": 12, "synthetic_train": 12}
# --dry-run: the tests' tiny CRNN (tests/conftest.py) on 4-clip batches.
TINY = ["model.cnn_filters=[4,8]", "model.cnn_pooling=[[4,4],[1,32]]", "model.rnn_hidden=8", "data.batch_size=4"]


# ------------------------------------------------------------------------------------ one trial process


def trial(report: Path, argv: list[str]) -> None:
    """`sedaug train ...` (its CLI, in this process) once `report`'s folder holds `go` (written when every trial has
    started: `REPORT.ready`); at exit, its peak GPU memory and peak RSS go to `report`."""

    def write() -> None:
        import torch

        record = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if torch.cuda.is_initialized():
            record["max_memory_allocated"] = torch.cuda.max_memory_allocated()
            record["max_memory_reserved"] = torch.cuda.max_memory_reserved()
        report.write_text(json.dumps(record))

    atexit.register(write)
    sys.argv = ["sedaug", *argv]
    import torch

    from sedaug.cli import main

    if "cuda" in argv:
        torch.cuda.init()
    report.with_suffix(".ready").touch()
    deadline = time.monotonic() + 120
    while not (report.parent / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    main()


# --------------------------------------------------------------------------------------------- the store


def desed_sized_store(workdir: Path, dry_run: bool, source: Path | None = None) -> Path:
    """A feature store (`source`, or a tiny synthetic one) tiled to DESED 2020's training sizes, with a small
    synthetic_valid: validation time is not what is measured."""
    from benchmarks.__main__ import tiled_store, tiny_store

    source = source or tiny_store(workdir)[1]
    sizes = {**(DRY_SIZES if dry_run else TRAIN_SIZES), "synthetic_valid": 4 if dry_run else 48,
             "validation": 12, "eval": 12}
    return tiled_store(source, workdir / "desed_sized", sizes)


# ------------------------------------------------------------------------------------------------- MPS


@contextmanager
def mps_daemon(workdir: Path):
    """Yields (environment for MPS clients, None), or (None, why not) when no daemon could be started. The daemon
    is this user's, with its pipe and log folders under `workdir`, and is told to quit afterwards."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        yield None, "nvidia-cuda-mps-control not found"
        return
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(workdir / "mps-pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(workdir / "mps-log")}
    for folder in ("mps-pipe", "mps-log"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    try:  # the daemon forks: no pipes of ours for it to hold open
        started = subprocess.run([control, "-d"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        yield None, f"nvidia-cuda-mps-control -d: {type(e).__name__}"
        return
    if started.returncode != 0:
        yield None, f"nvidia-cuda-mps-control -d: exit {started.returncode}"
        return
    try:
        yield env, None
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=30)


# ----------------------------------------------------------------------------------------- measurement


def gpu_sample() -> tuple[float, float] | None:
    """(utilisation %, memory used MiB) of the first GPU, from nvidia-smi; None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    util, used = out.stdout.strip().splitlines()[0].split(",")
    return float(util), float(used)


def _epoch_ends(run: Path) -> tuple[int, float]:
    """How many epochs a trial has ended, and when the last one ended (metrics.jsonl is rewritten whole at each
    epoch's end: its mtime), in time.time()'s clock."""
    metrics = run / "metrics.jsonl"
    try:
        return len(metrics.read_text().splitlines()), metrics.stat().st_mtime
    except OSError:
        return 0, 0.0


class Sampler(threading.Thread):
    """nvidia-smi's GPU utilisation and memory every 0.5 s, apart from the loop that watches the trials."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, tuple[float, float]]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            sample = gpu_sample()
            if sample is not None:
                self.samples.append((time.time(), sample))


def run_packed(recipe: str, n: int, store: Path, workdir: Path, device: str, steps: int, dry_run: bool,
               env: dict | None, timeout_s: float) -> dict:
    """N trials of `recipe` at once, started together; their epoch ends read from metrics.jsonl."""
    folder = Path(tempfile.mkdtemp(prefix=f"{recipe}-n{n}-", dir=workdir))
    # A sweep trial's threads (`cpus: 2`, sedaug.sweep.trial); gpu_check.sh's dry run sets 1.
    env = {"OMP_NUM_THREADS": "2", **(env or os.environ)}
    procs, runs, reports = [], [], []
    for i in range(n):
        runs.append(folder / f"trial{i}" / recipe / f"seed{i}")
        reports.append(folder / f"trial{i}.json")
        argv = ["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--runs", str(folder / f"trial{i}"),
                "--device", device, "--set", f"data.features={store}", "--set", "optim.epochs=2",
                "--set", f"optim.max_steps_per_epoch={steps}", "--set", f"seed={i}",
                *(arg for override in (TINY if dry_run else []) for arg in ("--set", override))]
        with open(folder / f"trial{i}.err", "w") as err:  # a file, not a pipe: a chatty trial never blocks on it
            procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.packing", "trial", str(reports[-1]),
                                           "--", *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err))
    ends: list[dict[int, float]] = [{} for _ in range(n)]
    sampler = Sampler()
    start = time.monotonic()
    try:
        while (not all(r.with_suffix(".ready").exists() for r in reports) and all(p.poll() is None for p in procs)
               and time.monotonic() - start < 120):
            time.sleep(0.05)
        (folder / "go").touch()  # every trial has imported torch and started CUDA: training starts together
        if device == "cuda":
            sampler.start()
        while any(p.poll() is None for p in procs) and time.monotonic() - start < timeout_s:
            for i, run in enumerate(runs):
                done, at = _epoch_ends(run)
                if done and done not in ends[i]:  # polled well within an epoch: each end is seen
                    ends[i][done] = at
            time.sleep(0.05)
    finally:  # timed out, or this process is being stopped: no trial outlives it
        sampler.stopped.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, run in enumerate(runs):
        done, at = _epoch_ends(run)
        if done:
            ends[i].setdefault(done, at)
        if 2 in ends[i] and 1 not in ends[i]:  # epoch 2 ended between two looks: it began its time_s before
            ends[i][1] = ends[i][2] - json.loads((run / "metrics.jsonl").read_text().splitlines()[1])["time_s"]
    failures = [(folder / f"trial{i}.err").read_text()[-600:] or f"exit {p.returncode}"
                for i, p in enumerate(procs) if p.wait() != 0]
    row = {"recipe": recipe, "n": n, "steps": steps}
    if failures or any(not {1, 2} <= set(e) for e in ends):
        row["error"] = (failures[0] if failures else "timed out, or an epoch's end was not seen").strip()
        return row
    first, last = min(e[1] for e in ends), max(e[2] for e in ends)
    steps_per_s = n * steps / (last - first)
    trials = [json.loads(r.read_text()) for r in reports if r.exists()]
    window = [sample for t, sample in sampler.samples if first <= t <= last]
    row.update({
        "steps_per_s": steps_per_s, "trials_per_hour": steps_per_s * 3600 / STEPS_PER_TRIAL,
        "span_s": last - first, "start_skew_s": max(e[1] for e in ends) - first,
        "peak_gpu_memory_bytes": max((t["max_memory_allocated"] for t in trials if "max_memory_allocated" in t),
                                     default=None),
        "peak_rss_bytes": max((t["peak_rss_bytes"] for t in trials), default=None),
        "gpu_utilisation": sum(u for u, _ in window) / len(window) if window else None,
        "gpu_memory_used_mib": max((m for _, m in window), default=None),
    })
    return row


def best_n(rows: list[dict], mps: bool = False) -> int | None:
    """The N with the largest gain in steps/s over N = 1 without MPS, as a geometric mean over the recipes measured
    at N = 1 (each counted against its own; an N counts only where each of them was measured), among the rows with
    or without MPS; None when there is nothing to compare."""
    gains: dict[int, list[float]] = {}
    rates = [r for r in rows if "steps_per_s" in r]
    recipes = sorted({r["recipe"] for r in rates if (r["n"], r["mps"]) == (1, False)})
    for recipe in recipes:
        rate = {(r["n"], r["mps"]): r["steps_per_s"] for r in rates if r["recipe"] == recipe}
        for (n, with_mps), steps_per_s in rate.items():
            if with_mps == mps:
                gains.setdefault(n, []).append(steps_per_s / rate[1, False])
    mean = {n: math.prod(g) ** (1 / len(g)) for n, g in gains.items() if len(g) == len(recipes)}
    return max(mean, key=mean.get) if mean else None


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["trial"]:
        trial(Path(argv[1]), argv[3:])
        return {}
    # `timeout` (benchmarks/gpu_check.sh) sends SIGTERM: exit through the finally blocks (trials killed, MPS quit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packing", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default) or cpu; --dry-run: cpu")
    parser.add_argument("--packing", default=None, help="trials per device, comma-separated (default 1,2,4,8)")
    parser.add_argument("--recipes", default="baseline,vat_latent")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default 30; dry run 1)")
    parser.add_argument("--mps", choices=["auto", "off"], default="auto", help="auto: also with MPS when it starts")
    parser.add_argument("--budget-s", type=float, default=180.0, help="start no measurement after this many seconds")
    parser.add_argument("--source", type=Path, default=None, help="the store to tile (default: a tiny synthetic one)")
    parser.add_argument("--mps-dir", type=Path, default=None,
                        help="MPS's pipe and log folders (gpu_check.sh's, which quits a daemon left behind)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny CRNN and store: that every part runs")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "packing.json")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device here; --dry-run runs every part on the CPU")
    packing = [int(n) for n in (args.packing or ("1,2" if args.dry_run else "1,2,4,8")).split(",")]
    steps = args.steps or (1 if args.dry_run else 30)
    started = time.monotonic()
    results: dict = {"device": device, "dry_run": args.dry_run, "steps_per_trial": STEPS_PER_TRIAL, "rows": [],
                     "not_measured": [], "best_n": None, "best_n_mps": None}
    args.json.parent.mkdir(parents=True, exist_ok=True)

    recipes = args.recipes.split(",")

    def measure(n: int, workdir: Path, store: Path, mps: bool, env: dict | None) -> None:
        for recipe in recipes:
            if time.monotonic() - started > args.budget_s:
                results["not_measured"].append({"recipe": recipe, "n": n, "mps": mps, "why": "time budget"})
                continue
            row = run_packed(recipe, n, store, workdir, device, steps, args.dry_run, env, timeout_s=300)
            results["rows"].append({**row, "mps": mps})
            # Decided anew after each row: a stage cut at its time limit keeps the decision on what it measured.
            results["best_n"], results["best_n_mps"] = best_n(results["rows"]), best_n(results["rows"], mps=True)
            write_json(args.json, results)  # whole or not at all: a kill mid-write keeps the last
            print(json.dumps(results["rows"][-1]), flush=True)

    results["mps"] = "not tried" if args.mps == "off" else "not on a CPU" if device != "cuda" else None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store = desed_sized_store(workdir, args.dry_run, args.source)
        # N by N, every recipe at each: a budget cut leaves the smaller N measured for all (each recipe's gain
        # counts against its own N = 1); then MPS, where a daemon starts.
        for n in packing:
            measure(n, workdir, store, False, None)
        if results["mps"] is None:
            with mps_daemon(args.mps_dir or workdir / "mps") as (env, why):
                results["mps"] = why or "started"
                for n in [n for n in packing if n > 1] if env is not None else []:  # N = 1 is the same without
                    measure(n, workdir, store, True, env)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
