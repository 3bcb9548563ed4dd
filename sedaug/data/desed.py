"""The DESED (DCASE 2020 task 4) layout, its import into a manifest, and the missing-file report.

`prepare_desed` reads the metadata TSVs of a DESED root, checks every listed clip on disk (its header; the samples
too when they are floats, which can hold NaN: nothing is copied or resampled) and writes one manifest table per
source split into `<out>/manifest/`. It records a fingerprint of its inputs so that a second run over unchanged
inputs does nothing.

Bad data is refused before anything is written, with one line naming the file (and line, for a TSV; the rows'
checks are data/metadata.py's): an event that ends well past its clip's audio (a truncated file); a WAV whose
header announces more samples than it holds; audio that cannot be decoded, holds NaN or infinite samples, or is too
short to analyse. DESED's quirks are accepted, each counted in `label_warnings.tsv`: an event ending at most
`LABEL_TOLERANCE` seconds past its clip's audio (a 9.98 s clip labelled to 10 s) is clipped to the clip, or
dropped if it starts there (data/metadata.py's fit_events lists the others); so are a clip shorter than its name
says and a clip listed in two splits, kept.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from sedaug import __version__
from sedaug.data.grid import check_sample_rate
from sedaug.data.metadata import (  # noqa: F401 (re-exported: the layout's classes and columns)
    CLASSES,
    EVENT_COLUMNS,
    LABEL_TOLERANCE,
    WARNING_COLUMNS,
    LabelKind,
    MetadataTables,
    fit_events,
    named_seconds,
    read_metadata,
)
from sedaug.errors import UserError, counted, one_line
from sedaug.files import atomic_dir, read_json_object, read_tsv, sha256, write_json, write_tsv, writing
from sedaug.progress import progress_bar


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

MANIFEST_DIR = "manifest"
MISSING_FILES = "missing_files.tsv"
LABEL_WARNINGS = "label_warnings.tsv"
PREPARE_JSON = "prepare.json"
# Bump when the manifest's content or format changes, so that old manifests are rebuilt.
MANIFEST_FORMAT = 5  # 3: zero-length events dropped; 4: each clip's size and mtime_ns (extract-mels checks them);
# 5: each table's SHA-256 (an edited manifest is made again)
# The shortest clip the mel front end can analyse: more samples than half its 2048-point STFT, at 16 kHz.
MIN_SECONDS = 1025 / 16000


@dataclass
class PrepareReport:
    """What `prepare_desed` found and wrote."""

    root: Path
    out: Path
    counts: dict[str, int]
    n_events: dict[str, int]
    n_missing: int
    skipped: bool
    seconds: float = 0.0
    n_label_warnings: int = 0
    edited: str | None = None  # a manifest table edited by hand, made again from the tree

    @property
    def manifest_dir(self) -> Path:
        return self.out / MANIFEST_DIR

    @property
    def missing_files(self) -> Path:
        return self.out / MISSING_FILES

    @property
    def label_warnings(self) -> Path:
        return self.out / LABEL_WARNINGS

    def summary(self) -> str:
        clips = ", ".join(f"{name} {n:,}" for name, n in self.counts.items())
        state = "already up to date" if self.skipped else "written"
        if self.edited:
            state += f" again ({self.edited} had been edited by hand: DESED's labels are in its TSVs)"
        missing = f"{counted(self.n_missing, 'listed file')} missing (see {self.missing_files})"
        warnings = ""
        if self.n_label_warnings:
            warnings = (f"; {counted(self.n_label_warnings, 'warning')} (events clipped, dropped or listed twice, "
                        f"clips shorter than named or in two splits: see {self.label_warnings})")
        return f"DESED manifest {state} in {self.manifest_dir}: {clips}; {missing}{warnings}"


@dataclass
class _Clip:
    filename: str
    path: Path
    duration: float
    sample_rate: int
    channels: int


# ---------------------------------------------------------------------------------------------------------------
# prepare-desed


def prepare_desed(root: Path, out: Path, progress: bool = True) -> PrepareReport:
    """Check the DESED layout under `root` and write the manifest into `out/manifest/` (idempotent).

    Everything is read and checked before anything is written; the manifest folder is then replaced whole, so a
    refused input or a full disk leaves the previous manifest as it was."""
    start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give the folder for the manifest (e.g. data/desed)")
    tables, on_disk, fingerprint = _read_tree(root)

    manifest_dir = out / MANIFEST_DIR
    previous = _read_prepare_json(manifest_dir)
    edited = _edited_table(manifest_dir, previous)
    if previous is not None and previous.get("fingerprint") == fingerprint and _outputs_exist(out) and not edited:
        return PrepareReport(
            root=root,
            out=out,
            counts={name: previous["counts"][name] for name in SPLITS},
            n_events={name: previous["n_events"][name] for name in SPLITS if SPLITS[name].kind == "strong"},
            n_missing=previous["n_missing"],
            skipped=True,
            seconds=time.perf_counter() - start,
            n_label_warnings=previous.get("n_label_warnings", 0),
        )

    missing: list[tuple[str, str]] = []
    present: dict[str, list[str]] = {}
    for name, table in tables.items():
        present[name] = [f for f in table.filenames if f in on_disk[name]]
        missing += [(name, f) for f in table.filenames if f not in on_disk[name]]
    empty = [name for name, table in tables.items() if not present[name]]
    if empty:  # nothing to train, select or score on: a header-only TSV, or every listed file missing
        name = empty[0]
        listed = len(tables[name].filenames)
        why = f"all {listed} listed files are missing from {root / SPLITS[name].audio_dir}" if listed else \
            f"{root / SPLITS[name].metadata} lists no clip"
        raise UserError(f"{name}: no clip to import ({why})")
    clips = _read_headers(root, present, progress)

    manifests, events, warnings = {}, {}, _clip_warnings(tables, clips)
    for name, split in SPLITS.items():
        manifests[name] = _manifest_table(clips[name], tables[name], split.kind, on_disk[name])
        if split.kind == "strong":
            durations = {c.filename: (c.duration, c.path) for c in clips[name]}
            events[name], problems = fit_events(root, tables[name], durations)
            warnings += problems

    counts = {name: len(table) for name, table in manifests.items()}
    n_events = {name: len(table) for name, table in events.items()}
    # Written aside, then swapped in: the reports first, the manifest (whose prepare.json vouches for it) last.
    with atomic_dir(manifest_dir) as staging:
        for name, table in manifests.items():
            write_tsv(staging / f"{name}.tsv", table)
        for name, table in events.items():
            write_tsv(staging / f"{name}_events.tsv", table)
        tables_sha256 = {path.name: sha256(path) for path in sorted(staging.glob("*.tsv"))}
        write_tsv(staging / MISSING_FILES, pd.DataFrame(missing, columns=["split", "filename"]))
        write_tsv(staging / LABEL_WARNINGS, pd.DataFrame(warnings, columns=WARNING_COLUMNS))
        write_json(
            staging / PREPARE_JSON,
            {
                "format": MANIFEST_FORMAT,
                "sedaug_version": __version__,
                "root": str(root),
                "fingerprint": fingerprint,
                "metadata_sha256": _metadata_hashes(root),
                "counts": counts,
                "n_events": n_events,
                "n_missing": len(missing),
                "n_label_warnings": len(warnings),
                "tables_sha256": tables_sha256,
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
        skipped=False,
        seconds=time.perf_counter() - start,
        n_label_warnings=len(warnings),
        edited=edited,
    )


def _clip_warnings(tables: dict[str, MetadataTables], clips: dict[str, list[_Clip]]) -> list[tuple]:
    """Warning rows (WARNING_COLUMNS) for clips whose audio is shorter than their DESED name says by more than
    LABEL_TOLERANCE (a download cut short?), for clips listed in two splits (a clip scored on, trained on), for a
    weak clip without a label, and for a weak or unlabeled clip listed twice in its TSV (kept once)."""
    warnings, seen = [], {}
    for name, split in SPLITS.items():
        for clip in clips[name]:
            named = named_seconds(clip.filename)
            actions = [f"kept: {clip.duration:.3f} s of audio where its name says {named:g} s (cut short?)"] \
                if named is not None and clip.duration < named - LABEL_TOLERANCE else []
            if clip.filename in seen:
                actions.append(f"kept: listed in {seen[clip.filename]} too")
            if split.kind == "weak" and not tables[name].weak_labels[clip.filename]:
                actions.append("kept with no label: trained as a clip where no class sounds (DESED's weak clips each "
                               "have one)")
            seen.setdefault(clip.filename, name)
            line = tables[name].lines[clip.filename]
            warnings += [(split.metadata, line, clip.filename, "", "", "", clip.duration, a) for a in actions]
        durations = {clip.filename: clip.duration for clip in clips[name]}
        warnings += [(split.metadata, line, filename, "", "", "", durations.get(filename, ""),
                      f"kept once: listed on line {tables[name].lines[filename]} too")
                     for line, filename in tables[name].repeats]
    return warnings


def check_layout(root: Path) -> None:
    """Raise a one-line UserError naming the first expected folder or TSV that `root` lacks."""
    if root.exists() and not root.is_dir():
        raise UserError(f"DESED root {root} is a file, not a folder (pass --root DIR, the folder holding audio/ and metadata/)")
    if not root.is_dir():
        raise UserError(f"DESED root {root} does not exist (pass --root DIR, or --synthetic to generate one)")
    for split in SPLITS.values():
        for rel, is_ok in ((split.audio_dir, Path.is_dir), (split.metadata, Path.is_file)):
            if (root / rel).is_symlink() and not (root / rel).exists():
                raise UserError(f"{root / rel} is a link to {os.readlink(root / rel)}, which is not there (moved, "
                                "or a disk not mounted?)")
            if not is_ok(root / rel):
                raise UserError(
                    f"not a DESED root: {root} has no {rel} "
                    "(expected the DCASE 2020 layout: audio/train/weak, audio/train/unlabel_in_domain, "
                    "audio/train/synthetic20/soundscapes, audio/validation, audio/eval/public and their metadata TSVs)"
                )


def _read_tree(root: Path) -> tuple[dict[str, MetadataTables], dict[str, dict[str, tuple[int, int]]], str]:
    """The metadata tables of the DESED tree at `root`, each audio folder's files (size, mtime_ns), and their
    fingerprint, which prepare.json records."""
    check_layout(root)
    tables = {name: read_metadata(root / split.metadata, split.kind) for name, split in SPLITS.items()}
    for table in tables.values():
        check_names_readable(table.filenames, lambda f, table=table: f"{table.path}:{table.lines[f]}: {f}")
    on_disk = {name: _scan_audio_dir(root / split.audio_dir) for name, split in SPLITS.items()}
    return tables, on_disk, _fingerprint(root, tables, on_disk)


def check_names_readable(names: Iterable[str], where: Callable[[str], str]) -> None:
    """Refuse a name that is not ASCII where the locale's file names are not UTF-8 (an ASCII or Latin-1 locale
    without Python's UTF-8 mode): the TSV's UTF-8 name would not be the file's, found missing or a traceback."""
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8":
        return
    for name in names:
        if not name.isascii():
            raise UserError(f"{where(name)}: this locale's file names ({encoding}) are not UTF-8, the TSVs' encoding, "
                            "so the file cannot be found by its name: run with PYTHONUTF8=1 or a UTF-8 locale")


def _scan_audio_dir(directory: Path) -> dict[str, tuple[int, int]]:
    """File name -> (size, mtime_ns) for every file in `directory`: one scandir instead of a stat per clip."""
    with os.scandir(directory) as entries:
        stats = {e.name: e.stat() for e in entries if e.is_file()}
    return {name: (stat.st_size, stat.st_mtime_ns) for name, stat in stats.items()}


def _fingerprint(
    root: Path, tables: dict[str, MetadataTables], on_disk: dict[str, dict[str, tuple[int, int]]]
) -> str:
    # surrogateescape: a path's bytes as the file system has them, whatever the locale decoded them as
    digest = hashlib.sha256(f"{MANIFEST_FORMAT}\n{LABEL_TOLERANCE}\n{root}\n".encode("utf-8", "surrogateescape"))
    for name, split in SPLITS.items():
        digest.update((root / split.metadata).read_bytes())
        for filename in tables[name].filenames:
            digest.update(f"{name}\t{filename}\t{on_disk[name].get(filename)}\n".encode("utf-8", "surrogateescape"))
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


def decode_reason(err: BaseException) -> str:
    """One line on why a file could not be decoded (libsndfile's own message, without the path it repeats)."""
    own = " ".join(err.error_string.split()) if isinstance(err, sf.LibsndfileError) else ""
    return own or one_line(err)


def undecodable(path: Path, err: BaseException) -> UserError:
    """A file soundfile could not read, said once."""
    return UserError(f"cannot decode {path}: {decode_reason(err)}")


def _read_header(path: Path) -> _Clip:
    try:
        # The path's bytes: soundfile encodes a str strictly, and fails on a name the locale does not decode.
        info = sf.info(os.fsencode(path))
    except (RuntimeError, OSError) as err:
        raise undecodable(path, err) from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise UserError(f"cannot decode {path}: it holds no audio samples")
    try:
        check_sample_rate(info.samplerate)
    except ValueError as err:
        raise UserError(f"{path}: {err}: resample it, or remove it from the TSV") from None
    if (cut := truncated(info)) is not None:
        raise UserError(f"{path}: truncated: its header announces {cut[0]:,} bytes of samples, the file holds {cut[1]:,} "
                        "(a download or copy cut short? replace or delete it)")
    duration = info.frames / info.samplerate
    if duration < MIN_SECONDS:
        raise UserError(
            f"{path}: only {duration:.3f} s of audio, too short to analyse (a truncated file? replace or delete it)"
        )
    if info.subtype in ("FLOAT", "DOUBLE"):  # integer samples cannot be NaN; float ones are read through
        _check_finite(path)
    return _Clip(path.name, path, duration, info.samplerate, info.channels)


def truncated(info) -> tuple[int, int] | None:
    """(bytes announced, bytes there) of a WAV-like file whose data chunk ends more than LABEL_TOLERANCE seconds
    of audio past the file's end (a few bytes short is a careless writer, decoded as it is), read from libsndfile's
    log ("data : 1764000 (should be 705573)", "Block Align : 4"); None else. A size of 0 or 0xFFFFFFFF is a streamed
    file's placeholder, not a promise."""
    match = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.MULTILINE)
    if match is None:
        return None
    announced, there = int(match[1]), int(match[2])
    frame = re.search(r"Block Align\s*:\s*(\d+)", info.extra_info)
    missing_s = (announced - there) / (int(frame[1]) if frame and int(frame[1]) else 1) / info.samplerate
    return (announced, there) if missing_s > LABEL_TOLERANCE and announced not in (0, 0xFFFFFFFF) else None


def _check_finite(path: Path) -> None:
    """Raise a UserError naming `path` and the first non-finite sample's time, if it holds NaN or infinity."""
    try:
        with sf.SoundFile(os.fsencode(path)) as f:
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
        raise undecodable(path, err) from err


def _manifest_table(
    clips: list[_Clip], table: MetadataTables, kind: LabelKind, on_disk: dict[str, tuple[int, int]]
) -> pd.DataFrame:
    manifest = pd.DataFrame(
        {
            "filename": [c.filename for c in clips],
            "path": [str(c.path) for c in clips],
            "duration": [c.duration for c in clips],
            "sample_rate": [c.sample_rate for c in clips],
            "channels": [c.channels for c in clips],
            "size": [on_disk[c.filename][0] for c in clips],
            "mtime_ns": [on_disk[c.filename][1] for c in clips],
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


def _edited_table(manifest_dir: Path, record: dict | None) -> str | None:
    """The first manifest table whose SHA-256 is not the one prepare.json records (edited by hand), as
    `manifest/<name>`; None where every one is as written, or the record is older than the hashes."""
    recorded = (record or {}).get("tables_sha256")
    if not isinstance(recorded, dict):
        return None
    for name, digest in recorded.items():
        path = manifest_dir / str(name)
        if path.is_file() and sha256(path) != digest:
            return f"{MANIFEST_DIR}/{name}"
    return None


def _read_prepare_json(manifest_dir: Path) -> dict | None:
    return read_json_object(manifest_dir / PREPARE_JSON)


# ---------------------------------------------------------------------------------------------------------------
# Reading a prepared manifest


def load_manifest(prepared: Path) -> dict[str, pd.DataFrame]:
    """Source split name -> manifest table (filename, path, duration, sample_rate, channels, size, mtime_ns[,
    event_labels])."""
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


def check_unchanged(prepared: Path, manifest: dict[str, pd.DataFrame]) -> str | None:
    """Refuse a manifest whose DESED tree changed since `sedaug prepare-desed` read it (a clip replaced or removed, a
    metadata TSV edited, a missing clip added): what is extracted from it would not be the tree's. Returns why
    nothing can be extracted from it (its tree is gone, or it lists another tree's audio than the one beside it: a
    prepared tree copied or moved), where a store extracted before may still be complete; else None."""
    record = _read_prepare_json(_manifest_dir(prepared)) or {}
    root = Path(str(record.get("root", "")))
    again = f"run `sedaug prepare-desed {_prepare_args(root, root)}` again" if root == Path(prepared) else \
        f"run `sedaug prepare-desed --root {root} --out {prepared}` again"
    if record.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{_manifest_dir(prepared)}: its prepare.json is unreadable or of another version of sedaug: "
                        f"{again}")
    if (edited := _edited_table(_manifest_dir(prepared), record)) is not None:
        raise UserError(f"{Path(prepared) / edited} was edited since `sedaug prepare-desed` wrote it (DESED's labels "
                        f"are in its TSVs, fixed there): {again}")
    if (Path(prepared) / "audio").is_dir() and root.resolve() != Path(prepared).resolve():
        return (f"{_manifest_dir(prepared)} lists the audio of {root}, not the audio beside it (the tree copied or "
                f"moved?): run `sedaug prepare-desed {_prepare_args(Path(prepared), Path(prepared))}` to list its own")
    if not root.is_absolute() or not root.is_dir():
        return (f"the DESED tree {root} that `sedaug prepare-desed` read is gone (moved or deleted?): run `sedaug "
                f"prepare-desed --root <where it is> --out {prepared}` again")
    for table in manifest.values():
        paths = dict(zip(table["filename"], table["path"], strict=True))
        check_names_readable(paths, paths.get)  # the TSVs' names; the root is the locale's own
        for path, size, mtime_ns in zip(table["path"], table["size"], table["mtime_ns"], strict=True):
            try:
                stat = os.stat(path)
            except OSError:
                raise UserError(f"{path} is gone since `sedaug prepare-desed` read it: {again}") from None
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                raise UserError(f"{path} changed since `sedaug prepare-desed` read it: {again}")
    try:
        tables, on_disk, fingerprint = _read_tree(root)
    except (UserError, OSError) as err:
        raise UserError(f"{root} changed since `sedaug prepare-desed` read it ({one_line(err)}): fix it, then {again}") \
            from None
    if fingerprint != record.get("fingerprint"):
        raise UserError(f"{_what_changed(root, record, tables, on_disk, manifest)}: {again}")
    return None


def _metadata_hashes(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / split.metadata).read_bytes()).hexdigest() for name, split in SPLITS.items()}


def _what_changed(root: Path, record: dict, tables: dict[str, MetadataTables],
                  on_disk: dict[str, dict[str, tuple[int, int]]], manifest: dict[str, pd.DataFrame]) -> str:
    """Which of the tree's inputs its fingerprint no longer matches: a metadata TSV edited, or a clip that was
    missing (missing_files.tsv) is there now."""
    since = "since `sedaug prepare-desed` read it"
    recorded = record.get("metadata_sha256")
    if not isinstance(recorded, dict):  # a prepare.json written before the TSVs' own hashes were recorded
        return f"the DESED tree {root} changed {since} (a metadata TSV edited, or a missing clip added)"
    hashes = _metadata_hashes(root)
    edited = [name for name in SPLITS if recorded.get(name) != hashes[name]]
    if edited:
        return f"{root / SPLITS[edited[0]].metadata} was edited {since}"
    for name, table in tables.items():
        imported = set(manifest[name]["filename"])
        added = [f for f in table.filenames if f in on_disk[name] and f not in imported]
        if added:
            return f"{root / SPLITS[name].audio_dir / added[0]} was missing when `sedaug prepare-desed` read the tree"\
                ", and is there now"
    return f"the DESED tree {root} changed {since}"


def _prepare_args(root: Path, out: Path) -> str:
    """`prepare-desed`'s arguments that list the tree `root` into `out`: a synthetic tree's own --size, --seed and
    --sample-rate (its synthetic.json; the defaults would generate another set), else --root."""
    settings = (read_json_object(root / "synthetic.json") or {}).get("settings")  # sedaug.data.synthetic
    if isinstance(settings, dict) and {"size", "seed", "sample_rate"} <= settings.keys():
        return (f"--synthetic --size {settings['size']} --seed {settings['seed']} --sample-rate "
                f"{settings['sample_rate']} --out {out}")
    return f"--root {root} --out {out}"


def manifest_hash(prepared: Path) -> str:
    """A hash of the manifest's tables (each clip's size and mtime_ns among them): the feature store records it to
    notice a changed manifest."""
    manifest_dir = _manifest_dir(prepared)
    digest = hashlib.sha256()
    for path in sorted(manifest_dir.glob("*.tsv")):
        digest.update(f"{path.name}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def content_hash(prepared: Path) -> str:
    """A hash of the manifest's tables without where the tree lies (each clip's path) and its files' times: the same
    for a tree moved or copied and prepared again, so that its runs resume and are scored there."""
    digest = hashlib.sha256()
    for path in sorted(_manifest_dir(prepared).glob("*.tsv")):
        table = read_tsv(path)
        digest.update(f"{path.name}\n".encode())
        digest.update(table.drop(columns=["path", "mtime_ns"], errors="ignore").to_csv(sep="\t", index=False).encode())
    return digest.hexdigest()


def _manifest_dir(prepared: Path) -> Path:
    manifest_dir = Path(prepared) / MANIFEST_DIR
    if Path(prepared).exists() and not Path(prepared).is_dir():
        raise UserError(f"{prepared} is a file, not a prepared DESED folder (the --out of `sedaug prepare-desed`)")
    if not Path(prepared).exists():
        raise UserError(f"{prepared}: no such folder (a prepared DESED): run `sedaug prepare-desed --out {prepared}` first")
    if not (manifest_dir / PREPARE_JSON).is_file():
        raise UserError(f"no DESED manifest in {manifest_dir}: run `sedaug prepare-desed` first")
    return manifest_dir
