"""The embedded synthetic DESED: a small dataset in the real DESED layout, generated from a seed.

Each class has a procedural generator with its own spectro-temporal signature (`data/sounds.py`); events are mixed
over varied background noise at random SNRs. The tree is then imported through the real path (`prepare_desed`), so that
`prepare-desed --synthetic` exercises exactly what `prepare-desed --root` does.

Every clip draws from its own generator seeded by (seed, split, index, stream), so the result does not depend
on the order or the parallelism of generation, and the clip plans (names, durations, events) can be recomputed
without synthesizing audio.
"""

from __future__ import annotations

import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from sedaug import __version__
from sedaug.data.desed import (
    CLASSES,
    EVENT_COLUMNS,
    LABEL_WARNINGS,
    MANIFEST_DIR,
    MISSING_FILES,
    SPLITS,
    prepare_desed,
)
from sedaug.data.sounds import F32, GENERATORS, background, fades, rms
from sedaug.errors import UserError, listed
from sedaug.files import named_as, read_json_object, write_json, write_tsv, writing
from sedaug.progress import progress_bar

SIZES: dict[str, dict[str, int]] = {
    # tiny: index 10 of each strong split has no event and index 11 of validation/eval is short (see plan_clip).
    "tiny": {"weak": 10, "unlabeled": 20, "synthetic": 20, "validation": 12, "eval": 12},
    "small": {"weak": 150, "unlabeled": 300, "synthetic": 250, "validation": 100, "eval": 100},
    "medium": {"weak": 400, "unlabeled": 3600, "synthetic": 650, "validation": 300, "eval": 200},
}
CLIP_SECONDS = 10.0
SYNTHETIC_JSON = "synthetic.json"
# Bump when the generator's output changes, so that an old tree is regenerated.
GENERATOR_FORMAT = 1

LABELED = ("weak", "synthetic", "validation", "eval")
STRONG = ("synthetic", "validation", "eval")
# Per-class event durations in seconds (min, max), after the real DESED statistics, roughly.
DURATIONS: dict[str, tuple[float, float]] = {
    "Alarm_bell_ringing": (0.5, 4.0),
    "Blender": (1.5, 8.0),
    "Cat": (0.4, 1.8),
    "Dishes": (0.1, 0.8),
    "Dog": (0.1, 0.8),
    "Electric_shaver_toothbrush": (1.5, 8.0),
    "Frying": (2.0, 10.0),
    "Running_water": (2.0, 10.0),
    "Speech": (0.5, 3.0),
    "Vacuum_cleaner": (2.0, 10.0),
}
_PLAN, _AUDIO = 0, 1
_YOUTUBE_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass(frozen=True)
class Event:
    label: str
    onset: float
    offset: float


@dataclass(frozen=True)
class ClipPlan:
    """Everything about a clip except its audio: its name, length and events."""

    split: str
    index: int
    filename: str
    duration: float
    events: tuple[Event, ...]


# ---------------------------------------------------------------------------------------------------------------
# The dataset


def generate_synthetic(
    out: Path,
    size: str = "small",
    seed: int = 0,
    sample_rate: int = 16000,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a synthetic DESED tree into `out` (16-bit wav; 44.1 kHz is written stereo, like the real audio),
    then import it with `prepare_desed(out, out)`. Does nothing if `out` already holds the same generation."""
    if size not in SIZES:
        raise UserError(f"unknown synthetic size {size!r} (choose one of {', '.join(SIZES)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"synthetic seed {seed!r}: expected an integer >= 0")
    out = Path(out).resolve()
    settings, plans = _generation(size, seed, sample_rate)
    if not _is_generated(out, settings, plans):
        _refuse_foreign_tree(out)
        _generate(out, settings, plans, progress, workers or os.cpu_count() or 1)
    prepare_desed(out, out, progress=progress)
    return out


def is_generated(out: Path, size: str, seed: int, sample_rate: int) -> bool:
    """Whether `out` already holds this generation (generate_synthetic then only reads its manifest back)."""
    return _is_generated(Path(out).resolve(), *_generation(size, seed, sample_rate))


def _generation(size: str, seed: int, sample_rate: int) -> tuple[dict, dict[str, list[ClipPlan]]]:
    settings = {"format": GENERATOR_FORMAT, "size": size, "seed": seed, "sample_rate": sample_rate}
    return settings, {split: plan_split(split, n, seed) for split, n in SIZES[size].items()}


def plan_split(split: str, n: int, seed: int) -> list[ClipPlan]:
    plans = [plan_clip(split, index, seed) for index in range(n)]
    if len({p.filename for p in plans}) != n:
        raise RuntimeError(f"duplicate synthetic file names in {split} (seed {seed})")
    return plans


def plan_clip(split: str, index: int, seed: int) -> ClipPlan:
    """Decide a clip's name, length and events. Fixed indices carry the quirks of real DESED, so that even
    `tiny` has them, and the first ten clips of each labeled split cover the ten classes."""
    rng = _rng(seed, split, index, _PLAN)
    short = split in ("validation", "eval") and (index == 11 or rng.random() < 0.02)
    short = short or (split in ("weak", "unlabeled") and rng.random() < 0.02)
    duration = float(rng.integers(3, 10)) if short else CLIP_SECONDS
    filename = f"{index}.wav" if split == "synthetic" else _youtube_name(rng, duration, short)

    if split == "weak":
        empty = False  # every weak clip has at least one label, as in DESED
    elif split in STRONG:
        empty = index == 10 or (index >= len(CLASSES) and rng.random() < 0.03)
    else:
        empty = rng.random() < 0.05
    if empty:
        return ClipPlan(split, index, filename, duration, ())

    n_events = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.2, 0.1]))
    labels = [CLASSES[i] for i in rng.integers(0, len(CLASSES), n_events)]
    if split in LABELED and index < len(CLASSES):
        labels[0] = CLASSES[index]
    events = [_place_event(rng, label, duration) for label in labels]
    if split in STRONG and (index == 1 or rng.random() < 0.03):
        events.append(_overlapping(rng, events[0], duration))
    return ClipPlan(split, index, filename, duration, tuple(sorted(events, key=lambda e: (e.onset, e.label))))


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, list(SPLITS).index(split), index, stream])


def _youtube_name(rng: np.random.Generator, duration: float, short: bool) -> str:
    video_id = "".join(rng.choice(_YOUTUBE_ALPHABET, 11))
    start = 0.0 if short else float(rng.integers(0, 300))
    return f"Y{video_id}_{start:.3f}_{start + duration:.3f}.wav"


def _place_event(rng: np.random.Generator, label: str, clip_duration: float) -> Event:
    low, high = DURATIONS[label]
    length = min(rng.uniform(low, high), clip_duration)
    onset = round(rng.uniform(0.0, clip_duration - length), 3)
    return Event(label, onset, min(round(onset + length, 3), clip_duration))


def _overlapping(rng: np.random.Generator, event: Event, clip_duration: float) -> Event:
    """A second event of the same class starting inside `event` (real DESED has such pairs)."""
    onset = round(rng.uniform(event.onset, event.offset - 0.001), 3)
    low, high = DURATIONS[event.label]
    offset = min(round(onset + rng.uniform(low, high), 3), clip_duration)
    return Event(event.label, onset, max(offset, round(event.offset, 3)))


def _is_generated(out: Path, settings: dict, plans: dict[str, list[ClipPlan]]) -> bool:
    recorded = read_json_object(out / SYNTHETIC_JSON)
    if recorded is None or recorded.get("settings") != settings:
        return False
    return all((out / SPLITS[s].audio_dir / p.filename).is_file() for s, ps in plans.items() for p in ps)


def _refuse_foreign_tree(out: Path) -> None:
    """Regenerating deletes audio/ and metadata/: only do that to a tree this generator wrote; and a synthetic DESED
    goes into a folder of its own, not among other files (a feature store, runs, recordings)."""
    if (out / "audio").exists() and not (out / SYNTHETIC_JSON).exists():
        raise UserError(
            f"{out} already holds a DESED tree that sedaug did not generate: choose another --out"
        )
    ours = {"audio", "metadata", MANIFEST_DIR, SYNTHETIC_JSON, LABEL_WARNINGS, MISSING_FILES}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")) \
        if out.is_dir() else []
    if others:
        raise UserError(f"{out} holds other files ({listed(others)}): give the synthetic DESED a folder of its own (--out)")


def _generate(
    out: Path, settings: dict, plans: dict[str, list[ClipPlan]], progress: bool, workers: int
) -> None:
    """Write into a scratch folder, then swap it in: an interrupted or failed run (a full disk) leaves the previous
    tree as it was and no scratch folder behind."""
    scratch = out / ".synthetic.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with named_as(scratch, out), writing(scratch):
            for split in SPLITS.values():
                (scratch / split.audio_dir).mkdir(parents=True, exist_ok=True)
            _write_metadata(scratch, plans)

            jobs = [plan for split_plans in plans.values() for plan in split_plans]
            seed, sample_rate = settings["seed"], settings["sample_rate"]
            channels = 2 if sample_rate == 44100 else 1

            def write(plan: ClipPlan) -> None:
                audio = render_clip(plan, seed, sample_rate, channels)
                # Encoded in memory, then written as plain bytes: a full disk is an OSError naming its file, not
                # libsndfile's "System error."
                wav = io.BytesIO()
                sf.write(wav, audio, sample_rate, format="WAV", subtype="PCM_16")
                path = scratch / SPLITS[plan.split].audio_dir / plan.filename
                with writing(path):
                    path.write_bytes(wav.getbuffer())

            with progress_bar("Generating synthetic DESED", len(jobs), progress) as advance:
                # numpy's FFTs and ufuncs release the GIL, so threads share the synthesis.
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    try:
                        for _ in pool.map(write, jobs):
                            advance()
                    except BaseException:
                        pool.shutdown(cancel_futures=True)  # the first failure stops the run; queued clips are dropped
                        raise

            (out / SYNTHETIC_JSON).unlink(missing_ok=True)
            for name in ("audio", "metadata"):
                shutil.rmtree(out / name, ignore_errors=True)
                (scratch / name).rename(out / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts = {split: len(p) for split, p in plans.items()}
    write_json(out / SYNTHETIC_JSON, {"settings": settings, "counts": counts, "sedaug_version": __version__})


def _write_metadata(root: Path, plans: dict[str, list[ClipPlan]]) -> None:
    for split, split_plans in plans.items():
        path = root / SPLITS[split].metadata
        kind = SPLITS[split].kind
        if kind == "unlabeled":
            table = pd.DataFrame({"filename": [p.filename for p in split_plans]})
        elif kind == "weak":
            table = pd.DataFrame(
                {
                    "filename": [p.filename for p in split_plans],
                    "event_labels": [weak_label(p) for p in split_plans],
                }
            )
        else:
            table = pd.DataFrame(
                _strong_rows(split_plans), columns=EVENT_COLUMNS
            )
        write_tsv(path, table)


def weak_label(plan: ClipPlan) -> str:
    """The DESED weak label of a clip: its event classes, comma-separated, in class order."""
    present = {e.label for e in plan.events}
    return ",".join(c for c in CLASSES if c in present)


def _strong_rows(plans: list[ClipPlan]) -> list[tuple[str, str, str, str]]:
    rows = []
    for plan in plans:
        if not plan.events:
            rows.append((plan.filename, "", "", ""))  # DESED's row for a clip with no event
        rows += [(plan.filename, f"{e.onset:.3f}", f"{e.offset:.3f}", e.label) for e in plan.events]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Audio


def render_clip(plan: ClipPlan, seed: int, sample_rate: int, channels: int = 1) -> np.ndarray:
    """The clip's audio, float32 of shape (samples, channels), peak below 1."""
    rng = _rng(seed, plan.split, plan.index, _AUDIO)
    n = int(round(plan.duration * sample_rate))
    mix = background(rng, n, sample_rate, channels)
    for event in plan.events:
        start, stop = int(round(event.onset * sample_rate)), int(round(event.offset * sample_rate))
        if stop - start < 16:
            continue
        sound = GENERATORS[event.label](rng, stop - start, sample_rate).astype(F32) * fades(
            stop - start, sample_rate
        )
        # Biased toward the easier half of 0-30 dB so that `small` is learnable in minutes.
        snr_db = rng.uniform(15.0, 30.0) if rng.random() < 0.75 else rng.uniform(0.0, 15.0)
        gain = 10 ** (snr_db / 20) / max(rms(sound), 1e-12)  # the background has unit RMS
        pan = rng.uniform(0.7, 1.0, (channels, 1)).astype(F32)
        mix[:, start:stop] += (gain * pan) * sound
    peak = np.abs(mix).max()
    if not np.isfinite(peak):
        raise RuntimeError(f"synthesis of {plan.split}/{plan.filename} produced non-finite samples")
    mix *= F32(rng.uniform(0.25, 0.9) / peak)
    return np.ascontiguousarray(mix.T)
