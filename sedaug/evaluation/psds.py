"""PSDS, two back-ends: psds_eval with 50 thresholds (dcase20, Table 1) and sed_scores_eval threshold-free
(PSDS1/PSDS2 of later DCASE years).

Both are computed over the classes that have at least one ground-truth event in the split: psds_eval infers its
classes from the ground truth, sed_scores_eval refuses a class without one. On the real DESED every class has
events; `results.json` lists the classes left out, if any. Same-class ground-truth events that overlap are merged
first, and for sed_scores_eval those that touch too (`merge_overlaps`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES
from sedaug.evaluation.postprocess import (
    SCORE_DECIMALS,
    as_scores,
    binary_to_events,
    frame_counts,
    median_filter,
    merge_overlaps,
)
from sedaug.evaluation.scores import clip_id
from sedaug.progress import progress_bar

PSDS_CRITERIA = {"dtc_threshold": 0.5, "gtc_threshold": 0.5, "cttc_threshold": 0.3}
PSDS_MAX_EFPR = 100.0
PSDS_THRESHOLDS = np.round(np.linspace(0.01, 0.99, 50), SCORE_DECIMALS)  # 0.01, 0.03, ..., 0.99 exactly
# name -> (alpha_ct, alpha_st); Table 1's `psds` column is psds_ct.
PSDS_VARIANTS = {"psds": (0.0, 0.0), "psds_ct": (1.0, 0.0), "psds_macro": (0.0, 1.0)}
# Threshold-free PSDS of later DCASE years (sed_scores_eval).
PSDS1 = {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0,
         "max_efpr": 100.0}
PSDS2 = {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0,
         "max_efpr": 100.0}
# metric -> (its parameters, whether the scores are median-filtered first: DESED_task's 2023+ baselines)
SED_SCORES_METRICS = {"psds1": (PSDS1, False), "psds2": (PSDS2, False),
                      "psds1_filtered": (PSDS1, True), "psds2_filtered": (PSDS2, True)}


@contextmanager
def _quiet() -> Iterator[None]:
    """psds_eval warns on pandas/numpy deprecations and on operating points equal to an earlier one (skipped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="A similar operating point exists")
        yield


def clip_metadata(filenames: Sequence[str], durations: np.ndarray) -> pd.DataFrame:
    """psds_eval's metadata table: filename, duration."""
    return pd.DataFrame({"filename": list(filenames), "duration": np.asarray(durations, dtype=np.float64)})


def psds_eval_psds(
    strong: np.ndarray,
    filenames: Sequence[str],
    durations: np.ndarray,
    ground_truth: pd.DataFrame,
    *,
    median_window: int = 7,
    thresholds: np.ndarray = PSDS_THRESHOLDS,
    progress: bool = False,
) -> dict[str, Any]:
    """PSDS with psds_eval (dcase20): decode at each threshold -> operating points -> psds per (alpha_ct, alpha_st).

    Returns psds_eval's PSDS tuples (`.value`, `.plt` for the PSD-ROC) by name (PSDS_VARIANTS), or {} when the
    ground truth holds no event.
    """
    from psds_eval import PSDSEval

    gt = merge_overlaps(ground_truth, touching=False)
    if gt.empty:
        return {}
    strong = as_scores(strong)
    lengths = frame_counts(durations, strong.shape[1])
    with _quiet():
        evaluator = PSDSEval(**PSDS_CRITERIA, ground_truth=gt, metadata=clip_metadata(filenames, durations))
        with progress_bar("PSDS operating points", len(thresholds), progress) as advance:
            for threshold in thresholds:
                binary = median_filter(strong >= threshold, median_window, lengths)
                evaluator.add_operating_point(
                    binary_to_events(binary, filenames, durations), info={"threshold": float(threshold)}
                )
                advance()
        return {
            name: evaluator.psds(alpha_ct=a_ct, alpha_st=a_st, max_efpr=PSDS_MAX_EFPR)
            for name, (a_ct, a_st) in PSDS_VARIANTS.items()
        }


def sed_scores_psds(
    scores: dict[str, pd.DataFrame],
    ground_truth: pd.DataFrame,
    durations: dict[str, float],
    params: dict[str, Any],
) -> tuple[float | None, dict[str, float]]:
    """Threshold-free PSDS (sed_scores_eval) over the classes with ground truth; (None, {}) when there is none.

    `scores` and `durations` are keyed by clip_id; `params` holds dtc/gtc/cttc thresholds, alpha_ct/alpha_st and
    max_efpr (PSDS1, PSDS2).
    """
    from sed_scores_eval.intersection_based import psds

    _, classes, events = sed_scores_reference(ground_truth, list(scores))
    if not classes:
        return None, {}
    if len(classes) < len(CLASSES):
        scores = {k: v[["onset", "offset", *classes]] for k, v in scores.items()}
    value, per_class, *_ = psds(scores, events, durations, unit_of_time="hour", **params)
    return float(value), {c: float(per_class[c]) for c in classes}


def sed_scores_reference(ground_truth: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, list[str], dict]:
    """The ground truth as sed_scores_eval takes it: merged (`merge_overlaps`), its classes (those with an event:
    sed_scores_eval refuses a class without one) and each clip's events by clip_id, for the clips `keys`."""
    gt = merge_overlaps(ground_truth, touching=True)
    events: dict[str, list] = {key: [] for key in keys}
    for f, on, off, label in gt.itertuples(index=False):
        events[clip_id(f)].append((float(on), float(off), label))
    return gt, [c for c in CLASSES if c in set(gt.event_label)], events
