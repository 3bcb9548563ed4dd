"""`extract-mels`: decode every clip of a prepared DESED, compute its linear mel, and write the feature store
(`data/store.py` describes its layout). Idempotent: a store made from the same manifest and parameters is kept.

Clips are decoded in a thread pool and their mels computed in batches, on the GPU when asked. The scaler is the
per-mel-bin mean and std of the log-mel over the training splits, accumulated during extraction.

The whole store is written aside (`<out>/.staging.tmp<pid>/`, with plain file writes: no memory map, so a full disk
is an OSError, not a SIGBUS) and moved into place only once every clip has been decoded and checked: a clip that
holds NaN, has changed since `prepare-desed`, or a full disk, stops the run with one line and leaves the previous
store as it was. Replacing a store therefore needs room for a second copy while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from sedaug import __version__
from sedaug.data.desed import (
    check_unchanged,
    content_hash,
    load_events,
    load_manifest,
    manifest_hash,
    undecodable,
)
from sedaug.data.grid import PARAMS, check_sample_rate
from sedaug.data.mel import clip_mels, log_mel, mel_problems, resample
from sedaug.data.store import (
    FEATURE_SPLITS,
    FEATURES_JSON,
    SCALER,
    SCALER_SPLITS,
    SOURCES,
    STORE_FORMAT,
    STRONG_SPLITS,
    is_complete,
    is_store,
    read_record,
    table_hashes,
)
from sedaug.device import parse_device
from sedaug.errors import UserError, listed
from sedaug.files import named_as, remove_stale_temporaries, write_json, write_tsv, writing
from sedaug.progress import progress_bar
from sedaug.rundir import enclosing_run

LOCK = ".extract.lock"  # in the store, held while an extract-mels writes it
# dcase20's 80/20 split of the synthetic clips into synthetic_train and synthetic_valid, drawn once per store (not per
# run: every run and sweep trial selects on the same synthetic_valid); recorded in features.json.
SYNTHETIC_VALID_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass
class ExtractReport:
    out: Path
    split_sizes: dict[str, int]
    n_clips: int
    seconds: float
    skipped: bool
    device: str
    unchecked: str | None = None  # why an up-to-date store could not be checked against its audio

    @property
    def clips_per_second(self) -> float:
        return self.n_clips / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        sizes = ", ".join(f"{name} {n:,}" for name, n in self.split_sizes.items())
        if self.skipped:
            return f"mel features already up to date in {self.out}: {sizes}" + (
                f"; not checked against its audio: {self.unchecked}" if self.unchecked else "")
        return (
            f"mel features of {self.n_clips:,} clips written to {self.out} in {self.seconds:.1f} s "
            f"({self.clips_per_second:.0f} clips/s on {self.device}): {sizes}"
        )


def extract_mels(
    data: Path,
    out: Path,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
) -> ExtractReport:
    """Compute the mel features of every clip in the manifest under `data` into the store `out` (idempotent)."""
    start = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise UserError(f"workers {workers}: expected a positive number of decoding threads (or none: every CPU)")
    data, out = Path(data).resolve(), Path(out).resolve()
    manifest = load_manifest(data)
    gone = check_unchanged(data, manifest)
    settings = {  # what the store depends on; recorded at the top level of features.json
        "format": STORE_FORMAT,
        "params": PARAMS.to_dict(),
        "manifest_hash": manifest_hash(data),
        "synthetic_valid_fraction": SYNTHETIC_VALID_FRACTION,
        "split_seed": SPLIT_SEED,
    }
    recorded = read_record(out)
    _check_out(out, data, recorded, settings["manifest_hash"])
    remove_stale_temporaries(out)  # a killed extraction's staging folder: a whole store's size
    current = recorded is not None and all(recorded.get(key) == value for key, value in settings.items())
    if current and is_complete(out):
        sizes = {name: recorded["splits"][name] for name in FEATURE_SPLITS}
        return ExtractReport(out, sizes, 0, time.perf_counter() - start, True, str(device), unchecked=gone)

    if gone is not None:
        raise UserError(gone)
    torch_device = parse_device(device)
    tables = _split_tables(data, manifest)
    created = not out.exists()
    staging = out / f".staging.tmp{os.getpid()}"
    workers = workers or os.cpu_count() or 1
    batch_size = 64 if torch_device.type == "cuda" else 16
    try:
        with _held(out), named_as(staging, out):  # the staged files stand for the store's: errors name the latter
            shutil.rmtree(staging, ignore_errors=True)
            _write_store(staging, tables, torch_device, workers, batch_size, progress)
            written = table_hashes(staging)
            write_json(
                staging / FEATURES_JSON,
                {
                    **settings,
                    "sedaug_version": __version__,
                    "manifest": str(data),
                    "content_hash": content_hash(data),
                    "splits": {name: len(clips) for name, (clips, _) in tables.items()},
                    "synthetic_split_hash": _synthetic_split_hash(tables),
                    "tables": written,
                    "features_hash": features_hash(staging, written),
                },
            )
            _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:  # a first extraction cut short leaves no empty --out (a full one stays: rmdir refuses)
            with contextlib.suppress(OSError):
                out.rmdir()
    sizes = {name: len(clips) for name, (clips, _) in tables.items()}
    total = sum(sizes.values())
    return ExtractReport(out, sizes, total, time.perf_counter() - start, False, str(torch_device))


def _write_store(
    staging: Path,
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]],
    device: torch.device,
    workers: int,
    batch_size: int,
    progress: bool,
) -> None:
    """Every split's mels, clips and labels, and the scaler, into the new folder `staging`."""
    with writing(staging):
        staging.mkdir(parents=True)
    moments = _Moments(PARAMS.n_mels, device)
    total = sum(len(clips) for clips, _ in tables.values())
    with progress_bar("Extracting mel features", total, progress) as advance:
        for name, (clips, labels) in tables.items():
            durations = _extract_split(
                clips,
                staging / name / "mels.npy",
                device,
                workers,
                batch_size,
                moments if name in SCALER_SPLITS else None,
                advance,
            )
            write_tsv(
                staging / name / "clips.tsv", pd.DataFrame({"filename": clips["filename"], "duration": durations})
            )
            if labels is not None:
                write_tsv(staging / name / ("weak.tsv" if name == "weak" else "events.tsv"), labels)
    mean, std = moments.mean_std()
    with writing(staging / SCALER):
        np.savez(staging / SCALER, mean=mean, std=std)


def _synthetic_split_hash(tables: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]) -> str:
    files = "\n".join(
        f"{name}\t{f}" for name in ("synthetic_train", "synthetic_valid") for f in tables[name][0]["filename"]
    )
    return hashlib.sha256(files.encode()).hexdigest()


def _check_out(out: Path, data: Path, recorded: dict | None, manifest_hash: str) -> None:
    """Refuse an --out that is not this DESED's feature store (or a new or empty folder): a folder of anything else
    (a run, the DESED tree itself) would get the store's files among its own, and another DESED's store would be
    replaced under the runs trained on it (a prepared folder copied elsewhere as it is, or a tree moved and prepared
    again, is the same DESED)."""
    advice = "give --out a new folder (e.g. data/features)"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: {advice}")
    if (run := enclosing_run(out.parent)) is not None:  # a store there would go with the run (`rm -r`, a sweep)
        raise UserError(f"--out {out} is inside the run {run}: {advice}")
    if (store := next(filter(is_store, out.resolve().parents), None)) is not None:
        # taken for part of that store
        raise UserError(f"--out {out} is inside the feature store {store}: {advice}")
    store_entries = {*FEATURE_SPLITS, SCALER, FEATURES_JSON}
    others = sorted(p.name for p in out.iterdir() if p.name not in store_entries and not p.name.startswith(".")) \
        if out.is_dir() else []
    if others:
        raise UserError(f"--out {out} holds {listed(others)}, which no feature store holds: {advice}")
    if recorded is not None and recorded.get("manifest") not in (None, str(data)) and \
            recorded.get("manifest_hash") != manifest_hash and recorded.get("content_hash") != content_hash(data):
        raise UserError(f"--out {out} holds the features of {recorded['manifest']}, not of {data}: {advice}, or remove "
                        "that store first")
    for entry, folder in [*((out / name, True) for name in FEATURE_SPLITS), (out / SCALER, False)]:
        if not entry.exists():  # the new files are renamed over the old ones, from out/.staging.tmp*
            continue
        if entry.is_dir() != folder:
            wrong = "is a folder" if entry.is_dir() else "is not a folder"
        elif entry.stat().st_dev != out.stat().st_dev:
            wrong = "is on another file system (a link?)"
        else:
            continue
        raise UserError(f"--out {out}: {entry} {wrong}, and extract-mels renames the new files into place there: "
                        "make it what the store had, or give --out a new folder")


def features_hash(store: Path, tables: dict[str, str]) -> str:
    """A hash of what training and evaluation read, the mels and the tables and scaler (`tables`, their hashes), not
    where the DESED tree lay: a run's store is the one it trained on where this is the same (a tree moved and
    extracted again), another where not (a clip replaced by one of the same size too)."""
    digest = hashlib.sha256()
    for name in FEATURE_SPLITS:
        with (store / name / "mels.npy").open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    digest.update(json.dumps(tables, sort_keys=True).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _held(out: Path) -> Iterator[None]:
    """Hold the store `out` for this extraction (an flock the OS drops when the process dies, kill -9 too): a second
    extract-mels into it is refused, instead of renaming its files among this one's (a store of two DESEDs)."""
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK, "a")  # noqa: SIM115 (held open for the block)
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out} is being written by another sedaug extract-mels: wait for it to end") from None
        try:
            yield
        finally:  # removed while held: the store keeps no file of it
            (out / LOCK).unlink(missing_ok=True)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the staged store's files over the old ones (renames need no space): features.json goes first, so
    that no record vouches for a half-replaced store, and comes back last."""
    with writing(out):
        (out / FEATURES_JSON).unlink(missing_ok=True)
        for name in FEATURE_SPLITS:
            (out / name).mkdir(exist_ok=True)
            remove_stale_temporaries(out / name)
            for path in (staging / name).iterdir():
                os.replace(path, out / name / path.name)
        os.replace(staging / SCALER, out / SCALER)
        os.replace(staging / FEATURES_JSON, out / FEATURES_JSON)


def split_synthetic(
    filenames: Sequence[str], valid_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split the synthetic clips by file into (train, valid), seeded; the result does not depend on their order."""
    ordered = sorted(filenames)
    n_valid = int(round(len(ordered) * valid_fraction))
    if valid_fraction > 0 and len(ordered) >= 2:
        n_valid = min(max(n_valid, 1), len(ordered) - 1)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    valid = {ordered[i] for i in permutation[:n_valid]}
    return [f for f in filenames if f not in valid], [f for f in filenames if f in valid]


def _split_tables(data: Path, manifest: dict[str, pd.DataFrame]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Feature-store split -> (clips: filename and path, labels: weak labels or events or None)."""
    train, valid = split_synthetic(list(manifest["synthetic"]["filename"]), SYNTHETIC_VALID_FRACTION, SPLIT_SEED)
    members = {"synthetic_train": set(train), "synthetic_valid": set(valid)}
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {}
    for name, source in SOURCES.items():
        clips = manifest[source]
        if name in members:
            clips = clips[clips["filename"].isin(members[name])]
        clips = clips.reset_index(drop=True)
        labels = None
        if name == "weak":
            labels = clips[["filename", "event_labels"]]
        elif name in STRONG_SPLITS:
            events = load_events(data, source)
            labels = events[events["filename"].isin(set(clips["filename"]))].reset_index(drop=True)
        tables[name] = (clips, labels)
    return tables


def _extract_split(
    clips: pd.DataFrame,
    target: Path,
    device: torch.device,
    workers: int,
    batch_size: int,
    moments: _Moments | None,
    advance: Callable[[int], None],
) -> np.ndarray:
    """Write the mels of the manifest rows `clips` into the new .npy file `target`, batch by batch with ordinary
    writes; return the clips' durations (seconds of real audio, at most clip_seconds)."""
    shape = (len(clips), PARAMS.n_frames, PARAMS.n_mels)
    durations = np.zeros(len(clips))
    expected = np.round(clips["duration"].to_numpy(float) * clips["sample_rate"].to_numpy(float)).astype(np.int64)
    jobs = list(zip(clips["path"], expected.tolist(), strict=True))
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": shape}
            )
            start = 0
            for batch in _batches(jobs, workers, batch_size):
                mels = clip_mels([wave for wave, _ in batch], device)
                # What the model sees, checked: finite samples can still overflow the STFT (3e38 in a float WAV).
                for row, problem in mel_problems(mels).items():
                    raise UserError(f"{jobs[start + row][0]}: {problem}: repair or delete the file")
                mels = mels.half()
                if moments is not None:
                    moments.add(log_mel(mels, PARAMS.amin, PARAMS.top_db))  # statistics of what the model sees
                f.write(mels.cpu().numpy().tobytes())
                durations[start : start + len(batch)] = [duration for _, duration in batch]
                start += len(batch)
                advance(len(batch))
    return durations


def _batches(
    jobs: list[tuple[str, int]], workers: int, batch_size: int
) -> Iterator[list[tuple[np.ndarray, float]]]:
    """Decoded clips (path, expected source frames) in order, in batches, from a thread pool that runs at most two
    batches ahead (bounded memory).

    Threads suffice: libsndfile and torch's resampling release the GIL.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        remaining = iter(jobs)
        pending: deque[Future] = deque(
            pool.submit(load_clip, p, n) for p, n in itertools.islice(remaining, 2 * batch_size)
        )
        batch = []
        while pending:
            batch.append(pending.popleft().result())
            following = next(remaining, None)
            if following is not None:
                pending.append(pool.submit(load_clip, following[0], following[1]))
            if len(batch) == batch_size or not pending:
                yield batch
                batch = []


def load_clip(
    path: str | Path, expected_frames: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode, downmix to mono (the mean of the channels), resample to 16 kHz (`data/mel.py`, as dcase20) and cut
    what no kept frame sees (`clip_mels` pads a short clip).

    Returns the wave (float32) and the duration of real audio in the clip, in seconds (at most clip_seconds).
    Audio holding NaN or infinity, too short to analyse, or of another length than `expected_frames` (the
    manifest's: the file changed since `prepare-desed`) is a UserError naming the file.
    """
    try:
        audio, rate = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:
        raise undecodable(path, err) from err
    try:
        check_sample_rate(rate)
    except ValueError as err:
        raise UserError(f"{path}: {err}: resample or delete the file") from None
    if expected_frames is not None and len(audio) != expected_frames:
        raise UserError(
            f"{path}: {len(audio) / rate:.3f} s of audio where the manifest says {expected_frames / rate:.3f} s: "
            "the file changed since `sedaug prepare-desed` (run it again)"
        )
    finite = np.isfinite(audio).all(axis=1)
    if not finite.all():
        raise UserError(
            f"{path}: non-finite audio samples (the first at {int(finite.argmin()) / rate:.3f} s): "
            "repair or delete the file"
        )
    wave = resample(torch.from_numpy(audio.mean(axis=1)), rate).numpy()
    if len(wave) <= PARAMS.n_fft // 2:
        raise UserError(
            f"{path}: only {len(audio) / rate:.3f} s of audio, too short to analyse (a truncated file? "
            "replace or delete it)"
        )
    return wave[: PARAMS.kept_samples], min(len(wave), PARAMS.clip_samples) / PARAMS.sample_rate


class _Moments:
    """Running per-mel-bin sums of x and x^2 over frames (float64, on the extraction device)."""

    def __init__(self, n_mels: int, device: torch.device) -> None:
        self.sum = torch.zeros(n_mels, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(n_mels, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double().reshape(-1, x.shape[-1])
        self.sum += x.sum(0)
        self.sum_sq += (x * x).sum(0)
        self.count += x.shape[0]

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count == 0:
            raise UserError(
                "no training clips (weak, unlabeled, synthetic) to compute the feature normalization from"
            )
        mean = self.sum / self.count
        std = (self.sum_sq / self.count - mean**2).clamp(min=1e-12).sqrt()
        return mean.float().cpu().numpy(), std.float().cpu().numpy()
