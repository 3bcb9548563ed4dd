"""Post-processing: frame scores (N, T, C) -> threshold (`score >= threshold`, as dcase_util's binarization in
dcase20) -> median filter over time on the binary output -> contiguous runs -> events in seconds.

The frame grid (0.06375 s) is `data/grid.py`'s. It is cut at each clip's real duration: a clip shorter than 10 s
(padded for the model) keeps its first ceil(duration / FRAME_SECONDS) frames, the last one ending at the duration.
Scores, detections and both PSDS implementations use that same grid, so nothing is ever detected in the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, EVENT_COLUMNS
from sedaug.data.grid import FRAME_SECONDS

TIME_DECIMALS = 6  # event and frame times are multiples of 0.06375 (5 decimals): rounding only removes fp noise
SCORE_DECIMALS = 6  # frame scores as evaluated and written (float32 outputs carry about 7 digits)


def as_scores(strong: np.ndarray) -> np.ndarray:
    """Frame scores as every function of the evaluation sees them: float64 rounded to SCORE_DECIMALS, so that
    decoding, both PSDS implementations and the score files (which read back exactly) agree to the last digit."""
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
        padded = np.take_along_axis(x, reflected_windows(t, window, lengths)[:, :, None], axis=1)
        csum = np.zeros((n, padded.shape[1] + 1, c), dtype=np.int32)
        np.cumsum(padded, axis=1, out=csum[:, 1:])
        x = (csum[:, window:] - csum[:, :-window]) >= window - window // 2
    x = x & (np.arange(t)[None, :, None] < lengths[:, None, None])
    return x[0] if single else x


def reflected_windows(t: int, window: int, lengths: np.ndarray) -> np.ndarray:
    """(N, t + window - 1) frame indices of each clip padded for a centred window of `window` frames, each clip
    reflected at its own end as scipy's 'reflect' mode does (d c b a | a b c d | d c b a): the padded clip's frames
    k .. k + window - 1 are output frame k's window."""
    before = window // 2  # scipy centres a window of size w at offset w // 2
    pos = np.arange(-before, t + window - before - 1)
    period = 2 * lengths[:, None]
    m = np.mod(pos[None, :], period)  # symmetric reflection, repeated if the window is longer than the clip
    return np.where(m < lengths[:, None], m, period - 1 - m)


def median_filter_scores(strong: np.ndarray, window: int, lengths: np.ndarray) -> np.ndarray:
    """Median filter over time of continuous frame scores (N, T, C), per clip over its `lengths` real frames and per
    class, edges reflected (scipy's default): DESED_task's 2023+ baselines filter scores so before their PSDS."""
    from scipy.ndimage import median_filter as scipy_median

    out = np.array(strong, dtype=np.float64)
    if window > 1:
        for i, n in enumerate(np.asarray(lengths, dtype=np.int64)):
            out[i, :n] = scipy_median(out[i, :n], size=(window, 1), mode="reflect")
    return out


def event_runs(binary: np.ndarray) -> tuple[np.ndarray, ...]:
    """Contiguous runs of True along the last axis of a boolean (N, C, T): clip, class, first frame, frame after the
    last; sorted by clip, class, time."""
    n, c, t = binary.shape
    edges = np.diff(np.pad(binary, ((0, 0), (0, 0), (1, 1))).view(np.int8), axis=2).ravel()
    flat = np.flatnonzero(edges)  # starts and stops alternate along each row: one scan finds both
    starts, stops = flat[edges[flat] == 1], flat[edges[flat] == -1]
    row, start = np.divmod(starts, t + 1)
    return row // c, row % c, start, stops % (t + 1)


def run_seconds(
    start: np.ndarray, stop: np.ndarray, clip: np.ndarray, durations: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(onset, offset) in seconds of runs of frames [start, stop) of clips `clip`, offsets cut at the clip's duration."""
    onset = np.round(start * FRAME_SECONDS, TIME_DECIMALS)
    offset = np.round(stop * FRAME_SECONDS, TIME_DECIMALS)
    if durations is not None:
        offset = np.minimum(offset, np.asarray(durations, dtype=np.float64)[clip])
    return onset, offset


def binary_to_events(
    binary: np.ndarray, filenames: Sequence[str], durations: np.ndarray | None = None
) -> pd.DataFrame:
    """Contiguous runs of a (N, T, C) binary array -> events (filename, onset, offset, event_label), in seconds.

    onset = first frame · FRAME_SECONDS, offset = (last frame + 1) · FRAME_SECONDS, cut at the clip's duration.
    """
    clip, cls, start, stop = event_runs(np.swapaxes(np.asarray(binary, dtype=bool), 1, 2))
    onset, offset = run_seconds(start, stop, clip, durations)
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


def merge_overlaps(events: pd.DataFrame, *, touching: bool) -> pd.DataFrame:
    """Merge same-class events of a clip that overlap, and with `touching` those that only touch too, and drop
    empty ones: psds_eval refuses overlapping events and takes touching ones as annotated (dcase20 scored them so);
    sed_scores_eval refuses both."""
    ev = events[EVENT_COLUMNS].dropna()
    ev = ev[ev.offset > ev.onset].sort_values(["filename", "event_label", "onset", "offset"], kind="stable")
    if ev.empty:
        return ev.reset_index(drop=True)
    files, labels = ev.filename.to_numpy(), ev.event_label.to_numpy()
    same = (files[1:] == files[:-1]) & (labels[1:] == labels[:-1])  # row i + 1 continues row i's (file, class)
    keys = np.r_[0, np.cumsum(~same)]
    reach = ev.offset.groupby(keys).cummax().values  # furthest offset so far within (file, class)
    apart = ev.onset.values[1:] > reach[:-1] if touching else ev.onset.values[1:] >= reach[:-1]
    starts = np.r_[True, ~same | apart]
    group = np.cumsum(starts)
    merged = ev.groupby(group, sort=False).agg(
        filename=("filename", "first"), onset=("onset", "min"), offset=("offset", "max"),
        event_label=("event_label", "first"),
    )
    return merged.reset_index(drop=True)[EVENT_COLUMNS]
