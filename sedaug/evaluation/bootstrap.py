"""Bootstrap over eval clips (docs/reporting.md): each metric of a run is a function of per-clip counts, summed
over clips, so a resample of the clips is a weight vector (how many times each clip is drawn) and all resamples
of all runs are one matrix product, `weights @ counts`.

The counts are computed once per run, with the evaluation's own definitions:
- event-based F1 (sed_eval, `evaluation/f1.py`): per clip and class, reference events, system events and matched
  pairs. sed_eval matches each (clip, class) by maximum bipartite matching under its onset/offset collars; the
  same matching of all clips at once is one scipy `maximum_bipartite_matching` (the graph has no edge between
  clips or classes).
- PSDS (psds_eval, `evaluation/psds.py`): per clip, operating point (threshold) and class, the ground-truth events
  detected (DTC and GTC), the false positives (detections failing the DTC) and the cross-triggers (CTTC) with each
  other class, plus each clip's ground-truth counts and durations. The PSD-ROC and its area then follow psds_eval's
  `psds()` step by step (step curve = best TPR at or below each eFPR, mean - alpha_st * std over classes, area up
  to max_efpr), for every resample at once. Both are tested against the libraries on resampled clip sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, EVENT_COLUMNS
from sedaug.evaluation.f1 import EVENT_BASED
from sedaug.evaluation.postprocess import (
    as_scores,
    event_runs,
    frame_counts,
    merge_overlaps,
    reflected_windows,
    run_seconds,
)
from sedaug.evaluation.psds import PSDS_CRITERIA, PSDS_MAX_EFPR, PSDS_THRESHOLDS, PSDS_VARIANTS

F1_METRICS = ("macro", "micro")
PSDS_EVAL_METRICS = tuple(PSDS_VARIANTS)
BOOTSTRAP_METRICS = F1_METRICS + PSDS_EVAL_METRICS
SECONDS_PER_HOUR = 3600.0
N_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class ClipCounts:
    """One run's per-clip counts on a split (N clips, K thresholds, C classes); None for a part not computed."""

    clips: tuple[str, ...]
    f1: np.ndarray | None = None  # (N, 3, C): reference events, system events, true positives (sed_eval)
    psds: dict[str, np.ndarray] | None = None  # psds_eval: duration (N,), n_gt, gt_duration (N, C),
    # tp, fp (N, K, C), ct (N, K, C, C) [detection class, ground-truth class]
    sed_scores: dict[str, dict] = field(default_factory=dict)  # metric -> bootstrap_psds.sed_scores_counts


# ---------------------------------------------------------------------------------------------- F1 (sed_eval)


def _index(table: pd.DataFrame, clips: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(clip index, class index) of each event of a DCASE table."""
    where = {name: i for i, name in enumerate(clips)}
    clip = table["filename"].map(where)
    if clip.isna().any():
        raise ValueError(f"events name clips that are not in `clips`: {sorted(set(table.filename[clip.isna()]))[:3]}")
    cls = table["event_label"].map({c: i for i, c in enumerate(CLASSES)})
    if cls.isna().any():
        raise ValueError(f"unknown event labels: {sorted(set(table.event_label[cls.isna()]))[:3]}")
    return clip.to_numpy(np.int64), cls.to_numpy(np.int64)


def f1_counts(detections: pd.DataFrame, ground_truth: pd.DataFrame, clips: Sequence[str]) -> np.ndarray:
    """(N, 3, C) per clip and class: reference events, system events, and true positives as sed_eval's
    EventBasedMetrics counts them (EVENT_BASED collars, optimal matching)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    ref = ground_truth[EVENT_COLUMNS].dropna().reset_index(drop=True)
    det = detections[EVENT_COLUMNS].dropna().reset_index(drop=True)
    n, c = len(clips), N_CLASSES
    ref_clip, ref_cls = _index(ref, clips)
    det_clip, det_cls = _index(det, clips)
    counts = np.zeros((n, 3, c))
    counts[:, 0] = np.bincount(ref_clip * c + ref_cls, minlength=n * c).reshape(n, c)
    counts[:, 1] = np.bincount(det_clip * c + det_cls, minlength=n * c).reshape(n, c)
    pairs = pd.merge(
        pd.DataFrame({"key": ref_clip * c + ref_cls, "r": np.arange(len(ref))}),
        pd.DataFrame({"key": det_clip * c + det_cls, "d": np.arange(len(det))}), on="key")
    r, d = pairs["r"].to_numpy(), pairs["d"].to_numpy()
    ron, roff = ref.onset.to_numpy(float)[r], ref.offset.to_numpy(float)[r]
    don, doff = det.onset.to_numpy(float)[d], det.offset.to_numpy(float)[d]
    collar = EVENT_BASED["t_collar"]
    hit = np.abs(ron - don) <= collar  # sed_eval's validate_onset and validate_offset, as written there
    hit &= np.abs(roff - doff) <= np.maximum(collar, EVENT_BASED["percentage_of_length"] * (roff - ron))
    if hit.any():
        graph = csr_matrix((np.ones(hit.sum()), (r[hit], d[hit])), shape=(len(ref), len(det)))
        matched = maximum_bipartite_matching(graph, perm_type="column") >= 0  # per reference event
        counts[:, 2] = np.bincount((ref_clip * c + ref_cls)[matched], minlength=n * c).reshape(n, c)
    return counts


def _f1_values(sums: np.ndarray, metric: str) -> np.ndarray:
    """macro or micro F1 from summed counts (R, 3, C), with sed_eval's conventions: a class without reference
    events has no F1 (left out of macro), an empty system output scores 0."""
    ref, sys, tp = sums[:, 0], sums[:, 1], sums[:, 2]
    if metric == "micro":
        ref, sys, tp = ref.sum(1), sys.sum(1), tp.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(sys > 0, tp / sys, 0.0)
        recall = np.where(ref > 0, tp / ref, np.nan)
        f = np.where((precision == 0) & (recall == 0), 0.0, 2 * precision * recall / (precision + recall))
    if metric == "micro":
        return f
    defined = np.isfinite(f)
    with np.errstate(invalid="ignore"):
        return np.where(defined, f, 0.0).sum(1) / defined.sum(1)  # NaN when no class has a reference event


# ---------------------------------------------------------------------------------------------- PSDS (psds_eval)


def psds_counts(
    strong: np.ndarray,
    durations: np.ndarray,
    ground_truth: pd.DataFrame,
    clips: Sequence[str],
    *,
    median_window: int = 7,
    thresholds: np.ndarray = PSDS_THRESHOLDS,
) -> dict[str, np.ndarray]:
    """psds_eval's counts per clip for frame scores (N, T, C): each threshold's detections are decoded as
    `psds_eval_psds` decodes them (threshold, median filter, runs), then judged against the merged ground truth."""
    strong = as_scores(strong)
    durations = np.asarray(durations, dtype=np.float64)
    n, c, k = len(clips), N_CLASSES, len(thresholds)
    gt = merge_overlaps(ground_truth, touching=False)
    g_clip, g_cls = _index(gt, clips)
    g_on, g_off = gt.onset.to_numpy(float), gt.offset.to_numpy(float)
    # Ground truth padded per clip: (N, G), class -1 and an empty span where a clip has fewer events.
    slot = np.zeros(len(gt), dtype=np.int64)
    order = np.argsort(g_clip, kind="stable")
    starts = np.searchsorted(g_clip[order], np.arange(n))
    slot[order] = np.arange(len(gt)) - starts[g_clip[order]]
    width = int(slot.max()) + 1 if len(gt) else 1
    pad_cls = np.full((n, width), -1)
    pad_on, pad_off = np.zeros((n, width)), np.zeros((n, width))
    pad_cls[g_clip, slot], pad_on[g_clip, slot], pad_off[g_clip, slot] = g_cls, g_on, g_off
    counts = {
        "duration": durations,
        "n_gt": np.bincount(g_clip * c + g_cls, minlength=n * c).reshape(n, c).astype(float),
        "gt_duration": np.bincount(g_clip * c + g_cls, weights=g_off - g_on, minlength=n * c).reshape(n, c),
        "tp": np.zeros((n, k, c)), "fp": np.zeros((n, k, c)), "ct": np.zeros((n, k, c, c)),
    }
    lengths = frame_counts(durations, strong.shape[1])
    medians = np.ascontiguousarray(window_medians(strong, median_window, lengths).transpose(0, 2, 1))  # (N, C, T)
    for i, threshold in enumerate(thresholds):
        # A binary median filter after a threshold is the threshold of the median filter (a window holds at least
        # w - w // 2 frames >= threshold exactly when its median is >= threshold): one filter for all thresholds.
        clip, cls, start, stop = event_runs(medians >= threshold)
        on, off = run_seconds(start, stop, clip, durations)
        keep = off > on  # psds_eval drops empty detections
        tp, fp, ct = _judge(clip[keep], cls[keep], on[keep], off[keep], pad_cls, pad_on, pad_off)
        counts["tp"][:, i], counts["fp"][:, i], counts["ct"][:, i] = tp, fp, ct
    return counts


def window_medians(strong: np.ndarray, window: int, lengths: np.ndarray) -> np.ndarray:
    """(N, T, C) median of each frame's window of `window` frames over time, with `median_filter`'s edges (each
    clip reflected at its own end); frames past a clip's end are -inf. `median_filter(strong >= t, window,
    lengths)` equals `window_medians(strong, window, lengths) >= t` for every t (tested)."""
    n, t, c = strong.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    if window > 1 and t > 0:
        padded = np.take_along_axis(strong, reflected_windows(t, window, lengths)[:, :, None], axis=1)
        windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)  # (N, T, C, window)
        strong = np.partition(windows, window // 2, axis=-1)[..., window // 2]
    return np.where(np.arange(t)[None, :, None] < lengths[:, None, None], strong, -np.inf)


def _judge(clip, cls, on, off, pad_cls, pad_on, pad_off):
    """psds_eval's criteria for one operating point's detections, counted per clip: (tp, fp) (N, C), ct (N, C, C)."""
    n, width = pad_cls.shape
    c = N_CLASSES
    gcls, gon, goff = pad_cls[clip], pad_on[clip], pad_off[clip]  # (D, G): the ground truth of each detection's clip
    inter = np.minimum(off[:, None], goff) - np.maximum(on[:, None], gon)
    inter = np.where(inter > 0, inter, 0.0)  # psds_eval keeps strictly overlapping pairs only
    precision = inter / (off - on)[:, None]  # psds_eval's det_precision
    same = gcls == cls[:, None]
    dtc = np.where(same, precision, 0.0).sum(1) >= PSDS_CRITERIA["dtc_threshold"]
    # GTC: a ground-truth event covered enough by detections of its class that pass the DTC is detected.
    span = np.where(gcls >= 0, goff - gon, 1.0)
    covered = np.where(same & dtc[:, None], inter / span, 0.0)  # psds_eval's gt_coverage, summed per event
    flat = (clip[:, None] * width + np.arange(width)).ravel()
    coverage = np.bincount(flat, weights=covered.ravel(), minlength=n * width).reshape(n, width)
    detected = (coverage >= PSDS_CRITERIA["gtc_threshold"]) & (pad_cls >= 0)
    rows = np.repeat(np.arange(n), width)
    tp = np.bincount(rows[detected.ravel()] * c + pad_cls.ravel()[detected.ravel()], minlength=n * c)
    # A detection failing the DTC is a false positive (psds_eval's WORLD class), and a cross-trigger on each other
    # class whose events it overlaps by at least the CTTC.
    miss = ~dtc
    fp = np.bincount(clip[miss] * c + cls[miss], minlength=n * c)
    onehot = (gcls[miss][:, :, None] == np.arange(c)).astype(float)
    other = np.einsum("dg,dgj->dj", precision[miss], onehot) >= PSDS_CRITERIA["cttc_threshold"]
    other[np.arange(len(other)), cls[miss]] = False
    d, j = np.nonzero(other)
    ct = np.bincount((clip[miss][d] * c + cls[miss][d]) * c + j, minlength=n * c * c)
    return tp.reshape(n, c), fp.reshape(n, c), ct.reshape(n, c, c)


def _psds_values(sums: dict[str, np.ndarray], alpha_ct: float, alpha_st: float,
                 max_efpr: float = PSDS_MAX_EFPR) -> np.ndarray:
    """psds_eval's `psds(alpha_ct, alpha_st, max_efpr)` for each resample's summed counts (leading axis R)."""
    n_gt, gt_dur, dur = sums["n_gt"], sums["gt_duration"], sums["duration"]
    tp, fp, ct = sums["tp"], sums["fp"], sums["ct"]
    r, k, c = tp.shape
    present = n_gt > 0  # psds_eval knows the classes of the ground truth only
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = tp / n_gt[:, None, :]
        fpr = fp * SECONDS_PER_HOUR / dur[:, None, None]
        ctr = ct * SECONDS_PER_HOUR / gt_dur[:, None, None, :]
    others = present[:, None, :] & ~np.eye(c, dtype=bool)[None]  # (R, C, C): the classes each one can cross-trigger
    with np.errstate(invalid="ignore"):
        mean_ctr = np.where(others[:, None], ctr, 0.0).sum(-1) / others.sum(-1)[:, None]
    efpr = fpr + alpha_ct * mean_ctr if alpha_ct else fpr
    # Each class's operating points plus the zero point (psds_eval's and sed_scores_eval's alike): (R, C, K + 1).
    x = np.concatenate([efpr, np.zeros((r, 1, c))], 1).transpose(0, 2, 1)
    y = np.concatenate([tpr, np.zeros((r, 1, c))], 1).transpose(0, 2, 1)
    return psd_area(x, y, present, alpha_st, max_efpr)


def psd_area(x: np.ndarray, y: np.ndarray, present: np.ndarray, alpha_st: float, max_efpr: float,
             chunk_elements: int = 2**23) -> np.ndarray:
    """PSDS of each resample from its classes' operating points: x (R, C, P) eFPR, y (R, C, P) TPR, `present`
    (R, C) the classes with ground truth. Each class's step curve is its best TPR at or below each eFPR (both
    libraries' curve); mean - alpha_st * std over the present classes, floored at 0, integrated up to max_efpr
    as a staircase, divided by max_efpr. Resamples go in chunks of about `chunk_elements` points."""
    r, c, p = x.shape
    step = max(1, chunk_elements // (c * p))
    if r > step:
        return np.concatenate([psd_area(x[i:i + step], y[i:i + step], present[i:i + step], alpha_st, max_efpr,
                                        chunk_elements) for i in range(0, r, step)])
    x = np.where(present[:, :, None], x, 0.0)
    y = np.where(present[:, :, None], y, 0.0)
    # Each class's step curve at its own points, in eFPR order: the running best TPR.
    order = np.argsort(x, axis=2, kind="stable")
    x = np.take_along_axis(x, order, 2)
    best = np.maximum.accumulate(np.take_along_axis(y, order, 2), axis=2)
    before = np.concatenate([np.zeros((r, c, 1)), best[:, :, :-1]], 2)
    # Swept over all classes' points in eFPR order, one class's curve steps at each point: the sum and the sum of
    # squares over classes change by that step alone (ties: the last of them carries the interval to the next).
    union = np.argsort(x.reshape(r, -1), axis=1, kind="stable")  # stable: each class's own order is kept
    xs = np.take_along_axis(x.reshape(r, -1), union, 1)
    total = np.cumsum(np.take_along_axis((best - before).reshape(r, -1), union, 1), axis=1)
    count = present.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        etpr = mean
        if alpha_st:
            squares = np.cumsum(np.take_along_axis((best ** 2 - before ** 2).reshape(r, -1), union, 1), axis=1)
            etpr = mean - alpha_st * np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    etpr = np.clip(np.nan_to_num(etpr, nan=0.0), 0.0, None)
    xc = np.minimum(xs, max_efpr)
    dx = np.diff(np.concatenate([xc, np.full((r, 1), max_efpr)], 1), axis=1)
    return (dx * etpr).sum(1) / max_efpr


# ---------------------------------------------------------------------------------------------- resampling


def resample_weights(n_clips: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_clips) float32: how many times each clip is drawn in each resample (n_clips draws with
    replacement). One seed gives the same resamples to every row, which makes the comparison paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clips, size=(resamples, n_clips))
    flat = (draws + np.arange(resamples)[:, None] * n_clips).ravel()
    return np.bincount(flat, minlength=resamples * n_clips).reshape(resamples, n_clips).astype(np.float32)


def metric_values(counts: ClipCounts, weights: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Each metric (BOOTSTRAP_METRICS) of one run under each row of `weights` (R, N): (R,) arrays."""
    out: dict[str, np.ndarray] = {}
    r, n = weights.shape
    if any(m in F1_METRICS for m in metrics):
        sums = (weights @ counts.f1.reshape(n, -1).astype(np.float32)).reshape(r, 3, -1).astype(np.float64)
        out.update({m: _f1_values(sums, m) for m in metrics if m in F1_METRICS})
    if any(m in PSDS_EVAL_METRICS for m in metrics):
        w64 = weights.astype(np.float64)
        sums = {key: w64 @ value if value.ndim < 3 else _sum_counts(weights, value) for key, value in counts.psds.items()}
        out.update({m: _psds_values(sums, *PSDS_VARIANTS[m]) for m in metrics if m in PSDS_EVAL_METRICS})
    return out


def _sum_counts(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """weights (R, N) @ counts (N, ...) over the columns that are not all 0 (most cross-trigger pairs are); counts
    are small integers, exact in float32."""
    r, n = weights.shape
    flat = counts.reshape(n, -1)
    used = np.flatnonzero(flat.any(0))
    out = np.zeros((r, flat.shape[1]))
    out[:, used] = weights @ flat[:, used].astype(np.float32)
    return out.reshape(r, *counts.shape[1:])


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap samples at `level` (0.95), as sed_scores_eval's `confidence_interval`
    computes it; NaN samples (a resample where the metric is undefined) are left out."""
    from sed_scores_eval.base_modules.bootstrap import confidence_interval

    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    _, low, high = confidence_interval(samples, confidence=level)
    return low, high


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference: twice the smaller share of resamples on either side of
    0, at most 1 (identical rows: every difference is 0, p = 1)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
