"""Mel extraction (DESIGN §3, the dcase20 front end) and the feature store.

The store holds one float16 array of LINEAR mel spectrograms per split, so that the baseline's input noise can be
added before the log; the log and the per-bin standardization run in the model's front end (`log_mel` here, with
the mean/std of `scaler.npz`).

    <features>/features.json              parameters, sedaug version, source manifest hash, split sizes
    <features>/scaler.npz                 mean, std (n_mels,) of the log-mel over weak + unlabeled + synthetic_train
    <features>/<split>/mels.npy           (N, 628, 128) float16
    <features>/<split>/clips.tsv          filename, duration (seconds of real audio, at most 10)
    <features>/<split>/events.tsv         strong splits: filename, onset, offset, event_label
    <features>/<split>/weak.tsv           weak split: filename, event_labels
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
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
    CLASSES,
    load_events,
    load_manifest,
    manifest_hash,
    progress_bar,
    read_tsv,
    write_tsv,
)
from sedaug.deps import import_torchaudio
from sedaug.errors import UserError
from sedaug.rundir import atomic_path, write_json

torchaudio = import_torchaudio()

SAMPLE_RATE = 16000
N_FFT = 2048
HOP = 255
N_MELS = 128
N_FRAMES = 628
CLIP_SECONDS = 10.0
POOLING = 4  # the CRNN's time pooling: 628 input frames -> 157 output frames
N_OUTPUT_FRAMES = 157

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
CLASS_INDEX = {label: i for i, label in enumerate(CLASSES)}


@dataclass(frozen=True)
class FeatureParams:
    """Everything that determines the stored features; training refuses a store whose parameters differ."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop: int = HOP
    n_mels: int = N_MELS
    n_frames: int = N_FRAMES
    clip_seconds: float = CLIP_SECONDS
    f_min: float = 0.0
    f_max: float = 8000.0
    power: float = 1.0
    mel_scale: str = "slaney"
    norm: str | None = None
    window: str = "hamming"  # symmetric, like np.hamming and the dcase20 baseline
    center: bool = True
    pad_mode: str = "reflect"
    amin: float = 1e-5
    top_db: float = 80.0

    def __post_init__(self) -> None:
        if self.window != "hamming":
            raise ValueError(f"only the (symmetric) hamming window is supported, not {self.window!r}")
        expected = self.clip_samples // self.hop + 1 if self.center else None
        if expected is not None and self.n_frames != expected:
            raise ValueError(f"n_frames {self.n_frames} != {expected} frames in a {self.clip_seconds} s clip")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


PARAMS = FeatureParams()


# ---------------------------------------------------------------------------------------------------------------
# The front end


def mel_spectrogram(wave: torch.Tensor, params: FeatureParams = PARAMS) -> torch.Tensor:
    """Linear (magnitude) mel spectrogram, time-major: (..., samples) -> (..., frames, n_mels), float32."""
    transform = _mel_transform(params, wave.device)
    return transform(wave.float()).transpose(-1, -2)


@functools.lru_cache(maxsize=8)
def _mel_transform(params: FeatureParams, device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=params.sample_rate,
        n_fft=params.n_fft,
        win_length=params.n_fft,
        hop_length=params.hop,
        f_min=params.f_min,
        f_max=params.f_max,
        n_mels=params.n_mels,
        window_fn=torch.hamming_window,
        wkwargs={"periodic": False},
        power=params.power,
        center=params.center,
        pad_mode=params.pad_mode,
        norm=params.norm,
        mel_scale=params.mel_scale,
    ).to(device)


def log_mel(mel: torch.Tensor, amin: float = PARAMS.amin, top_db: float = PARAMS.top_db) -> torch.Tensor:
    """Amplitude to dB (ref 1) with the top_db floor taken per clip: (..., frames, n_mels) -> same shape, float32.

    torchaudio's amplitude_to_DB takes the top_db maximum over dim -3 and below, so a singleton dim is inserted
    to make that "per clip" rather than "per batch".
    """
    db = torchaudio.functional.amplitude_to_DB(
        mel.float().unsqueeze(-3), multiplier=20.0, amin=amin, db_multiplier=0.0, top_db=top_db
    )
    return db.squeeze(-3)


# ---------------------------------------------------------------------------------------------------------------
# extract-mels


@dataclass
class ExtractReport:
    out: Path
    split_sizes: dict[str, int]
    n_clips: int
    seconds: float
    skipped: bool
    device: str

    @property
    def clips_per_second(self) -> float:
        return self.n_clips / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        sizes = ", ".join(f"{name} {n:,}" for name, n in self.split_sizes.items())
        if self.skipped:
            return f"mel features already up to date in {self.out}: {sizes}"
        return (
            f"mel features of {self.n_clips:,} clips written to {self.out} in {self.seconds:.1f} s "
            f"({self.clips_per_second:.0f} clips/s on {self.device}): {sizes}"
        )


def extract_mels(
    data: Path,
    out: Path,
    device: str = "cpu",
    workers: int | None = None,
    progress: bool = True,
    synthetic_valid_fraction: float = 0.2,
    split_seed: int = 0,
    batch_size: int | None = None,
    params: FeatureParams = PARAMS,
) -> ExtractReport:
    """Compute the mel features of every clip in the manifest under `data` into the store `out` (idempotent)."""
    start = time.perf_counter()
    data, out = Path(data).resolve(), Path(out).resolve()
    manifest = load_manifest(data)
    settings = {  # what the store depends on; recorded at the top level of features.json
        "format": STORE_FORMAT,
        "params": params.to_dict(),
        "manifest_hash": manifest_hash(data),
        "synthetic_valid_fraction": synthetic_valid_fraction,
        "split_seed": split_seed,
    }
    recorded = _read_features_json(out)
    current = recorded is not None and all(recorded.get(key) == value for key, value in settings.items())
    if current and _store_complete(out):
        sizes = {name: recorded["splits"][name] for name in FEATURE_SPLITS}
        return ExtractReport(out, sizes, 0, time.perf_counter() - start, True, device)

    torch_device = _device(device)
    (out / FEATURES_JSON).unlink(missing_ok=True)  # no stale record may vouch for a half-rewritten store
    tables = _split_tables(data, manifest, synthetic_valid_fraction, split_seed)
    moments = _Moments(params.n_mels, torch_device)
    total = sum(len(clips) for clips, _ in tables.values())
    with progress_bar("Extracting mel features", total, progress) as advance:
        for name, (clips, labels) in tables.items():
            durations = _extract_split(
                list(clips["path"]),
                out / name / "mels.npy",
                params,
                torch_device,
                workers or os.cpu_count() or 1,
                batch_size or (64 if torch_device.type == "cuda" else 16),
                moments if name in SCALER_SPLITS else None,
                advance,
            )
            write_tsv(
                out / name / "clips.tsv", pd.DataFrame({"filename": clips["filename"], "duration": durations})
            )
            if labels is not None:
                write_tsv(out / name / ("weak.tsv" if name == "weak" else "events.tsv"), labels)

    mean, std = moments.mean_std()
    with atomic_path(out / SCALER) as tmp:
        np.savez(tmp, mean=mean, std=std)
    sizes = {name: len(clips) for name, (clips, _) in tables.items()}
    synthetic_files = "\n".join(
        f"{name}\t{f}" for name in ("synthetic_train", "synthetic_valid") for f in tables[name][0]["filename"]
    )
    write_json(
        out / FEATURES_JSON,
        {
            **settings,
            "sedaug_version": __version__,
            "manifest": str(data),
            "splits": sizes,
            "synthetic_split_hash": hashlib.sha256(synthetic_files.encode()).hexdigest(),
        },
    )
    return ExtractReport(out, sizes, total, time.perf_counter() - start, False, str(torch_device))


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


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return device


def _split_tables(
    data: Path, manifest: dict[str, pd.DataFrame], valid_fraction: float, seed: int
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Feature-store split -> (clips: filename and path, labels: weak labels or events or None)."""
    train, valid = split_synthetic(list(manifest["synthetic"]["filename"]), valid_fraction, seed)
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
    paths: list[str],
    target: Path,
    params: FeatureParams,
    device: torch.device,
    workers: int,
    batch_size: int,
    moments: _Moments | None,
    advance: Callable[[int], None],
) -> np.ndarray:
    """Write the mels of `paths` into the .npy `target` (atomically); return the clips' durations."""
    shape = (len(paths), params.n_frames, params.n_mels)
    durations = np.zeros(len(paths))
    with atomic_path(target) as tmp:
        if not paths:  # numpy cannot memory-map an empty file
            np.save(tmp, np.zeros(shape, np.float16))
            return durations
        store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        start = 0
        for batch in _batches(paths, params, workers, batch_size):
            waves = torch.from_numpy(np.stack([wave for wave, _ in batch])).to(device)
            # Real audio stays far below float16's maximum; clamping only guards against an inf in the store.
            mels = mel_spectrogram(waves, params).clamp(max=torch.finfo(torch.float16).max).half()
            if moments is not None:
                moments.add(log_mel(mels, params.amin, params.top_db))  # statistics of what the model sees
            store[start : start + len(batch)] = mels.cpu().numpy()
            durations[start : start + len(batch)] = [duration for _, duration in batch]
            start += len(batch)
            advance(len(batch))
        store.flush()
        del store
    return durations


def _batches(
    paths: list[str], params: FeatureParams, workers: int, batch_size: int
) -> Iterator[list[tuple[np.ndarray, float]]]:
    """Decoded clips in order, in batches, from a thread pool that runs at most two batches ahead (bounded memory).

    Threads suffice: libsndfile and torch's resampling release the GIL.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        remaining = iter(paths)
        pending: deque[Future] = deque(
            pool.submit(load_clip, p, params) for p in itertools.islice(remaining, 2 * batch_size)
        )
        batch = []
        while pending:
            batch.append(pending.popleft().result())
            following = next(remaining, None)
            if following is not None:
                pending.append(pool.submit(load_clip, following, params))
            if len(batch) == batch_size or not pending:
                yield batch
                batch = []


def load_clip(path: str | Path, params: FeatureParams = PARAMS) -> tuple[np.ndarray, float]:
    """Decode, downmix to mono, resample and pad at the end / truncate to the clip length.

    Returns the wave (float32, clip_samples) and the duration of real audio in it, in seconds.
    """
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:
        raise UserError(f"cannot decode {path}: {' '.join(str(err).split())}") from err
    wave = torch.from_numpy(audio.mean(axis=1))
    if rate != params.sample_rate:
        wave = torchaudio.functional.resample(wave, rate, params.sample_rate)
    length = min(wave.shape[-1], params.clip_samples)
    clip = np.zeros(params.clip_samples, np.float32)
    clip[:length] = wave[:length].numpy()
    return clip, length / params.sample_rate


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


def _read_features_json(features: Path) -> dict | None:
    try:
        return json.loads((features / FEATURES_JSON).read_text())
    except (OSError, ValueError):
        return None


def _store_complete(features: Path) -> bool:
    needed = [features / SCALER] + [
        features / s / f for s in FEATURE_SPLITS for f in ("mels.npy", "clips.tsv")
    ]
    return all(p.is_file() for p in needed)


# ---------------------------------------------------------------------------------------------------------------
# Reading the store


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


def load_split(features: Path, split: str) -> Split:
    features = Path(features)
    _features_json(features)
    if split not in FEATURE_SPLITS:
        raise UserError(f"unknown feature split {split!r} (one of {', '.join(FEATURE_SPLITS)})")
    directory = features / split
    if not (directory / "mels.npy").is_file() or not (directory / "clips.tsv").is_file():
        raise UserError(
            f"split {split} is missing from the feature store {features}: run `sedaug extract-mels`"
        )
    clips = read_tsv(directory / "clips.tsv")
    filenames = list(clips["filename"])
    mels = np.load(directory / "mels.npy", mmap_mode="r") if filenames else np.load(directory / "mels.npy")
    events = weak = None
    if split in STRONG_SPLITS:
        events = pd.read_csv(
            directory / "events.tsv",
            sep="\t",
            keep_default_na=False,
            dtype={"filename": str, "event_label": str, "onset": float, "offset": float},
        )
    if split == "weak":
        weak = weak_labels_from(read_tsv(directory / "weak.tsv"), filenames)
    return Split(split, mels, filenames, clips["duration"].astype(float).to_numpy(), events, weak)


def load_scaler(features: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and std (float32, (n_mels,)) of the log-mel over the training splits."""
    _features_json(features)
    with np.load(Path(features) / SCALER) as scaler:
        return scaler["mean"].astype(np.float32), scaler["std"].astype(np.float32)


def check_params(features: Path, params: FeatureParams = PARAMS) -> None:
    """Raise a UserError if the store at `features` was computed with other parameters than `params`."""
    stored = _features_json(features).get("params", {})
    expected = params.to_dict()
    differences = [
        f"{key} {stored.get(key)!r} != {value!r}"
        for key, value in expected.items()
        if stored.get(key) != value
    ]
    if differences:
        raise UserError(
            f"incompatible feature store at {features}: {'; '.join(differences)} "
            "(re-run `sedaug extract-mels` with this version of sedaug)"
        )


def _features_json(features: Path) -> dict:
    record = _read_features_json(Path(features))
    if record is None:
        raise UserError(f"no feature store at {features}: run `sedaug extract-mels` first")
    return record


# ---------------------------------------------------------------------------------------------------------------
# Labels


def frame_labels(
    events: pd.DataFrame,
    filenames: Sequence[str],
    n_frames: int = N_OUTPUT_FRAMES,
    params: FeatureParams = PARAMS,
    pooling: int = POOLING,
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
        np.floor_divide(np.floor_divide(events[c].to_numpy(float) * params.sample_rate, params.hop), pooling)
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
