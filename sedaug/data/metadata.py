"""DESED's metadata: its classes and the TSVs that label its clips (weak labels, strong events), read strictly.

A TSV row that cannot be trusted (not finite, a negative onset, an offset before its onset, an unknown class, more
fields than the header, fields separated by spaces, a filename with spaces around it, a weak clip listed twice with
other labels) is a UserError naming the file and line. A weak or unlabeled clip listed again as it was is one clip,
with a warning row (`WARNING_COLUMNS`). An event ending at most `LABEL_TOLERANCE` seconds past its clip's audio is
DESED's known quirk: it is clipped, with a warning row; so is an event past the first clip_seconds of a longer clip
(the features hold those only). An event listed twice is kept twice, as the scorers read the file (F1 counts both,
PSDS merges same-class overlaps), with a warning row.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from sedaug.data.grid import PARAMS
from sedaug.errors import UserError

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


# An event, in every TSV and table of events (a list: pandas selects columns with it).
EVENT_COLUMNS = ["filename", "onset", "offset", "event_label"]
TSV_COLUMNS: dict[LabelKind, tuple[str, ...]] = {
    "weak": ("filename", "event_labels"),
    "unlabeled": ("filename",),
    "strong": tuple(EVENT_COLUMNS),
}
# DESED quirk: some events end slightly after their clip's audio (a 10 s label on a 9.98 s file). Up to this many
# seconds past the end, the event is clipped to the clip (with a warning); further, the file is taken as truncated.
LABEL_TOLERANCE = 0.5
WARNING_COLUMNS = ["metadata", "line", "filename", "event_label", "onset", "offset", "duration", "action"]
# DESED's clip names end in the segment of the YouTube video they were cut from: Y<id>_<start>_<end>.wav.
NAMED_SEGMENT = re.compile(r"_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)\.[^.]+$")


def named_seconds(filename: str) -> float | None:
    """The length a DESED clip's name says it has (`Y..._0.000_4.000.wav`: 4 s), or None for another name."""
    match = NAMED_SEGMENT.search(filename)
    return None if match is None else float(match[2]) - float(match[1])


@dataclass
class MetadataTables:
    """A source split's metadata as read from its TSV (events carry their TSV line in a `line` column)."""

    path: Path
    filenames: list[str]
    lines: dict[str, int] = field(default_factory=dict)  # filename -> the first line that lists it
    repeats: list[tuple[int, str]] = field(default_factory=list)  # (line, filename): a weak or unlabeled clip again
    weak_labels: dict[str, str] = field(default_factory=dict)
    events: pd.DataFrame | None = None


def read_metadata(path: Path, kind: LabelKind) -> MetadataTables:
    table = read_metadata_tsv(path, TSV_COLUMNS[kind])
    lines: dict[str, int] = {}
    for line, filename in zip(table["line"], table["filename"], strict=True):
        if filename != filename.strip():
            raise UserError(f"{path}:{line}: the filename {filename!r} begins or ends with a space: remove it")
        if "/" in filename or "\\" in filename:  # DESED lists bare names; a path would be looked up as missing
            raise UserError(f"{path}:{line}: the filename {filename!r} holds a path: list the file's name alone, "
                            "with the file in the split's audio folder")
        lines.setdefault(filename, int(line))
    filenames = list(lines)
    repeats = [] if kind == "strong" else [(int(line), f) for line, f in zip(table["line"], table["filename"],
                                                                            strict=True) if lines[f] != line]
    if kind == "weak":
        labels: dict[str, str] = {}
        for line, filename, cell in zip(table["line"], table["filename"], table["event_labels"], strict=True):
            _check_labels(path, line, cell.split(",") if cell else [])
            if filename in labels and set(labels[filename].split(",")) != set(cell.split(",")):
                raise UserError(f"{path}:{line}: {filename} is listed again, with other labels than on line "
                                f"{lines[filename]} ({cell or 'none'} against {labels[filename] or 'none'}): keep one row")
            labels.setdefault(filename, cell)
        return MetadataTables(path, filenames, lines, repeats, weak_labels=labels)
    if kind == "strong":
        return MetadataTables(path, filenames, lines, events=_parse_events(path, table))
    return MetadataTables(path, filenames, lines, repeats)


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
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        raise UserError(f"{path}: UTF-16 text: save the TSV as UTF-8")
    if b"\0" in data:
        raise UserError(f"{path}: not a text TSV (byte {data.index(0)} is a NUL byte: a binary file?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {err.start}): save the TSV as UTF-8") from None
    if "\r" in text.rstrip("\r") and "\n" not in text:
        raise UserError(f"{path}: its lines end in a carriage return alone (an old Mac text file): save the TSV with "
                        "LF or CRLF line ends")
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
        if len(header) > 1 and not any(f.strip() for f in fields[1:]) and _spaced(fields[0], columns):
            raise UserError(f"{path}:{number}: one field where the header has {len(header)}: the row's fields are "
                            "separated by spaces, not tabs")
        rows.append([_unquote(f) for f in fields] + [""] * (len(header) - len(fields)))
        numbers.append(number)
    table = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    table = table[list(columns)].copy()
    table["line"] = np.asarray(numbers, dtype=int)
    return table


def _spaced(cell: str, columns: tuple[str, ...]) -> bool:
    """Whether a row's lone first cell is the whole row with spaces for tabs (a filename may hold spaces): a weak
    row's last word is labels, a strong row's two words before its last are numbers."""
    words = cell.split()
    if len(words) < 2 or columns == ("filename",):
        return False
    if "event_labels" in columns:
        return all(label in CLASSES for label in words[-1].split(","))
    try:
        float(words[-3]), float(words[-2])
    except (IndexError, ValueError):
        return False
    return words[-1] in CLASSES


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


def fit_events(
    root: Path, table: MetadataTables, clips: dict[str, tuple[float, Path]]
) -> tuple[pd.DataFrame, list[tuple]]:
    """The events of the clips present on disk, fitted to what the features hold of their clip: its audio, at most
    clip_seconds of it. An event ending at most LABEL_TOLERANCE seconds past the audio, or past the first
    clip_seconds of a longer clip, is clipped to it (dropped if it starts there), and one of zero length is dropped,
    each with a warning row; one ending further past the audio is a UserError naming the TSV line and the audio file
    (a truncated file, or a wrong label where the clip's name says its length). An event listed twice is kept, as
    the scorers read the file, with a warning row."""
    assert table.events is not None
    events = table.events[table.events["filename"].isin(clips.keys())].reset_index(drop=True).copy()
    audio = events["filename"].map(lambda f: clips[f][0]).to_numpy(float)
    late = (events["offset"].to_numpy() > audio + LABEL_TOLERANCE)
    if late.any():
        row, seconds = events.iloc[int(late.argmax())], audio[int(late.argmax())]
        named = named_seconds(row["filename"])
        why = (f"as its name says: the label is wrong, fix line {row['line']}" if named is not None
               and abs(named - seconds) <= LABEL_TOLERANCE else "(a truncated file? replace or delete it)")
        raise UserError(
            f"{table.path}:{row['line']}: {row['event_label']} ends at {row['offset']:g} s but "
            f"{clips[row['filename']][1]} holds {seconds:.3f} s of audio {why}"
        )
    duration = np.minimum(audio, PARAMS.clip_seconds)
    onset, offset = events["onset"].to_numpy(), events["offset"].to_numpy()
    past, empty = offset > duration, offset == onset  # a zero-length event: no scorer takes it
    first = events.groupby(EVENT_COLUMNS, sort=False)["line"].transform("min").to_numpy()
    again = first != events["line"].to_numpy()
    metadata = str(table.path.relative_to(root)) if table.path.is_relative_to(root) else str(table.path)
    warnings = []
    for i in np.flatnonzero(past | empty | again):
        row = events.iloc[i]
        end = "the clip's end" if audio[i] <= PARAMS.clip_seconds else f"the first {PARAMS.clip_seconds:g} s"
        actions = []
        if empty[i]:
            actions.append("dropped: zero length (offset = onset)")
        elif past[i] and row["onset"] >= duration[i]:
            actions.append(f"dropped: starts at or after {end}")
        elif past[i]:
            actions.append(f"offset clipped to {duration[i]:g}" + ("" if audio[i] <= PARAMS.clip_seconds else f" ({end})"))
        if again[i]:
            actions.append(f"listed twice: the same event as line {first[i]} (F1 counts both, PSDS merges them)")
        warnings += [(metadata, int(row["line"]), row["filename"], row["event_label"], row["onset"], row["offset"],
                      audio[i], action) for action in actions]
    keep = ~(past & (onset >= duration)) & ~empty
    events["offset"] = np.minimum(events["offset"].to_numpy(), duration)
    return events.loc[keep, EVENT_COLUMNS].reset_index(drop=True), warnings


def _check_labels(path: Path, line: int, labels: list[str]) -> None:
    for label in labels:
        if not label:
            raise UserError(f"{path}:{line}: an empty event label (an event needs one of: {', '.join(CLASSES)})")
        if label not in CLASSES:
            raise UserError(f"{path}:{line}: unknown class {label!r} (DESED classes: {', '.join(CLASSES)})")
