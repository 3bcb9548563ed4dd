"""`sedaug table --ci`: each row's intervals and its paired difference to the reference row, from the score files
`sedaug evaluate` wrote (docs/reporting.md). No model runs.

A row's statistic is its metric averaged over its seeds, as the table prints it. One resample draws the eval clips
with replacement; every seed of every row is scored on that same draw (`evaluation/bootstrap.py`), so a row's
interval holds the clip-sampling uncertainty of its seed average, and a row minus the reference row, resample by
resample, is a paired difference: the clips that are hard for both cancel out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, EVENT_COLUMNS, read_events
from sedaug.data.grid import N_OUTPUT_FRAMES
from sedaug.errors import UserError, one_line
from sedaug.evaluation.bootstrap import (
    BOOTSTRAP_METRICS,
    F1_METRICS,
    PSDS_EVAL_METRICS,
    ClipCounts,
    f1_counts,
    metric_values,
    paired_p_value,
    percentile_interval,
    psds_counts,
    resample_weights,
)
from sedaug.evaluation.bootstrap_psds import sed_scores_counts, sed_scores_values
from sedaug.evaluation.postprocess import decode, frame_counts
from sedaug.evaluation.psds import SED_SCORES_METRICS
from sedaug.evaluation.scores import SCORE_COLUMNS, clip_id
from sedaug.files import read_tsv
from sedaug.progress import progress_bar

PARALLEL_FROM = 5000  # runs x clips from which runs are scored in parallel processes


@dataclass(frozen=True)
class BootstrapSettings:
    level: float  # 0.95 for --ci 95
    resamples: int = 1000
    seed: int = 0
    reference: str | None = None  # the row every other row is compared with

    def check(self) -> None:
        if not 50 <= self.level * 100 < 100:
            raise UserError(f"--ci {self.level * 100:g}: expected a confidence level in percent, from 50 to below 100")
        if self.resamples < 100:
            raise UserError(f"--resamples {self.resamples}: expected at least 100 (1000 or more for a 95% interval)")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--bootstrap-seed {self.seed}: expected an integer from 0 to 2**32 - 1")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """A row minus the reference row: the full-data difference of the seed averages, its interval and p-value."""

    value: float
    low: float
    high: float
    p: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class RowBootstrap:
    intervals: dict[str, Interval]
    differences: dict[str, Difference]  # empty for the reference row itself, or without a reference


@dataclass(frozen=True)
class EvaluatedRun:
    path: Path
    results: dict
    features: Path  # the feature store it was scored on (results.json's `features`, else its recipe's)


# ---------------------------------------------------------------------------------------------- reading a run


@dataclass(frozen=True)
class GroundTruth:
    clips: tuple[str, ...]
    durations: np.ndarray
    events: pd.DataFrame


def read_ground_truth(features: Path, split: str) -> GroundTruth:
    """A split's clips, durations and strong labels from a feature store (`<features>/<split>/clips.tsv` and
    `events.tsv`, written by `sedaug extract-mels`); the mels are not opened."""
    directory = Path(features) / split
    try:
        clips = read_tsv(directory / "clips.tsv")
        events = read_events(directory / "events.tsv")
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: missing: --ci reads the ground truth of the feature store each run was "
                        "evaluated on (results.json's `features`)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{directory}: unreadable ground truth ({one_line(e)})") from None
    missing = [c for c in EVENT_COLUMNS if c not in events]
    if missing:
        raise UserError(f"{directory / 'events.tsv'}: missing column(s) {', '.join(missing)}")
    durations = pd.to_numeric(clips["duration"], errors="coerce") if "duration" in clips else None
    if "filename" not in clips or durations is None or not np.isfinite(durations).all():
        raise UserError(f"{directory / 'clips.tsv'}: expected the columns filename and duration (numbers)")
    return GroundTruth(tuple(clips["filename"]), durations.to_numpy(float), events[EVENT_COLUMNS].dropna())


def read_scores(directory: Path, truth: GroundTruth) -> np.ndarray:
    """(N, T, C) frame scores from a run's score files (one sed_scores_eval TSV per clip, as `evaluate` writes
    them), in the ground truth's clip order; frames past a clip's end are 0. A file must hold the clip's frames
    (its duration on the output grid): another number means scores of other clips or of another sedaug."""
    header = list(SCORE_COLUMNS)
    expected = frame_counts(truth.durations, N_OUTPUT_FRAMES)
    strong = np.zeros((len(truth.clips), N_OUTPUT_FRAMES, len(CLASSES)))
    again = f"run `sedaug evaluate` on {directory.parent.parent} again"
    for i, name in enumerate(truth.clips):
        path = directory / f"{clip_id(name)}.tsv"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{path}: missing: {again}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}): {again}") from None
        values = text.split()  # whitespace-separated numbers: 5x faster than pandas for 692 small files
        if values[:len(header)] != header or (len(values) - len(header)) % len(header):
            raise UserError(f"{path}: not a score file of `sedaug evaluate` (columns {' '.join(header)})")
        try:
            table = np.array(values[len(header):], dtype=np.float64).reshape(-1, len(header))[:, 2:]
        except ValueError:
            raise UserError(f"{path}: a score is not a number: {again}") from None
        if len(table) != expected[i] or not np.isfinite(table).all():
            what = f"{len(table)} frames where its clip has {expected[i]}" if len(table) != expected[i] else \
                "a score that is not finite"
            raise UserError(f"{path}: {what}: {again}")
        strong[i, :len(table)] = table
    return strong


def run_counts(run: EvaluatedRun, split: str, metrics: Sequence[str], truth: GroundTruth) -> ClipCounts:
    """A run's per-clip counts for `metrics`, from its score files, decoded with the parameters it was scored with."""
    strong = read_scores(run.path / split / "scores", truth)
    params = run.results.get("params") or {}
    threshold, window = params.get("threshold", 0.5), params.get("median_window", 7)
    f1 = psds = None
    if any(m in F1_METRICS for m in metrics):
        detections = decode(strong, truth.clips, threshold, window, truth.durations)
        f1 = f1_counts(detections, truth.events, truth.clips)
    if any(m in PSDS_EVAL_METRICS for m in metrics):
        psds = psds_counts(strong, truth.durations, truth.events, truth.clips, median_window=window)
    sed_scores = {m: sed_scores_counts(strong, truth.durations, truth.events, truth.clips, m, window)
                  for m in metrics if m in SED_SCORES_METRICS}
    return ClipCounts(truth.clips, f1=f1, psds=psds, sed_scores=sed_scores)


# ---------------------------------------------------------------------------------------------- the rows


def check_metrics(metrics: Sequence[str]) -> None:
    covered = (*BOOTSTRAP_METRICS, *SED_SCORES_METRICS)
    unsupported = [m for m in metrics if m not in covered]
    if unsupported:
        raise UserError(f"--ci: no interval for {', '.join(unsupported)} (the bootstrap covers "
                        f"{', '.join(covered)}): leave it out of --metrics")


def bootstrap_rows(
    rows: dict[str, list[EvaluatedRun]],
    split: str,
    metrics: Sequence[str],
    settings: BootstrapSettings,
    progress: bool = False,
    workers: int | None = None,
) -> tuple[dict[str, RowBootstrap], dict[str, list[str]]]:
    """Intervals and paired differences for each row (seeds averaged), and notes per row (a run whose
    recomputed metric differs from its results.json). Runs are scored in `workers` processes (default: one per
    CPU this process may use)."""
    check_metrics(metrics)
    truths: dict[Path, GroundTruth] = {}
    jobs = []
    for name, runs in rows.items():
        for run in runs:
            features = run.features
            if features not in truths:
                truths[features] = read_ground_truth(features, split)
            jobs.append((name, run, truths[features]))
    if not jobs:
        return {}, {}
    clips = jobs[0][2].clips
    for _, run, truth in jobs:
        if truth.clips != clips:
            raise UserError(f"{run.path}: scored on other {split} clips than {jobs[0][1].path} "
                            f"({run.features}): a paired bootstrap needs the same clips")
    weights = resample_weights(len(clips), settings.resamples, settings.seed)
    tasks = [(run, split, tuple(metrics), truth, weights) for _, run, truth in jobs]
    if workers is None:  # processes take seconds to start: worth it from about ten DESED-sized runs
        from sedaug.sweep.cluster import usable_cpus

        workers = usable_cpus() if len(tasks) * len(clips) >= PARALLEL_FROM else 1
    workers = min(len(tasks), workers)
    with progress_bar("Bootstrap", len(tasks), progress) as advance, _pool(workers) as pool:
        scored = []
        for result in pool.map(_score_run, tasks):
            scored.append(result)
            advance()
    samples: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in rows}
    notes: dict[str, list[str]] = {name: [] for name in rows}
    for (name, run, _), values in zip(jobs, scored, strict=True):
        samples[name].append(values)
        stale = [m for m in metrics if _differs(values[m][0], run.results.get(m))]
        if stale:
            notes[name].append(f"{run.path.name}: scores differ from results.json ({', '.join(stale)})")
    # Row statistic: the seed average, in each resample (index 0 holds the full clip set, the rest the resamples).
    average = {name: {m: np.mean([v[m] for v in per_seed], axis=0) for m in metrics}
               for name, per_seed in samples.items() if per_seed}
    out = {}
    ref = settings.reference
    for name, values in average.items():
        intervals = {m: Interval(*percentile_interval(values[m][1:], settings.level)) for m in metrics}
        differences = {}
        if ref is not None and ref in average and name != ref:
            for m in metrics:
                d = values[m] - average[ref][m]
                differences[m] = Difference(float(d[0]), *percentile_interval(d[1:], settings.level),
                                            paired_p_value(d[1:]))
        out[name] = RowBootstrap(intervals, differences)
    return out, notes


def _score_run(task) -> dict[str, np.ndarray]:
    """One run's metrics on the full clip set (index 0), then under each resample."""
    run, split, metrics, truth, weights = task
    counts = run_counts(run, split, metrics, truth)
    weights = np.concatenate([np.ones((1, weights.shape[1]), dtype=weights.dtype), weights])
    values = metric_values(counts, weights, [m for m in metrics if m not in SED_SCORES_METRICS])
    return {**values, **{m: sed_scores_values(c, weights, m) for m, c in counts.sed_scores.items()}}


@contextmanager
def _pool(workers: int) -> Iterator:
    """Processes that score runs side by side, or this process alone for one worker. Spawned, not forked: the
    progress bar's thread is running."""
    if workers <= 1:
        yield SimpleNamespace(map=map)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _differs(recomputed: float, recorded) -> bool:
    """Whether a recomputed full-data value disagrees with the recorded one (stale score files, another ground
    truth); nothing to compare where results.json holds no number."""
    if not isinstance(recorded, int | float) or not math.isfinite(recorded):
        return False
    return not abs(recomputed - recorded) <= 1e-6
