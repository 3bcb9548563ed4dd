"""`sedaug table --ci`: each row's intervals and its paired difference to the reference row, from the score files
`sedaug evaluate` wrote (docs/reporting.md). No model runs.

A row's statistic is its metric averaged over its seeds, as the table prints it. One resample draws the eval clips
with replacement; every seed of every row is scored on that same draw (`evaluation/bootstrap.py`), so a row's
interval holds the clip-sampling uncertainty of its seed average, and a row minus the reference row, resample by
resample, is a paired difference: the clips that are hard for both cancel out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, EVENT_COLUMNS, read_events
from sedaug.errors import UserError
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
from sedaug.evaluation.postprocess import decode
from sedaug.evaluation.scores import clip_id
from sedaug.files import read_tsv
from sedaug.progress import progress_bar


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
        raise UserError(f"{directory}: unreadable ground truth ({' '.join(str(e).split())})") from None
    durations = pd.to_numeric(clips.get("duration"), errors="coerce")
    if "filename" not in clips or durations is None or not np.isfinite(durations).all():
        raise UserError(f"{directory / 'clips.tsv'}: expected the columns filename and duration (numbers)")
    return GroundTruth(tuple(clips["filename"]), durations.to_numpy(float), events[EVENT_COLUMNS].dropna())


def read_scores(directory: Path, truth: GroundTruth) -> np.ndarray:
    """(N, T, C) frame scores from a run's score files (one sed_scores_eval TSV per clip, as `evaluate` writes
    them), in the ground truth's clip order; frames past a clip's end are 0."""
    header = ["onset", "offset", *CLASSES]
    tables = []
    for name in truth.clips:
        path = directory / f"{clip_id(name)}.tsv"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"{path}: missing: run `sedaug evaluate` on {directory.parent.parent} again") from None
        values = text.split()  # whitespace-separated numbers: 5x faster than pandas for 692 small files
        if values[:len(header)] != header or (len(values) - len(header)) % len(header):
            raise UserError(f"{path}: not a score file of `sedaug evaluate` (columns {' '.join(header)})")
        try:
            tables.append(np.array(values[len(header):], dtype=np.float64).reshape(-1, len(header))[:, 2:])
        except ValueError:
            raise UserError(f"{path}: a score is not a number: run `sedaug evaluate` again") from None
    strong = np.zeros((len(tables), max((len(t) for t in tables), default=0), len(CLASSES)))
    for i, table in enumerate(tables):
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
    return ClipCounts(truth.clips, f1=f1, psds=psds)


# ---------------------------------------------------------------------------------------------- the rows


def check_metrics(metrics: Sequence[str]) -> None:
    unsupported = [m for m in metrics if m not in BOOTSTRAP_METRICS]
    if unsupported:
        raise UserError(f"--ci: no interval for {', '.join(unsupported)} (the bootstrap covers "
                        f"{', '.join(BOOTSTRAP_METRICS)}): leave it out of --metrics")


def bootstrap_rows(
    rows: dict[str, list[EvaluatedRun]],
    split: str,
    metrics: Sequence[str],
    settings: BootstrapSettings,
    progress: bool = False,
) -> tuple[dict[str, RowBootstrap], dict[str, list[str]]]:
    """Intervals and paired differences for each row (seeds averaged), and notes per row (a run whose
    recomputed metric differs from its results.json)."""
    check_metrics(metrics)
    truths: dict[Path, GroundTruth] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    full: dict[str, dict[str, float]] = {}
    notes: dict[str, list[str]] = {name: [] for name in rows}
    weights = clips = None
    n_runs = sum(len(runs) for runs in rows.values())
    with progress_bar("Bootstrap", n_runs, progress) as advance:
        for name, runs in rows.items():
            per_seed, per_seed_full = [], []
            for run in runs:
                features = Path(run.results.get("features") or "")
                truth = truths.get(features) or truths.setdefault(features, read_ground_truth(features, split))
                if clips is None:
                    clips = truth.clips
                    weights = resample_weights(len(clips), settings.resamples, settings.seed)
                elif truth.clips != clips:
                    raise UserError(f"{run.path}: scored on other {split} clips than the other rows "
                                    f"({features}): a paired bootstrap needs the same clips")
                counts = run_counts(run, split, metrics, truth)
                per_seed.append(metric_values(counts, weights, metrics))
                per_seed_full.append(metric_values(counts, np.ones((1, len(clips)), np.float32), metrics))
                stale = [m for m in metrics if _differs(per_seed_full[-1][m][0], run.results.get(m))]
                if stale:
                    notes[name].append(f"{run.path.name}: scores differ from results.json ({', '.join(stale)})")
                advance()
            samples[name] = {m: np.mean([s[m] for s in per_seed], axis=0) for m in metrics}
            full[name] = {m: float(np.mean([s[m][0] for s in per_seed_full])) for m in metrics}
    out = {}
    ref = settings.reference
    for name in rows:
        intervals = {m: Interval(*percentile_interval(samples[name][m], settings.level)) for m in metrics}
        differences = {}
        if ref is not None and ref in samples and name != ref:
            for m in metrics:
                d = samples[name][m] - samples[ref][m]
                differences[m] = Difference(full[name][m] - full[ref][m], *percentile_interval(d, settings.level),
                                            paired_p_value(d))
        out[name] = RowBootstrap(intervals, differences)
    return out, notes


def _differs(recomputed: float, recorded) -> bool:
    """Whether a recomputed full-data value disagrees with the recorded one (stale score files, another ground
    truth); nothing to compare where results.json holds no number."""
    if not isinstance(recorded, int | float) or not math.isfinite(recorded):
        return False
    return not abs(recomputed - recorded) <= 1e-6
