"""The fastest correct training step on a GPU (docs/speed.md): every recipe family's whole training step (batch
gathered from a device-resident feature store, every pass, Adam, EMA) timed in each step configuration that
tests/test_cuda.py checks. The fastest configuration whose CUDA tests pass is the one to make CUDA's default
(benchmarks/gpu_report.py names it).

    python -m benchmarks.gpu_speed [--families baseline,vat_latent] [--configs eager,bf16] [--budget-s 90]
    python -m benchmarks.gpu_speed --dry-run     # CPU, tiny CRNN, two steps, compile traced only: does it run?

Measurements run family by family, every configuration for one family before the next, and stop starting new ones
once --budget-s has passed (the rest are listed as not measured); the JSON is rewritten after each one, so a run
cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.packing import TINY
from sedaug.device import CONFIGS
from sedaug.files import write_json

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["baseline", "vat_latent", "none", "mixup_latent", "noise_latent", "adversarial_latent"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(family: str, config: str, features: Path, device: torch.device, warmup: int, steps: int,
            dry_run: bool) -> dict:
    """Seconds per whole training step of `family` in `config`: the first `warmup` steps (compiling, cuDNN's
    first calls) timed apart, then the median and best of `steps` steps, each synchronized."""
    from sedaug.data.batches import ThreeStreams
    from sedaug.data.store import FeatureStore
    from sedaug.recipe import load_recipe
    from sedaug.train import build_training, training_step

    setting = CONFIGS[config]
    recipe = load_recipe(REPO / "recipes" / f"{family}.yaml", [f"data.features={features}", *(TINY if dry_run else [])])
    store = FeatureStore(features)
    torch._dynamo.reset()  # each measurement compiles afresh (inductor's on-disk cache makes repeats quick)
    torch.manual_seed(recipe.seed)
    # The configuration as `sedaug train` runs it; --dry-run traces a compiled CNN without generating code.
    training = build_training(recipe, store.scaler(), device, config=replace(setting, compile=None) if dry_run else setting)
    if dry_run and setting.compile:
        for net in filter(None, (training.model, training.teacher)):
            net.compile_cnn(setting.compile, backend="eager")
    streams = ThreeStreams(store, recipe.data.batch_size, recipe.seed, device, resident=device.type == "cuda")
    batches = iter(())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(k: int):
        nonlocal batches
        batch = next(batches, None)
        if batch is None:  # a small store's streams last a few steps; a new epoch reshuffles them
            batches = streams.epoch(k)
            batch = next(batches)
        return training_step(recipe, training, batch, k, 1e-3, 2.0)

    times = []
    start = time.perf_counter()
    for k in range(warmup):
        step(k)
    _sync(device)
    first = time.perf_counter() - start
    for k in range(warmup, warmup + steps):
        start = time.perf_counter()
        losses = step(k)
        _sync(device)
        times.append(time.perf_counter() - start)
    finite = all(torch.isfinite(x).item() for x in losses)
    median = statistics.median(times)
    return {"family": family, "config": config, "batch_size": recipe.data.batch_size, "first_steps": warmup,
            "first_steps_s": first, "step_s": median, "best_step_s": min(times),
            "clips_per_s": recipe.data.batch_size / median, "finite": finite,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def machine(device: torch.device) -> dict:
    return {"platform": platform.platform(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default) or cpu; --dry-run: cpu")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3; dry run 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 15; dry run 2)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="start no measurement after this many seconds")
    parser.add_argument("--features", type=Path, default=None, help="a feature store (default: a tiny synthetic one)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny CRNN, few steps: that every part runs")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "gpu_speed.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; --dry-run runs every part on the CPU")
    unknown = sorted(set(args.configs.split(",")) - set(CONFIGS))
    if unknown:
        sys.exit(f"error: --configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    warmup = args.warmup or (1 if args.dry_run else 3)
    steps = args.steps or (2 if args.dry_run else 15)
    results: dict = {"machine": machine(device), "dry_run": args.dry_run, "rows": [], "not_measured": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        features = args.features
        if features is None:
            from benchmarks.__main__ import tiny_store

            features = tiny_store(Path(tmp))[1]
        for family in args.families.split(","):
            for config in args.configs.split(","):
                if time.perf_counter() - started > args.budget_s:
                    results["not_measured"].append({"family": family, "config": config, "why": "time budget"})
                    continue
                try:
                    row = measure(family, config, features, device, warmup, steps, args.dry_run)
                except Exception as e:  # a configuration that fails (CUDA graphs, say) is a result, not the end
                    row = {"family": family, "config": config, "error": f"{type(e).__name__}: {e}"[:500]}
                results["rows"].append(row)
                write_json(args.json, results)  # whole or not at all: a kill mid-write keeps the last
                print(json.dumps(row), flush=True)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
