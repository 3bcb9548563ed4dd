"""The bootstrap's per-clip counts against the libraries they stand for (sed_eval, psds_eval), on the clips as they
are and on resampled clip sets (a clip drawn twice = two copies under two names), and its intervals and paired
test on hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from sedaug.data.desed import CLASSES
from sedaug.evaluation.bootstrap import (
    ClipCounts,
    f1_counts,
    metric_values,
    paired_p_value,
    percentile_interval,
    psds_counts,
    resample_weights,
)
from sedaug.evaluation.f1 import event_based_f1
from sedaug.evaluation.postprocess import decode
from sedaug.evaluation.psds import PSDS_VARIANTS, psds_eval_psds

N_FRAMES = 157
FRAME = 0.06375


def synthetic_eval(n_clips: int = 10, seed: int = 0):
    """Clips with a few events each and frame scores that roughly follow them (misses, false alarms, cross
    triggers, a short clip)."""
    rng = np.random.default_rng(seed)
    clips = [f"clip{i:02d}.wav" for i in range(n_clips)]
    durations = np.full(n_clips, 10.0)
    durations[1] = 4.0
    rows = []
    strong = rng.uniform(0, 0.25, (n_clips, N_FRAMES, len(CLASSES)))
    for i, name in enumerate(clips):
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(0, 4))  # few classes: same-class overlaps and cross-triggers happen
            on = round(float(rng.uniform(0, durations[i] - 1)), 3)
            off = round(min(durations[i], on + float(rng.uniform(0.3, 4))), 3)
            rows.append((name, on, off, CLASSES[cls]))
            a, b = int(on / FRAME), int(off / FRAME)
            shift = int(rng.integers(-4, 5))
            level = rng.uniform(0.2, 1.0)
            strong[i, max(0, a + shift):max(0, b + shift), cls] += level
            if rng.uniform() < 0.4:  # a cross-trigger on the next class
                strong[i, a:b, cls + 1] += rng.uniform(0.3, 0.8)
        blip = int(rng.integers(0, N_FRAMES - 10))
        strong[i, blip:blip + int(rng.integers(2, 10)), int(rng.integers(0, len(CLASSES)))] += 0.6
    gt = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    return clips, durations, gt, np.clip(strong, 0, 1)


def renamed_copies(idx, clips, durations, gt, strong):
    """The clip set of one resample, with each drawn clip under a name of its own."""
    names = [f"{clips[i]}#{j}" for j, i in enumerate(idx)]
    gt_rows = [g.assign(filename=names[j]) for j, i in enumerate(idx) if len(g := gt[gt.filename == clips[i]])]
    return names, durations[idx], pd.concat(gt_rows, ignore_index=True), strong[idx]


def library_values(clips, durations, gt, strong):
    detections = decode(strong, clips, 0.5, 7, durations)
    f1 = event_based_f1(detections, gt, clips)
    rocs = psds_eval_psds(strong, clips, durations, gt)
    return {"macro": f1["macro"], "micro": f1["micro"], **{k: rocs[k].value for k in PSDS_VARIANTS}}


def our_counts(clips, durations, gt, strong):
    detections = decode(strong, clips, 0.5, 7, durations)
    return ClipCounts(tuple(clips), f1=f1_counts(detections, gt, clips),
                      psds=psds_counts(strong, durations, gt, clips))


METRICS = ("macro", "micro", *PSDS_VARIANTS)


@pytest.mark.parametrize("seed,touching", [(0, False), (1, False), (0, True)])
def test_counts_reproduce_the_libraries(seed, touching):
    clips, durations, gt, strong = synthetic_eval(seed=seed)
    if touching:  # same-class events that only touch: psds_eval takes them as two (test_evaluate.py)
        follow = gt[gt.offset < 8].assign(onset=lambda g: g.offset, offset=lambda g: g.offset + 1.5)
        gt = pd.concat([gt, follow], ignore_index=True)
    counts = our_counts(clips, durations, gt, strong)
    ours = metric_values(counts, np.ones((1, len(clips)), np.float32), METRICS)
    expected = library_values(clips, durations, gt, strong)
    for m in METRICS:
        assert ours[m][0] == pytest.approx(expected[m], abs=1e-12), m
    assert 0 < expected["psds_ct"] < expected["psds"] < 1 and 0 < expected["macro"] < 1  # a case with content


def test_resamples_reproduce_the_libraries_on_copies():
    clips, durations, gt, strong = synthetic_eval(seed=2)
    counts = our_counts(clips, durations, gt, strong)
    rng = np.random.default_rng(5)
    draws = [rng.integers(0, len(clips), len(clips)) for _ in range(2)]
    weights = np.stack([np.bincount(d, minlength=len(clips)) for d in draws]).astype(np.float32)
    ours = metric_values(counts, weights, METRICS)
    for r, idx in enumerate(draws):
        expected = library_values(*renamed_copies(idx, clips, durations, gt, strong))
        for m in METRICS:
            assert ours[m][r] == pytest.approx(expected[m], abs=1e-12), (r, m)


def test_resample_weights_draw_n_clips_each_time_and_repeat_with_the_seed():
    w = resample_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert (w == resample_weights(7, 50, seed=3)).all() and not (w == resample_weights(7, 50, seed=4)).all()
    assert (w.max(1) > 1).any()  # with replacement


def hand_counts(ref, sys, tp):
    """F1 counts of clips of one class: (N, 3, C) with the class in column 0."""
    f1 = np.zeros((len(ref), 3, len(CLASSES)))
    f1[:, 0, 0], f1[:, 1, 0], f1[:, 2, 0] = ref, sys, tp
    return ClipCounts(tuple(map(str, range(len(ref)))), f1=f1)


def test_a_metric_constant_under_resampling_has_a_point_interval():
    # Every clip: 2 reference events, 2 detections, 1 hit -> F1 = 2 * 1 / (2 + 2) = 0.5 in any resample.
    counts = hand_counts([2, 2, 2, 2], [2, 2, 2, 2], [1, 1, 1, 1])
    values = metric_values(counts, resample_weights(4, 200, 0), ["macro"])["macro"]
    assert percentile_interval(values, 0.95) == (0.5, 0.5)


def test_a_known_difference_has_a_known_sign():
    # Row a finds every event, row b half of them, on the same clips: a - b > 0 in every resample.
    a = hand_counts([2, 1, 3, 2], [2, 1, 3, 2], [2, 1, 3, 2])
    b = hand_counts([2, 1, 3, 2], [2, 1, 3, 2], [1, 0, 2, 1])
    w = resample_weights(4, 500, 1)
    d = metric_values(a, w, ["macro"])["macro"] - metric_values(b, w, ["macro"])["macro"]
    low, high = percentile_interval(d, 0.95)
    assert 0 < low <= high and paired_p_value(d) == 0.0
    # The full-data difference: 1 - F1(b) with tp 4 of 8 -> 1 - 0.5.
    full = metric_values(a, np.ones((1, 4), np.float32), ["macro"])["macro"] - \
        metric_values(b, np.ones((1, 4), np.float32), ["macro"])["macro"]
    assert full[0] == pytest.approx(0.5)


def test_identical_rows_p_value_1_and_zero_interval():
    clips, durations, gt, strong = synthetic_eval(seed=3)
    counts = our_counts(clips, durations, gt, strong)
    w = resample_weights(len(clips), 100, 0)
    for m, v in metric_values(counts, w, METRICS).items():
        d = v - metric_values(counts, w, [m])[m]
        assert paired_p_value(d) == 1.0 and percentile_interval(d, 0.95) == (0.0, 0.0)


def test_paired_p_value_by_hand():
    # Two-sided: twice the smaller share of resampled differences on either side of 0 (0 counts on both sides).
    assert paired_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == 0.5  # 2 x min(1/4, 3/4)
    assert paired_p_value(np.array([-2.0, 0.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)  # 2 x min(2/5, 4/5)
    assert paired_p_value(np.array([-1.0, 0.0, 1.0, np.nan])) == 1.0  # 2 x 2/3, at most 1; NaN left out
    assert np.isnan(paired_p_value(np.array([np.nan])))


def test_percentile_interval_by_hand():
    samples = np.arange(101, dtype=float)  # percentiles 2.5 and 97.5 of 0..100
    assert percentile_interval(samples, 0.95) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.array([np.nan, 1.0, 1.0]), 0.9) == (1.0, 1.0)


def test_window_medians_threshold_like_the_binary_median_filter():
    from sedaug.evaluation.bootstrap import window_medians
    from sedaug.evaluation.postprocess import median_filter

    rng = np.random.default_rng(0)
    strong = np.round(rng.uniform(size=(5, 20, 3)), 2)  # ties between frames and thresholds
    lengths = np.array([20, 9, 3, 1, 2])  # clips shorter than the window reflect more than once
    medians = window_medians(strong, 7, lengths)
    for t in np.round(np.linspace(0.01, 0.99, 50), 6):
        assert ((medians >= t) == median_filter(strong >= t, 7, lengths)).all(), t


def library_sed_scores(clips, durations, gt, strong, metric):
    """sedaug's evaluation of a sed_scores_eval metric (evaluation/results.py's path)."""
    from sedaug.evaluation.postprocess import as_scores, frame_counts, median_filter_scores
    from sedaug.evaluation.psds import SED_SCORES_METRICS, sed_scores_psds
    from sedaug.evaluation.scores import clip_id, score_frames

    params, filtered = SED_SCORES_METRICS[metric]
    strong = as_scores(strong)
    if filtered:
        strong = median_filter_scores(strong, 7, frame_counts(durations, strong.shape[1]))
    scores = score_frames(strong, clips, durations)
    return sed_scores_psds(scores, gt, {clip_id(f): float(d) for f, d in zip(clips, durations, strict=True)}, params)[0]


@pytest.mark.parametrize("metric", ["psds1", "psds2", "psds2_filtered"])
def test_sed_scores_counts_reproduce_sed_scores_eval_on_resamples(metric):
    from sedaug.evaluation.bootstrap_psds import sed_scores_counts, sed_scores_values

    clips, durations, gt, strong = synthetic_eval(n_clips=12, seed=6)
    counts = sed_scores_counts(strong, durations, gt, clips, metric)
    rng = np.random.default_rng(7)
    draws = [np.arange(len(clips))] + [rng.integers(0, len(clips), len(clips)) for _ in range(2)]
    weights = np.stack([np.bincount(d, minlength=len(clips)) for d in draws]).astype(np.float32)
    ours = sed_scores_values(counts, weights, metric)
    for r, idx in enumerate(draws):
        expected = library_sed_scores(*renamed_copies(idx, clips, durations, gt, strong), metric)
        assert ours[r] == pytest.approx(expected, abs=1e-12), (r, metric)
    assert 0 < ours[0] < 1
