"""Bootstrap of the threshold-free PSDS1/PSDS2 (sed_scores_eval; docs/reporting.md), as `bootstrap.py` does for
F1 and psds_eval's PSDS: per-clip statistics computed once, every resample a weighted sum.

sed_scores_eval's own per-clip intermediate statistics are the counts: `intermediate_statistics_deltas` gives, for
each clip and class, the scores at which its true positives, false positives and cross-triggers change, and by
how much. Over a set of clips, the statistics at a threshold are the sums of the changes at scores at or above it;
for a resample, the clips' changes weighted by how often each clip is drawn. Only operating points with an eFPR up
to max_efpr shape the PSD-ROC's area, so each class keeps its highest thresholds, as many as needed for every
resample to pass max_efpr: a lower bound of the false positives at every lower threshold (per clip, the least it
ever reaches below the cut) proves the rest irrelevant, or the cut doubles. The area is `bootstrap.psd_area`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sedaug.evaluation.bootstrap import SECONDS_PER_HOUR, psd_area
from sedaug.evaluation.postprocess import as_scores, frame_counts, median_filter_scores
from sedaug.evaluation.psds import SED_SCORES_METRICS, sed_scores_reference
from sedaug.evaluation.scores import clip_id, score_frames


def sed_scores_counts(
    strong: np.ndarray,
    durations: np.ndarray,
    ground_truth: pd.DataFrame,
    clips: Sequence[str],
    metric: str,
    median_window: int = 7,
) -> dict[str, Any]:
    """Per-clip statistics of one of SED_SCORES_METRICS: for each class with ground truth, its thresholds
    (descending) and the (thresholds x clips) changes of tps, fps and, with a CTTC, cts per other class; the clips'
    durations and per-class ground-truth counts and durations."""
    from scipy.sparse import csr_matrix
    from sed_scores_eval.intersection_based import intermediate_statistics_deltas

    params, filtered = SED_SCORES_METRICS[metric]
    durations = np.asarray(durations, dtype=np.float64)
    strong = as_scores(strong)
    if filtered:
        strong = median_filter_scores(strong, median_window, frame_counts(durations, strong.shape[1]))
    keys = [clip_id(f) for f in clips]
    gt, classes, events = sed_scores_reference(ground_truth, keys)  # as sed_scores_psds
    scores = {k: v[["onset", "offset", *classes]] for k, v in score_frames(strong, clips, durations).items()}
    deltas = intermediate_statistics_deltas(
        scores, events, dtc_threshold=params["dtc_threshold"], gtc_threshold=params["gtc_threshold"],
        cttc_threshold=params["cttc_threshold"])
    n = len(keys)
    where = {c: i for i, c in enumerate(classes)}
    index = gt.filename.map({f: i for i, f in enumerate(clips)}).to_numpy(np.int64)
    label = gt.event_label.map(where).to_numpy(np.int64)
    out: dict[str, Any] = {
        "classes": classes,
        "duration": durations,
        "n_ref": np.bincount(index * len(classes) + label, minlength=n * len(classes)).reshape(n, -1).astype(float),
        "t_ref": np.bincount(index * len(classes) + label, weights=(gt.offset - gt.onset).to_numpy(float),
                             minlength=n * len(classes)).reshape(n, -1),
        "rows": {},
    }
    stat_keys = ["tps", "fps"] + ([f"cts\\{c}" for c in classes] if params["cttc_threshold"] is not None else [])
    for c in classes:
        per_clip = [deltas[k][c] for k in keys]
        scores_c = np.concatenate([cp for cp, _ in per_clip])
        clip = np.repeat(np.arange(n), [len(cp) for cp, _ in per_clip])
        thresholds, row = np.unique(-scores_c, return_inverse=True)  # descending scores: the cumsum's order
        shape = (len(thresholds), n)
        out["rows"][c] = {"thresholds": -thresholds, **{
            key: csr_matrix((np.concatenate([d[key] for _, d in per_clip]).astype(float), (row, clip)), shape=shape)
            for key in stat_keys if key != f"cts\\{c}"}}
    return out


def sed_scores_values(counts: dict[str, Any], weights: np.ndarray, metric: str) -> np.ndarray:
    """The metric (sed_scores_eval's `psds` with SED_SCORES_METRICS' parameters) under each row of weights (R, N)."""
    params, _ = SED_SCORES_METRICS[metric]
    max_efpr, alpha_ct, alpha_st = params["max_efpr"], params["alpha_ct"], params["alpha_st"]
    w = np.asarray(weights, dtype=np.float64)
    classes = counts["classes"]
    duration = w @ counts["duration"]  # seconds
    n_ref, t_ref = w @ counts["n_ref"], w @ counts["t_ref"]
    present = n_ref > 0  # a class without ground truth in a resample is left out, as sed_scores_psds leaves it
    points = []
    for i, c in enumerate(classes):
        rows = counts["rows"][c]
        k = _cut(rows["fps"], w, duration, max_efpr)
        tpr = np.cumsum((rows["tps"][:k] @ w.T), axis=0).T / np.maximum(n_ref[:, i:i + 1], 1)
        efpr = np.cumsum((rows["fps"][:k] @ w.T), axis=0).T / duration[:, None]
        if alpha_ct:
            others = [j for j in range(len(classes)) if j != i]
            rates = [np.cumsum(rows[f"cts\\{classes[j]}"][:k] @ w.T, axis=0).T / np.maximum(t_ref[:, j:j + 1], 1e-12)
                     for j in others]
            mask = present[:, others]
            with np.errstate(invalid="ignore"):
                mean = sum(rate * mask[:, m:m + 1] for m, rate in enumerate(rates)) / mask.sum(1, keepdims=True)
            efpr = efpr + alpha_ct * np.nan_to_num(mean)
        points.append((efpr * SECONDS_PER_HOUR, tpr))
    width = 1 + max(x.shape[1] for x, _ in points)  # + the zero point (threshold above every score)
    r = len(w)
    x = np.full((r, len(classes), width), np.inf)
    y = np.zeros((r, len(classes), width))
    for i, (efpr, tpr) in enumerate(points):
        x[:, i, 0] = 0.0
        x[:, i, 1:1 + efpr.shape[1]], y[:, i, 1:1 + tpr.shape[1]] = efpr, tpr
    return psd_area(x, y, present, alpha_st, max_efpr)


def _cut(fps, w: np.ndarray, duration: np.ndarray, max_efpr: float) -> int:
    """How many of a class's highest thresholds hold every operating point with an eFPR up to max_efpr in every
    resample: below the cut, each clip's false positives never drop under their least value there, and the
    weighted sum of those least values already exceeds max_efpr (cross-triggers only add to the eFPR)."""
    # First guess: twice as many thresholds as the full clip set needs to pass max_efpr.
    total = np.cumsum(np.asarray(fps.sum(1)).ravel()) / duration.mean() * SECONDS_PER_HOUR
    past = total > max_efpr
    k = min(len(total), 2 * int(np.argmax(past) if past.any() else len(total)) + 64)
    coo = fps.tocsc().tocoo()
    frame = pd.DataFrame({"clip": coo.col, "row": coo.row, "value": coo.data}).sort_values(["clip", "row"])
    frame["cum"] = frame.groupby("clip").value.cumsum()
    n = fps.shape[1]
    while k < len(total):
        at = frame[frame.row < k].groupby("clip").cum.last().reindex(range(n), fill_value=0.0)
        below = frame[frame.row >= k].groupby("clip").cum.min().reindex(range(n), fill_value=np.inf)
        least = np.minimum(at.to_numpy(), below.to_numpy())
        if ((w @ least) / duration * SECONDS_PER_HOUR > max_efpr).all():
            return k
        k = min(len(total), 2 * k)
    return k
