"""The synthetic DESED generator: layout, determinism, label consistency, quirks, per-class signatures."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from sedaug.data.desed import CLASSES, SPLITS, load_events, load_manifest
from sedaug.data.grid import N_OUTPUT_FRAMES
from sedaug.data.labels import frame_labels
from sedaug.data.mel import log_mel
from sedaug.data.store import FeatureStore
from sedaug.data.synthetic import (
    GENERATORS,
    SIZES,
    generate_synthetic,
    plan_split,
    render_clip,
    weak_label,
)
from sedaug.errors import UserError

TINY = SIZES["tiny"]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every audio and metadata file, by relative path."""
    files = [p for d in ("audio", "metadata") for p in sorted((root / d).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_layout_and_sizes(tiny_desed):
    for split in SPLITS.values():
        assert (tiny_desed / split.audio_dir).is_dir() and (tiny_desed / split.metadata).is_file()
    manifest = load_manifest(tiny_desed)  # generate_synthetic imported the tree through prepare_desed
    assert {name: len(table) for name, table in manifest.items()} == TINY
    assert pd.read_csv(tiny_desed / "missing_files.tsv", sep="\t").empty
    info = sf.info(manifest["weak"]["path"].iloc[0])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert set(manifest["synthetic"]["duration"]) == {10.0}


def test_same_seed_same_bytes_other_seed_differs(tiny_desed, tmp_path):
    again = generate_synthetic(tmp_path / "again", size="tiny", seed=0, progress=False, workers=1)
    assert tree_digest(again) == tree_digest(tiny_desed)
    other = generate_synthetic(tmp_path / "other", size="tiny", seed=1, progress=False)
    digests, reference = tree_digest(other), tree_digest(tiny_desed)
    for same_name in (
        "metadata/train/synthetic20/soundscapes.tsv",
        "audio/train/synthetic20/soundscapes/0.wav",
    ):
        assert digests[same_name] != reference[same_name]


def test_every_class_in_every_labeled_split(tiny_desed):
    weak = pd.read_csv(tiny_desed / SPLITS["weak"].metadata, sep="\t")
    assert {label for cell in weak["event_labels"] for label in cell.split(",")} == set(CLASSES)
    for split in ("synthetic", "validation", "eval"):
        assert set(load_events(tiny_desed, split)["event_label"]) == set(CLASSES), split


def test_tsvs_match_the_generated_events(tiny_desed):
    plans = {split: plan_split(split, n, seed=0) for split, n in TINY.items()}
    weak = pd.read_csv(tiny_desed / SPLITS["weak"].metadata, sep="\t")
    assert list(weak["filename"]) == [p.filename for p in plans["weak"]]
    assert list(weak["event_labels"]) == [weak_label(p) for p in plans["weak"]]
    for plan in plans["weak"]:
        assert set(weak_label(plan).split(",")) == {e.label for e in plan.events}

    unlabeled = pd.read_csv(tiny_desed / SPLITS["unlabeled"].metadata, sep="\t")
    assert list(unlabeled.columns) == ["filename"]
    assert list(unlabeled["filename"]) == [p.filename for p in plans["unlabeled"]]

    for split in ("synthetic", "validation", "eval"):
        events = load_events(tiny_desed, split)
        expected = [(p.filename, e.onset, e.offset, e.label) for p in plans[split] for e in p.events]
        assert list(events.itertuples(index=False, name=None)) == expected


def test_real_data_quirks_are_present(tiny_desed):
    validation = pd.read_csv(tiny_desed / SPLITS["validation"].metadata, sep="\t", keep_default_na=False)
    empty = validation[validation["event_label"] == ""]
    assert len(empty) >= 1 and (empty["onset"] == "").all()  # a clip without events: DESED's empty row

    manifest = load_manifest(tiny_desed)["validation"]
    short = manifest[manifest["duration"] < 10]
    assert len(short) >= 1
    name = short["filename"].iloc[0]
    start, end = (float(x) for x in name.removesuffix(".wav").split("_")[-2:])
    assert end - start == pytest.approx(short["duration"].iloc[0])  # the name says how long it is

    events = load_events(tiny_desed, "validation")
    overlaps = 0
    for _, group in events.groupby(["filename", "event_label"]):
        ordered = group.sort_values("onset")
        overlaps += int((ordered["onset"].to_numpy()[1:] < ordered["offset"].to_numpy()[:-1]).sum())
    assert overlaps >= 1

    for name in manifest["filename"]:  # Y + an 11-character YouTube id + the segment's start and end
        assert re.fullmatch(r"Y[A-Za-z0-9_-]{11}_\d+\.\d{3}_\d+\.\d{3}\.wav", name), name


def test_events_lie_inside_their_clips(tiny_desed):
    manifest = load_manifest(tiny_desed)
    for split in ("synthetic", "validation", "eval"):
        durations = dict(zip(manifest[split]["filename"], manifest[split]["duration"], strict=True))
        events = load_events(tiny_desed, split)
        assert (events["onset"] >= 0).all() and (events["onset"] < events["offset"]).all()
        assert all(
            off <= durations[f] + 1e-9 for f, off in zip(events["filename"], events["offset"], strict=True)
        )


def test_44k_is_stereo(tmp_path, monkeypatch):
    monkeypatch.setitem(SIZES, "tiny", dict.fromkeys(TINY, 1))
    root = generate_synthetic(tmp_path, size="tiny", sample_rate=44100, progress=False)
    for table in load_manifest(root).values():
        info = sf.info(table["path"].iloc[0])
        assert (info.samplerate, info.channels, info.frames) == (44100, 2, 441000)


def test_second_generation_is_a_no_op(tiny_desed):
    wav = tiny_desed / SPLITS["weak"].audio_dir / load_manifest(tiny_desed)["weak"]["filename"].iloc[0]
    before = wav.stat().st_mtime_ns
    generate_synthetic(tiny_desed, size="tiny", seed=0, progress=False)
    assert wav.stat().st_mtime_ns == before


def test_refuses_to_overwrite_a_foreign_tree(real_layout):
    with pytest.raises(UserError, match="did not generate"):
        generate_synthetic(real_layout.root, size="tiny", progress=False)


def test_refuses_a_folder_holding_other_files_and_leaves_it_as_it_was(tiny_features, tmp_path):
    from conftest import checksums

    store = shutil.copytree(tiny_features, tmp_path / "features")
    before = checksums(store)
    with pytest.raises(UserError, match=f"{store} holds other files \\(eval, features.json, scaler.npz and 5 more\\): "
                                        "give the synthetic DESED a folder of its own"):
        generate_synthetic(store, size="tiny", progress=False)
    assert checksums(store) == before and not (store / "audio").exists()


def test_unknown_size():
    with pytest.raises(UserError, match="unknown synthetic size 'huge'"):
        generate_synthetic(Path("unused"), size="huge", progress=False)


def _mean_spectrum(label: str, sr: int = 16000, draws: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    spectra = []
    for _ in range(draws):
        x = GENERATORS[label](rng, sr, sr)
        assert x.shape == (sr,) and np.isfinite(x).all() and np.abs(x).max() > 0
        spectra.append(np.abs(np.fft.rfft(x / np.sqrt(np.mean(x**2))))[:: sr // 2 // 64][:64] ** 2)
    return np.log(np.mean(spectra, axis=0) + 1e-6)


def test_each_class_has_its_own_spectrum():
    spectra = {label: _mean_spectrum(label) for label in CLASSES}
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1 :]:
            distance = np.sqrt(np.mean((spectra[a] - spectra[b]) ** 2))
            assert distance > 1.0, (a, b, distance)


def test_render_clip_is_normalized():
    plan = plan_split("validation", 12, seed=0)[11]  # the short one
    audio = render_clip(plan, seed=0, sample_rate=16000)
    assert audio.dtype == np.float32 and audio.shape == (int(plan.duration * 16000), 1)
    assert 0.2 < np.abs(audio).max() < 1.0


def _frames(features: Path, split: str, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized log-mel frames pooled to the model's output rate, with ±2 frames of context, and their labels."""
    data = FeatureStore(features).split(split)
    x = (log_mel(torch.from_numpy(np.asarray(data.mels, np.float32))) - torch.from_numpy(mean)) / torch.from_numpy(std)
    x = x.view(len(data), N_OUTPUT_FRAMES, 4, -1).mean(2)
    x = torch.cat([torch.roll(x, k, dims=1) for k in range(-2, 3)], dim=-1)
    y = torch.from_numpy(frame_labels(data.events, data.filenames))
    return x.flatten(0, 1), y.flatten(0, 1)


def test_events_are_learnable_from_held_out_clips(tiny_features):
    """The generator's point: classes a model can tell apart. A one-hidden-layer MLP on log-mel frames, fitted on
    two strong splits (28 clips), must find the event frames of a third (micro F1 over classes and frames; it
    scores ~0.60, while "all on" scores < 0.33 and a mislabeled or class-blind generator far less)."""
    torch.manual_seed(0)
    mean, std = FeatureStore(tiny_features).scaler()
    train = [_frames(tiny_features, s, mean, std) for s in ("synthetic_train", "validation")]
    x, y = torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train])
    probe = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, len(CLASSES)))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(probe(x), y).backward()
        optimizer.step()
    x_eval, y_eval = _frames(tiny_features, "eval", mean, std)
    with torch.no_grad():
        hit = probe(x_eval) > 0
    truth = y_eval > 0
    tp, fp, fn = (hit & truth).sum().item(), (hit & ~truth).sum().item(), (~hit & truth).sum().item()
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert truth.float().mean() < 0.2  # events are sparse: predicting "all on" scores F1 < 0.33
    assert f1 > 0.5, f1


def test_cli_says_whether_it_generated_or_found_the_set_up_to_date(tmp_path):
    from conftest import run

    first = run("prepare-desed", "--synthetic", "--size", "tiny", "--out", tmp_path / "desed")
    assert first.exit_code == 0 and " generated in " in first.output, first.output
    second = run("prepare-desed", "--synthetic", "--size", "tiny", "--out", tmp_path / "desed")
    assert second.exit_code == 0 and " already up to date in " in second.output, second.output
    assert second.output.split(": ", 1)[1] == first.output.split(": ", 1)[1]  # the same clips
    # A clip's time changed (copied, touched): the tree stands, its manifest is made again, and the line says so.
    clip = next((tmp_path / "desed" / "audio" / "eval" / "public").iterdir())
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    third = run("prepare-desed", "--synthetic", "--size", "tiny", "--out", tmp_path / "desed")
    assert third.exit_code == 0 and " already generated (its manifest made again: a file changed since, or an older sedaug wrote it) in " in \
        " ".join(third.output.split()), third.output
