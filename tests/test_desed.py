"""prepare_desed: layout checks, manifest contents, the missing-file report, idempotence, bad inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from sedaug.data.desed import CLASSES, SPLITS, load_events, load_manifest, prepare_desed
from sedaug.data.download import download_desed
from sedaug.errors import UserError


def test_classes_in_design_order():
    assert CLASSES == (
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


def test_prepare_writes_manifest_of_real_layout(real_layout, tmp_path):
    out = tmp_path / "prepared"
    report = prepare_desed(real_layout.root, out, progress=False)

    assert not report.skipped
    assert report.counts == real_layout.counts
    assert report.n_missing == 1
    missing = pd.read_csv(out / "missing_files.tsv", sep="\t")
    assert list(missing.itertuples(index=False, name=None)) == [real_layout.missing]

    manifest = load_manifest(out)
    assert set(manifest) == set(SPLITS)
    weak = manifest["weak"]
    assert dict(zip(weak["filename"], weak["event_labels"], strict=True)) == real_layout.weak_labels
    for split, table in manifest.items():
        assert len(table) == real_layout.counts[split]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
        assert set(table["sample_rate"]) == {44100} and set(table["channels"]) == {2}
    durations = dict(zip(manifest["validation"]["filename"], manifest["validation"]["duration"], strict=True))
    assert durations[real_layout.short_clip] == pytest.approx(4.0)
    assert real_layout.empty_clip in durations  # a clip with no event stays in the manifest
    assert real_layout.missing[1] not in set(manifest["unlabeled"]["filename"])


def test_events_drop_empty_rows_and_keep_same_class_overlaps(real_layout, tmp_path):
    prepare_desed(real_layout.root, tmp_path, progress=False)
    events = load_events(tmp_path, "validation")
    assert list(events.columns) == ["filename", "onset", "offset", "event_label"]
    assert real_layout.empty_clip not in set(events["filename"])
    assert events["event_label"].isin(CLASSES).all() and events["onset"].dtype == float
    overlap = events[(events["filename"] == real_layout.overlap_clip) & (events["event_label"] == "Speech")]
    assert list(zip(overlap["onset"], overlap["offset"], strict=True)) == [(1.0, 4.0), (3.0, 6.0)]


def test_prepare_is_idempotent_until_inputs_change(real_layout, tmp_path):
    first = prepare_desed(real_layout.root, tmp_path, progress=False)
    second = prepare_desed(real_layout.root, tmp_path, progress=False)
    assert second.skipped and second.counts == first.counts and second.n_missing == 1
    assert list(second.counts) == list(SPLITS)

    (tmp_path / "manifest" / "eval.tsv").unlink()  # a damaged output is rebuilt, too
    assert not prepare_desed(real_layout.root, tmp_path, progress=False).skipped

    # The missing file shows up: the manifest must be rebuilt.
    split, name = real_layout.missing
    source = real_layout.root / SPLITS[split].audio_dir / "Ycccccccccc0_10.000_20.000.wav"
    (real_layout.root / SPLITS[split].audio_dir / name).write_bytes(source.read_bytes())
    third = prepare_desed(real_layout.root, tmp_path, progress=False)
    assert not third.skipped and third.n_missing == 0 and third.counts["unlabeled"] == 2

    # A metadata change, too.
    weak_tsv = real_layout.root / SPLITS["weak"].metadata
    weak_tsv.write_text(weak_tsv.read_text().replace("\tCat", "\tCat,Dog"))
    fourth = prepare_desed(real_layout.root, tmp_path, progress=False)
    assert not fourth.skipped
    assert "Cat,Dog" in set(load_manifest(tmp_path)["weak"]["event_labels"])


def test_prepare_leaves_no_temporary_files(real_layout):
    prepare_desed(real_layout.root, real_layout.root, progress=False)  # out may be the root itself
    leftovers = [p for p in real_layout.root.rglob(".*")]
    assert leftovers == []
    assert (real_layout.root / "manifest" / "prepare.json").is_file()


@pytest.mark.parametrize("remove", ["audio/train/synthetic20/soundscapes", "metadata/eval/public.tsv"])
def test_wrong_root_names_what_is_missing(real_layout, tmp_path, remove):
    target = real_layout.root / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(UserError) as error:
        prepare_desed(real_layout.root, tmp_path, progress=False)
    message = str(error.value)
    assert remove in message and "\n" not in message


def test_nonexistent_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare_desed(tmp_path / "nowhere", tmp_path, progress=False)


def test_corrupt_wav_is_an_error_naming_the_file(real_layout, tmp_path):
    corrupt = real_layout.root / SPLITS["eval"].audio_dir / "Yevalevaleva_0.000_10.000.wav"
    corrupt.write_bytes(os.urandom(3000))
    with pytest.raises(UserError) as error:
        prepare_desed(real_layout.root, tmp_path, progress=False)
    assert str(error.value).startswith(f"cannot decode {corrupt}: ") and "\n" not in str(error.value)
    assert str(error.value).count(str(corrupt)) == 1  # soundfile's message repeats the path
    assert not (tmp_path / "manifest" / "prepare.json").exists()


def test_unknown_class_names_file_and_line(real_layout, tmp_path):
    tsv = real_layout.root / SPLITS["eval"].metadata
    tsv.write_text(tsv.read_text().replace("Running_water", "Runing_water"))
    with pytest.raises(UserError, match=r"public\.tsv:3: unknown class 'Runing_water'"):
        prepare_desed(real_layout.root, tmp_path, progress=False)


def test_missing_column_is_an_error(real_layout, tmp_path):
    tsv = real_layout.root / SPLITS["weak"].metadata
    tsv.write_text(tsv.read_text().replace("event_labels", "labels"))
    with pytest.raises(UserError, match="missing column"):
        prepare_desed(real_layout.root, tmp_path, progress=False)


def test_load_manifest_before_prepare(tmp_path):
    with pytest.raises(UserError, match="run `sedaug prepare-desed` first"):
        load_manifest(tmp_path)


def test_download_without_the_desed_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "desed", None)  # makes `import desed` fail
    with pytest.raises(UserError, match=r"pip install 'sedaug\[download\]'"):
        download_desed(tmp_path)
