"""Frame-score files: one sed_scores_eval TSV per clip (onset, offset, one column per class), cut at the clip's
duration, as `<split>/scores/<clip>.tsv`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES
from sedaug.evaluation.postprocess import as_scores, frame_counts, frame_timestamps
from sedaug.files import atomic_dir

SCORE_COLUMNS = ("onset", "offset", *CLASSES)  # a score file's header


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
    frames = {}
    for i, (f, n, d) in enumerate(zip(filenames, lengths, durations, strict=True)):
        ts = frame_timestamps(n, d)
        frames[clip_id(f)] = pd.DataFrame(np.column_stack([ts[:-1], ts[1:], strong[i, :n]]), columns=list(SCORE_COLUMNS))
    return frames


def score_text(frame: pd.DataFrame) -> str:
    """One clip's frame scores as the TSV text sed_scores_eval reads (what `write_sed_scores` writes), each number in
    its shortest exact form (str(float): it reads back exactly; 4x faster than pandas' writer)."""
    rows = frame.to_numpy().tolist()
    return "\n".join(["\t".join(frame.columns), *("\t".join(map(str, row)) for row in rows)]) + "\n"


def write_scores(scores: dict[str, pd.DataFrame], directory: Path) -> None:
    """One sed_scores_eval TSV per clip; the folder is filled aside and swapped in whole."""
    with atomic_dir(directory) as tmp:
        for key, frame in scores.items():
            (tmp / f"{key}.tsv").write_text(score_text(frame))
