"""Bad data through the CLI (issue 13): every bad input is refused with exit status 1 and one `error:` line that
names the file (and line, for a TSV) or the flag, no traceback, and what was written before is left as it was
(same files, same bytes, no temporary file left behind). One DESED quirk is accepted with a counted warning: an
event ending at most 0.5 s past its clip's audio.

A full disk is a real one: a small tmpfs when this process may mount one (root), else a per-file size limit
(RLIMIT_FSIZE) on the command's process; commands that meet it run in a subprocess, since writing through a memory
map onto a full disk used to kill the process with SIGBUS (exit status 135).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import checksums, one_line_error, run, write_stereo_clip

from sedaug.data.desed import SPLITS, load_events
from sedaug.data.store import FeatureStore
from sedaug.errors import UserError
from sedaug.files import atomic_dir, atomic_path

RECIPES = Path(__file__).parents[1] / "recipes"
REAL_RATE = 44100
WEAK_CLIP = "Yaaaaaaaaaaa_0.000_10.000.wav"
EVAL_CLIP = "Yevalevaleva_0.000_10.000.wav"  # public.tsv line 2: Alarm_bell_ringing 2.0 - 3.0


# ------------------------------------------------------------------------------------------------ prepare-desed


@pytest.fixture
def prepared(real_layout, tmp_path):
    """A real-layout DESED prepared once into `out` (the outputs a later refused run must leave alone)."""
    out = tmp_path / "out"
    result = run("prepare-desed", "--root", real_layout.root, "--out", out)
    assert result.exit_code == 0, result.output
    return real_layout, out


def audio(layout, split: str, name: str) -> Path:
    return layout.root / SPLITS[split].audio_dir / name


def float_wav(path: Path, bad: float, seconds: float = 10.0) -> None:
    """Replace `path` with a 44.1 kHz stereo float WAV holding one `bad` sample at 1.5 s."""
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, (int(seconds * REAL_RATE), 2)).astype(np.float32)
    samples[int(1.5 * REAL_RATE), 1] = bad
    sf.write(path, samples, REAL_RATE, subtype="FLOAT")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_audio(prepared, bad):
    layout, out = prepared
    before = checksums(out)
    victim = audio(layout, "weak", WEAK_CLIP)
    float_wav(victim, bad)
    line = one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), str(victim), "non-finite")
    assert "1.500 s" in line
    assert checksums(out) == before


def test_absurd_sample_rate_is_refused_at_prepare(prepared):
    layout, out = prepared
    before = checksums(out)
    victim = audio(layout, "weak", WEAK_CLIP)
    sf.write(victim, np.zeros((10, 1), np.float32), 1)  # ten samples at 1 Hz: "10 s" of nothing
    one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), str(victim), "1 Hz")
    assert checksums(out) == before


def test_a_file_where_a_folder_is_due_is_said_to_be_a_file(tmp_path):
    a_file = tmp_path / "desed.txt"
    a_file.write_text("not a folder")
    one_line_error(run("prepare-desed", "--root", a_file, "--out", tmp_path / "out"), str(a_file), "is a file")
    one_line_error(run("extract-mels", "--data", a_file, "--out", tmp_path / "f"), str(a_file), "is a file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "f").exists()


def truncate(path: Path, seconds: float) -> None:
    """Cut a 16-bit stereo WAV's data after `seconds`, leaving its header as it was (a broken download)."""
    data = path.read_bytes()
    path.write_bytes(data[: 44 + int(seconds * REAL_RATE) * 4])


def short_wav(path: Path, seconds: float) -> None:
    """Replace `path` with a well-formed 16-bit stereo WAV of `seconds` (a download cut short, then re-encoded)."""
    sf.write(path, np.zeros((int(seconds * REAL_RATE), 2)), REAL_RATE, subtype="PCM_16")


def test_a_wav_cut_short_is_refused_by_its_header(prepared):
    """The header announces more samples than the file holds: truncated, whatever its labels (an unlabeled clip)."""
    layout, out = prepared
    before = checksums(out)
    victim = audio(layout, "unlabeled", "Ycccccccccc0_10.000_20.000.wav")
    truncate(victim, 4.0)
    line = one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), str(victim), "truncated")
    assert "its header announces 1,764,000 bytes of samples, the file holds 705,600" in line
    assert checksums(out) == before
    write_stereo_clip(victim, 10.0, np.random.default_rng(5))
    victim.write_bytes(victim.read_bytes()[:-2])  # half a frame short: a careless writer, decoded as it is
    assert run("prepare-desed", "--root", layout.root, "--out", out).exit_code == 0


def test_a_clip_shorter_than_its_labels(prepared):
    layout, out = prepared
    before = checksums(out)
    victim = audio(layout, "validation", layout.overlap_clip)  # labelled up to 8 s, named _0.000_10.000
    short_wav(victim, 0.5)
    tsv = layout.root / SPLITS["validation"].metadata
    line = one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), f"{tsv}:4:", str(victim))
    assert "0.500 s of audio" in line and "truncated" in line
    assert checksums(out) == before


def test_a_label_past_a_short_clip_that_its_name_says_is_short(prepared):
    """A 4 s clip, named so, labelled to 10 s: the label is wrong, not the audio."""
    layout, out = prepared
    tsv = layout.root / SPLITS["validation"].metadata
    tsv.write_text(tsv.read_text() + f"{layout.short_clip}\t5.0\t10.0\tDog\n")
    line = one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), f"{tsv}:7:")
    assert "holds 4.000 s of audio as its name says: the label is wrong, fix line 7" in line and "truncated" not in line


def test_truncated_wav_too_short_to_analyse(prepared):
    layout, out = prepared
    before = checksums(out)
    victim = audio(layout, "unlabeled", "Ycccccccccc0_10.000_20.000.wav")  # no labels to contradict it
    short_wav(victim, 0.03)
    line = one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), str(victim), "too short")
    assert "0.030 s" in line
    assert checksums(out) == before


def edit_eval_tsv(layout, old: str, new: str) -> Path:
    tsv = layout.root / SPLITS["eval"].metadata
    text = tsv.read_text()
    assert old in text
    tsv.write_text(text.replace(old, new))
    return tsv


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("2.0\t3.0", "2.0\tinf", "offset 'inf' is not a finite number"),
        ("2.0\t3.0", "nan\t3.0", "onset 'nan' is not a finite number"),
        ("2.0\t3.0", "2.0\t1e999", "offset '1e999' is not a finite number"),
        ("2.0\t3.0", "-0.5\t3.0", "negative onset -0.5"),
        ("2.0\t3.0", "3.0\t2.0", "offset 2 before onset 3"),
        ("2.0\t3.0", "2.0\t12.0", "ends at 12 s but"),  # 2 s past a 10 s clip: truncated, or wrong labels
        ("2.0\t3.0", "10.6\t10.9", "ends at 10.9 s but"),
        ("2.0\t3.0\tAlarm_bell_ringing", "2.0\t3.0\tAlarm_bell_ringing\tDog", "5 tab-separated fields"),
    ],
)
def test_bad_event_rows_name_file_and_line(prepared, old, new, expected):
    layout, out = prepared
    before = checksums(out)
    tsv = edit_eval_tsv(layout, old, new)
    one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), f"{tsv}:2:", expected)
    assert checksums(out) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"\n\n  \n", "empty file"),
        (bytes(range(256)) * 8, "NUL byte: a binary file"),
        (b"filename\tonset\toffset\tevent_label\n\xff\xfe\t1\t2\tDog\n", ":2: not UTF-8 text (byte 34)"),
        (b"filename\tonset\toffset\n", "missing column(s) event_label"),
        ("filename\tonset\toffset\tevent_label\n".encode("utf-16"), "UTF-16 text: save the TSV as UTF-8"),
        (b"filename\tonset\toffset\tevent_label\rY_0.000_10.000.wav\t1\t2\tDog\r",
         "carriage return alone (an old Mac text file)"),  # was the whole file as its header, one line per row
    ],
)
def test_unreadable_tsv_names_the_file(prepared, content, expected):
    layout, out = prepared
    before = checksums(out)
    tsv = layout.root / SPLITS["eval"].metadata
    tsv.write_bytes(content)
    one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), str(tsv), expected)
    assert checksums(out) == before


def test_extra_field_in_a_weak_tsv(prepared):
    layout, out = prepared
    before = checksums(out)
    tsv = layout.root / SPLITS["weak"].metadata
    tsv.write_text(tsv.read_text().replace("\tCat\n", "\tCat\tDog\n"))
    one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), f"{tsv}:3:", "3 tab-separated fields")
    assert checksums(out) == before


def test_a_split_left_without_clips_is_refused_and_the_manifest_kept(prepared):
    layout, out = prepared
    before = checksums(out)
    tsv = layout.root / SPLITS["eval"].metadata
    tsv.write_text(tsv.read_text().splitlines()[0] + "\n")  # the header alone
    one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), f"eval: no clip to import ({tsv} lists no "
                   "clip)")
    assert checksums(out) == before


def test_events_slightly_past_the_clip_are_clipped_with_a_counted_warning(prepared):
    """DESED's quirk (a 9.98 s file labelled to 10 s): up to 0.5 s past the end, clipped or dropped, and reported."""
    layout, out = prepared
    tsv = layout.root / SPLITS["eval"].metadata
    text = tsv.read_text().replace("4.0\t9.0\tRunning_water", "4.0\t10.3\tRunning_water")
    tsv.write_text(text + "Yevalevalev2_0.000_10.000.wav\t10.1\t10.4\tDog\n"
                          "Yevalevalev2_0.000_10.000.wav\t2.5\t2.5\tCat\n")  # zero length: no scorer takes it
    result = run("prepare-desed", "--root", layout.root, "--out", out)
    assert result.exit_code == 0, result.output
    assert "3 warnings (events clipped, dropped or listed twice" in " ".join(result.output.split())
    warnings = pd.read_csv(out / "label_warnings.tsv", sep="\t")
    assert list(warnings["line"]) == [3, 4, 5] and set(warnings["metadata"]) == {"metadata/eval/public.tsv"}
    assert list(warnings["action"]) == ["offset clipped to 10", "dropped: starts at or after the clip's end",
                                        "dropped: zero length (offset = onset)"]
    events = load_events(out, "eval")
    assert list(events["offset"]) == [3.0, 10.0] and not {"Dog", "Cat"} & set(events["event_label"])
    # The store built from it passes the store's own check (offset > onset), so evaluation can read it.
    assert run("extract-mels", "--data", out, "--out", out.parent / "features", "--device", "cpu").exit_code == 0
    assert len(FeatureStore(out.parent / "features").split("eval").events) == 2


def test_what_the_features_cannot_hold_or_dcase_counts_twice_is_a_warning(prepared):
    """Kept or fitted, each with a warning row: an event listed twice (DCASE's scoring counts both), events past the
    first 10 s of a longer clip (the features hold those only), a clip shorter than its name says, a clip listed in
    two splits."""
    layout, out = prepared
    eval_tsv = layout.root / SPLITS["eval"].metadata
    eval_tsv.write_text(eval_tsv.read_text() + f"{EVAL_CLIP}\t2.0\t3.0\tAlarm_bell_ringing\n")  # line 4 = line 2
    write_stereo_clip(audio(layout, "validation", layout.overlap_clip), 12.0, np.random.default_rng(3))
    valid_tsv = layout.root / SPLITS["validation"].metadata
    valid_tsv.write_text(valid_tsv.read_text() + f"{layout.overlap_clip}\t10.5\t11.5\tDog\n"
                                                 f"{layout.overlap_clip}\t9.0\t11.0\tCat\n")  # lines 7, 8
    short_wav(audio(layout, "weak", "Ybbbbbbbbbbb_30.000_40.000.wav"), 6.0)
    unlabeled_tsv = layout.root / SPLITS["unlabeled"].metadata
    unlabeled_tsv.write_text(unlabeled_tsv.read_text() + f"{EVAL_CLIP}\n")  # line 4
    shutil.copy(audio(layout, "eval", EVAL_CLIP), audio(layout, "unlabeled", EVAL_CLIP))
    result = run("prepare-desed", "--root", layout.root, "--out", out)
    assert result.exit_code == 0, result.output
    assert "5 warnings (events clipped, dropped or listed twice, clips shorter than named or in two splits" in \
        " ".join(result.output.split())
    warnings = pd.read_csv(out / "label_warnings.tsv", sep="\t", keep_default_na=False)
    assert list(zip(warnings["metadata"], warnings["line"], warnings["action"], strict=True)) == [
        ("metadata/train/weak.tsv", 3, "kept: 6.000 s of audio where its name says 10 s (cut short?)"),
        ("metadata/eval/public.tsv", 2, "kept: listed in unlabeled too"),
        ("metadata/validation/validation.tsv", 7, "dropped: starts at or after the first 10 s"),
        ("metadata/validation/validation.tsv", 8, "offset clipped to 10 (the first 10 s)"),
        ("metadata/eval/public.tsv", 4, "listed twice: the same event as line 2 (F1 counts both, PSDS merges them)"),
    ]
    alarms = load_events(out, "eval").query("event_label == 'Alarm_bell_ringing'")
    assert list(alarms["onset"]) == [2.0, 2.0]
    cats = load_events(out, "validation").query("filename == @layout.overlap_clip and event_label == 'Cat'")
    assert list(zip(cats["onset"], cats["offset"], strict=True)) == [(9.0, 10.0)]
    assert "Dog" not in set(load_events(out, "validation").query("onset > 10")["event_label"])


@pytest.mark.parametrize(("split", "row", "expected"), [
    ("weak", "Yaaaaaaaaaaa_0.000_10.000.wav\tDog\n", "Yaaaaaaaaaaa_0.000_10.000.wav is listed again, with other "
     "labels than on line 2 (Dog against Dog,Speech): keep one row"),
    ("eval", f"{EVAL_CLIP} 4.0 5.0 Dog\n", "one field where the header has 4: the row's fields are separated by "
     "spaces, not tabs"),
    ("weak", "Ybbbbbbbbbbb_30.000_40.000.wav Cat\n", "one field where the header has 2: the row's fields are separated "
     "by spaces, not tabs"),
    ("eval", f"{EVAL_CLIP} \t4.0\t5.0\tDog\n", f"the filename '{EVAL_CLIP} ' begins or ends with a space"),
    ("eval", f"sub/{EVAL_CLIP}\t4.0\t5.0\tDog\n", f"the filename 'sub/{EVAL_CLIP}' holds a path: list the file's "
     "name alone, with the file in the split's audio folder"),
    ("eval", f"{EVAL_CLIP}\t4.0\t5.0\t\n", "an empty event label (an event needs one of: Alarm_bell_ringing, "),
    ("weak", "Ybbbbbbbbbbb_30.000_40.000.wav\tCat,,Dog\n", "an empty event label"),
])
def test_rows_that_would_be_misread_are_refused_naming_the_line(prepared, split, row, expected):
    layout, out = prepared
    before = checksums(out)
    tsv = layout.root / SPLITS[split].metadata
    n = len(tsv.read_text().splitlines()) + 1
    tsv.write_text(tsv.read_text() + row)
    one_line_error(run("prepare-desed", "--root", layout.root, "--out", out), f"{tsv}:{n}: {expected}")
    assert checksums(out) == before


def test_a_clip_listed_twice_with_the_same_labels_is_one_clip_with_a_warning(prepared):
    layout, out = prepared
    tsv = layout.root / SPLITS["weak"].metadata
    tsv.write_text(tsv.read_text() + "Yaaaaaaaaaaa_0.000_10.000.wav\tSpeech,Dog\n")
    unlabeled = layout.root / SPLITS["unlabeled"].metadata
    unlabeled.write_text(unlabeled.read_text() + "Ymissingmiss_0.000_10.000.wav\n")
    result = run("prepare-desed", "--root", layout.root, "--out", out)
    assert result.exit_code == 0, result.output
    weak = pd.read_csv(out / "manifest" / "weak.tsv", sep="\t")
    assert len(weak) == 2 and list(weak["event_labels"]) == ["Dog,Speech", "Cat"]
    warnings = pd.read_csv(out / "label_warnings.tsv", sep="\t", keep_default_na=False)
    assert list(zip(warnings["metadata"], warnings["line"], warnings["filename"], warnings["action"], strict=True)) == [
        ("metadata/train/weak.tsv", 4, "Yaaaaaaaaaaa_0.000_10.000.wav", "kept once: listed on line 2 too"),
        ("metadata/train/unlabel_in_domain.tsv", 4, "Ymissingmiss_0.000_10.000.wav", "kept once: listed on line 3 too"),
    ]


def test_a_weak_clip_without_a_label_is_kept_with_a_warning(prepared):
    layout, out = prepared
    tsv = layout.root / SPLITS["weak"].metadata
    tsv.write_text(tsv.read_text().replace("\tCat\n", "\t\n"))
    result = run("prepare-desed", "--root", layout.root, "--out", out)
    assert result.exit_code == 0 and "1 warning" in result.output, result.output
    weak = pd.read_csv(out / "manifest" / "weak.tsv", sep="\t", keep_default_na=False)
    assert list(weak["event_labels"]) == ["Dog,Speech", ""]
    warnings = pd.read_csv(out / "label_warnings.tsv", sep="\t", keep_default_na=False)
    [(line, action)] = zip(warnings["line"], warnings["action"], strict=True)
    assert line == 3 and action.startswith("kept with no label"), action


def test_a_manifest_edited_by_hand_is_refused_by_extract_and_made_again_by_prepare(prepared, tmp_path):
    """A label fixed in the manifest, not in DESED: extract-mels would have built a store of labels that are not
    the tree's; prepare-desed said "already up to date" (it checked only that its files were there)."""
    layout, out = prepared
    events = out / "manifest" / "eval_events.tsv"
    written = events.read_text()
    events.write_text("".join(line for line in written.splitlines(keepends=True) if "Alarm_bell_ringing" not in line))
    before = checksums(out)
    one_line_error(run("extract-mels", "--data", out, "--out", tmp_path / "features"), f"{events} was edited since "
                   "`sedaug prepare-desed` wrote it", "run `sedaug prepare-desed")
    assert checksums(out) == before and not (tmp_path / "features").exists()
    result = run("prepare-desed", "--root", layout.root, "--out", out)
    assert result.exit_code == 0 and "written again (manifest/eval_events.tsv had been edited by hand" in \
        " ".join(result.output.split()), result.output
    assert events.read_text() == written
    again = run("prepare-desed", "--root", layout.root, "--out", out)
    assert "already up to date in" in again.output and "by hand" not in again.output, again.output


def test_prepare_desed_refuses_an_out_in_a_feature_store_a_run_or_a_desed_tree(prepared, tiny_features, tmp_path):
    layout, _ = prepared
    run_dir = tmp_path / "runs" / "none" / "seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text("name: none\n")
    audio_dir = layout.root / SPLITS["eval"].audio_dir
    for out, held in ((tiny_features, f"the feature store {tiny_features}"), (run_dir, f"run {run_dir}'s own files"),
                      (audio_dir, f"the DESED tree {layout.root}")):
        before = checksums(out)
        for args in (["--root", layout.root], ["--synthetic", "--size", "tiny"]):
            one_line_error(run("prepare-desed", *args, "--out", out), f"--out {out} is in {held}")
        assert checksums(out) == before


def test_negative_seed(tmp_path):
    one_line_error(run("prepare-desed", "--synthetic", "--seed", "-1", "--out", tmp_path / "desed"), "--seed -1")
    assert not (tmp_path / "desed").exists()


def test_synthetic_options_with_root_are_refused_not_ignored(tmp_path):
    result = run("prepare-desed", "--root", tmp_path, "--size", "tiny", "--seed", "3", "--out", tmp_path / "desed")
    one_line_error(result, "--size, --seed: only for the synthetic DESED")
    assert not (tmp_path / "desed").exists()


def test_download_help_names_the_extra():
    result = run("prepare-desed", "--help")
    assert result.exit_code == 0 and "sedaug[download]" in " ".join(result.output.split())


def test_atomic_dir_has_the_users_permissions(tmp_path):
    """A folder filled aside and renamed into place keeps the permissions of an ordinary mkdir (not 0700)."""
    reference = tmp_path / "plain"
    reference.mkdir()
    with atomic_dir(tmp_path / "scores") as tmp:
        (tmp / "a.tsv").write_text("x\n")
    assert (tmp_path / "scores").stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "scores"]


def test_atomic_dir_stopped_between_its_renames_keeps_the_old_folder(tmp_path, monkeypatch):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text("old")
    rename = Path.rename

    def interrupted_rename(self, target):
        if self.name.startswith(".eval.tmp"):  # the new folder into place: a Ctrl-C lands just before it
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "eval") as tmp:
        (tmp / "results.json").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]
    assert (tmp_path / "eval" / "results.json").read_text() == "old"


def test_what_a_user_put_beside_an_evaluation_comes_along_even_where_it_cannot_be_linked(tmp_path, monkeypatch):
    from sedaug.evaluation.results import _keep_the_rest

    old, new = tmp_path / "eval", tmp_path / ".eval.tmp1"
    (old / "figs").mkdir(parents=True)
    (old / "notes.md").write_text("mine")
    (old / "figs" / "f.pdf").write_bytes(b"%PDF")
    (old / "results.json").write_text("old")  # the evaluation's own: the new one's stays
    (old / ".notes").write_text("hidden, mine too")  # was left behind
    (old / ".results.tmp99.json").write_text("a killed evaluate's temporary: not carried")
    new.mkdir()
    (new / "results.json").write_text("new")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")  # another user's files, protected_hardlinks

    monkeypatch.setattr("os.link", refused)
    _keep_the_rest(old, new)
    assert (new / "notes.md").read_text() == "mine" and (new / "figs" / "f.pdf").read_bytes() == b"%PDF"
    assert (new / "results.json").read_text() == "new" and (old / "notes.md").read_text() == "mine"
    assert (new / ".notes").read_text() == "hidden, mine too" and not (new / ".results.tmp99.json").exists()


def test_the_temporaries_of_a_process_killed_a_moment_ago_are_removed(tmp_path):
    """A process killed by SIGKILL is a zombie until its parent reaps it: `extract-mels` run again at once kept the
    killed one's staging copy (a whole store's size), as if it still ran."""
    import time

    from sedaug.files import is_running, remove_stale_temporaries

    child = subprocess.Popen(["true"])  # not waited for: a zombie once it exits
    try:
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
        (tmp_path / f".staging.tmp{child.pid}").mkdir()
        assert not is_running(child.pid) and is_running(os.getppid())
        remove_stale_temporaries(tmp_path)
        assert list(tmp_path.iterdir()) == []
    finally:
        child.wait()


def test_a_read_only_folder_is_said_naming_the_file_not_its_temporary(tmp_path, monkeypatch):
    """On a read-only file system, removing a temporary that was never made fails too (EROFS, not ENOENT): that
    error, naming `.eval.tmp<pid>`, replaced the one naming the file."""
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(UserError) as err, atomic_dir(tmp_path / "eval"):
        pass
    assert str(err.value) == f"cannot write {tmp_path / 'eval'}: Read-only file system"
    with pytest.raises(UserError) as err, atomic_path(tmp_path / "t.md") as tmp:
        tmp.touch()
    assert str(err.value) == f"cannot write {tmp_path / 't.md'}: Read-only file system"


# ------------------------------------------------------------------------------------------------- extract-mels


@pytest.fixture
def extracted(prepared, tmp_path):
    layout, out = prepared
    features = tmp_path / "features"
    result = run("extract-mels", "--data", out, "--out", features, "--workers", "2")
    assert result.exit_code == 0, result.output
    return layout, out, features


@pytest.mark.parametrize("workers", ["-1", "0"])
def test_workers_must_be_positive(extracted, workers):
    _, out, features = extracted
    before = checksums(out, features)
    result = run("extract-mels", "--data", out, "--out", features, "--workers", workers)
    one_line_error(result, f"--workers {workers}")
    assert checksums(out, features) == before


def test_nan_audio_after_prepare_stops_extraction(extracted):
    """A float WAV rewritten in place after prepare-desed, holding NaN, of the same size and time (what a copy
    keeping times may do): extract-mels's own check stops it. Changed otherwise, it is refused before (below)."""
    layout, out, features = extracted
    edit_eval_tsv(layout, "Running_water", "Speech")  # the store must be rebuilt...
    victim = audio(layout, "weak", WEAK_CLIP)  # ...and a training clip (the scaler) goes bad
    float_wav(victim, 0.0)
    assert run("prepare-desed", "--root", layout.root, "--out", out).exit_code == 0
    before = checksums(out, features)
    stat = victim.stat()
    float_wav(victim, np.nan)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert victim.stat().st_size == stat.st_size
    result = run("extract-mels", "--data", out, "--out", features, "--workers", "2")
    one_line_error(result, str(victim), "non-finite")
    assert checksums(out, features) == before


def test_audio_changed_since_prepare(extracted):
    layout, out, features = extracted
    edit_eval_tsv(layout, "Running_water", "Speech")
    assert run("prepare-desed", "--root", layout.root, "--out", out).exit_code == 0
    before = checksums(out, features)
    victim = audio(layout, "eval", EVAL_CLIP)
    truncate(victim, 3.0)
    result = run("extract-mels", "--data", out, "--out", features, "--workers", "2")
    one_line_error(result, str(victim), "changed since `sedaug prepare-desed`")
    assert checksums(out, features) == before


# ------------------------------------------------------------------------------------- opening the feature store


def train_on(store: Path, tmp_path: Path, tiny_model_overrides: list[str]):
    overrides = [*tiny_model_overrides, f"data.features={store}", "data.batch_size=4", "optim.epochs=1"]
    return run("train", RECIPES / "none.yaml", "--runs", tmp_path / "runs", *[x for o in overrides for x in ("--set", o)])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("rm scaler.npz", "scaler.npz is missing"),
        ("cut scaler.npz", "scaler.npz: damaged"),
        ("cut weak/mels.npy", "weak/mels.npy: truncated or damaged"),
        ("cut synthetic_valid/mels.npy", "synthetic_valid/mels.npy: truncated or damaged"),
        ("empty weak/clips.tsv", "weak/clips.tsv: damaged"),
    ],
)
def test_damaged_store(tiny_features, tmp_path, tiny_model_overrides, damage, expected):
    store = shutil.copytree(tiny_features, tmp_path / "features")
    action, name = damage.split()
    target = store / name
    if action == "rm":
        target.unlink()
    elif action == "cut":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(b"")
    before = checksums(store)
    one_line_error(train_on(store, tmp_path, tiny_model_overrides), str(store), expected)
    assert checksums(store) == before


# ---------------------------------------------------------------------------------------------------- full disk


@dataclass
class SmallDisk:
    """A folder where writing fails once `room` bytes are used: a tmpfs filled up to `room` free bytes, or (when
    mounting is not permitted) a per-file size limit of `room` bytes on the command's process."""

    root: Path
    kind: str  # "tmpfs" or "rlimit"

    def sedaug(self, *args, room: int | None = None) -> subprocess.CompletedProcess:
        """`python -m sedaug ARGS` in a subprocess, with the disk full but for `room` bytes (None: not full)."""
        limit = None
        if room is not None and self.kind == "tmpfs":
            self._fill(room)
        elif room is not None:
            limit = room
        try:
            return subprocess.run(
                [sys.executable, "-m", "sedaug", *map(str, args)],
                capture_output=True,
                text=True,
                timeout=300,
                preexec_fn=None if limit is None else lambda: _limit_file_size(limit),
            )
        finally:
            (self.root / ".filler").unlink(missing_ok=True)

    def _fill(self, room: int) -> None:
        stat = os.statvfs(self.root)
        size = max(0, stat.f_bavail * stat.f_frsize - room)
        with open(self.root / ".filler", "wb") as f:
            while size > 0:
                chunk = min(size, 1 << 20)
                f.write(bytes(chunk))
                size -= chunk


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.fixture
def small_disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    kind = os.environ.get("SEDAUG_TEST_DISK", "tmpfs")
    mounted = False
    if kind == "tmpfs" and os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)],
                                 capture_output=True).returncode == 0
    try:
        yield SmallDisk(root, "tmpfs" if mounted else "rlimit")
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=True)


def test_full_disk_in_synthetic_generation(small_disk):
    """It was `LibsndfileError: System error.` and a traceback."""
    keep = small_disk.root / "notes.txt"
    keep.write_text("mine\n")
    before = checksums(small_disk.root)
    out = small_disk.root / "desed"
    proc = small_disk.sedaug("prepare-desed", "--synthetic", "--size", "tiny", "--out", out, room=100_000)
    one_line_error(proc, f"cannot write {out}/audio/", ".wav")
    assert checksums(small_disk.root) == before  # no half-written tree, no scratch folder


def test_full_disk_in_prepare(real_layout, small_disk):
    out = small_disk.root / "out"
    assert small_disk.sedaug("prepare-desed", "--root", real_layout.root, "--out", out).returncode == 0
    before = checksums(small_disk.root)
    edit_eval_tsv(real_layout, "Running_water", "Speech")  # the manifest must be written again
    proc = small_disk.sedaug("prepare-desed", "--root", real_layout.root, "--out", out, room=0)
    one_line_error(proc, f"cannot write {out}/")
    assert checksums(small_disk.root) == before  # the previous manifest as it was, no temporary files


def test_full_disk_in_extraction(real_layout, small_disk, tmp_path):
    """It died of SIGBUS (exit status 135) with no message, leaving a `.mels.tmp<PID>.npy` behind."""
    data, features = tmp_path / "desed", small_disk.root / "features"
    assert run("prepare-desed", "--root", real_layout.root, "--out", data).exit_code == 0
    proc = small_disk.sedaug("extract-mels", "--data", data, "--out", features, "--workers", "2", room=100_000)
    one_line_error(proc, f"cannot write {features}/", "mels.npy")
    assert checksums(small_disk.root) == {}


def test_full_disk_when_replacing_a_store(real_layout, small_disk, tmp_path):
    data, features = tmp_path / "desed", small_disk.root / "features"
    assert run("prepare-desed", "--root", real_layout.root, "--out", data).exit_code == 0
    assert small_disk.sedaug("extract-mels", "--data", data, "--out", features, "--workers", "2").returncode == 0
    before = checksums(small_disk.root)
    edit_eval_tsv(real_layout, "Running_water", "Speech")
    assert run("prepare-desed", "--root", real_layout.root, "--out", data).exit_code == 0
    proc = small_disk.sedaug("extract-mels", "--data", data, "--out", features, "--workers", "2", room=100_000)
    one_line_error(proc, f"cannot write {features}/")
    assert checksums(small_disk.root) == before  # the previous store, whole and usable
    again = small_disk.sedaug("extract-mels", "--data", data, "--out", features, "--workers", "2")
    assert again.returncode == 0, again.stderr  # with room again, the retry succeeds


def test_full_disk_in_evaluate_keeps_the_previous_evaluation(tiny_features, tiny_model_overrides, small_disk):
    """The evaluation folder is swapped in whole; and the one error line comes alone, without the pkg_resources
    deprecation warning that sed_eval's dcase_util used to print before it (issue 20)."""
    runs = small_disk.root / "runs"
    overrides = [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4", "optim.epochs=1",
                 "optim.max_steps_per_epoch=2"]
    assert run("train", RECIPES / "none.yaml", "--runs", runs, *[x for o in overrides for x in ("--set", o)],
               "--device", "cpu").exit_code == 0
    seed = runs / "none" / "seed0"
    assert run("evaluate", seed, "--device", "cpu").exit_code == 0
    before = checksums(small_disk.root)
    proc = small_disk.sedaug("evaluate", seed, "--device", "cpu", room=20_000)
    one_line_error(proc, f"cannot write {seed / 'eval'}")
    assert "pkg_resources" not in proc.stdout + proc.stderr  # rich's progress bar routes it to stdout
    assert checksums(small_disk.root) == before


def test_full_disk_while_training_is_the_checkpoints_one_line(tiny_features, tiny_model_overrides, small_disk):
    """torch.save onto a full disk raised a RuntimeError (a traceback); the pkg_resources warning of sed_eval's
    dcase_util (imported by the first validation) came before it; and the curves' own failure could hide it."""
    runs = small_disk.root / "runs"
    overrides = [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4", "optim.epochs=1",
                 "optim.max_steps_per_epoch=2"]
    proc = small_disk.sedaug("train", RECIPES / "none.yaml", "--runs", runs, "--device", "cpu",
                             *[x for o in overrides for x in ("--set", o)], room=60_000)
    checkpoints = runs / "none" / "seed0" / "checkpoints"
    one_line_error(proc, f"cannot write {checkpoints}/", ".pt: ")
    assert "pkg_resources" not in proc.stdout + proc.stderr  # rich's progress bar routes it to stdout
    assert not any(checkpoints.iterdir())  # no temporary file left


def test_a_recorded_path_is_absolute_without_dot_dot_and_with_home_expanded(tmp_path, monkeypatch):
    from sedaug.files import absolute

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    (tmp_path / "deep" / "target").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "deep" / "target")
    monkeypatch.chdir(tmp_path / "work")
    assert absolute("../data/features") == tmp_path / "data" / "features"  # not work/../data: work may go
    assert absolute("~/data") == tmp_path / "home" / "data"
    assert absolute(tmp_path / "link" / "x") == tmp_path / "link" / "x"  # a link's own name kept
    assert absolute(tmp_path / "link" / ".." / "x") == tmp_path / "deep" / "x"  # `..` as the file system reads it
    assert absolute("../link/x") == tmp_path / "link" / "x"  # after the last `..`, as written
    assert absolute("~no-such-user-here/x") == tmp_path / "work" / "~no-such-user-here" / "x"  # no traceback


def test_a_record_that_is_json_but_no_object_is_read_as_damaged(prepared):
    """prepare.json (and every JSON record sedaug reads back) holding a list: read as unreadable, as a damaged one is
    (it was an AttributeError traceback)."""
    layout, out = prepared
    record = out / "manifest" / "prepare.json"
    record.write_text("[1]\n")
    features = out.parent / "features"
    one_line_error(run("extract-mels", "--data", out, "--out", features, "--device", "cpu"),
                   f"{out / 'manifest'}: its prepare.json is unreadable or of another version of sedaug")
    assert not features.exists()
    result = run("prepare-desed", "--root", layout.root, "--out", out)
    assert result.exit_code == 0 and "already" not in result.output, result.output
    assert run("extract-mels", "--data", out, "--out", features, "--device", "cpu").exit_code == 0
