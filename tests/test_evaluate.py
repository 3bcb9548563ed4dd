"""Post-processing and metric adapters, against hand-computed answers and the reference libraries."""

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import torch
from psds_eval import PSDSEval
from psds_eval.psds import PSDSEvalError
from sed_scores_eval.base_modules.io import read_sed_scores

from sedaug import evaluate as ev
from sedaug.checkpoint import TrainState
from sedaug.data.desed import CLASSES
from sedaug.data.grid import FRAME_SECONDS
from sedaug.errors import UserError
from sedaug.evaluation.f1 import event_based_f1
from sedaug.evaluation.postprocess import decode, median_filter, merge_overlaps
from sedaug.evaluation.predict import predict
from sedaug.evaluation.psds import (
    PSDS1,
    PSDS2,
    PSDS_CRITERIA,
    PSDS_THRESHOLDS,
    PSDS_VARIANTS,
    clip_metadata,
    psds_eval_psds,
    sed_scores_psds,
)
from sedaug.evaluation.results import METRICS
from sedaug.evaluation.scores import clip_id, score_frames, write_scores
from sedaug.recipe import validate_recipe

F = FRAME_SECONDS
T = 157
COLUMNS = ["filename", "onset", "offset", "event_label"]


def events(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def scores_from_events(gt: pd.DataFrame, filenames, level: float = 1.0) -> np.ndarray:
    """Frame scores that reproduce events lying on the frame grid: `level` inside, 0 outside."""
    strong = np.zeros((len(filenames), T, len(CLASSES)), np.float32)
    index = {f: i for i, f in enumerate(filenames)}
    for f, on, off, label in gt.itertuples(index=False):
        strong[index[f], round(on / F) : round(off / F), CLASSES.index(label)] = level
    return strong


def grid_split(n_clips: int, seed: int):
    """Clips of 10 s with 1-3 events on the frame grid (>= 8 frames, same-class events apart)."""
    rng = np.random.default_rng(seed)
    filenames = [f"clip{i:03d}.wav" for i in range(n_clips)]
    rows = []
    for f in filenames:
        for c in rng.choice(len(CLASSES), size=rng.integers(1, 4), replace=False):
            start = int(rng.integers(0, T - 40))
            rows.append((f, round(start * F, 6), round((start + int(rng.integers(8, 40))) * F, 6), CLASSES[c]))
    return filenames, np.full(n_clips, 10.0), events(*rows)


# ---------------------------------------------------------------------------------------------- post-processing


def test_frame_to_seconds():
    assert FRAME_SECONDS == 0.06375  # 255 samples x 4 (pooling) / 16 kHz
    strong = np.zeros((1, T, len(CLASSES)))
    strong[0, 2:5, 3] = 0.9  # frames 2, 3, 4
    strong[0, 150:, 0] = 0.5  # to the clip's end; 0.5 >= threshold 0.5 counts as active (dcase_util)
    got = decode(strong, ["a.wav"], threshold=0.5, median_window=1)
    # onset 2 x 0.06375 = 0.1275; offset (4 + 1) x 0.06375 = 0.31875; 157 x 0.06375 = 10.00875
    assert got.values.tolist() == [["a.wav", 7.5 * 1.275, 10.00875, "Alarm_bell_ringing"],
                                   ["a.wav", 0.1275, 0.31875, "Dishes"]]
    # With the clip's duration the last frame ends there.
    assert decode(strong, ["a.wav"], 0.5, 1, durations=np.array([10.0])).offset.tolist() == [10.0, 0.31875]


def test_events_shorter_than_one_frame_are_kept_and_short_clips_cut():
    strong = np.zeros((1, T, len(CLASSES)))
    strong[0, 10, 1] = 1.0
    strong[0, 60:80, 2] = 1.0  # past the end of a 4 s clip (63 frames, the last one ends at 4.0 s)
    got = decode(strong, ["a.wav"], median_window=1, durations=np.array([4.0]))
    assert got.values.tolist() == [["a.wav", 0.6375, 0.70125, "Blender"], ["a.wav", 3.825, 4.0, "Cat"]]


def test_median_filter_by_hand():
    x = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1], bool)[:, None]
    # Window 3 = majority of (x[t-1], x[t], x[t+1]); at the edges scipy's 'reflect' repeats the edge value:
    # t0: (1)1 1 -> 1   t2: 1 0 1 -> 1 (gap filled)   t5: 1 0 0 -> 0   t7: 0 1 0 -> 0 (lone frame removed)
    # t10: 0 1 1 -> 1   t11: 1 1 (1) -> 1 (the event touching the end is kept)
    expected = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    assert median_filter(x, 3)[:, 0].astype(int).tolist() == expected
    # Window 5 (3 of 5): t0 sees (x1 x0 | x0 x1 x2) = 1 1 1 1 0 -> 1; t4 sees x2..x6 = 0 1 1 0 0 -> 0;
    # t5 sees 1 1 0 0 1 -> 1; t9 sees 1 0 0 1 1 -> 1; t11 sees x9 x10 x11 | x11 x10 = 0 1 1 1 1 -> 1
    assert median_filter(x, 5)[:, 0].astype(int).tolist() == [1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("window", [1, 2, 3, 6, 7, 9])
def test_median_filter_equals_scipy(window):
    rng = np.random.default_rng(window)
    x = rng.random((6, 40, 3)) < 0.4
    lengths = np.array([40, 40, 25, 9, 4, 1])
    got = median_filter(x, window, lengths)
    for i, n in enumerate(lengths):
        want = scipy.ndimage.median_filter(x[i, :n].astype(np.uint8), size=(window, 1))
        np.testing.assert_array_equal(got[i, :n], want.astype(bool), err_msg=f"clip {i}, length {n}")
        assert not got[i, n:].any()


def test_decode_equals_a_slow_obvious_decoder():
    rng = np.random.default_rng(0)
    strong = rng.random((5, T, len(CLASSES))) ** 3
    durations = np.array([10.0, 10.0, 7.3, 2.0, 0.5])
    names = [f"c{i}.wav" for i in range(5)]
    rows = []
    for i, name in enumerate(names):
        n = int(np.ceil(durations[i] / F))
        for c, label in enumerate(CLASSES):
            active = scipy.ndimage.median_filter((strong[i, :n, c] >= 0.4).astype(int), size=7)
            t = 0
            while t < n:
                if active[t]:
                    start = t
                    while t < n and active[t]:
                        t += 1
                    rows.append((name, round(start * F, 6), min(round(t * F, 6), durations[i]), label))
                t += 1
    want = events(*rows).sort_values(COLUMNS).reset_index(drop=True)
    got = decode(strong, names, 0.4, 7, durations).sort_values(COLUMNS).reset_index(drop=True)
    assert len(want) > 20
    pd.testing.assert_frame_equal(got, want)


def test_merge_overlaps():
    gt = events(
        ("a.wav", 2.0, 5.0, "Dog"), ("a.wav", 1.0, 3.0, "Dog"), ("a.wav", 5.0, 6.0, "Dog"),  # overlap, then touch
        ("a.wav", 7.0, 8.0, "Dog"), ("a.wav", 2.0, 4.0, "Cat"), ("b.wav", 1.5, 2.5, "Dog"),
        ("b.wav", 3.0, 3.0, "Dog"),  # empty: dropped
    )
    got = merge_overlaps(gt, touching=True).sort_values(COLUMNS).values.tolist()
    assert got == [["a.wav", 1.0, 6.0, "Dog"], ["a.wav", 2.0, 4.0, "Cat"], ["a.wav", 7.0, 8.0, "Dog"],
                   ["b.wav", 1.5, 2.5, "Dog"]]
    got = merge_overlaps(gt, touching=False).sort_values(COLUMNS).values.tolist()
    assert got == [["a.wav", 1.0, 5.0, "Dog"], ["a.wav", 2.0, 4.0, "Cat"], ["a.wav", 5.0, 6.0, "Dog"],
                   ["a.wav", 7.0, 8.0, "Dog"], ["b.wav", 1.5, 2.5, "Dog"]]


# ---------------------------------------------------------------------------------------------- event-based F1


def test_f1_perfect_predictions():
    names, durations, gt = grid_split(8, seed=1)
    detections = decode(scores_from_events(gt, names), names, durations=durations)
    result = event_based_f1(detections, gt, names)
    present = set(gt.event_label)
    assert result["macro"] == 1.0 and result["micro"] == 1.0
    assert all(result["per_class"][c]["f1"] == 1.0 for c in present)
    # Classes without reference events have an undefined F1, left out of the macro average.
    assert all(result["per_class"][c]["f1"] is None for c in set(CLASSES) - present)


def test_f1_shift_beyond_collar_is_zero():
    gt = events(("a.wav", 1.0, 3.0, "Dog"), ("b.wav", 4.0, 8.0, "Speech"))
    shifted = gt.assign(onset=gt.onset + 0.25, offset=gt.offset + 0.25)  # onset off by 0.25 s > 0.2 s collar
    assert event_based_f1(shifted, gt, ["a.wav", "b.wav"])["macro"] == 0.0
    within = gt.assign(onset=gt.onset + 0.15, offset=gt.offset + 0.15)
    assert event_based_f1(within, gt, ["a.wav", "b.wav"])["macro"] == 1.0


def test_f1_partial_by_hand():
    gt = events(("a.wav", 1.0, 3.0, "Dog"), ("a.wav", 4.0, 6.0, "Speech"), ("b.wav", 2.0, 5.0, "Dog"))
    detections = events(
        ("a.wav", 1.1, 3.1, "Dog"),  # onset 0.1 <= 0.2, offset 0.1 <= max(0.2, 0.2 x 2 s): hit
        ("a.wav", 4.5, 6.0, "Speech"),  # onset 0.5 > 0.2: a false positive and a miss
        ("b.wav", 2.0, 5.0, "Dog"),  # hit
        ("b.wav", 0.0, 1.0, "Cat"),  # Cat has no reference: its F1 is undefined, not 0
        ("c.wav", 0.0, 2.0, "Dog"),  # a clip without reference events: its false positive counts
    )
    result = event_based_f1(detections, gt, ["a.wav", "b.wav", "c.wav", "d.wav"])
    # Dog: TP 2, FP 1, FN 0 -> P 2/3, R 1, F = 2 (2/3)(1) / (2/3 + 1) = 0.8
    # Speech: TP 0, FP 1, FN 1 -> F 0.   Cat: no reference -> None.   macro = (0.8 + 0) / 2 = 0.4
    # micro: TP 2 of 5 detections and 3 references -> P 0.4, R 2/3, F = 2 (0.4)(2/3) / (0.4 + 2/3) = 0.5
    assert result["per_class"]["Dog"] == pytest.approx({"f1": 0.8, "precision": 2 / 3, "recall": 1.0})
    assert result["per_class"]["Speech"]["f1"] == 0.0
    assert result["per_class"]["Cat"]["f1"] is None
    assert result["macro"] == pytest.approx(0.4)
    assert result["micro"] == pytest.approx(0.5)


def test_f1_offset_collar_is_20_percent_of_a_long_event():
    """sed_eval's offset condition: |offset error| <= max(0.2 s, 20 % of the reference's length): 2 s for 10 s."""
    gt = events(("a.wav", 0.0, 10.0, "Speech"), ("b.wav", 0.0, 10.0, "Dog"))
    detections = events(("a.wav", 0.0, 8.1, "Speech"),  # 1.9 s early: a hit
                        ("b.wav", 0.0, 7.9, "Dog"))  # 2.1 s early: a false positive and a miss
    result = event_based_f1(detections, gt, ["a.wav", "b.wav"])
    assert result["per_class"]["Speech"]["f1"] == 1.0 and result["per_class"]["Dog"]["f1"] == 0.0
    assert result["macro"] == 0.5 and result["micro"] == pytest.approx(0.5)  # TP 1, FP 1, FN 1


def test_f1_empty_output_scores_zero():
    gt = events(("a.wav", 1.0, 3.0, "Dog"))
    result = event_based_f1(events(), gt, ["a.wav"])
    assert result["macro"] == 0.0 and result["per_class"]["Dog"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


# ---------------------------------------------------------------------------------------------- PSDS


def exact_psds(strong, names, durations, gt, alpha_ct, alpha_st):
    """sed_scores_eval (threshold-free) with psds_eval's criteria, on the same score grid."""
    params = {**PSDS_CRITERIA, "alpha_ct": alpha_ct, "alpha_st": alpha_st, "max_efpr": 100.0}
    if alpha_ct == 0:
        params["cttc_threshold"] = None
    frames = score_frames(strong, names, durations)
    return sed_scores_psds(frames, gt, {clip_id(f): d for f, d in zip(names, durations, strict=True)}, params)[0]


def test_psds_perfect_predictions():
    names, durations, gt = grid_split(8, seed=2)
    strong = scores_from_events(gt, names)
    rocs = psds_eval_psds(strong, names, durations, gt)
    assert {k: v.value for k, v in rocs.items()} == pytest.approx({"psds": 1.0, "psds_ct": 1.0, "psds_macro": 1.0})
    frames = score_frames(strong, names, durations)
    clip_durations = {clip_id(f): d for f, d in zip(names, durations, strict=True)}
    assert sed_scores_psds(frames, gt, clip_durations, PSDS1)[0] == pytest.approx(1.0)
    assert sed_scores_psds(frames, gt, clip_durations, PSDS2)[0] == pytest.approx(1.0)


def test_psds_criteria_and_weights_by_hand():
    """Each criterion at work, in hand-computed cases (frame grid: an event of 100 frames).

    Dog, three clips, its event at frames [0, 100): a.wav detected over [0, 60) (dtc 1, gtc 0.6), b.wav over [0, 40)
    (gtc 0.4), c.wav over [40, 150) (dtc 60/110 = 0.55, gtc 0.6). Cat in d.wav, found exactly. dcase20's criteria
    (dtc = gtc = 0.5) find a and c: Dog's TPR 2/3, no false positive (b's detection passes dtc), Cat's 1; PSDS1's
    (0.7) find no Dog and call c a false positive (90 per hour of the 40 s); PSDS2's (0.1) find all."""
    names, durations = ["a.wav", "b.wav", "c.wav", "d.wav"], np.full(4, 10.0)
    gt = events(*[(f, 0.0, 100 * F, "Dog") for f in names[:3]], ("d.wav", 0.0, 100 * F, "Cat"))
    dog, cat = CLASSES.index("Dog"), CLASSES.index("Cat")
    found = np.zeros((4, T, len(CLASSES)))
    found[0, 0:60, dog] = found[1, 0:40, dog] = found[2, 40:150, dog] = found[3, 0:100, cat] = 0.9
    clip_durations = {clip_id(f): 10.0 for f in names}

    def both(strong):
        frames = score_frames(strong, names, durations)
        return ({k: v.value for k, v in psds_eval_psds(strong, names, durations, gt).items()},
                [sed_scores_psds(frames, gt, clip_durations, p)[0] for p in (PSDS1, PSDS2)])

    dcase20, (psds1, psds2) = both(found)
    # mean TPR (5/6) at every eFPR; psds_macro takes the TPRs' standard deviation (1/6) off
    assert dcase20 == pytest.approx({"psds": 5 / 6, "psds_ct": 5 / 6, "psds_macro": 2 / 3})
    assert psds1 == pytest.approx(0.0)  # Dog 0, Cat 1: mean 1/2 - std 1/2 (alpha_st 1)
    assert psds2 == pytest.approx(1.0)
    # A cross-trigger: Cat detected over a.wav's Dog [60, 100) at 0.5, and d.wav's Cat found at 0.5 only. At the
    # thresholds up to 0.5, Cat's TPR is 1 at 90 false positives per hour, plus alpha_ct x 188 cross-triggers per
    # hour of Dog (1 in 3 x 100 frames): inside max_efpr (100) only where alpha_ct = 0, over its last tenth.
    crossed = found.copy()
    crossed[3, 0:100, cat] = crossed[0, 60:100, cat] = 0.5
    dcase20, (_, psds2) = both(crossed)
    assert dcase20 == pytest.approx({"psds": (2 / 3 + 0.1) / 2,  # alpha_ct 0: Cat's area is 0.1
                                     "psds_ct": (2 / 3 + 0) / 2,  # alpha_ct 1: Cat's eFPR is past max_efpr
                                     "psds_macro": 0.1 * (5 / 6 - 1 / 6)})  # TPRs (2/3, 0), then (2/3, 1)
    assert psds2 == pytest.approx(0.0)  # alpha_ct 0.5: Cat past max_efpr, Dog 1: mean 1/2 - std 1/2


def test_psds_parameters_are_the_dcase_definitions():
    """What the cases above leave loose: dcase20's psds_eval call (dtc = gtc = 0.5, cttc = 0.3, max_efpr 100; Table
    1's psds is alpha_ct 1), PSDS1 and PSDS2 as DCASE 2021-2023 Task 4 define them."""
    assert PSDS_CRITERIA == {"dtc_threshold": 0.5, "gtc_threshold": 0.5, "cttc_threshold": 0.3}
    assert PSDS_VARIANTS == {"psds": (0.0, 0.0), "psds_ct": (1.0, 0.0), "psds_macro": (0.0, 1.0)}
    assert PSDS1 == {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0,
                     "alpha_st": 1.0, "max_efpr": 100.0}
    assert PSDS2 == {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5,
                     "alpha_st": 1.0, "max_efpr": 100.0}


def noisy_scores(gt, names, levels, seed):
    """Scores following the events with jittered boundaries, plus false alarms; values drawn from `levels`."""
    rng = np.random.default_rng(seed)
    strong = np.zeros((len(names), T, len(CLASSES)))
    index = {f: i for i, f in enumerate(names)}
    for f, on, off, label in gt.itertuples(index=False):
        a, b = round(on / F) + rng.integers(-6, 7), round(off / F) + rng.integers(-6, 7)
        strong[index[f], max(a, 0) : max(b, a + 1), CLASSES.index(label)] = rng.choice(levels)
    for _ in range(3 * len(names)):
        i, c, a = rng.integers(len(names)), rng.integers(len(CLASSES)), rng.integers(0, T - 10)
        strong[i, a : a + rng.integers(2, 30), c] = rng.choice(levels)
    return strong


def test_psds_50_thresholds_is_a_lower_bound_of_the_exact_psds():
    names, durations, gt = grid_split(20, seed=3)
    # Many levels between two thresholds (0.31 and 0.33, 0.71 and 0.73): the 50 thresholds see 2 of them.
    levels = np.r_[np.linspace(0.311, 0.329, 10), np.linspace(0.711, 0.729, 10)]
    strong = noisy_scores(gt, names, levels, 3)
    rocs = psds_eval_psds(strong, names, durations, gt, median_window=1)
    for name in ("psds", "psds_ct"):  # mean TPR only: with alpha_st > 0 the std term is not monotone
        exact = exact_psds(strong, names, durations, gt, *PSDS_VARIANTS[name])
        assert 0.0 < rocs[name].value < exact, name  # strictly: operating points between thresholds are lost


def test_psds_equals_the_exact_psds_on_the_same_operating_points():
    # Scores take a few values that lie on the threshold grid, so the 50 thresholds reach every operating point
    # the exact computation has (the "all frames active" one at score 0 lies beyond max_efpr).
    names, durations, gt = grid_split(30, seed=4)
    strong = noisy_scores(gt, names, PSDS_THRESHOLDS[[5, 20, 30, 45]], 4)
    rocs = psds_eval_psds(strong, names, durations, gt, median_window=1)
    for name, (alpha_ct, alpha_st) in PSDS_VARIANTS.items():
        exact = exact_psds(strong, names, durations, gt, alpha_ct, alpha_st)
        assert 0.1 < exact < 0.95, name  # a non-trivial case
        assert rocs[name].value == pytest.approx(exact, abs=1e-6), name


def test_overlapping_ground_truth_is_merged_for_psds():
    names, durations, gt = grid_split(6, seed=5)
    first = gt.iloc[0]
    overlapping = pd.concat([gt, events((first.filename, first.onset + F, first.offset + 4 * F, first.event_label))])
    with pytest.raises(PSDSEvalError, match="intersecting"):  # why the merge exists
        PSDSEval(**PSDS_CRITERIA, ground_truth=overlapping, metadata=clip_metadata(names, durations))
    merged = merge_overlaps(overlapping, touching=False)
    assert len(merged) == len(gt)
    strong = noisy_scores(merged, names, [0.3, 0.8], 5)
    got = psds_eval_psds(strong, names, durations, overlapping)
    want = psds_eval_psds(strong, names, durations, merged)
    assert {k: v.value for k, v in got.items()} == {k: v.value for k, v in want.items()}
    assert exact_psds(strong, names, durations, overlapping, 0.5, 1.0) == exact_psds(
        strong, names, durations, merged, 0.5, 1.0)


def test_touching_ground_truth_is_scored_as_annotated_by_psds_eval():
    """psds_eval takes same-class events that only touch (dcase20 scored them as two); merging them, as
    sed_scores_eval needs, would score a detection of the first as a detection of both."""
    names, durations = ["a.wav", "b.wav"], np.array([10.0, 10.0])
    gt = events(("a.wav", 16 * F, 32 * F, "Dog"), ("a.wav", 32 * F, 48 * F, "Dog"), ("b.wav", 80 * F, 96 * F, "Cat"))
    strong = np.zeros((2, T, len(CLASSES)))
    strong[0, 16:32, CLASSES.index("Dog")] = strong[1, 80:96, CLASSES.index("Cat")] = 0.9  # the first Dog only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = PSDSEval(**PSDS_CRITERIA, ground_truth=gt, metadata=clip_metadata(names, durations))
        for threshold in PSDS_THRESHOLDS:
            library.add_operating_point(decode(strong, names, threshold, 7, durations))
        want = {name: library.psds(a_ct, a_st, 100.0).value for name, (a_ct, a_st) in PSDS_VARIANTS.items()}
    got = {k: v.value for k, v in psds_eval_psds(strong, names, durations, gt).items()}
    assert got == pytest.approx(want, abs=1e-12)
    assert got["psds"] == pytest.approx(0.75)  # 2 of 3 events found at each threshold; merged, all 3 would be
    assert exact_psds(strong, names, durations, gt, 0.0, 0.0) == pytest.approx(1.0)  # sed_scores_eval: merged


# ---------------------------------------------------------------------------------------------- predict, evaluate_run


class TinyModel(torch.nn.Module):
    """(B, 628, 128) -> strong (B, 157, 10), weak (B, 10); records its mode and batch sizes."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(128, len(CLASSES))
        self.calls = []

    def forward(self, mel, perturb=None):
        self.calls.append((self.training, torch.is_inference_mode_enabled(), len(mel)))
        strong = torch.sigmoid(self.proj(mel.float()[:, ::4][:, :T]))
        return strong, strong.mean(1)


def test_predict_batches_in_eval_mode_and_restores_the_mode():
    model = TinyModel().train()
    mels = np.random.default_rng(0).random((5, 628, 128)).astype(np.float16)
    got = predict(model, mels, batch_size=2, device="cpu")
    assert got.shape == (5, T, len(CLASSES)) and got.dtype == np.float32
    assert model.calls == [(False, True, 2), (False, True, 2), (False, True, 1)]
    assert model.training
    with torch.no_grad():
        np.testing.assert_allclose(got, model.eval()(torch.from_numpy(mels.astype(np.float32)))[0].numpy(), rtol=1e-6)


@dataclass
class FakeSplit:
    mels: np.ndarray
    filenames: list
    durations: np.ndarray
    events: pd.DataFrame | None

    def __len__(self):
        return len(self.filenames)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run whose checkpoint loads as TinyModel, over a fake 10-clip `eval` split (one clip 7.5 s, one without
    events) and a `weak` split without strong labels; yields (run dir, eval split, evaluate_run's results)."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    names, durations, gt = grid_split(10, seed=6)
    gt = gt[gt.filename != names[-1]]
    durations[3] = 7.5
    gt = gt.assign(offset=np.where(gt.filename == names[3], np.minimum(gt.offset, 7.5), gt.offset))
    mels = np.random.default_rng(6).random((10, 628, 128)).astype(np.float16)
    features = tmp_path / "features"
    recipe = {"name": "fake", "seed": 3, "data": {"features": str(features)},
              "eval": {"threshold": 0.5, "median_window": 7, "batch_size": 4}}
    model = TinyModel()
    torch.nn.init.normal_(model.proj.weight, std=2.0)

    def load_model(run_dir, which, device):
        if not (run_dir / "checkpoints" / f"{which}.pt").exists():
            raise UserError(f"{run_dir}/checkpoints/{which}.pt not found: train first")
        return model, validate_recipe(recipe), TrainState(epoch=4, global_step=40)

    class FakeStore:
        def __init__(self, path):
            assert path == features

        def split(self, name):
            return FakeSplit(mels, names, durations, gt if name == "eval" else None)

    run = tmp_path / "runs" / "fake" / "seed3"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").touch()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sedaug.evaluate.load_model", load_model)
        mp.setattr("sedaug.evaluate.FeatureStore", FakeStore)
        yield run, FakeStore(features).split("eval"), ev.evaluate_run(run, "eval", progress=False)


def test_evaluate_run_writes_the_run_folder(fake_run):
    run, split, results = fake_run
    out = run / "eval"
    assert sorted(p.name for p in out.iterdir()) == ["detections.tsv", "per_class.png", "psd_roc.png", "results.json",
                                                     "scores"]
    assert json.loads((out / "results.json").read_text()) == results
    assert results["checkpoint"] == {"name": "best", "path": str(run / "checkpoints" / "best.pt"), "epoch": 4,
                                     "step": 40}
    assert results["n_clips"] == 10 and results["split"] == "eval" and results["recipe"] == "fake"
    for metric in METRICS:
        assert 0.0 <= results[metric] <= 1.0, metric
    assert set(results["per_class"]) == set(CLASSES)
    assert set(results["timing"]) == {"predict", "macro", "psds", "scores", "psds1", "psds2", "psds1_filtered",
                                      "psds2_filtered", "write"}

    umask = os.umask(0)
    os.umask(umask)
    assert (out / "scores").stat().st_mode & 0o777 == 0o777 & ~umask  # the user's permissions, not mkdtemp's 0700
    frames = read_sed_scores(out / "scores")  # sed_scores_eval's own reader validates the format
    assert sorted(frames) == [clip_id(f) for f in split.filenames]
    assert list(frames["clip000"].columns) == ["onset", "offset", *CLASSES]
    assert len(frames["clip003"]) == 118 and frames["clip003"].offset.iloc[-1] == 7.5  # ceil(7.5 / 0.06375)
    # The files hold exactly the scores that were evaluated: PSDS1 computed from them is the reported one.
    durations = {clip_id(f): d for f, d in zip(split.filenames, split.durations, strict=True)}
    assert sed_scores_psds(frames, split.events, durations, PSDS1)[0] == results["psds1"]
    # psds1_filtered: the same scores median-filtered over time first (scipy, 7 frames, each clip's real frames).
    from scipy.ndimage import median_filter

    filtered = {k: v.assign(**{c: median_filter(v[c].to_numpy(), size=7, mode="reflect") for c in CLASSES})
                for k, v in frames.items()}
    assert sed_scores_psds(filtered, split.events, durations, PSDS1)[0] == pytest.approx(results["psds1_filtered"], abs=1e-12)

    detections = pd.read_csv(out / "detections.tsv", sep="\t")
    assert list(detections.columns) == COLUMNS and len(detections) > 0
    assert (out / "psd_roc.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_is_one_line(fake_run):
    run, _, results = fake_run
    line = ev.summary(run, results)
    assert "\n" not in line and "best.pt, epoch 4, step 40" in line and f"macro F1 {results['macro']:.3f}" in line
    assert line.endswith(str(run / "eval"))


def test_evaluate_run_user_errors(fake_run):
    run, _, _ = fake_run
    with pytest.raises(UserError, match="last.pt not found"):
        ev.evaluate_run(run, "eval", checkpoint="last", progress=False)
    with pytest.raises(UserError, match="no strong labels"):
        ev.evaluate_run(run, "weak", progress=False)


def test_write_scores_replaces_the_folder(tmp_path):
    frames = score_frames(np.zeros((2, T, len(CLASSES))), ["a.wav", "b.wav"], np.array([10.0, 10.0]))
    write_scores(frames, tmp_path / "scores")
    write_scores({"c": frames["a"]}, tmp_path / "scores")
    assert [p.name for p in tmp_path.iterdir()] == ["scores"]
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["c.tsv"]
