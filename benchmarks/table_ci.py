"""`sedaug table --ci` on a folder the size of Table 1: 10 rows x 3 seeds, 692 eval clips (DESED's public eval
set), 1000 resamples, default columns (macro, psds_ct) and the paired test against `baseline`. Issue 23 asks for
under a minute on 2 cores.

    python -m benchmarks.table_ci [--clips 692] [--rows 10] [--seeds 3] [--resamples 1000] [--keep DIR]

The runs are made up (no training): a ground truth like DESED's eval set (1 to 4 events per clip, a few short
clips) and, per run, frame scores that follow it with run-specific misses, shifts and false alarms, written as
`sedaug evaluate` writes them (scores/*.tsv, results.json). Writing them is not timed; the table is, from a cold
start of its reading (the files are in the page cache, as after an evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES
from sedaug.evaluation.bootstrap import ClipCounts, f1_counts, metric_values, psds_counts
from sedaug.evaluation.postprocess import decode
from sedaug.evaluation.scores import score_frames, write_scores
from sedaug.recipe import dump_recipe, load_recipe
from sedaug.table import TABLE1_ORDER

FRAME = 0.06375
N_FRAMES = 157
REPO = Path(__file__).resolve().parents[1]


def make_ground_truth(features: Path, n_clips: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    clips = [f"Y{i:05d}_eval.wav" for i in range(n_clips)]
    durations = np.where(rng.uniform(size=n_clips) < 0.05, np.round(rng.uniform(3, 9.9, n_clips), 3), 10.0)
    rows = []
    for name, duration in zip(clips, durations, strict=True):
        for _ in range(rng.integers(1, 5)):
            on = round(float(rng.uniform(0, duration - 0.5)), 3)
            rows.append((name, on, round(min(duration, on + float(rng.uniform(0.3, 6))), 3),
                         CLASSES[int(rng.integers(len(CLASSES)))]))
    events = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    (features / "eval").mkdir(parents=True)
    pd.DataFrame({"filename": clips, "duration": durations}).to_csv(features / "eval" / "clips.tsv", sep="\t", index=False)
    events.to_csv(features / "eval" / "events.tsv", sep="\t", index=False)
    return clips, durations, events


def make_scores(clips, events: pd.DataFrame, skill: float, rng: np.random.Generator) -> np.ndarray:
    """Frame scores that find each event with probability `skill`, shifted by a few frames, over noise and blips."""
    strong = rng.uniform(0, 0.3, (len(clips), N_FRAMES, len(CLASSES))) ** 2
    index = {name: i for i, name in enumerate(clips)}
    for name, on, off, label in events.itertuples(index=False):
        if rng.uniform() < skill:
            a, b = (np.array([on, off]) / FRAME).astype(int) + rng.integers(-3, 4, 2)
            strong[index[name], max(a, 0):max(b, 0), CLASSES.index(label)] += rng.uniform(0.4, 0.9)
    blips = rng.integers(0, len(clips), len(clips) // 2)
    for i in blips:
        t = int(rng.integers(0, N_FRAMES - 8))
        strong[i, t:t + 8, int(rng.integers(len(CLASSES)))] += rng.uniform(0.3, 0.9)
    return np.clip(strong, 0, 1)


def make_runs(root: Path, n_clips: int, n_rows: int, n_seeds: int) -> Path:
    rng = np.random.default_rng(0)
    features = root / "features"
    clips, durations, events = make_ground_truth(features, n_clips, rng)
    names = list(TABLE1_ORDER[:n_rows]) + [f"extra{i}" for i in range(n_rows - len(TABLE1_ORDER))]
    for row, name in enumerate(names):
        base = REPO / "recipes" / f"{name}.yaml"
        recipe = load_recipe(base) if base.is_file() else load_recipe(REPO / "recipes" / "none.yaml").model_copy(
            update={"paper_row": None})
        for seed in range(n_seeds):
            run = root / "runs" / name / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "recipe.yaml").write_text(dump_recipe(recipe.model_copy(update={"name": name, "seed": seed})))
            strong = make_scores(clips, events, 0.5 + 0.03 * row, rng)
            write_scores(score_frames(strong, clips, durations), run / "eval" / "scores")
            # results.json as evaluate writes it, with the metrics of the table's columns (not timed).
            counts = ClipCounts(tuple(clips), f1=f1_counts(decode(strong, clips, 0.5, 7, durations), events, clips),
                                psds=psds_counts(strong, durations, events, clips))
            values = metric_values(counts, np.ones((1, len(clips)), np.float32), ("macro", "psds_ct"))
            (run / "eval" / "results.json").write_text(json.dumps(
                {"features": str(features), "split": "eval", "params": {"threshold": 0.5, "median_window": 7},
                 **{m: float(v[0]) for m, v in values.items()}}))
    return root / "runs"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=692)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--metrics", default="macro,psds_ct")
    parser.add_argument("--workers", type=int, help="Processes scoring runs (default: the table's choice).")
    parser.add_argument("--keep", type=Path, help="Build the runs here and keep them (default: a temporary folder).")
    args = parser.parse_args()
    from sedaug.table import build_table
    from sedaug.table_render import render

    root = args.keep or Path(tempfile.mkdtemp(prefix="sedaug-table-ci-"))
    try:
        start = time.perf_counter()
        if not (root / "runs").is_dir():
            make_runs(root, args.clips, args.rows, args.seeds)
        print(f"made {args.rows} rows x {args.seeds} seeds x {args.clips} clips in {root} "
              f"({time.perf_counter() - start:.0f} s, not timed)")
        start, cpu = time.perf_counter(), _cpu_seconds()
        table = build_table(root / "runs", metrics=tuple(args.metrics.split(",")), ci=95, resamples=args.resamples,
                            workers=args.workers)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        print(render(table, "markdown"))
        print(f"table --ci 95 --resamples {args.resamples} --metrics {args.metrics} ({args.rows} rows x {args.seeds} "
              f"seeds x {args.clips} clips, workers {args.workers or 'default'}): {seconds:.1f} s wall, {cpu:.1f} s CPU "
              f"(this process and its workers); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
