"""Mel features against librosa (the dcase20 reference), the feature store, labels, and bad inputs."""

from __future__ import annotations

import functools
import json
import re
import shutil

import librosa
import numpy as np
import pandas as pd
import pytest
import resampy
import soundfile as sf
import torch
import torchaudio
from conftest import write_stereo_clip

from sedaug.data.batches import ThreeStreams
from sedaug.data.desed import CLASSES, MANIFEST_FORMAT, SPLITS, load_events, load_manifest, prepare_desed
from sedaug.data.extract import extract_mels, load_clip, split_synthetic
from sedaug.data.grid import PARAMS, FeatureParams, real_frames
from sedaug.data.labels import frame_labels, weak_labels_from
from sedaug.data.mel import PAD, clip_mels, log_mel, mel_spectrogram, resample
from sedaug.data.store import FEATURE_SPLITS, FeatureStore, table_hashes
from sedaug.data.synthetic import SIZES
from sedaug.errors import UserError


def librosa_mel(y: np.ndarray) -> np.ndarray:
    """The dcase20 baseline's mel of a clip's own samples, time-major (frames, mels): 1 + len // 255 frames."""
    stft = librosa.stft(
        y, n_fft=2048, hop_length=255, window=np.hamming(2048), center=True, pad_mode="reflect"
    )
    mel = librosa.feature.melspectrogram(
        S=np.abs(stft), sr=16000, n_mels=128, fmin=0, fmax=8000, htk=False, norm=None
    )
    return mel.T


def dcase20_mel(y: np.ndarray) -> np.ndarray:
    """The linear mel dcase20's log-mel corresponds to: the clip's own frames, cut or padded to 628 with frames of
    1.0 (dcase20 pads the log-mel with 0 dB: PadOrTrunc after ApplyLog)."""
    mel = librosa_mel(y)[:628]
    return np.concatenate([mel, np.full((628 - len(mel), 128), 1.0, mel.dtype)])


def dcase20_log_mel(y: np.ndarray) -> np.ndarray:
    """dcase20's log-mel of a clip: librosa.amplitude_to_db (ref 1, amin 1e-5, top_db 80) of its own frames, then
    PadOrTrunc to 628 frames with zeros (utilities/Transforms.py: ApplyLog, then PadOrTrunc)."""
    db = librosa.amplitude_to_db(librosa_mel(y))[:628]
    return np.concatenate([db, np.zeros((628 - len(db), 128), db.dtype)])


def resampy_kaiser_best(y: np.ndarray, rate: int) -> np.ndarray:
    """librosa 0.7's resampling to 16 kHz with resampy 0.2's `kaiser_best` (what dcase20 ran in 2020), rebuilt with
    today's resampy: its kaiser_best is another filter since 0.3, its `sinc_window` builds the old one."""
    return resampy.resample(
        y, rate, 16000, filter="sinc_window", num_zeros=64, precision=9, rolloff=0.9475937167399596,
        window=functools.partial(np.kaiser, beta=14.769656459379492),
    )


def assert_close(ours: np.ndarray, reference: np.ndarray, rtol: float) -> None:
    # Relative tolerance per bin, plus a floor far below the clip's level for bins that are (almost) zero.
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol * 1e-3 * np.abs(reference).max())


@pytest.fixture
def parity_waves(tiny_desed, real_layout) -> dict[str, np.ndarray]:
    """16 kHz waves as extraction sees them: a 10 s clip, a short clip, a 44.1 kHz stereo clip, a 10.5 s clip."""
    manifest = load_manifest(tiny_desed)["validation"]
    full = manifest[manifest["duration"] == 10.0]["path"].iloc[0]
    short = manifest[manifest["duration"] < 10.0]["path"].iloc[0]
    stereo = real_layout.root / SPLITS["eval"].audio_dir / "Yevalevaleva_0.000_10.000.wav"
    waves = {name: load_clip(path)[0] for name, path in (("full", full), ("short", short), ("stereo", stereo))}
    waves["long"] = np.concatenate([waves["full"], waves["full"][:8000]])  # cut by load_clip after 160909 samples
    return waves


def test_linear_mel_matches_librosa(parity_waves):
    for name, wave in parity_waves.items():
        ours = clip_mels([wave])[0].numpy()
        assert ours.shape == (PARAMS.n_frames, 128), name
        # A longer clip keeps the first 628 frames of its whole STFT (dcase20's PadOrTrunc).
        assert_close(ours, dcase20_mel(wave), rtol=1e-4)


def test_batched_mel_equals_single(parity_waves):
    waves = list(parity_waves.values())
    batch = clip_mels(waves).numpy()
    for i, wave in enumerate(waves):
        assert_close(batch[i], clip_mels([wave]).numpy()[0], rtol=1e-5)
    # Clips of one length share one batched STFT: the same as one at a time.
    full = mel_spectrogram(torch.from_numpy(np.stack([parity_waves["full"], parity_waves["stereo"]]))).numpy()
    assert_close(batch[[0, 2]], full, rtol=1e-5)


def test_short_clip_is_padded_as_dcase20(parity_waves):
    """dcase20 computes a short clip's STFT over its own samples and pads the log-mel with 0 dB; zero-padding the
    audio instead put the pad at the clip's max - 80 dB and changed the last real frames."""
    wave = parity_waves["short"]
    frames = int(real_frames(len(wave) / 16000))
    assert frames == 1 + len(wave) // 255 < 628
    mel = clip_mels([wave])
    assert (mel[0, frames:] == PAD).all() and PAD == 1.0
    ours = log_mel(mel.half())[0].numpy()  # the model's log of what the store holds
    reference = dcase20_log_mel(wave)
    assert (ours[frames:] == 0).all() and (reference[frames:] == 0).all()  # 0 dB, as dcase20's pad
    np.testing.assert_allclose(ours, reference, atol=0.02)  # float16 storage: 0.02 dB


def test_load_clip_downmixes_and_resamples_without_padding(real_layout):
    path = real_layout.root / SPLITS["validation"].audio_dir / real_layout.short_clip
    stereo, rate = sf.read(path, dtype="float32")
    assert stereo.ndim == 2 and rate == 44100
    expected = resample(torch.from_numpy(stereo.mean(axis=1)), 44100).numpy()
    wave, duration = load_clip(path)
    assert wave.shape == (64000,) and duration == pytest.approx(4.0)
    np.testing.assert_array_equal(wave, expected)


def mel_db(wave: np.ndarray) -> np.ndarray:
    return 20 * np.log10(np.maximum(clip_mels([wave])[0].numpy(), 1e-5))


def test_resampling_reproduces_kaiser_best_in_every_mel_band(real_layout):
    """A 44.1 kHz stereo clip: every mel band of every frame within 0.5 dB of the librosa + resampy (kaiser_best)
    path of dcase20. torchaudio's default resampler is 20 dB off in the top band (measured: 0.9-2.0 dB in bands
    120-125, 6.3 dB in 126, 20.4 dB in 127); its Kaiser window with kaiser_best's nominal numbers (64, 0.9476,
    14.77) still 2.1 dB."""
    path = real_layout.root / SPLITS["eval"].audio_dir / "Yevalevaleva_0.000_10.000.wav"
    stereo, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = stereo.mean(axis=1)
    reference = mel_db(resampy_kaiser_best(mono, rate))
    difference = np.abs(mel_db(load_clip(path)[0]) - reference).max(axis=0)  # per band, worst frame
    assert difference.shape == (128,) and difference.max() < 0.5, np.round(difference[-8:], 2)
    default = torchaudio.functional.resample(torch.from_numpy(mono), rate, 16000).numpy()
    assert np.abs(mel_db(default) - reference).max(axis=0)[-1] > 5  # the test can tell them apart


def test_log_and_normalization_match_librosa(parity_waves, tiny_features):
    mean, std = FeatureStore(tiny_features).scaler()
    wave = parity_waves["full"]
    # A second, much quieter copy: top_db must apply per clip, not over the batch.
    mels = mel_spectrogram(torch.from_numpy(np.stack([wave, wave * 1e-4])))
    ours = ((log_mel(mels) - torch.from_numpy(mean)) / torch.from_numpy(std)).numpy()
    for i, scale in enumerate((1.0, 1e-4)):
        db = librosa.amplitude_to_db(librosa_mel(wave * scale), ref=1.0, amin=1e-5, top_db=80)
        np.testing.assert_allclose(ours[i], (db - mean) / std, atol=1e-3)

    # torchaudio's transform agrees on one clip (its amin differs, but top_db dominates at this level).
    single = mels[0]
    assert single.max() > 0.1
    reference = torchaudio.transforms.AmplitudeToDB(stype="amplitude", top_db=80)(single)
    torch.testing.assert_close(log_mel(single), reference, rtol=0, atol=1e-4)


def test_ten_seconds_are_628_frames():
    assert mel_spectrogram(torch.zeros(2, 160000)).shape == (2, 628, 128)
    assert FeatureParams().n_frames == 628
    with pytest.raises(ValueError, match="n_frames"):
        FeatureParams(hop=256)


def test_store_shapes_and_tables(tiny_desed, tiny_features):
    tiny = SIZES["tiny"]
    expected_sizes = {
        "weak": tiny["weak"],
        "unlabeled": tiny["unlabeled"],
        "synthetic_train": 16,
        "synthetic_valid": 4,
        "validation": tiny["validation"],
        "eval": tiny["eval"],
    }
    splits = {name: FeatureStore(tiny_features).split(name) for name in FEATURE_SPLITS}
    for name, split in splits.items():
        assert split.mels.shape == (expected_sizes[name], 628, 128) and split.mels.dtype == np.float16
        assert isinstance(split.mels, np.memmap)
        assert len(split.filenames) == len(split.durations) == expected_sizes[name]
        assert (split.durations > 0).all() and (split.durations <= 10).all()
        assert (split.events is not None) == (name not in ("weak", "unlabeled"))
        assert (split.weak_labels is not None) == (name == "weak")

    train, valid = set(splits["synthetic_train"].filenames), set(splits["synthetic_valid"].filenames)
    assert not train & valid and train | valid == set(load_manifest(tiny_desed)["synthetic"]["filename"])

    weak = pd.read_csv(tiny_desed / SPLITS["weak"].metadata, sep="\t")
    for filename, labels in zip(weak["filename"], weak["event_labels"], strict=True):
        row = splits["weak"].weak_labels[splits["weak"].filenames.index(filename)]
        assert {CLASSES[i] for i in np.flatnonzero(row)} == set(labels.split(","))

    validation = splits["validation"]
    pd.testing.assert_frame_equal(validation.events, load_events(tiny_desed, "validation"))
    durations = dict(
        zip(
            load_manifest(tiny_desed)["validation"]["filename"],
            load_manifest(tiny_desed)["validation"]["duration"],
            strict=True,
        )
    )
    assert validation.durations.tolist() == pytest.approx([durations[f] for f in validation.filenames])

    record = json.loads((tiny_features / "features.json").read_text())
    assert record["params"] == FeatureParams().to_dict() and record["splits"] == expected_sizes


def test_stored_features_match_librosa_at_float16(tiny_desed, tiny_features):
    split = FeatureStore(tiny_features).split("validation")
    paths = dict(
        zip(
            load_manifest(tiny_desed)["validation"]["filename"],
            load_manifest(tiny_desed)["validation"]["path"],
            strict=True,
        )
    )
    short = int(np.argmin(split.durations))
    assert split.durations[short] < 10
    for i in (0, short, len(split) - 1):
        reference = dcase20_mel(load_clip(paths[split.filenames[i]])[0])
        assert_close(split.mels[i].astype(np.float32), reference, rtol=1e-3)


def test_scaler_is_the_log_mel_moments_of_the_training_splits(tiny_features):
    logs = (
        torch.cat(
            [
                log_mel(torch.from_numpy(np.array(FeatureStore(tiny_features).split(s).mels)))
                for s in ("weak", "unlabeled", "synthetic_train")
            ]
        )
        .reshape(-1, 128)
        .double()
    )
    mean, std = FeatureStore(tiny_features).scaler()
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (128,)
    np.testing.assert_allclose(mean, logs.mean(0).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, logs.std(0, correction=0).numpy(), rtol=1e-4)


def test_real_layout_end_to_end(real_layout, tmp_path):
    prepared, features = tmp_path / "prepared", tmp_path / "features"
    prepare_desed(real_layout.root, prepared, progress=False)
    report = extract_mels(prepared, features, workers=2, progress=False)
    assert not report.skipped and report.n_clips == sum(real_layout.counts.values())
    assert report.split_sizes == {
        "weak": 2,
        "unlabeled": 1,
        "synthetic_train": 2,
        "synthetic_valid": 1,
        "validation": 3,
        "eval": 2,
    }
    validation = FeatureStore(features).split("validation")
    assert validation.mels.shape == (3, 628, 128)
    durations = dict(zip(validation.filenames, validation.durations, strict=True))
    assert durations[real_layout.short_clip] == pytest.approx(4.0)
    assert durations[real_layout.empty_clip] == pytest.approx(10.0)
    short = validation.mels[validation.filenames.index(real_layout.short_clip)].astype(np.float32)
    frames = validation.frames[validation.filenames.index(real_layout.short_clip)]
    assert frames == 251 and (short[frames:] == 1.0).all()  # 4 s = 251 frames of its own, then 0 dB
    assert (short[:frames] != 1.0).any(axis=1).all()
    speech = validation.events[validation.events["event_label"] == "Speech"]
    assert len(speech) == 2  # same-class overlaps are kept; the evaluator merges them
    assert real_layout.empty_clip not in set(validation.events["filename"])
    assert real_layout.missing[1] not in FeatureStore(features).split("unlabeled").filenames


def test_extract_is_idempotent_until_the_manifest_changes(real_layout, tmp_path):
    prepare_desed(real_layout.root, real_layout.root, progress=False)
    features = tmp_path / "features"
    assert not extract_mels(real_layout.root, features, workers=1, progress=False).skipped
    killed = features / ".staging.tmp4194305"  # what an extraction killed by SIGKILL left: a whole store's size
    (killed / "eval").mkdir(parents=True)
    again = extract_mels(real_layout.root, features, workers=1, progress=False)
    assert again.skipped and again.split_sizes["validation"] == 3 and not killed.exists()

    tsv = real_layout.root / SPLITS["eval"].metadata
    tsv.write_text(tsv.read_text().replace("Running_water", "Speech"))
    prepare_desed(real_layout.root, real_layout.root, progress=False)
    assert not extract_mels(real_layout.root, features, workers=1, progress=False).skipped
    assert "Speech" in set(FeatureStore(features).split("eval").events["event_label"])


def test_extract_notices_audio_replaced_under_an_unchanged_manifest(real_layout, tmp_path):
    """A clip replaced by one of the same length leaves the manifest's tables as they were: extract-mels refuses
    until prepare-desed has read the tree again, then extracts the new audio (it had said "up to date")."""
    root, prepared, features = real_layout.root, tmp_path / "prepared", tmp_path / "features"
    prepare_desed(root, prepared, progress=False)
    extract_mels(prepared, features, workers=1, progress=False)
    before = FeatureStore(features).split("eval").mels.copy()
    record = (features / "features.json").read_bytes()
    clip = root / SPLITS["eval"].audio_dir / "Yevalevaleva_0.000_10.000.wav"
    write_stereo_clip(clip, 10.0, np.random.default_rng(7))
    with pytest.raises(UserError, match=f"^{re.escape(str(clip))} changed since `sedaug prepare-desed` read it: run "
                                        rf"`sedaug prepare-desed --root {root} --out {prepared}` again$"):
        extract_mels(prepared, features, workers=1, progress=False)
    assert (features / "features.json").read_bytes() == record
    assert not prepare_desed(root, prepared, progress=False).skipped
    assert not extract_mels(prepared, features, workers=1, progress=False).skipped
    after = FeatureStore(features).split("eval")
    first = after.filenames.index(clip.name)
    assert not np.array_equal(after.mels[first], before[first])
    assert np.array_equal(np.delete(after.mels, first, 0), np.delete(before, first, 0))
    # An edited or removed metadata TSV, a clip gone, an older manifest: refused, each with its reason.
    tsv = root / SPLITS["eval"].metadata
    listed = tsv.read_text()
    tsv.write_text(listed.replace("Running_water", "Speech"))
    with pytest.raises(UserError, match=f"^{re.escape(str(tsv))} was edited since `sedaug prepare-desed` read it: run "):
        extract_mels(prepared, features, workers=1, progress=False)
    tsv.write_text(listed)
    added = root / SPLITS["unlabeled"].audio_dir / "Ymissingmiss_0.000_10.000.wav"
    shutil.copy(clip, added)
    with pytest.raises(UserError, match=f"^{re.escape(str(added))} was missing when `sedaug prepare-desed` read "
                                        "the tree, and is there now: run "):
        extract_mels(prepared, features, workers=1, progress=False)
    record_path = prepared / "manifest" / "prepare.json"
    older = json.loads(record_path.read_text())
    del older["metadata_sha256"]  # as an older sedaug wrote it
    record_path.write_text(json.dumps(older))
    with pytest.raises(UserError, match=f"^the DESED tree {re.escape(str(root))} changed since `sedaug prepare-desed` "
                                        r"read it \(a metadata TSV edited, or a missing clip added\): run "):
        extract_mels(prepared, features, workers=1, progress=False)
    (root / SPLITS["weak"].metadata).unlink()
    with pytest.raises(UserError, match=rf"^{re.escape(str(root))} changed since `sedaug prepare-desed` read it \(not "
                                        r"a DESED root: .* has no metadata/train/weak.tsv "):
        extract_mels(prepared, features, workers=1, progress=False)
    clip.unlink()
    with pytest.raises(UserError, match=f"^{re.escape(str(clip))} is gone since `sedaug prepare-desed` read it"):
        extract_mels(prepared, features, workers=1, progress=False)
    prepare_record = record_path.read_text()
    record_path.write_text(prepare_record.replace(f'"format": {MANIFEST_FORMAT}', f'"format": {MANIFEST_FORMAT - 1}'))
    with pytest.raises(UserError, match=f"^{re.escape(str(prepared / 'manifest'))}: its prepare.json is unreadable or "
                                        "of another version of sedaug: run `sedaug prepare-desed"):
        extract_mels(prepared, features, workers=1, progress=False)
    record_path.write_text(prepare_record)
    # A tree removed after extraction is not checked: the store stays up to date.
    shutil.rmtree(root)
    assert extract_mels(prepared, features, workers=1, progress=False).skipped


def test_extract_refuses_an_out_that_is_not_this_desed_store(real_layout, tmp_path):
    prepare_desed(real_layout.root, tmp_path / "desed", progress=False)
    run = tmp_path / "run"  # a run directory
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: none\n")
    for out in (run, tmp_path / "desed"):  # the DESED folder with its manifest/
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(UserError, match=f"--out {out} holds {re.escape(', '.join(before[:3]))}.*, which no "
                                            "feature store holds"):
            extract_mels(tmp_path / "desed", out, workers=1, progress=False)
        assert sorted(p.name for p in out.iterdir()) == before
    features = tmp_path / "features"
    extract_mels(tmp_path / "desed", features, workers=1, progress=False)
    # A store whose replacement was cut short (split folders, no features.json) is this store: made again.
    (features / "features.json").unlink()
    assert not extract_mels(tmp_path / "desed", features, workers=1, progress=False).skipped
    record = (features / "features.json").read_bytes()
    # Another DESED's features are not replaced under the runs trained on them; a prepared folder copied elsewhere
    # is the same DESED (prepared again elsewhere, its manifest holds other paths: another DESED).
    shutil.copytree(tmp_path / "desed", tmp_path / "moved")
    assert extract_mels(tmp_path / "moved", features, workers=1, progress=False).skipped
    tsv = real_layout.root / SPLITS["eval"].metadata
    tsv.write_text(tsv.read_text().replace("Running_water", "Speech"))
    prepare_desed(real_layout.root, tmp_path / "other", progress=False)
    with pytest.raises(UserError, match=f"holds the features of {tmp_path / 'desed'}, not of {tmp_path / 'other'}"):
        extract_mels(tmp_path / "other", features, workers=1, progress=False)
    assert (features / "features.json").read_bytes() == record


def test_a_store_whose_entries_cannot_take_the_new_files_is_refused_before_anything_is_replaced(real_layout, tmp_path):
    """The new files are renamed over the old ones: a split that became a file (or a link to another file system,
    where a rename fails) had the store's record removed first, and the store was lost; refused before extracting."""
    prepare_desed(real_layout.root, tmp_path / "desed", progress=False)
    features = tmp_path / "features"
    extract_mels(tmp_path / "desed", features, workers=1, progress=False)
    (real_layout.root / SPLITS["eval"].metadata).write_text(
        (real_layout.root / SPLITS["eval"].metadata).read_text().replace("Running_water", "Speech"))
    prepare_desed(real_layout.root, tmp_path / "desed", progress=False)  # the store is to be made again
    shutil.move(features / "eval", tmp_path / "eval")
    (features / "eval").write_text("")
    before = {p: p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()}
    with pytest.raises(UserError, match=re.escape(f"--out {features}: {features / 'eval'} is not a folder, and "
                                                  "extract-mels renames the new files into place there")):
        extract_mels(tmp_path / "desed", features, workers=1, progress=False)
    assert {p: p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()} == before
    (features / "eval").unlink()
    (features / "eval").symlink_to(tmp_path / "eval")  # a link on the same file system takes the renames
    assert not extract_mels(tmp_path / "desed", features, workers=1, progress=False).skipped
    assert (features / "eval").is_symlink() and FeatureStore(features).split("eval").events.event_label.eq(
        "Speech").any()


def test_a_prepared_tree_copied_moved_or_gone_is_said_before_extracting(tiny_desed, real_layout, tmp_path):
    """A synthetic tree copied with its manifest listed the original's audio (extracted silently from there); a tree
    moved away from its prepared folder failed to decode its first clip, a corrupt file by the message. A store
    extracted before stays usable, and says it was not checked (it said "up to date" alone)."""
    copy = shutil.copytree(tiny_desed, tmp_path / "copy")
    with pytest.raises(UserError, match=re.escape(f"{copy / 'manifest'} lists the audio of {tiny_desed.resolve()}, not "
                                                  "the audio beside it (the tree copied or moved?): run `sedaug "
                                                  "prepare-desed --synthetic --size tiny --seed 0 --sample-rate 16000 "
                                                  f"--out {copy}` to list its own")):
        extract_mels(copy, tmp_path / "f1", workers=1, progress=False)
    assert not (tmp_path / "f1").exists()
    prepare_desed(real_layout.root, tmp_path / "prepared", progress=False)
    extract_mels(tmp_path / "prepared", tmp_path / "f0", workers=1, progress=False)
    real_layout.root.rename(tmp_path / "elsewhere")
    kept = extract_mels(tmp_path / "prepared", tmp_path / "f0", workers=1, progress=False)  # its audio may go
    assert kept.skipped and kept.summary().endswith(f"; not checked against its audio: the DESED tree "
                                                    f"{real_layout.root} that `sedaug prepare-desed` read is gone "
                                                    "(moved or deleted?): run `sedaug prepare-desed --root <where it "
                                                    f"is> --out {tmp_path / 'prepared'}` again")
    with pytest.raises(UserError, match=re.escape(f"the DESED tree {real_layout.root} that `sedaug prepare-desed` read "
                                                  "is gone (moved or deleted?): run `sedaug prepare-desed --root <where "
                                                  f"it is> --out {tmp_path / 'prepared'}` again")):
        extract_mels(tmp_path / "prepared", tmp_path / "f2", workers=1, progress=False)
    assert not (tmp_path / "f2").exists()
    prepare_desed(tmp_path / "elsewhere", tmp_path / "prepared", progress=False)  # as it says
    assert not extract_mels(tmp_path / "prepared", tmp_path / "f2", workers=1, progress=False).skipped


def test_a_second_extraction_into_a_store_being_written_is_refused(real_layout, tmp_path):
    """Two extract-mels into one folder renamed their files among each other's (a store of two DESEDs, with the
    last one's record): the second is refused while the first holds the store."""
    import fcntl

    prepare_desed(real_layout.root, tmp_path / "desed", progress=False)
    features = tmp_path / "features"
    features.mkdir()
    with open(features / ".extract.lock", "a") as other:  # another extract-mels writing it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match=re.escape(f"{features} is being written by another sedaug extract-mels: "
                                                      "wait for it to end")):
            extract_mels(tmp_path / "desed", features, workers=1, progress=False)
        assert [p.name for p in features.iterdir()] == [".extract.lock"]
    (features / ".extract.lock").unlink()  # as the other one does when it ends
    assert not extract_mels(tmp_path / "desed", features, workers=1, progress=False).skipped
    assert not (features / ".extract.lock").exists()


def test_extract_needs_a_manifest(tmp_path):
    with pytest.raises(UserError, match="run `sedaug prepare-desed` first"):
        extract_mels(tmp_path, tmp_path / "features", progress=False)
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}: no such folder .*prepare-desed --out"):
        extract_mels(tmp_path / "nowhere", tmp_path / "features", progress=False)


def test_corrupt_clip_at_extraction_names_the_file(real_layout, tmp_path):
    prepare_desed(real_layout.root, tmp_path, progress=False)
    corrupt = real_layout.root / SPLITS["weak"].audio_dir / "Ybbbbbbbbbbb_30.000_40.000.wav"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(UserError, match=re.escape(str(corrupt))):
        extract_mels(tmp_path, tmp_path / "features", workers=1, progress=False)
    assert not (tmp_path / "features").exists()  # made for this extraction: no empty folder left


def test_store_records_padding_and_resampler_and_refuses_older_stores(tiny_features, tmp_path):
    record = json.loads((tiny_features / "features.json").read_text())
    assert record["format"] == 2
    assert record["params"]["padding"] == "0dB" and record["params"]["resampler"] == "kaiser_best"
    # A store written before both were recorded (format 1, zero-padded audio, torchaudio's default resampler).
    for key in ("padding", "resampler"):
        del record["params"][key]
    record["format"] = 1
    (tmp_path / "features.json").write_text(json.dumps(record))
    with pytest.raises(UserError) as error:
        FeatureStore(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "re-run `sedaug extract-mels`" in message
    assert "format 1 != 2" in message and "padding None != '0dB'" in message


def test_real_frames_by_hand():
    # 10 s: 160000 // 255 = 627 -> 628 frames; 4 s: 64000 // 255 = 250 -> 251; 0.5 s: 8000 // 255 = 31 -> 32.
    assert real_frames(np.array([10.0, 4.0, 0.5, 12.0])).tolist() == [628, 251, 32, 628]


def test_batches_carry_each_clips_real_frames(tiny_features, tmp_path):
    """Batch.frames: the real input frames of each row, for statistics over a clip's real frames only."""
    store_dir = shutil.copytree(tiny_features, tmp_path / "features")
    clips = pd.read_csv(store_dir / "unlabeled" / "clips.tsv", sep="\t")
    clips["duration"] = np.where(np.arange(len(clips)) % 2 == 0, 4.0, 10.0)  # every other unlabeled clip 4 s
    clips.to_csv(store_dir / "unlabeled" / "clips.tsv", sep="\t", index=False)
    record = json.loads((store_dir / "features.json").read_text())
    (store_dir / "features.json").write_text(json.dumps({**record, "tables": table_hashes(store_dir)}))  # as written
    streams = ThreeStreams(FeatureStore(store_dir), batch_size=8, seed=0, device=torch.device("cpu"))
    batches = list(streams.epoch(0))
    assert batches
    for batch in batches:
        assert batch.frames.dtype == torch.int64 and batch.frames.shape == (8,)
        assert set(batch.frames[: batch.n_unlabeled].tolist()) <= {251, 628}
        assert (batch.frames[batch.n_unlabeled :] == 628).all()  # tiny's weak and synthetic clips are 10 s
    unlabeled = torch.cat([b.frames[: b.n_unlabeled] for b in batches])
    assert {251, 628} <= set(unlabeled.tolist())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda e: e.assign(event_label=e.event_label.where(e.index != 1, "Alarm")), ":3: unknown class 'Alarm'"),
    (lambda e: e.assign(filename=e.filename.where(e.index != 0, "nowhere.wav")), ":2: clip nowhere.wav is not in"),
    (lambda e: e.assign(onset=e.onset.where(e.index != 2, -1.0)), ":4: onset -1 is not a time >= 0"),
    (lambda e: e.assign(offset=e.onset.where(e.index != 0, e.offset)), ":3: offset .* is not after onset"),
], ids=["label", "clip", "onset", "offset"])
def test_a_damaged_events_table_is_one_line_naming_its_row(tiny_features, tmp_path, edit, message):
    features = shutil.copytree(tiny_features, tmp_path / "features")
    path = features / "eval" / "events.tsv"
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False)
    with pytest.raises(UserError, match=f"{re.escape(str(path))}{message}.*re-run `sedaug extract-mels`"):
        FeatureStore(features).split("eval")


def test_truncated_mels_are_extracted_again(real_layout, tmp_path):
    prepare_desed(real_layout.root, tmp_path / "desed", progress=False)
    features = tmp_path / "features"
    extract_mels(tmp_path / "desed", features, workers=1, progress=False)
    mels = features / "validation" / "mels.npy"
    data = mels.read_bytes()
    mels.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=re.escape(f"{mels}: truncated or damaged")):
        FeatureStore(features).split("validation")
    assert not extract_mels(tmp_path / "desed", features, workers=1, progress=False).skipped
    assert mels.read_bytes() == data


@pytest.mark.parametrize("damage", ["events.tsv gone", "clips.tsv garbage", "weak.tsv gone", "scaler garbage",
                                    "an event deleted", "another scaler"])
def test_a_store_that_evaluation_would_refuse_is_extracted_again(real_layout, tmp_path, damage):
    """Each damage's error says "re-run `sedaug extract-mels`": that run must rebuild, not say "up to date". A
    table or scaler edited by hand into another valid one was scored as it was."""
    prepare_desed(real_layout.root, tmp_path / "desed", progress=False)
    features = tmp_path / "features"
    extract_mels(tmp_path / "desed", features, workers=1, progress=False)
    before = {p: p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()}
    path = {"events.tsv gone": features / "eval" / "events.tsv", "clips.tsv garbage": features / "eval" / "clips.tsv",
            "weak.tsv gone": features / "weak" / "weak.tsv", "scaler garbage": features / "scaler.npz",
            "an event deleted": features / "eval" / "events.tsv", "another scaler": features / "scaler.npz"}[damage]
    if damage == "an event deleted":
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    elif damage == "another scaler":
        np.savez(path, mean=np.zeros(128, np.float32), std=np.ones(128, np.float32))
    else:
        path.unlink() if damage.endswith("gone") else path.write_text("garbage\n")
    if damage in ("an event deleted", "another scaler"):
        store = FeatureStore(features)
        with pytest.raises(UserError, match=re.escape(f"{path} was edited since `sedaug extract-mels` wrote it")):
            store.scaler() if path.name == "scaler.npz" else store.split("eval")
    assert not extract_mels(tmp_path / "desed", features, workers=1, progress=False).skipped
    assert {p: p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()} == before


def test_incompatible_store(tiny_features, tmp_path):
    FeatureStore(tiny_features)
    record = json.loads((tiny_features / "features.json").read_text())
    record["params"]["hop"] = 256
    (tmp_path / "features.json").write_text(json.dumps(record))
    with pytest.raises(UserError) as error:
        FeatureStore(tmp_path)
    assert f"incompatible feature store at {tmp_path}: hop 256 != 255" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_store_or_split(tiny_features, tmp_path):
    with pytest.raises(UserError, match="give data.features the folder `sedaug extract-mels` wrote \\(or run it first\\)"):
        FeatureStore(tmp_path)
    shutil.copy(tiny_features / "features.json", tmp_path / "features.json")
    with pytest.raises(UserError, match="split eval is missing .* run `sedaug extract-mels`"):
        FeatureStore(tmp_path).split("eval")
    with pytest.raises(UserError, match="unknown feature split 'train'"):
        FeatureStore(tiny_features).split("train")


def test_frame_labels_by_hand():
    events = pd.DataFrame(
        [
            ("a.wav", 0.0, 1.0, "Dog"),  # 16000 // 255 = 62, // 4 = 15: frames 0..14
            (
                "a.wav",
                0.5,
                1.5,
                "Dog",
            ),  # same-class overlap: union, frames 7..22 (8000//255=31 -> 7; 24000//255=94 -> 23)
            (
                "b.wav",
                9.5,
                10.0,
                "Speech",
            ),  # 152000 // 255 = 596 -> 149; 160000 // 255 = 627 -> 156: frames 149..155
            ("b.wav", 3.0, 3.01, "Cat"),  # shorter than a frame: 47 .. 47, no frame (as in dcase20)
        ],
        columns=["filename", "onset", "offset", "event_label"],
    )
    labels = frame_labels(events, ["a.wav", "b.wav", "c.wav"])
    assert labels.shape == (3, 157, 10) and labels.dtype == np.float32
    dog, speech = CLASSES.index("Dog"), CLASSES.index("Speech")
    assert np.flatnonzero(labels[0, :, dog]).tolist() == list(range(0, 23))
    assert np.flatnonzero(labels[1, :, speech]).tolist() == list(range(149, 156))
    assert labels.sum() == 23 + 7 and not labels[2].any()
    with pytest.raises(ValueError, match="not in the list"):
        frame_labels(events, ["a.wav"])


def test_weak_labels_from_both_tables():
    weak = pd.DataFrame({"filename": ["a.wav", "b.wav"], "event_labels": ["Dog,Speech", "Cat"]})
    strong = pd.DataFrame(
        [
            ("a.wav", 0.0, 1.0, "Dog"),
            ("a.wav", 2.0, 3.0, "Speech"),
            ("a.wav", 2.5, 3.0, "Dog"),
            ("b.wav", 1.0, 2.0, "Cat"),
        ],
        columns=["filename", "onset", "offset", "event_label"],
    )
    expected = np.zeros((3, 10), np.float32)
    expected[0, [CLASSES.index("Dog"), CLASSES.index("Speech")]] = 1
    expected[1, CLASSES.index("Cat")] = 1
    for table in (weak, strong):
        np.testing.assert_array_equal(weak_labels_from(table, ["a.wav", "b.wav", "c.wav"]), expected)


def test_synthetic_split_is_seeded_and_order_free():
    names = [f"{i}.wav" for i in range(100)]
    train, valid = split_synthetic(names, 0.2, seed=0)
    assert len(valid) == 20 and sorted(train + valid, key=names.index) == names
    assert split_synthetic(names[::-1], 0.2, seed=0)[1] == valid[::-1]
    assert set(split_synthetic(names, 0.2, seed=1)[1]) != set(valid)
