"""The DESED (DCASE 2020 task 4) layout, its import into a manifest, and the missing-file report.

`prepare_desed` reads the metadata TSVs of a DESED root, checks every listed clip on disk (its header; the samples
too when they are floats, which can hold NaN: nothing is copied or resampled) and writes one manifest table per
source split into `<out>/manifest/`. It records a fingerprint of its inputs so that a second run over unchanged
inputs does nothing.

Bad data is refused before anything is written, with one line naming the file (and line, for a TSV): a TSV that is
empty, binary or has more fields than its header; an onset or offset that is not a finite number, a negative
onset, an offset before its onset; an event that ends well past its clip's audio (a truncated file); audio that
cannot be decoded, holds NaN or infinite samples, or is too short to analyse. One DESED quirk is accepted: an
event ending at most `LABEL_TOLERANCE` seconds past its clip's audio (a 9.98 s clip labelled to 10 s) is clipped
to the clip, or dropped if it starts there, and counted in `label_warnings.tsv`.
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
from sedaug.files import atomic_dir, write_json, write_tsv, writing
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
LABEL_WARNINGS = "label_warnings.tsv"
PREPARE_JSON = "prepare.json"
# Bump when the manifest's content or format changes, so that old manifests are rebuilt.
MANIFEST_FORMAT = 2
# DESED quirk: some events end slightly after their clip's audio (a 10 s label on a 9.98 s file). Up to this many
# seconds past the end, the event is clipped to the clip (with a warning); further, the file is taken as truncated.
LABEL_TOLERANCE = 0.5
# The shortest clip the mel front end can analyse: more samples than half its 2048-point STFT, at 16 kHz.
MIN_SECONDS = 1025 / 16000
WARNING_COLUMNS = ["metadata", "line", "filename", "event_label", "onset", "offset", "duration", "action"]


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
    n_label_warnings: int = 0
    label_warnings: Path | None = None

    def summary(self) -> str:
        clips = ", ".join(f"{name} {n:,}" for name, n in self.counts.items())
        state = "already up to date" if self.skipped else "written"
        missing = f"{self.n_missing:,} listed files missing (see {self.missing_files})"
        warnings = ""
        if self.n_label_warnings:
            warnings = (
                f"; {self.n_label_warnings:,} events ending past their clip's audio clipped or dropped "
                f"(see {self.label_warnings})"
            )
        return f"DESED manifest {state} in {self.manifest_dir}: {clips}; {missing}{warnings}"


@dataclass
class _Clip:
    filename: str
    path: Path
    duration: float
    sample_rate: int
    channels: int


@dataclass
class _SplitTables:
    """A source split's metadata as read from its TSV (events carry their TSV line in a `line` column)."""

    path: Path
    filenames: list[str]
    weak_labels: dict[str, str] = field(default_factory=dict)
    events: pd.DataFrame | None = None


# ---------------------------------------------------------------------------------------------------------------
# prepare-desed


def prepare_desed(root: Path, out: Path, progress: bool = True) -> PrepareReport:
    """Check the DESED layout under `root` and write the manifest into `out/manifest/` (idempotent).

    Everything is read and checked before anything is written; the manifest folder is then replaced whole, so a
    refused input or a full disk leaves the previous manifest as it was."""
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
            n_label_warnings=previous.get("n_label_warnings", 0),
            label_warnings=out / LABEL_WARNINGS,
        )

    missing: list[tuple[str, str]] = []
    present: dict[str, list[str]] = {}
    for name, table in tables.items():
        present[name] = [f for f in table.filenames if f in on_disk[name]]
        missing += [(name, f) for f in table.filenames if f not in on_disk[name]]
    clips = _read_headers(root, present, progress)

    manifests, events, warnings = {}, {}, []
    for name, split in SPLITS.items():
        manifests[name] = _manifest_table(clips[name], tables[name], split.kind)
        if split.kind == "strong":
            durations = {c.filename: (c.duration, c.path) for c in clips[name]}
            events[name], problems = _fit_events(root, tables[name], durations)
            warnings += problems

    counts = {name: len(table) for name, table in manifests.items()}
    n_events = {name: len(table) for name, table in events.items()}
    # Written aside, then swapped in: the reports first, the manifest (whose prepare.json vouches for it) last.
    with atomic_dir(manifest_dir) as staging:
        for name, table in manifests.items():
            write_tsv(staging / f"{name}.tsv", table)
        for name, table in events.items():
            write_tsv(staging / f"{name}_events.tsv", table)
        write_tsv(staging / MISSING_FILES, pd.DataFrame(missing, columns=["split", "filename"]))
        write_tsv(staging / LABEL_WARNINGS, pd.DataFrame(warnings, columns=WARNING_COLUMNS))
        write_json(
            staging / PREPARE_JSON,
            {
                "format": MANIFEST_FORMAT,
                "sedaug_version": __version__,
                "root": str(root),
                "fingerprint": fingerprint,
                "counts": counts,
                "n_events": n_events,
                "n_missing": len(missing),
                "n_label_warnings": len(warnings),
            },
        )
        for report in (MISSING_FILES, LABEL_WARNINGS):
            with writing(out / report):
                os.replace(staging / report, out / report)
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
        n_label_warnings=len(warnings),
        label_warnings=out / LABEL_WARNINGS,
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
    table = read_metadata_tsv(path, TSV_COLUMNS[kind])
    filenames = list(dict.fromkeys(table["filename"]))
    if kind == "weak":
        for line, labels in zip(table["line"], table["event_labels"], strict=True):
            _check_labels(path, line, labels.split(",") if labels else [])
        return _SplitTables(
            path, filenames, weak_labels=dict(zip(table["filename"], table["event_labels"], strict=True))
        )
    if kind == "strong":
        return _SplitTables(path, filenames, events=_parse_events(path, table))
    return _SplitTables(path, filenames)


def read_metadata_tsv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A metadata TSV as strings, with each row's 1-based line number in a `line` column.

    Strict where pandas would guess or fail with a traceback: an empty or binary file, and a row with more non-empty
    fields than the header, are one-line errors naming the file (and line). Blank lines are skipped; a row with
    fewer fields than the header is completed with empty cells (DESED writes clips without events that way)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    if not data.strip():
        raise UserError(f"{path}: empty file (expected a header line: {chr(9).join(columns)})")
    if b"\0" in data:
        raise UserError(f"{path}: not a text TSV (byte {data.index(0)} is a NUL byte: a binary file?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text TSV (byte {err.start} is not UTF-8 text)") from None
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    absent = [c for c in columns if c not in header]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)} (found {', '.join(header)})")
    repeated = sorted({c for c in header if header.count(c) > 1 and c})
    if repeated:
        raise UserError(f"{path}:1: column(s) {', '.join(repeated)} appear more than once in the header")
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > len(header):
            if any(f.strip() for f in fields[len(header) :]):
                raise UserError(
                    f"{path}:{number}: {len(fields)} tab-separated fields where the header has {len(header)} "
                    f"({', '.join(header)})"
                )
            fields = fields[: len(header)]
        rows.append([_unquote(f) for f in fields] + [""] * (len(header) - len(fields)))
        numbers.append(number)
    table = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    table = table[list(columns)].copy()
    table["line"] = np.asarray(numbers, dtype=int)
    return table


def _unquote(cell: str) -> str:
    """A cell quoted as pandas writes one ("Dog,Speech"), unquoted; others as they are."""
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        return cell[1:-1].replace('""', '"')
    return cell


def _parse_events(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Events of a strong TSV, with their line; the rows with empty onset, offset and label (clips with no event)
    are dropped. Onsets and offsets must be finite numbers, onsets not negative, offsets not before onsets."""
    cells = table[["onset", "offset", "event_label"]]
    empty = (cells == "").all(axis=1)
    events = table.loc[~empty, [*EVENT_COLUMNS, "line"]].copy()
    for column in ("onset", "offset"):
        values = pd.to_numeric(events[column], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            first = int(bad.argmax())
            raise UserError(
                f"{path}:{events['line'].iloc[first]}: {column} {events[column].iloc[first]!r} is not a finite number"
            )
        events[column] = values
    negative = (events["onset"] < 0).to_numpy()
    if negative.any():
        first = int(negative.argmax())
        raise UserError(f"{path}:{events['line'].iloc[first]}: negative onset {events['onset'].iloc[first]:g}")
    backwards = (events["offset"] < events["onset"]).to_numpy()
    if backwards.any():
        first = int(backwards.argmax())
        row = events.iloc[first]
        raise UserError(f"{path}:{row['line']}: offset {row['offset']:g} before onset {row['onset']:g}")
    for line, label in zip(events["line"], events["event_label"], strict=True):
        _check_labels(path, line, [label])
    return events.reset_index(drop=True)


def _fit_events(
    root: Path, table: _SplitTables, clips: dict[str, tuple[float, Path]]
) -> tuple[pd.DataFrame, list[tuple]]:
    """The events of the clips present on disk, fitted to their clip's audio: an event ending at most
    LABEL_TOLERANCE seconds past the end is clipped to it (dropped if it starts there), with a warning row;
    further is a UserError naming the TSV line and the audio file."""
    assert table.events is not None
    events = table.events[table.events["filename"].isin(clips.keys())].reset_index(drop=True).copy()
    duration = events["filename"].map(lambda f: clips[f][0]).to_numpy(float)
    late = (events["offset"].to_numpy() > duration + LABEL_TOLERANCE)
    if late.any():
        row, seconds = events.iloc[int(late.argmax())], duration[int(late.argmax())]
        raise UserError(
            f"{table.path}:{row['line']}: {row['event_label']} ends at {row['offset']:g} s but "
            f"{clips[row['filename']][1]} holds {seconds:.3f} s of audio (a truncated file? replace or delete it)"
        )
    past = events["offset"].to_numpy() > duration
    metadata = str(table.path.relative_to(root)) if table.path.is_relative_to(root) else str(table.path)
    warnings = []
    for i in np.flatnonzero(past):
        row = events.iloc[i]
        starts_after = row["onset"] >= duration[i]
        action = "dropped: starts at or after the clip's end" if starts_after else f"offset clipped to {duration[i]:g}"
        warnings.append(
            (metadata, int(row["line"]), row["filename"], row["event_label"], row["onset"], row["offset"],
             duration[i], action)
        )
    keep = ~(past & (events["onset"].to_numpy() >= duration))
    events["offset"] = np.minimum(events["offset"].to_numpy(), duration)
    return events.loc[keep, EVENT_COLUMNS].reset_index(drop=True), warnings


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
    digest = hashlib.sha256(f"{MANIFEST_FORMAT}\n{LABEL_TOLERANCE}\n{root}\n".encode())
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
    duration = info.frames / info.samplerate
    if duration < MIN_SECONDS:
        raise UserError(
            f"{path}: only {duration:.3f} s of audio, too short to analyse (a truncated file? replace or delete it)"
        )
    if info.subtype in ("FLOAT", "DOUBLE"):  # integer samples cannot be NaN; float ones are read through
        _check_finite(path)
    return _Clip(path.name, path, duration, info.samplerate, info.channels)


def _check_finite(path: Path) -> None:
    """Raise a UserError naming `path` and the first non-finite sample's time, if it holds NaN or infinity."""
    try:
        with sf.SoundFile(str(path)) as f:
            start = 0
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                bad = ~np.isfinite(block)
                if bad.any():
                    frame = start + int(bad.any(axis=1).argmax())
                    raise UserError(
                        f"{path}: non-finite audio samples (the first at {frame / f.samplerate:.3f} s): "
                        "repair or delete the file"
                    )
                start += len(block)
    except (RuntimeError, OSError) as err:
        raise UserError(f"cannot decode {path}: {_one_line(err)}") from err


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
    return all(p.is_file() for p in [*tables, out / MISSING_FILES, out / LABEL_WARNINGS])


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
