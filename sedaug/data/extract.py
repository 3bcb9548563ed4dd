"""`extract-mels`: decode every clip of a prepared DESED, compute its linear mel, and write the feature store
(`data/store.py` describes its layout). Idempotent: a store made from the same manifest and parameters is kept.

Clips are decoded in a thread pool and their mels computed in batches, on the GPU when asked. The scaler is the
per-mel-bin mean and std of the log-mel over the training splits, accumulated during extraction.
"""

from __future__ import annotations

import hashlib
import itertools
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
from sedaug.data.desed import load_events, load_manifest, manifest_hash
from sedaug.data.grid import PARAMS, FeatureParams
from sedaug.data.mel import log_mel, mel_spectrogram
from sedaug.data.store import (
    FEATURE_SPLITS,
    FEATURES_JSON,
    SCALER,
    SCALER_SPLITS,
    SOURCES,
    STORE_FORMAT,
    STRONG_SPLITS,
    is_complete,
    read_record,
)
from sedaug.deps import import_torchaudio
from sedaug.device import parse_device
from sedaug.errors import UserError
from sedaug.files import atomic_path, write_json, write_tsv
from sedaug.progress import progress_bar

torchaudio = import_torchaudio()


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
    device: str | torch.device = "cpu",
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
    recorded = read_record(out)
    current = recorded is not None and all(recorded.get(key) == value for key, value in settings.items())
    if current and is_complete(out):
        sizes = {name: recorded["splits"][name] for name in FEATURE_SPLITS}
        return ExtractReport(out, sizes, 0, time.perf_counter() - start, True, str(device))

    torch_device = parse_device(device)
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
