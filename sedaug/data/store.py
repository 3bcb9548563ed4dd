"""The feature store: its layout on disk, and `FeatureStore`, opened and checked once, which hands out the splits
and the scaler to training and evaluation alike (written by `data/extract.py`).

    <features>/features.json              parameters, sedaug version, source manifest hash, split sizes
    <features>/scaler.npz                 mean, std (n_mels,) of the log-mel over weak + unlabeled + synthetic_train
    <features>/<split>/mels.npy           (N, 628, 128) float16, LINEAR mel (the log runs in the model)
    <features>/<split>/clips.tsv          filename, duration (seconds of real audio, at most 10)
    <features>/<split>/events.tsv         strong splits: filename, onset, offset, event_label
    <features>/<split>/weak.tsv           weak split: filename, event_labels
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sedaug.data.desed import read_events
from sedaug.data.grid import PARAMS, FeatureParams
from sedaug.data.labels import weak_labels_from
from sedaug.errors import UserError
from sedaug.files import read_tsv

FEATURES_JSON = "features.json"
SCALER = "scaler.npz"
STORE_FORMAT = 1
# Feature-store split -> the DESED source split it comes from.
SOURCES: dict[str, str] = {
    "weak": "weak",
    "unlabeled": "unlabeled",
    "synthetic_train": "synthetic",
    "synthetic_valid": "synthetic",
    "validation": "validation",
    "eval": "eval",
}
FEATURE_SPLITS = tuple(SOURCES)
STRONG_SPLITS = ("synthetic_train", "synthetic_valid", "validation", "eval")
SCALER_SPLITS = ("weak", "unlabeled", "synthetic_train")


@dataclass
class Split:
    """One feature-store split. `mels` is memory-mapped: index it to read."""

    name: str
    mels: np.ndarray
    filenames: list[str]
    durations: np.ndarray
    events: pd.DataFrame | None
    weak_labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.filenames)


class FeatureStore:
    """An extracted feature store. Opening it reads `features.json` once and refuses a missing store or one computed
    with other parameters than `params`, with a one-line UserError."""

    def __init__(self, path: Path, params: FeatureParams = PARAMS):
        self.path = Path(path)
        record = read_record(self.path)
        if record is None:
            raise UserError(f"no feature store at {self.path}: run `sedaug extract-mels` first")
        stored = record.get("params", {})
        differences = [
            f"{key} {stored.get(key)!r} != {value!r}"
            for key, value in params.to_dict().items()
            if stored.get(key) != value
        ]
        if differences:
            raise UserError(
                f"incompatible feature store at {self.path}: {'; '.join(differences)} "
                "(re-run `sedaug extract-mels` with this version of sedaug)"
            )
        self.record = record

    def split(self, name: str) -> Split:
        if name not in FEATURE_SPLITS:
            raise UserError(f"unknown feature split {name!r} (one of {', '.join(FEATURE_SPLITS)})")
        directory = self.path / name
        if not (directory / "mels.npy").is_file() or not (directory / "clips.tsv").is_file():
            raise UserError(f"split {name} is missing from the feature store {self.path}: run `sedaug extract-mels`")
        clips = read_tsv(directory / "clips.tsv")
        filenames = list(clips["filename"])
        mels = np.load(directory / "mels.npy", mmap_mode="r") if filenames else np.load(directory / "mels.npy")
        events = weak = None
        if name in STRONG_SPLITS:
            events = read_events(directory / "events.tsv")
        if name == "weak":
            weak = weak_labels_from(read_tsv(directory / "weak.tsv"), filenames)
        return Split(name, mels, filenames, clips["duration"].astype(float).to_numpy(), events, weak)

    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-mel-bin mean and std (float32, (n_mels,)) of the log-mel over the training splits."""
        with np.load(self.path / SCALER) as scaler:
            return scaler["mean"].astype(np.float32), scaler["std"].astype(np.float32)


def read_record(path: Path) -> dict | None:
    """The store's features.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(path) / FEATURES_JSON).read_text())
    except (OSError, ValueError):
        return None


def is_complete(path: Path) -> bool:
    """Whether every file of a store is present (the scaler and each split's mels and clips)."""
    needed = [path / SCALER] + [path / s / f for s in FEATURE_SPLITS for f in ("mels.npy", "clips.tsv")]
    return all(p.is_file() for p in needed)
