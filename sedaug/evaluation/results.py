"""Every metric of one split's frame scores, and the files that hold them: `<split>/results.json` (its keys are
what `sedaug table` can show), `detections.tsv`, `scores/` and `psd_roc.png`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, EVENT_COLUMNS
from sedaug.data.grid import FRAME_SECONDS
from sedaug.errors import UserError, one_line
from sedaug.evaluation.f1 import EVENT_BASED, event_based_f1, nan_to_none
from sedaug.evaluation.plots import plot_per_class, plot_psd_rocs, run_title
from sedaug.evaluation.postprocess import (
    as_scores,
    decode,
    frame_counts,
    median_filter_scores,
    merge_overlaps,
)
from sedaug.evaluation.psds import (
    PSDS1,
    PSDS2,
    PSDS_CRITERIA,
    PSDS_MAX_EFPR,
    PSDS_THRESHOLDS,
    PSDS_VARIANTS,
    SED_SCORES_METRICS,
    psds_eval_psds,
    sed_scores_psds,
)
from sedaug.evaluation.scores import clip_id, score_frames, write_scores
from sedaug.files import atomic_dir, is_temporary, write_json, write_tsv

# The numbers `sedaug table` can put in a column (top-level keys of results.json).
# psds1/psds2 score the raw frame scores; the *_filtered ones median-filter them first (DESED_task's 2023+ baselines).
METRICS = ("macro", "micro", "psds", "psds_ct", "psds_macro", "psds1", "psds2", "psds1_filtered", "psds2_filtered")


@dataclass
class Evaluation:
    """Everything `write_evaluation` writes: the results dict and the tables/curves behind it."""

    results: dict[str, Any]
    detections: pd.DataFrame
    scores: dict[str, pd.DataFrame]
    psd_rocs: dict[str, Any] = field(default_factory=dict)


@contextmanager
def timed(timing: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block takes to `timing[phase]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[phase] = round(timing.get(phase, 0.0) + time.perf_counter() - start, 3)


def evaluate_scores(
    strong: np.ndarray,
    filenames: Sequence[str],
    durations: np.ndarray,
    ground_truth: pd.DataFrame,
    *,
    threshold: float = 0.5,
    median_window: int = 7,
    progress: bool = False,
    timing: dict[str, float] | None = None,
) -> Evaluation:
    """Every metric of the DCASE 2020 protocol (docs/architecture.md, "Evaluation") on frame scores (N, T, C)."""
    timing = {} if timing is None else timing
    strong = as_scores(strong)
    durations = np.asarray(durations, dtype=np.float64)
    ground_truth = ground_truth[EVENT_COLUMNS].dropna()
    gt_classes = set(merge_overlaps(ground_truth, touching=False).event_label)
    results: dict[str, Any] = {
        "n_clips": len(filenames),
        "clips_sha256": hashlib.sha256("\n".join(sorted(map(str, filenames))).encode()).hexdigest(),
        "n_events": len(ground_truth),
        "duration_hours": float(durations.sum() / 3600),
    }
    with timed(timing, "macro"):
        detections = decode(strong, filenames, threshold, median_window, durations)
        f1 = event_based_f1(detections, ground_truth, filenames)
    results.update(macro=nan_to_none(f1["macro"]), micro=f1["micro"], per_class=f1["per_class"])

    with timed(timing, "psds"):
        rocs = psds_eval_psds(strong, filenames, durations, ground_truth, median_window=median_window,
                              progress=progress)
    for name in PSDS_VARIANTS:
        results[name] = float(rocs[name].value) if name in rocs else None

    with timed(timing, "scores"):
        scores = score_frames(strong, filenames, durations)
        lengths = frame_counts(durations, strong.shape[1])
        filtered = score_frames(median_filter_scores(strong, median_window, lengths), filenames, durations)
    clip_durations = {clip_id(f): float(d) for f, d in zip(filenames, durations, strict=True)}
    for name, (params, is_filtered) in SED_SCORES_METRICS.items():
        with timed(timing, name):
            value, per_class = sed_scores_psds(filtered if is_filtered else scores, ground_truth, clip_durations, params)
        results[name] = value
        results[f"{name}_per_class"] = per_class

    results["classes_without_events"] = [c for c in CLASSES if c not in gt_classes]
    results["params"] = {
        "threshold": threshold,
        "median_window": median_window,
        "frame_seconds": FRAME_SECONDS,
        "event_based": EVENT_BASED,
        "psds": {**PSDS_CRITERIA, "max_efpr": PSDS_MAX_EFPR, "n_thresholds": len(PSDS_THRESHOLDS),
                 "thresholds": [round(float(t), 6) for t in PSDS_THRESHOLDS],
                 "variants": {k: {"alpha_ct": a, "alpha_st": b} for k, (a, b) in PSDS_VARIANTS.items()}},
        "psds1": PSDS1,
        "psds2": PSDS2,
        "unit_of_time": "hour",
    }
    return Evaluation(results=results, detections=detections, scores=scores, psd_rocs=rocs)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_evaluation(evaluation: Evaluation, out_dir: Path, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """<split>/scores/*.tsv, detections.tsv, psd_roc.png, results.json (last, so it marks a complete job);
    returns what results.json holds."""
    timing = {} if timing is None else timing
    out_dir = Path(out_dir)
    # The folder is filled aside and swapped in whole: a failure (a full disk) leaves the previous evaluation as it
    # was, never half of a new one beside it.
    with atomic_dir(out_dir) as tmp:
        with timed(timing, "write"):
            write_scores(evaluation.scores, tmp / "scores")
            write_tsv(tmp / "detections.tsv", evaluation.detections)
            plot_psd_rocs(evaluation.psd_rocs, tmp / "psd_roc.png", run_title(evaluation.results))
            plot_per_class(evaluation.results, tmp / "per_class.png")
        results = _json_safe({**evaluation.results, "timing": timing})
        write_json(tmp / "results.json", results)
        _keep_the_rest(out_dir, tmp)
    return results


def _keep_the_rest(old: Path, new: Path) -> None:
    """What else the old folder holds (a user's notes, figures, hidden files) comes along into the new one, as hard
    links: until the new folder is swapped in, the old one keeps them whole. evaluate's own files and folders are the
    new evaluation's (a file put into scores/ goes with the old scores)."""
    if not old.is_dir():
        return
    def link(source: str, target: str) -> None:
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:  # a file of another user's (protected_hardlinks), say: copied
            shutil.copy2(source, target, follow_symlinks=False)

    for entry in old.iterdir():
        if is_temporary(entry.name) or os.path.lexists(new / entry.name):  # scores/ and the others: the new ones
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=link)
        else:
            link(str(entry), str(new / entry.name))


def read_results(path: Path, metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """A `results.json` as `sedaug evaluate` writes it, checked: a JSON object whose metrics are scores in [0, 1]
    or null (not computable), each of `metrics` present. Anything else is a one-line UserError naming the file."""
    advice = "run `sedaug evaluate` again"
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: unreadable results ({one_line(err)}): {advice}") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: not the results of `sedaug evaluate` (a JSON {type(results).__name__}): {advice}")
    for name in dict.fromkeys([*metrics, *METRICS]):
        if name not in results:
            if name in metrics:
                raise UserError(f"{path}: no {name} (not the results of `sedaug evaluate`, or an older one's): {advice}")
            continue
        value = results[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and 0.0 <= value <= 1.0):
            raise UserError(f"{path}: {name} is {json.dumps(value)[:40]}, not a score between 0 and 1: {advice}")
    return results
