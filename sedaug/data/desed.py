"""The DESED (DCASE 2020 task 4) layout, its import into a manifest, and the missing-file report.

`prepare_desed` reads the metadata TSVs of a DESED root, checks every listed clip on disk (header only: nothing is
copied or resampled) and writes one manifest table per source split into `<out>/manifest/`. It records a
fingerprint of its inputs so that a second run over unchanged inputs does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import soundfile as sf

from sedaug import __version__
from sedaug.errors import UserError
from sedaug.files import read_tsv, write_json, write_tsv
from sedaug.progress import progress_bar

CLASSES: tuple[str, ...] = (
    "Alarm_bell_ringing",
    "Blender",
    "Cat",
    "Dishes",
    "Dog",
    "Electric_shaver_toothbrush",
    "Frying",
    "Running_water",
    "Speech",
    "Vacuum_cleaner",
)

LabelKind = Literal["weak", "unlabeled", "strong"]


@dataclass(frozen=True)
class SourceSplit:
    """One DESED source split: where its audio and its metadata TSV live, relative to the root."""

    name: str
    audio_dir: str
    metadata: str
    kind: LabelKind


SPLITS: dict[str, SourceSplit] = {
    s.name: s
    for s in (
        SourceSplit("weak", "audio/train/weak", "metadata/train/weak.tsv", "weak"),
        SourceSplit(
            "unlabeled", "audio/train/unlabel_in_domain", "metadata/train/unlabel_in_domain.tsv", "unlabeled"
        ),
        SourceSplit(
            "synthetic",
            "audio/train/synthetic20/soundscapes",
            "metadata/train/synthetic20/soundscapes.tsv",
            "strong",
        ),
        SourceSplit("validation", "audio/validation", "metadata/validation/validation.tsv", "strong"),
        SourceSplit("eval", "audio/eval/public", "metadata/eval/public.tsv", "strong"),
    )
}

# An event, in every TSV and table of events (a list: pandas selects columns with it).
EVENT_COLUMNS = ["filename", "onset", "offset", "event_label"]
TSV_COLUMNS: dict[LabelKind, tuple[str, ...]] = {
    "weak": ("filename", "event_labels"),
    "unlabeled": ("filename",),
    "strong": tuple(EVENT_COLUMNS),
}
MANIFEST_DIR = "manifest"
MISSING_FILES = "missing_files.tsv"
PREPARE_JSON = "prepare.json"
# Bump when the manifest's content or format changes, so that old manifests are rebuilt.
MANIFEST_FORMAT = 1


@dataclass
class PrepareReport:
    """What `prepare_desed` found and wrote."""

    root: Path
    out: Path
    counts: dict[str, int]
    n_events: dict[str, int]
    n_missing: int
    manifest_dir: Path
    missing_files: Path
    skipped: bool
    seconds: float = 0.0

    def summary(self) -> str:
        clips = ", ".join(f"{name} {n:,}" for name, n in self.counts.items())
        state = "already up to date" if self.skipped else "written"
        missing = f"{self.n_missing:,} listed files missing (see {self.missing_files})"
        return f"DESED manifest {state} in {self.manifest_dir}: {clips}; {missing}"


@dataclass
class _Clip:
    filename: str
    path: Path
    duration: float
    sample_rate: int
    channels: int


@dataclass
class _SplitTables:
    """A source split's metadata as read from its TSV."""

    filenames: list[str]
    weak_labels: dict[str, str] = field(default_factory=dict)
    events: pd.DataFrame | None = None


# ---------------------------------------------------------------------------------------------------------------
# prepare-desed


def prepare_desed(root: Path, out: Path, progress: bool = True) -> PrepareReport:
    """Check the DESED layout under `root` and write the manifest into `out/manifest/` (idempotent)."""
    start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    check_layout(root)
    tables = {name: _read_metadata(root / split.metadata, split.kind) for name, split in SPLITS.items()}
    on_disk = {name: _scan_audio_dir(root / split.audio_dir) for name, split in SPLITS.items()}
    fingerprint = _fingerprint(root, tables, on_disk)

    manifest_dir = out / MANIFEST_DIR
    previous = _read_prepare_json(manifest_dir)
    if previous is not None and previous.get("fingerprint") == fingerprint and _outputs_exist(out):
        return PrepareReport(
            root=root,
            out=out,
            counts={name: previous["counts"][name] for name in SPLITS},
            n_events={name: previous["n_events"][name] for name in SPLITS if SPLITS[name].kind == "strong"},
            n_missing=previous["n_missing"],
            manifest_dir=manifest_dir,
            missing_files=out / MISSING_FILES,
            skipped=True,
            seconds=time.perf_counter() - start,
        )

    # A crash below must not leave an old prepare.json vouching for a half-rewritten manifest.
    (manifest_dir / PREPARE_JSON).unlink(missing_ok=True)
    missing: list[tuple[str, str]] = []
    present: dict[str, list[str]] = {}
    for name, table in tables.items():
        present[name] = [f for f in table.filenames if f in on_disk[name]]
        missing += [(name, f) for f in table.filenames if f not in on_disk[name]]
    clips = _read_headers(root, present, progress)

    counts, n_events = {}, {}
    for name, split in SPLITS.items():
        manifest = _manifest_table(clips[name], tables[name], split.kind)
        write_tsv(manifest_dir / f"{name}.tsv", manifest)
        counts[name] = len(manifest)
        if split.kind == "strong":
            events = tables[name].events
            assert events is not None
            events = events[events["filename"].isin(manifest["filename"])]
            write_tsv(manifest_dir / f"{name}_events.tsv", events)
            n_events[name] = len(events)
    write_tsv(out / MISSING_FILES, pd.DataFrame(missing, columns=["split", "filename"]))
    write_json(
        manifest_dir / PREPARE_JSON,
        {
            "format": MANIFEST_FORMAT,
            "sedaug_version": __version__,
            "root": str(root),
            "fingerprint": fingerprint,
            "counts": counts,
            "n_events": n_events,
            "n_missing": len(missing),
        },
    )
    return PrepareReport(
        root=root,
        out=out,
        counts=counts,
        n_events=n_events,
        n_missing=len(missing),
        manifest_dir=manifest_dir,
        missing_files=out / MISSING_FILES,
        skipped=False,
        seconds=time.perf_counter() - start,
    )


def check_layout(root: Path) -> None:
    """Raise a one-line UserError naming the first expected folder or TSV that `root` lacks."""
    if not root.is_dir():
        raise UserError(f"DESED root {root} does not exist (pass --root DIR, or --synthetic to generate one)")
    for split in SPLITS.values():
        for rel, is_ok in ((split.audio_dir, Path.is_dir), (split.metadata, Path.is_file)):
            if not is_ok(root / rel):
                raise UserError(
                    f"not a DESED root: {root} has no {rel} "
                    "(expected the DCASE 2020 layout: audio/train/weak, audio/train/unlabel_in_domain, "
                    "audio/train/synthetic20/soundscapes, audio/validation, audio/eval/public and their metadata TSVs)"
                )


def _read_metadata(path: Path, kind: LabelKind) -> _SplitTables:
    table = read_tsv(path)
    absent = [c for c in TSV_COLUMNS[kind] if c not in table.columns]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)} (found {', '.join(table.columns)})")
    filenames = list(dict.fromkeys(table["filename"]))
    if kind == "weak":
        for line, labels in zip(_line_numbers(table), table["event_labels"], strict=True):
            _check_labels(path, line, labels.split(",") if labels else [])
        return _SplitTables(
            filenames, weak_labels=dict(zip(table["filename"], table["event_labels"], strict=True))
        )
    if kind == "strong":
        return _SplitTables(filenames, events=_parse_events(path, table))
    return _SplitTables(filenames)


def _parse_events(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Events of a strong TSV; the rows with empty onset, offset and label (clips with no event) are dropped."""
    cells = table[["onset", "offset", "event_label"]]
    empty = (cells == "").all(axis=1)
    events = table.loc[~empty, EVENT_COLUMNS].copy()
    lines = _line_numbers(table)[~empty.to_numpy()]
    for column in ("onset", "offset"):
        values = pd.to_numeric(events[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            raise UserError(
                f"{path}:{lines[bad][0]}: {column} {events[column].iloc[bad.argmax()]!r} is not a number"
            )
        events[column] = values.astype(float)
    backwards = (events["offset"] < events["onset"]).to_numpy()
    if backwards.any():
        raise UserError(f"{path}:{lines[backwards][0]}: offset before onset")
    for line, label in zip(lines, events["event_label"], strict=True):
        _check_labels(path, line, [label])
    return events.reset_index(drop=True)


def _line_numbers(table: pd.DataFrame) -> np.ndarray:
    return table.index.to_numpy() + 2  # 1-based, after the header line


def _check_labels(path: Path, line: int, labels: list[str]) -> None:
    for label in labels:
        if label not in CLASSES:
            raise UserError(f"{path}:{line}: unknown class {label!r} (DESED classes: {', '.join(CLASSES)})")


def _scan_audio_dir(directory: Path) -> dict[str, tuple[int, int]]:
    """File name -> (size, mtime_ns) for every file in `directory`: one scandir instead of a stat per clip."""
    with os.scandir(directory) as entries:
        stats = {e.name: e.stat() for e in entries if e.is_file()}
    return {name: (stat.st_size, stat.st_mtime_ns) for name, stat in stats.items()}


def _fingerprint(
    root: Path, tables: dict[str, _SplitTables], on_disk: dict[str, dict[str, tuple[int, int]]]
) -> str:
    digest = hashlib.sha256(f"{MANIFEST_FORMAT}\n{root}\n".encode())
    for name, split in SPLITS.items():
        digest.update((root / split.metadata).read_bytes())
        for filename in tables[name].filenames:
            digest.update(f"{name}\t{filename}\t{on_disk[name].get(filename)}\n".encode())
    return digest.hexdigest()


def _read_headers(root: Path, present: dict[str, list[str]], progress: bool) -> dict[str, list[_Clip]]:
    jobs = [(name, root / SPLITS[name].audio_dir / f) for name, files in present.items() for f in files]
    clips: dict[str, list[_Clip]] = {name: [] for name in present}
    with progress_bar("Reading DESED headers", len(jobs), progress) as advance:
        # Header reads are I/O bound (network file systems): threads overlap them.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for (name, _), clip in zip(jobs, pool.map(lambda job: _read_header(job[1]), jobs), strict=True):
                clips[name].append(clip)
                advance()
    return clips


def _read_header(path: Path) -> _Clip:
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError) as err:
        raise UserError(f"cannot decode {path}: {_one_line(err)}") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise UserError(f"cannot decode {path}: it holds no audio samples")
    return _Clip(path.name, path, info.frames / info.samplerate, info.samplerate, info.channels)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _manifest_table(clips: list[_Clip], table: _SplitTables, kind: LabelKind) -> pd.DataFrame:
    manifest = pd.DataFrame(
        {
            "filename": [c.filename for c in clips],
            "path": [str(c.path) for c in clips],
            "duration": [c.duration for c in clips],
            "sample_rate": [c.sample_rate for c in clips],
            "channels": [c.channels for c in clips],
        }
    )
    if kind == "weak":
        manifest["event_labels"] = [table.weak_labels[c.filename] for c in clips]
    return manifest


def _outputs_exist(out: Path) -> bool:
    manifest_dir = out / MANIFEST_DIR
    tables = [manifest_dir / f"{name}.tsv" for name in SPLITS]
    tables += [
        manifest_dir / f"{name}_events.tsv" for name, split in SPLITS.items() if split.kind == "strong"
    ]
    return all(p.is_file() for p in [*tables, out / MISSING_FILES])


def _read_prepare_json(manifest_dir: Path) -> dict | None:
    try:
        return json.loads((manifest_dir / PREPARE_JSON).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# Reading a prepared manifest


def load_manifest(prepared: Path) -> dict[str, pd.DataFrame]:
    """Source split name -> manifest table (filename, path, duration, sample_rate, channels[, event_labels])."""
    manifest_dir = _manifest_dir(prepared)
    tables = {}
    for name in SPLITS:
        table = pd.read_csv(
            manifest_dir / f"{name}.tsv", sep="\t", keep_default_na=False, dtype={"filename": str}
        )
        tables[name] = table
    return tables


def load_events(prepared: Path, split: str) -> pd.DataFrame:
    """The events (filename, onset, offset, event_label) of a strong source split; clips without events have none."""
    if SPLITS[split].kind != "strong":
        raise ValueError(f"{split} is not a strongly labeled split")
    return read_events(_manifest_dir(prepared) / f"{split}_events.tsv")


def read_events(path: Path) -> pd.DataFrame:
    """A table of events (filename, onset, offset, event_label) as written by sedaug, with typed columns."""
    return pd.read_csv(
        path, sep="\t", keep_default_na=False,
        dtype={"filename": str, "event_label": str, "onset": float, "offset": float},
    )


def manifest_hash(prepared: Path) -> str:
    """A hash of the manifest's tables: the feature store records it to notice a changed manifest."""
    manifest_dir = _manifest_dir(prepared)
    digest = hashlib.sha256()
    for path in sorted(manifest_dir.glob("*.tsv")):
        digest.update(f"{path.name}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _manifest_dir(prepared: Path) -> Path:
    manifest_dir = Path(prepared) / MANIFEST_DIR
    if not (manifest_dir / PREPARE_JSON).is_file():
        raise UserError(f"no DESED manifest in {manifest_dir}: run `sedaug prepare-desed` first")
    return manifest_dir
