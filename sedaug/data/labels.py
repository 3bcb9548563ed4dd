"""Label encoding: frame labels on the output grid (strong) and clip labels (weak), as multi-hot arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES
from sedaug.data.grid import N_OUTPUT_FRAMES, PARAMS, TIME_POOLING

CLASS_INDEX = {label: i for i, label in enumerate(CLASSES)}


def frame_labels(
    events: pd.DataFrame,
    filenames: Sequence[str],
    n_frames: int = N_OUTPUT_FRAMES,
    pooling: int = TIME_POOLING,
) -> np.ndarray:
    """Strong labels at the model's output rate: (N, n_frames, n_classes) float32 multi-hot.

    As in the dcase20 baseline, an event covers output frames `onset*sr // hop // pooling` (inclusive) to
    `offset*sr // hop // pooling` (exclusive), clipped to n_frames; same-class overlaps simply union.
    """
    index = {name: i for i, name in enumerate(filenames)}
    events = events[events["event_label"].astype(str).isin(CLASS_INDEX)]
    unknown = set(events["filename"]) - index.keys()
    if unknown:
        raise ValueError(f"events for clips not in the list: {sorted(unknown)[:3]}")
    clip = events["filename"].map(index).to_numpy(int)
    label = events["event_label"].map(CLASS_INDEX).to_numpy(int)
    onset, offset = (
        np.floor_divide(np.floor_divide(events[c].to_numpy(float) * PARAMS.sample_rate, PARAMS.hop), pooling)
        .astype(int)
        .clip(0, n_frames)
        for c in ("onset", "offset")
    )
    # +1 at each onset, -1 at each offset, then a cumulative sum: vectorized, and overlaps count twice, not zero.
    steps = np.zeros((len(filenames), n_frames + 1, len(CLASSES)), np.int32)
    keep = offset > onset
    np.add.at(steps, (clip[keep], onset[keep], label[keep]), 1)
    np.add.at(steps, (clip[keep], offset[keep], label[keep]), -1)
    return (np.cumsum(steps, axis=1)[:, :n_frames] > 0).astype(np.float32)


def weak_labels_from(table: pd.DataFrame, filenames: Sequence[str]) -> np.ndarray:
    """Clip labels (N, n_classes) float32 multi-hot from a weak table (filename, event_labels: comma-separated) or
    from strong events (filename, event_label)."""
    index = {name: i for i, name in enumerate(filenames)}
    labels = np.zeros((len(filenames), len(CLASSES)), np.float32)
    column = "event_labels" if "event_labels" in table.columns else "event_label"
    for filename, cell in zip(table["filename"], table[column].astype(str), strict=True):
        for label in filter(None, cell.split(",")):
            if label in CLASS_INDEX:
                labels[index[filename], CLASS_INDEX[label]] = 1.0
    return labels
