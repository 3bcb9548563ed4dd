"""The feature store: its layout on disk, and `FeatureStore`, opened and checked once, which hands out the splits
and the scaler to training and evaluation alike (written by `data/extract.py`).

    <features>/features.json              parameters, sedaug version, source manifest hash, split sizes
    <features>/scaler.npz                 mean, std (n_mels,) of the log-mel over weak + unlabeled + synthetic_train
    <features>/<split>/mels.npy           (N, 628, 128) float16, LINEAR mel (the log runs in the model); a clip
                                          shorter than 10 s has `real_frames` of its own, then 1.0 (0 dB) frames
    <features>/<split>/clips.tsv          filename, duration (seconds of real audio, at most 10)
    <features>/<split>/events.tsv         strong splits: filename, onset, offset, event_label
    <features>/<split>/weak.tsv           weak split: filename, event_labels
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, read_events
from sedaug.data.grid import PARAMS, real_frames
from sedaug.data.labels import weak_labels_from
from sedaug.errors import UserError, one_line
from sedaug.files import read_json_object, read_tsv, sha256

FEATURES_JSON = "features.json"
SCALER = "scaler.npz"
TABLES = ("clips.tsv", "events.tsv", "weak.tsv")  # a split's, those it has
# Bump when the store's layout or content changes (2: dcase20's padding and resampler), so that old stores are
# refused with a one-line "re-run extract-mels".
STORE_FORMAT = 2
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

    @property
    def frames(self) -> np.ndarray:
        """(N,) int64: each clip's input frames of real audio; frames from there to n_frames are padding."""
        return real_frames(self.durations)


class FeatureStore:
    """An extracted feature store. Opening it reads `features.json` once and refuses a missing store or one computed
    with other parameters than sedaug's (`PARAMS`), with a one-line UserError."""

    def __init__(self, path: Path):
        self.path = Path(path)
        record = _open_record(self.path)
        stored = record["params"]
        differences = [
            f"{key} {stored.get(key)!r} != {value!r}"
            for key, value in PARAMS.to_dict().items()
            if stored.get(key) != value
        ]
        if record.get("format") != STORE_FORMAT:
            differences.insert(0, f"format {record.get('format')!r} != {STORE_FORMAT}")
        if differences:
            raise UserError(
                f"incompatible feature store at {self.path}: {'; '.join(differences)} "
                "(re-run `sedaug extract-mels` with this version of sedaug)"
            )
        self.record = record

    @property
    def identity(self) -> dict:
        """What the training data of a run is: the manifest's tables, the features themselves (wherever the tree
        lies) and the synthetic split. A checkpoint records it; --resume and evaluate refuse a store whose identity
        changed since (rundir.identity_changes)."""
        keys = ("manifest_hash", "features_hash", "synthetic_split_hash", "splits")
        return {key: self.record[key] for key in keys if key in self.record}

    def _unedited(self, path: Path) -> None:
        """Refuse a table or the scaler whose bytes are not those extract-mels wrote (features.json records their
        SHA-256; a store written before it did is not checked): a label or scaler edited by hand is no store's."""
        recorded = (self.record.get("tables") or {}).get(path.relative_to(self.path).as_posix())
        if recorded is not None and path.is_file() and sha256(path) != recorded:
            raise UserError(f"{path} was edited since `sedaug extract-mels` wrote it: re-run `sedaug extract-mels` "
                            "(it makes the store again), or fix the DESED tree's labels and prepare it again")

    def split(self, name: str) -> Split:
        if name not in FEATURE_SPLITS:
            raise UserError(f"unknown feature split {name!r} (one of {', '.join(FEATURE_SPLITS)})")
        directory = self.path / name
        if not (directory / "mels.npy").is_file() or not (directory / "clips.tsv").is_file():
            raise UserError(f"split {name} is missing from the feature store {self.path}: run `sedaug extract-mels`")
        clips = _read_table(directory / "clips.tsv", read_tsv, ("filename", "duration"))
        filenames = list(clips["filename"])
        durations = pd.to_numeric(clips["duration"], errors="coerce").to_numpy(float)
        if not np.isfinite(durations).all():
            raise UserError(f"{directory / 'clips.tsv'}: a duration is not a number: re-run `sedaug extract-mels`")
        mels = open_mels(directory / "mels.npy", len(filenames))
        events = weak = None
        if name in STRONG_SPLITS:
            events = _read_table(directory / "events.tsv", read_events, ("filename", "onset", "offset", "event_label"))
            _check_events(directory / "events.tsv", events, dict(zip(filenames, durations, strict=True)))
        if name == "weak":
            table = _read_table(directory / "weak.tsv", read_tsv, ("filename", "event_labels"))
            try:
                weak = weak_labels_from(table, filenames)
            except KeyError as err:
                raise UserError(f"{directory / 'weak.tsv'}: clip {err} is not in clips.tsv: re-run `sedaug extract-mels`") from None
        for table in TABLES:  # damage is said above; a table edited into another valid one, here
            self._unedited(directory / table)
        return Split(name, mels, filenames, durations, events, weak)

    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-mel-bin mean and std (float32, (n_mels,)) of the log-mel over the training splits."""
        path = self.path / SCALER
        advice = "re-run `sedaug extract-mels`"
        if not path.is_file():
            raise UserError(f"{path} is missing: {advice}")
        try:
            with np.load(path) as scaler:
                mean, std = scaler["mean"].astype(np.float32), scaler["std"].astype(np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{path}: damaged ({one_line(err)}): {advice}") from err
        shape = (PARAMS.n_mels,)
        if mean.shape != shape or std.shape != shape:
            raise UserError(f"{path}: mean {mean.shape} and std {std.shape} where {shape} is expected: {advice}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise UserError(f"{path}: a mean or std is not a finite (positive) number: {advice}")
        self._unedited(path)
        return mean, std


def open_mels(path: Path, n_clips: int) -> np.ndarray:
    """A split's mels.npy, memory-mapped, checked to hold float16 (n_clips, n_frames, n_mels); a truncated or
    damaged file is a one-line UserError naming it."""
    advice = "re-run `sedaug extract-mels`"
    try:
        mels = np.load(path, mmap_mode="r") if n_clips else np.load(path)  # numpy cannot map an empty array
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {advice}") from None
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: truncated or damaged ({one_line(err)}): {advice}") from err
    expected = (n_clips, PARAMS.n_frames, PARAMS.n_mels)
    if mels.shape != expected or mels.dtype != np.float16:
        raise UserError(f"{path}: holds {mels.dtype} {mels.shape} where float16 {expected} is expected: {advice}")
    return mels


def table_hashes(store: Path) -> dict[str, str]:
    """The SHA-256 of each split's tables and of the scaler, by path in the store (features.json's `tables`)."""
    paths = [Path(name) / table for name in FEATURE_SPLITS for table in TABLES] + [Path(SCALER)]
    return {p.as_posix(): sha256(store / p) for p in paths if (store / p).is_file()}


def _read_table(path: Path, read, columns: tuple[str, ...]) -> pd.DataFrame:
    """One of the store's TSVs, read by `read`; a missing, damaged or incomplete one is a one-line UserError."""
    try:
        table = read(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: re-run `sedaug extract-mels`") from None
    except (OSError, ValueError) as err:  # pandas' parser and decoding errors are ValueErrors
        raise UserError(f"{path}: damaged ({one_line(err)}): re-run `sedaug extract-mels`") from err
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)}: re-run `sedaug extract-mels`")
    return table


def _check_events(path: Path, events: pd.DataFrame, durations: dict[str, float]) -> None:
    """What prepare-desed guarantees of a split's events, checked again where evaluation reads them: a store edited
    or damaged since is one line naming the first bad row, not a traceback or a silently wrong score. (An offset
    may pass the stored duration: a clip longer than 10 s keeps its events, its features are cut at 10 s.)"""
    duration = events["filename"].map(durations)
    problems = [
        (~events["event_label"].isin(CLASSES), lambda r: f"unknown class {r.event_label!r}"),
        (duration.isna(), lambda r: f"clip {r.filename} is not in clips.tsv"),
        (~(events["onset"] >= 0), lambda r: f"onset {r.onset:g} is not a time >= 0"),
        (~(events["offset"] > events["onset"]), lambda r: f"offset {r.offset:g} is not after onset {r.onset:g}"),
    ]
    for bad, say in problems:
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise UserError(f"{path}:{i + 2}: {say(events.iloc[i])}: re-run `sedaug extract-mels`")


def read_record(path: Path) -> dict | None:
    """The store's features.json, or None when there is none (or it is unreadable, or not a JSON object)."""
    return read_json_object(Path(path) / FEATURES_JSON)


def is_store(path: Path) -> bool:
    """Whether `path` is a feature store: it holds sedaug's record of one (not any features.json)."""
    return "splits" in (read_record(path) or {})


def _open_record(path: Path) -> dict:
    """The store's features.json for opening the store; what is wrong with a missing or damaged one is a
    one-line UserError."""
    advice = "re-run `sedaug extract-mels`"
    file = path / FEATURES_JSON
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a feature store folder: give the folder `sedaug extract-mels` wrote")
    if not file.exists():
        if path.is_dir() and any(path.iterdir()):
            raise UserError(f"no feature store at {path} (the folder has no {FEATURES_JSON}): {advice}")
        raise UserError(f"no feature store at {path}: give data.features the folder `sedaug extract-mels` wrote (or "
                        "run it first)")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{file}: damaged ({one_line(err)}): {advice}") from None
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        what = f"a JSON {type(record).__name__}" + (" without params" if isinstance(record, dict) else "")
        raise UserError(f"{file}: not a sedaug feature store record ({what}): {advice}")
    return record


def open_whole(path: Path) -> FeatureStore:
    """The store, opened as training and evaluation read it: its record, the scaler, each split's clips (as many as
    the record says), mels and labels; a UserError names the first damage."""
    store = FeatureStore(path)
    store.scaler()
    for name in FEATURE_SPLITS:
        n = len(store.split(name))
        try:
            recorded = int(store.record["splits"][name])
        except (KeyError, TypeError, ValueError):
            recorded = None
        if n != recorded:
            raise UserError(f"{Path(path) / name}: {n} clips, and {Path(path) / FEATURES_JSON} says {recorded}: re-run "
                            "`sedaug extract-mels`")
    return store


def is_complete(path: Path) -> bool:
    """Whether the store opens whole (open_whole). Any damage it would refuse makes extract-mels rebuild it."""
    try:
        open_whole(path)
    except (UserError, KeyError, TypeError, ValueError):
        return False
    return True
