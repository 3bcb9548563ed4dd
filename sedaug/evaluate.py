"""Post-processing, metrics, score/detection files and the PSD-ROC plot (DESIGN §7); one implementation for
`sedaug evaluate` and for the training loop's model selection.

Pipeline: frame scores (N, T, C) -> threshold (`score >= threshold`, as dcase_util's binarization in dcase20)
-> median filter over time on the binary output -> contiguous runs -> events in seconds.

Decisions worth knowing:
- The frame grid is cut at each clip's real duration: a clip shorter than 10 s (padded for the model) keeps its
  first ceil(duration / FRAME_SECONDS) frames, the last one ending at the duration. Scores, detections and both
  PSDS implementations use that same grid, so nothing is ever detected in the padding.
- `macro` is sed_eval's class-wise average F1 (dcase20), a nanmean: a class with no reference event has an
  undefined (NaN, reported as null) F1 and is left out of the average, even when it has false positives.
  Every clip of the split is fed to sed_eval, those without reference events too, so their false positives count
  (dcase20 fed only the clips that had reference events).
- PSDS (psds_eval and sed_scores_eval) are computed over the classes that have at least one ground-truth event
  in the split: psds_eval infers its classes from the ground truth, sed_scores_eval refuses a class without one.
  On the real DESED every class has events; `results.json` lists the classes left out, if any.
- Same-class ground-truth events that overlap or touch are merged before PSDS (`merge_overlaps`); event-based
  F1 sees the ground truth as annotated (dcase20).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, progress_bar, write_tsv
from sedaug.errors import UserError
from sedaug.rundir import RunDir, atomic_path, write_json

FRAME_SECONDS = 255 * 4 / 16000  # one output frame: hop 255 samples at 16 kHz, pooled 4x in time (0.06375 s)
EVENT_COLUMNS = ["filename", "onset", "offset", "event_label"]
TIME_DECIMALS = 6  # event and frame times are multiples of 0.06375 (5 decimals): rounding only removes fp noise
SCORE_DECIMALS = 6  # frame scores as evaluated and written (float32 outputs carry about 7 digits)

EVENT_BASED = {"t_collar": 0.2, "percentage_of_length": 0.2, "evaluate_onset": True, "evaluate_offset": True}
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

# The numbers `sedaug table` can put in a column (top-level keys of results.json).
METRICS = ("macro", "micro", "psds", "psds_ct", "psds_macro", "psds1", "psds2")


# ---------------------------------------------------------------------------------------------- post-processing


def as_scores(strong: np.ndarray) -> np.ndarray:
    """Frame scores as every function here sees them: float64 rounded to SCORE_DECIMALS, so that decoding,
    both PSDS implementations and the score files (which read back exactly) agree to the last digit."""
    return np.round(np.asarray(strong, dtype=np.float64), SCORE_DECIMALS)


def frame_counts(durations: np.ndarray, n_frames: int) -> np.ndarray:
    """How many output frames cover each clip: ceil(duration / FRAME_SECONDS), at least 1, at most n_frames."""
    counts = np.ceil(np.asarray(durations, dtype=np.float64) / FRAME_SECONDS - 1e-9)
    return np.clip(counts, 1, n_frames).astype(np.int64)


def frame_timestamps(n: int, duration: float | None = None) -> np.ndarray:
    """Frame boundaries in seconds (n + 1 values); the last one is cut at the clip's duration when given."""
    ts = np.round(np.arange(n + 1) * FRAME_SECONDS, TIME_DECIMALS)
    if duration is not None:
        ts[-1] = min(ts[-1], float(duration))
    return ts


def median_filter(binary: np.ndarray, window: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """Median filter over time (axis -2), per class, of a binary (T, C) or (N, T, C) array.

    Same output as `scipy.ndimage.median_filter(binary, size=(1, window, 1))` with its default edge mode
    'reflect' (d c b a | a b c d | d c b a), dcase20's call: an event touching a clip edge is mirrored there,
    so it is not eroded (mode 'constant' would shrink it). `lengths` (N,) gives each clip's valid frames: the
    filter reflects at each clip's own end and frames past it come out False.
    For a binary input the median is a count: out = (#ones in the window >= window - window // 2), computed with
    a cumulative sum, so all clips and classes go at once.
    """
    x = np.asarray(binary, dtype=bool)
    single = x.ndim == 2
    if single:
        x = x[None]
    n, t, c = x.shape
    lengths = np.full(n, t) if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(n)
    if window > 1 and t > 0:
        before = window // 2  # scipy centres a window of size w at offset w // 2
        pos = np.arange(-before, t + window - before - 1)
        period = 2 * lengths[:, None]
        m = np.mod(pos[None, :], period)  # symmetric reflection, repeated if the window is longer than the clip
        idx = np.where(m < lengths[:, None], m, period - 1 - m)
        padded = np.take_along_axis(x, idx[:, :, None], axis=1)
        csum = np.zeros((n, padded.shape[1] + 1, c), dtype=np.int32)
        np.cumsum(padded, axis=1, out=csum[:, 1:])
        x = (csum[:, window:] - csum[:, :-window]) >= window - window // 2
    x = x & (np.arange(t)[None, :, None] < lengths[:, None, None])
    return x[0] if single else x


def binary_to_events(
    binary: np.ndarray, filenames: Sequence[str], durations: np.ndarray | None = None
) -> pd.DataFrame:
    """Contiguous runs of a (N, T, C) binary array -> events (filename, onset, offset, event_label), in seconds.

    onset = first frame · FRAME_SECONDS, offset = (last frame + 1) · FRAME_SECONDS, cut at the clip's duration.
    """
    x = np.swapaxes(np.asarray(binary, dtype=bool), 1, 2)  # (N, C, T): nonzero() then sorts by clip, class, time
    edges = np.diff(np.pad(x, ((0, 0), (0, 0), (1, 1))).astype(np.int8), axis=2)
    clip, cls, start = np.nonzero(edges == 1)
    _, _, stop = np.nonzero(edges == -1)
    onset = np.round(start * FRAME_SECONDS, TIME_DECIMALS)
    offset = np.round(stop * FRAME_SECONDS, TIME_DECIMALS)
    if durations is not None:
        offset = np.minimum(offset, np.asarray(durations, dtype=np.float64)[clip])
    return pd.DataFrame(
        {
            "filename": np.asarray(filenames, dtype=object)[clip],
            "onset": onset,
            "offset": offset,
            "event_label": np.asarray(CLASSES, dtype=object)[cls],
        }
    )


def decode(
    strong: np.ndarray,
    filenames: Sequence[str],
    threshold: float = 0.5,
    median_window: int = 7,
    durations: np.ndarray | None = None,
) -> pd.DataFrame:
    """Frame scores (N, T, C) -> events: `score >= threshold`, median filter, runs -> seconds.

    Without `durations` every clip uses all T frames (the last offset is T · 0.06375 = 10.009 s for 157 frames).
    """
    strong = as_scores(strong)
    if strong.ndim != 3 or len(strong) != len(filenames) or strong.shape[2] != len(CLASSES):
        raise ValueError(f"strong must be (N, T, {len(CLASSES)}) with N = len(filenames), got {strong.shape}")
    lengths = None if durations is None else frame_counts(durations, strong.shape[1])
    binary = median_filter(strong >= threshold, median_window, lengths)
    return binary_to_events(binary, filenames, durations)


def merge_overlaps(events: pd.DataFrame) -> pd.DataFrame:
    """Merge same-class events of a clip that overlap or touch (PSDS code refuses them), and drop empty ones."""
    ev = events[EVENT_COLUMNS].dropna()
    ev = ev[ev.offset > ev.onset].sort_values(["filename", "event_label", "onset", "offset"], kind="stable")
    if ev.empty:
        return ev.reset_index(drop=True)
    files, labels = ev.filename.to_numpy(), ev.event_label.to_numpy()
    same = (files[1:] == files[:-1]) & (labels[1:] == labels[:-1])  # row i + 1 continues row i's (file, class)
    keys = np.r_[0, np.cumsum(~same)]
    reach = ev.offset.groupby(keys).cummax().values  # furthest offset so far within (file, class)
    starts = np.r_[True, ~same | (ev.onset.values[1:] > reach[:-1])]
    group = np.cumsum(starts)
    merged = ev.groupby(group, sort=False).agg(
        filename=("filename", "first"), onset=("onset", "min"), offset=("offset", "max"),
        event_label=("event_label", "first"),
    )
    return merged.reset_index(drop=True)[EVENT_COLUMNS]


# ---------------------------------------------------------------------------------------------- event-based F1


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def event_based_f1(
    detections: pd.DataFrame, ground_truth: pd.DataFrame, filenames: Sequence[str]
) -> dict[str, Any]:
    """Event-based F1 (sed_eval, t_collar 0.2 s, 20 % of length, onset and offset), fed clip by clip.

    Returns {"macro", "micro", "per_class": {class: {"f1", "precision", "recall"}}}; a class with no reference
    event has f1 None and is left out of `macro` (sed_eval's nanmean); empty system output scores 0.
    """
    import sed_eval

    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(CLASSES), empty_system_output_handling="zero_score", **EVENT_BASED
    )
    known = set(filenames)
    per_file = {}
    for name, table in (("detections", detections), ("ground truth", ground_truth)):
        table = table[EVENT_COLUMNS].dropna()
        unknown = set(table.filename) - known
        if unknown:
            raise ValueError(f"{name} name clips that are not in `filenames`: {sorted(unknown)[:3]}")
        per_file[name] = {f: g.to_dict("records") for f, g in table.groupby("filename", sort=False)}
    for name in filenames:
        metric.evaluate(per_file["ground truth"].get(name, []), per_file["detections"].get(name, []))
    results = metric.results()
    per_class = {
        c: {k: _nan_to_none(results["class_wise"][c]["f_measure"][m])
            for k, m in (("f1", "f_measure"), ("precision", "precision"), ("recall", "recall"))}
        for c in CLASSES
    }
    defined = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    return {
        # sed_eval's class-wise average, without its "mean of empty slice" warning when no class is defined.
        "macro": float(np.mean(defined)) if defined else float("nan"),
        "micro": _nan_to_none(results["overall"]["f_measure"]["f_measure"]),
        "per_class": per_class,
    }


# ---------------------------------------------------------------------------------------------- PSDS


@contextmanager
def _quiet() -> Iterator[None]:
    """psds_eval warns on pandas/numpy deprecations and on operating points equal to an earlier one (skipped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="A similar operating point exists")
        yield


def _metadata(filenames: Sequence[str], durations: np.ndarray) -> pd.DataFrame:
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

    gt = merge_overlaps(ground_truth)
    if gt.empty:
        return {}
    strong = as_scores(strong)
    lengths = frame_counts(durations, strong.shape[1])
    with _quiet():
        evaluator = PSDSEval(**PSDS_CRITERIA, ground_truth=gt, metadata=_metadata(filenames, durations))
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


def clip_id(filename: str) -> str:
    """The key of a clip in sed_scores_eval's format (and the name of its score file): the filename without .wav."""
    return filename[:-4] if filename.lower().endswith(".wav") else filename


def score_frames(
    strong: np.ndarray, filenames: Sequence[str], durations: np.ndarray
) -> dict[str, pd.DataFrame]:
    """Per-clip frame scores in sed_scores_eval's format (onset, offset, one column per class), cut at the
    clip's duration."""
    strong = as_scores(strong)
    lengths = frame_counts(durations, strong.shape[1])
    columns = ["onset", "offset", *CLASSES]
    frames = {}
    for i, (f, n, d) in enumerate(zip(filenames, lengths, durations, strict=True)):
        ts = frame_timestamps(n, d)
        frames[clip_id(f)] = pd.DataFrame(np.column_stack([ts[:-1], ts[1:], strong[i, :n]]), columns=columns)
    return frames


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

    gt = merge_overlaps(ground_truth)
    classes = [c for c in CLASSES if c in set(gt.event_label)]
    if not classes:
        return None, {}
    events = {key: [] for key in scores}
    for f, on, off, label in gt.itertuples(index=False):
        events[clip_id(f)].append((float(on), float(off), label))
    if len(classes) < len(CLASSES):
        scores = {k: v[["onset", "offset", *classes]] for k, v in scores.items()}
    value, per_class, *_ = psds(scores, events, durations, unit_of_time="hour", **params)
    return float(value), {c: float(per_class[c]) for c in classes}


# ---------------------------------------------------------------------------------------------- model outputs


def predict(model, mels: np.ndarray, batch_size: int, device, progress: bool = False) -> np.ndarray:
    """The model's strong output (N, T, C), float32, in eval mode and batches; the model's mode is restored."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(), progress_bar("predict", len(mels), progress) as advance:
            for start in range(0, len(mels), batch_size):
                batch = torch.from_numpy(np.asarray(mels[start : start + batch_size], dtype=np.float32))
                strong, _ = model(batch.to(device))
                out.append(strong.float().cpu().numpy())
                advance(len(batch))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0, len(CLASSES)), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Everything `evaluate_run` writes: the results dict and the tables/curves behind it."""

    results: dict[str, Any]
    detections: pd.DataFrame
    scores: dict[str, pd.DataFrame]
    psd_rocs: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _timed(timing: dict[str, float], phase: str) -> Iterator[None]:
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
    """Every metric of DESIGN §7 on frame scores (N, T, C) of one split."""
    timing = {} if timing is None else timing
    strong = as_scores(strong)
    durations = np.asarray(durations, dtype=np.float64)
    ground_truth = ground_truth[EVENT_COLUMNS].dropna()
    gt_classes = set(merge_overlaps(ground_truth).event_label)
    results: dict[str, Any] = {
        "n_clips": len(filenames),
        "n_events": len(ground_truth),
        "duration_hours": float(durations.sum() / 3600),
    }
    with _timed(timing, "macro"):
        detections = decode(strong, filenames, threshold, median_window, durations)
        f1 = event_based_f1(detections, ground_truth, filenames)
    results.update(macro=_nan_to_none(f1["macro"]), micro=f1["micro"], per_class=f1["per_class"])

    with _timed(timing, "psds"):
        rocs = psds_eval_psds(strong, filenames, durations, ground_truth, median_window=median_window,
                              progress=progress)
    for name in PSDS_VARIANTS:
        results[name] = float(rocs[name].value) if name in rocs else None

    with _timed(timing, "scores"):
        scores = score_frames(strong, filenames, durations)
    clip_durations = {clip_id(f): float(d) for f, d in zip(filenames, durations, strict=True)}
    for name, params in (("psds1", PSDS1), ("psds2", PSDS2)):
        with _timed(timing, name):
            value, per_class = sed_scores_psds(scores, ground_truth, clip_durations, params)
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


def plot_psd_rocs(psd_rocs: dict[str, Any], path: Path) -> None:
    """PSD-ROC curves (psds_eval), one panel per variant, written as a PNG (no pyplot state, any backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * max(len(psd_rocs), 1), 4.5), layout="constrained")
    axes = fig.subplots(1, max(len(psd_rocs), 1), squeeze=False)[0]
    if not psd_rocs:
        axes[0].text(0.5, 0.5, "no ground-truth event: no PSD-ROC", ha="center", va="center")
    for ax, (name, psd) in zip(axes, psd_rocs.items(), strict=False):
        ax.step(psd.plt.xp, psd.plt.yp, where="post", color="tab:blue", label="PSD-ROC")
        ax.fill_between(psd.plt.xp, psd.plt.yp, step="post", alpha=0.3, color="tab:blue")
        ax.axvline(psd.max_efpr, linestyle="--", color="gray")
        ax.set(xlim=(0, psd.max_efpr), ylim=(0, 1), xlabel=f"eFPR per {psd.duration_unit}", ylabel="eTPR",
               title=f"{name} = {psd.value:.3f}  (alpha_ct {psd.alpha_ct:g}, alpha_st {psd.alpha_st:g})")
        ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


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


def write_scores(scores: dict[str, pd.DataFrame], directory: Path) -> None:
    """One sed_scores_eval TSV per clip (what `write_sed_scores` writes, numbers in their shortest exact form);
    the folder is filled aside and swapped in whole."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        for key, frame in scores.items():
            rows = frame.to_numpy().tolist()  # str(float): the shortest text that reads back exactly; 4x faster
            text = "\n".join(["\t".join(frame.columns), *("\t".join(map(str, row)) for row in rows)]) + "\n"
            (tmp / f"{key}.tsv").write_text(text)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        tmp.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_evaluation(evaluation: Evaluation, out_dir: Path, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """<split>/scores/*.tsv, detections.tsv, psd_roc.png, results.json (last, so it marks a complete job);
    returns what results.json holds."""
    timing = {} if timing is None else timing
    out_dir = Path(out_dir)
    with _timed(timing, "write"):
        write_scores(evaluation.scores, out_dir / "scores")
        write_tsv(out_dir / "detections.tsv", evaluation.detections)
        plot_psd_rocs(evaluation.psd_rocs, out_dir / "psd_roc.png")
    results = _json_safe({**evaluation.results, "timing": timing})
    write_json(out_dir / "results.json", results)
    return results


def evaluate_run(
    run_dir: Path,
    split: str = "eval",
    checkpoint: str = "best",
    device="cpu",
    progress: bool = True,
    features: Path | None = None,
) -> dict[str, Any]:
    """Score a run's checkpoint on a strong split; writes RUN/<split>/ (DESIGN §6) and returns results.json's dict.

    The feature store is the checkpoint recipe's `data.features` (a relative path is relative to the working
    directory, as for `sedaug train`), unless `features` is given.
    """
    from sedaug.data.features import load_split
    from sedaug.train import load_model

    run = RunDir(Path(run_dir))
    timing: dict[str, float] = {}
    model, ckpt = load_model(run.root, checkpoint, device)  # UserError when the checkpoint is missing
    recipe = ckpt["recipe"]
    features = Path(features if features is not None else recipe["data"]["features"])
    data = load_split(features, split)
    if data.events is None:
        raise UserError(f"split {split} has no strong labels: evaluate on eval, validation or synthetic_valid")
    if len(data) == 0:
        raise UserError(f"split {split} of {features} holds no clip")
    eval_cfg = recipe["eval"]
    with _timed(timing, "predict"):
        strong = predict(model, data.mels, eval_cfg["batch_size"], device, progress=progress)
    evaluation = evaluate_scores(
        strong, data.filenames, data.durations, data.events, threshold=eval_cfg["threshold"],
        median_window=eval_cfg["median_window"], progress=progress, timing=timing,
    )
    evaluation.results = {
        "run": str(run.root),
        "recipe": recipe["name"],
        "seed": recipe["seed"],
        "split": split,
        "features": str(features),
        "checkpoint": {"name": checkpoint, "path": str(run.checkpoint(checkpoint)),
                       "epoch": ckpt["epoch"], "step": ckpt.get("global_step")},
        **evaluation.results,
    }
    return write_evaluation(evaluation, run.split(split), timing)


def summary(run_dir: Path, results: dict[str, Any]) -> str:
    """The one line `sedaug evaluate` prints."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    ckpt = results["checkpoint"]
    return (
        f"evaluated {run_dir} ({ckpt['name']}.pt, epoch {ckpt['epoch']}) on {results['split']} "
        f"({results['n_clips']} clips): macro F1 {fmt(results['macro'])}, PSDS {fmt(results['psds'])}, "
        f"PSDS-ct {fmt(results['psds_ct'])}, PSDS-macro {fmt(results['psds_macro'])}, "
        f"PSDS1 {fmt(results['psds1'])}, PSDS2 {fmt(results['psds2'])} -> {Path(run_dir) / results['split']}"
    )
