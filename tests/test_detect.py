"""`sedaug detect` (docs/detect.md): the windows and their stitching by hand, the features and the detections of
`sedaug evaluate` reproduced from the audio files, recordings of any rate, channels and length, and files that
cannot be read."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sedaug.checkpoint import load_model
from sedaug.cli import app
from sedaug.data.desed import CLASSES, EVENT_COLUMNS
from sedaug.data.grid import FRAME_SECONDS, N_OUTPUT_FRAMES, PARAMS, TIME_POOLING, real_frames
from sedaug.data.mel import PAD, resample
from sedaug.data.store import FeatureStore
from sedaug.detect import (
    HOP_FRAMES,
    HOP_OUTPUT_FRAMES,
    _hms,
    detect,
    linear_window_mels,
    load_recording,
    score_recordings,
    stitch,
    window_starts,
)
from sedaug.errors import UserError
from sedaug.evaluate import evaluate_run
from sedaug.evaluation.postprocess import as_scores
from sedaug.evaluation.predict import predict
from sedaug.recipe import load_recipe
from sedaug.train import train

RECIPES = Path(__file__).parents[1] / "recipes"
EVAL_AUDIO = Path("audio/eval/public")


# --- windows and stitching, by hand ---------------------------------------------------------------------------


def test_the_summary_names_short_audio_in_tenths_of_a_second():
    assert [_hms(s) for s in (0.069, 9.94, 59.94, 59.96, 61.4, 3725)] == [
        "0.1 s", "9.9 s", "59.9 s", "1 min 0 s", "1 min 1 s", "1 h 2 min"]


def test_windows_fall_on_the_output_grid():
    assert (HOP_FRAMES, HOP_OUTPUT_FRAMES) == (312, 78)  # half a window, in whole output frames
    assert HOP_FRAMES % TIME_POOLING == 0 and HOP_OUTPUT_FRAMES * TIME_POOLING == HOP_FRAMES
    hop = HOP_FRAMES * PARAMS.hop
    assert list(window_starts(PARAMS.clip_samples)) == [0]
    assert list(window_starts(3 * PARAMS.sample_rate)) == [0]
    assert list(window_starts(PARAMS.clip_samples + 1)) == [0, hop]
    starts = window_starts(25 * PARAMS.sample_rate)
    assert list(starts) == [k * hop for k in range(5)]  # 4 windows end at 24.9 s, the fifth covers the end
    assert starts[-1] + PARAMS.clip_samples >= 25 * PARAMS.sample_rate > starts[-2] + PARAMS.clip_samples
    # Window k's output frame i is the recording's output frame k·78 + i: same start time in seconds.
    assert starts[1] / PARAMS.sample_rate == pytest.approx(HOP_OUTPUT_FRAMES * FRAME_SECONDS)


CPU = torch.device("cpu")


def test_a_window_past_the_end_is_padded_like_a_short_clip():
    """The last window of a 25 s recording starts at 19.89 s: its 5.11 s of audio, then 0 dB frames (dcase20's
    padding, as `extract-mels` pads a short clip); the others are 10 s of the recording."""
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 25 * PARAMS.sample_rate).astype(np.float32)
    starts = window_starts(len(wave))
    mels = linear_window_mels([(wave, s) for s in starts], CPU).half().float().numpy()
    assert mels.shape == (len(starts), PARAMS.n_frames, PARAMS.n_mels)
    real = int(real_frames((len(wave) - starts[-1]) / PARAMS.sample_rate))
    assert real == (len(wave) - starts[-1]) // PARAMS.hop + 1 < PARAMS.n_frames
    assert (mels[-1, real:] == PAD).all() and (mels[-1, :real] != PAD).all()
    alone = linear_window_mels([(wave[starts[-1] :], 0)], CPU).half()[0].float().numpy()  # the tail as a clip of its own
    np.testing.assert_array_equal(mels[-1], alone)
    assert (mels[:-1] != PAD).all()


def test_stitch_averages_the_windows_covering_each_frame():
    one = np.full((1, 4, 2), 0.25, np.float32)
    assert np.array_equal(stitch(one, hop=2), one[0])
    windows = np.stack([np.full((4, 1), v, np.float32) for v in (1.0, 2.0, 4.0)])  # hop 2: frames 0..7
    assert stitch(windows, hop=2)[:, 0].tolist() == [1, 1, 1.5, 1.5, 3, 3, 4, 4]
    windows = np.stack([np.full((4, 1), v, np.float32) for v in (1.0, 4.0)])
    assert stitch(windows, hop=1)[:, 0].tolist() == [1, 2.5, 2.5, 2.5, 4]
    # The model's windows: 157 frames every 78, so window k's last frame is window k + 2's first.
    windows = np.stack([np.full((N_OUTPUT_FRAMES, 1), v, np.float32) for v in (1.0, 2.0, 4.0)])
    stitched = stitch(windows)[:, 0]
    assert len(stitched) == 2 * HOP_OUTPUT_FRAMES + N_OUTPUT_FRAMES
    assert stitched[[0, 77, 78, 155, 156, 157, 234, 235, 312]].tolist() == [1, 1, 1.5, 1.5, 7 / 3, 3, 3, 4, 4]


def test_the_stitching_benchmarks_alternatives_by_hand():
    """benchmarks/stitching.py, which measured the mean against the others (docs/detect.md): its `mean` is detect's;
    `centre` takes each frame from the window it lies farthest from an edge of; `triangle` weighs by that distance."""
    from benchmarks.stitching import stitch as stitched

    windows = np.stack([np.full((4, 1), v, np.float32) for v in (1.0, 2.0, 4.0)])  # edge distances 0, 1, 1, 0
    assert np.array_equal(stitched(windows, "mean", hop=2), stitch(windows, hop=2))
    assert stitched(windows, "centre", hop=2)[:, 0].tolist() == [1, 1, 1, 2, 2, 4, 4, 4]
    np.testing.assert_allclose(stitched(windows, "triangle", hop=2)[:, 0], [1, 1, 4 / 3, 5 / 3, 8 / 3, 10 / 3, 4, 4])


# --- a trained tiny run -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny_features, tiny_model_overrides, tmp_path_factory) -> Path:
    """The `none` recipe with the tiny CRNN, trained one epoch of two steps on the tiny store."""
    recipe = load_recipe(RECIPES / "none.yaml", [
        *tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4",
        "optim.max_steps_per_epoch=2", "optim.epochs=1",
    ])
    run_dir = tmp_path_factory.mktemp("detect") / "run"
    train(recipe, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def threshold(run, tiny_features) -> float:
    """A threshold for this run that splits its eval scores far from any of them.

    A model trained for two steps scores every frame near 0.5; at 0.5 its detections would be whole clips, or
    hang on a score a rounding away from the threshold. Midway across the widest gap between the middle 40 % of
    its (rounded) eval scores, events start and end inside the clips and a score moves by far more than its last
    digit before a detection changes.
    """
    model, recipe, _ = load_model(run, "best")
    scores = np.unique(as_scores(predict(model, FeatureStore(tiny_features).split("eval").mels, 64, "cpu")))
    middle = scores[int(0.3 * len(scores)) : int(0.7 * len(scores))]
    widest = np.argmax(np.diff(middle))
    assert middle[widest + 1] - middle[widest] > 1e-4, "no gap between the scores: the fixture is degenerate"
    return float((middle[widest] + middle[widest + 1]) / 2)


@pytest.fixture(scope="module")
def evaluated(run, threshold) -> Path:
    """`evaluate_run` on eval, with the run's recipe threshold set to `threshold`: RUN/eval/."""

    def at_threshold(run_dir, which="best", device="cpu"):
        model, recipe, state = load_model(run_dir, which, device)
        return model, recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"threshold": threshold})}), state

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sedaug.evaluate.load_model", at_threshold)
        evaluate_run(run, "eval", progress=False)
    return run / "eval"


def sorted_rows(table: pd.DataFrame) -> list[tuple]:
    return sorted(table[EVENT_COLUMNS].itertuples(index=False, name=None))


def test_features_are_the_stores(tiny_desed, tiny_features):
    """The eval clips through detect's decoding and mels are the feature store's float16 mels (batched matrix
    products may round a value or two the other way: float16's last bit at most)."""
    split = FeatureStore(tiny_features).split("eval")
    waves = [load_recording(tiny_desed / EVAL_AUDIO / f) for f in split.filenames]
    mels = linear_window_mels([(wave, 0) for wave in waves], CPU).half().numpy()
    stored = np.asarray(split.mels)
    assert mels.dtype == stored.dtype == np.float16 and mels.shape == stored.shape
    differ = mels != stored
    assert differ.mean() < 1e-4
    assert np.allclose(mels[differ].astype(np.float32), stored[differ].astype(np.float32), rtol=2**-10, atol=0)


def test_detect_on_the_eval_clips_gives_what_evaluate_wrote(run, threshold, evaluated, tiny_desed, tmp_path):
    report = detect(run, [tiny_desed / EVAL_AUDIO], tmp_path / "detections.tsv", scores_dir=tmp_path / "scores",
                    threshold=threshold, progress=False)
    assert report.failures == [] and report.n_recordings == 12
    expected = pd.read_csv(evaluated / "detections.tsv", sep="\t")
    found = pd.read_csv(tmp_path / "detections.tsv", sep="\t")
    assert list(found.columns) == EVENT_COLUMNS
    assert sorted_rows(found) == sorted_rows(expected) and report.n_events == len(expected)
    assert (found.offset - found.onset < 5).any(), "only whole-clip events: the comparison would prove little"

    score_files = sorted(p.name for p in (evaluated / "scores").iterdir())
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == score_files
    for name in score_files:
        ours = pd.read_csv(tmp_path / "scores" / name, sep="\t")
        theirs = pd.read_csv(evaluated / "scores" / name, sep="\t")
        assert list(ours.columns) == list(theirs.columns) == ["onset", "offset", *CLASSES]
        assert ours[["onset", "offset"]].equals(theirs[["onset", "offset"]])
        # The same maths; batches of other sizes may move the 6th decimal.
        assert np.abs(ours[list(CLASSES)].to_numpy() - theirs[list(CLASSES)].to_numpy()).max() <= 2.01e-6, name


def write_tone(path: Path, seconds: float, rate: int, channels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.2 * t) > 0)
    audio = tone[:, None] * np.linspace(1.0, 0.5, channels) + 0.02 * rng.standard_normal((t.size, channels))
    sf.write(path, audio, rate, subtype="VORBIS" if path.suffix == ".ogg" else "PCM_16")


def test_long_stereo_and_short_mono_recordings(run, threshold, tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    write_tone(audio / "long.wav", 25.0, 44100, 2, seed=1)
    write_tone(audio / "sub" / "short.flac", 3.0, 16000, 1, seed=2)
    report = detect(run, [audio], tmp_path / "out" / "detections.tsv", scores_dir=tmp_path / "scores",
                    plot_dir=tmp_path / "plots", threshold=threshold, progress=False)
    assert report.failures == [] and report.n_recordings == 2
    assert report.audio_seconds == pytest.approx(28.0)
    events = pd.read_csv(tmp_path / "out" / "detections.tsv", sep="\t")
    durations = {"long.wav": 25.0, "sub/short.flac": 3.0}
    assert set(events.filename) <= set(durations) and len(events) == report.n_events
    assert (events.onset >= 0).all() and (events.onset < events.offset).all()
    assert (events.offset <= events.filename.map(durations)).all()

    # Files are named as clip_id names an eval clip: without .wav; other suffixes stay (no two names collide).
    for name, seconds in (("long", 25.0), ("sub/short.flac", 3.0)):
        scores = pd.read_csv(tmp_path / "scores" / f"{name}.tsv", sep="\t")
        assert len(scores) == math.ceil(seconds / FRAME_SECONDS) and scores.offset.iloc[-1] == seconds
        assert scores.onset.iloc[0] == 0 and scores[list(CLASSES)].isin(scores[list(CLASSES)].clip(0, 1)).all().all()
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_name_the_plot_font_lacks_is_drawn_without_a_warning_per_plot(run, tmp_path, recwarn):
    write_tone(tmp_path / "音.wav", 2.0, 16000, 1, seed=5)
    report = detect(run, [tmp_path / "音.wav"], tmp_path / "d.tsv", plot_dir=tmp_path / "plots", progress=False)
    assert report.failures == [] and (tmp_path / "plots" / "音.png").is_file()
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_long_recordings_are_windows_stitched(run, tmp_path):
    """The scores of a 25 s recording are its five windows' outputs, each scored as a 10 s clip, stitched."""
    write_tone(tmp_path / "long.wav", 25.0, 44100, 2, seed=1)
    wave = load_recording(tmp_path / "long.wav")
    model, _, _ = load_model(run, "best")
    [(scores, mel)] = score_recordings(model, [wave], batch_size=2, device=CPU, keep_mels=True)
    starts = window_starts(len(wave))
    with torch.inference_mode():
        windows = [model(linear_window_mels([(wave, s)], CPU).half())[0][0].numpy() for s in starts]
    assert scores.shape == ((len(starts) - 1) * HOP_OUTPUT_FRAMES + N_OUTPUT_FRAMES, len(CLASSES))
    np.testing.assert_allclose(scores, stitch(np.stack(windows)), atol=1e-6)
    np.testing.assert_allclose(scores[:HOP_OUTPUT_FRAMES], windows[0][:HOP_OUTPUT_FRAMES], atol=1e-6)
    assert mel.shape == (len(wave) // PARAMS.hop + 1, PARAMS.n_mels)  # the plot's: the recording's frames
    first = linear_window_mels([(wave, 0)], CPU).half()[0].float().numpy()
    np.testing.assert_array_equal(mel[:HOP_FRAMES], first[:HOP_FRAMES])


def test_the_stitching_benchmark_runs_on_a_run_and_a_prepared_desed(run, tiny_desed, tmp_path):
    from benchmarks.stitching import main

    main([str(run), str(tiny_desed), "--clips", "2", "--json", str(tmp_path / "s.json")])
    figures = json.loads((tmp_path / "s.json").read_text())["figures"]
    assert list(figures) == ["mean", "triangle", "centre", "clips"]
    assert all(0 <= row["macro_f1"] <= 1 and row["events"] >= 0 for row in figures.values())


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (22050, 1), (16000, 1), (8000, 2)])
def test_recordings_are_decoded_in_chunks_as_if_whole(tmp_path, monkeypatch, rate, channels):
    """Decoded and resampled a chunk at a time (1 s here, with a second of context on either side), a recording is
    what the whole file resampled at once is, whatever frame count its header gives (a VBR MP3's may be far off); a
    NaN is placed at its time in the file, not in its chunk."""
    write_tone(tmp_path / "a.wav", 3.7, rate, channels, seed=2)
    audio, _ = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    whole = resample(torch.from_numpy(audio.mean(axis=1)), rate).numpy()
    for seconds in (3.7, 3.0, 2.0):  # and a length of whole chunks, with or without the last one's context
        write_tone(tmp_path / "b.wav", seconds, rate, channels, seed=2)
        b, _ = sf.read(tmp_path / "b.wav", dtype="float32", always_2d=True)
        np.testing.assert_allclose(load_recording(tmp_path / "b.wav", chunk_seconds=1),
                                   resample(torch.from_numpy(b.mean(axis=1)), rate).numpy(), rtol=0, atol=1e-6)
    with monkeypatch.context() as patch:
        patch.setattr(sf.SoundFile, "frames", property(lambda self: 100 * rate))  # a header's count, 27x too many
        chunked = load_recording(tmp_path / "a.wav", chunk_seconds=1)
    assert chunked.shape == whole.shape == (math.ceil(3.7 * PARAMS.sample_rate),)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    audio[int(2.5 * rate)] = np.nan
    sf.write(tmp_path / "nan.wav", audio, rate, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"^non-finite audio samples \(the first at 2\.500 s\)$"):
        load_recording(tmp_path / "nan.wav", chunk_seconds=1)


def test_unreadable_files_are_reported_and_the_others_scored(run, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "a.wav", 4.0, 16000, 1, seed=3)
    write_tone(audio / "c.ogg", 12.0, 22050, 1, seed=4)
    (audio / "b.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEfmt " + bytes(range(200)))  # a corrupt header
    sf.write(audio / "d.wav", np.zeros((0, 2)), 44100)  # a valid file without a sample
    nan = np.zeros(16000)
    nan[8000] = np.nan
    sf.write(audio / "e.wav", nan, 16000, subtype="FLOAT")
    write_tone(tmp_path / "long.wav", 10.0, 16000, 1, seed=6)
    (audio / "f.wav").write_bytes((tmp_path / "long.wav").read_bytes()[:3000])  # its header says 10 s: 0.09 s left
    (audio / "g.wav").write_bytes(b"")
    (audio / "notes.txt").write_text("not audio, not searched")
    (tmp_path / "other").mkdir()
    write_tone(tmp_path / "other" / "a.wav", 4.0, 16000, 1, seed=7)
    errors = []
    report = detect(run, [audio, tmp_path / "missing.wav", audio / "a.wav", tmp_path / "other" / "a.wav"],
                    tmp_path / "detections.tsv", progress=False,
                    on_error=lambda path, reason: errors.append((path, reason)))
    assert report.n_recordings == 2 and report.failures == errors  # audio/a.wav given twice: scored once
    failed = [path for path, _ in errors]
    assert failed == [tmp_path / "missing.wav", tmp_path / "other" / "a.wav", audio / "b.wav", audio / "d.wav",
                      audio / "e.wav", audio / "f.wav", audio / "g.wav"]
    assert all(reason and "\n" not in reason for _, reason in errors)
    reasons = [reason for _, reason in errors]
    assert "no such file" in reasons[0] and "same name a.wav" in reasons[1] and "too short" in reasons[3]
    assert "non-finite audio samples (the first at 0.500 s)" in reasons[4]
    assert "truncated: its header announces 320,000 bytes of samples, the file holds 2,956" in reasons[5]
    assert reasons[6] == "an empty file"
    assert "7 failed" in report.summary() and "\n" not in report.summary()
    detections = pd.read_csv(tmp_path / "detections.tsv", sep="\t")
    assert list(detections.columns) == EVENT_COLUMNS and set(detections.filename) <= {"a.wav", "c.ogg"}


def test_a_name_in_another_encoding_is_that_files_failure_and_the_others_are_scored(run, tmp_path):
    write_tone(tmp_path / "a.wav", 2.0, 16000, 1, seed=3)
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.wav")  # bytes a UTF-8 locale does not decode (soundfile raised)
    try:
        latin1.write_bytes((tmp_path / "a.wav").read_bytes())
    except OSError:  # APFS refuses a name that is not UTF-8
        pytest.skip("this file system takes UTF-8 names only")
    errors = []
    report = detect(run, [tmp_path], tmp_path / "d.tsv", progress=False, on_error=lambda *e: errors.append(e))
    assert report.n_recordings == 1 and errors == [(latin1, "its name is not UTF-8 text (in this locale): rename it")]


def test_a_file_given_twice_is_scored_once_under_its_first_name(tmp_path):
    from sedaug.detect import find_recordings

    (tmp_path / "d" / "sub").mkdir(parents=True)
    for path in (tmp_path / "d" / "a.wav", tmp_path / "d" / "sub" / "b.wav"):
        write_tone(path, 1.0, 16000, 1, seed=1)
    failed = []
    found = find_recordings([tmp_path / "d", tmp_path / "d" / "sub" / "b.wav", tmp_path / "d" / "sub"],
                            lambda path, reason: failed.append(reason))
    assert [r.name for r in found] == ["a.wav", "sub/b.wav"] and failed == []


def test_user_errors(run, tmp_path):
    write_tone(tmp_path / "a.wav", 2.0, 16000, 1, seed=5)
    with pytest.raises(UserError, match="threshold"):
        detect(run, [tmp_path / "a.wav"], tmp_path / "d.tsv", threshold=1.5, progress=False)
    with pytest.raises(UserError, match="not found"):
        detect(tmp_path / "nowhere", [tmp_path / "a.wav"], tmp_path / "d.tsv", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        detect(run, [tmp_path / "empty"], tmp_path / "d.tsv", progress=False)


def test_outputs_that_detect_did_not_write_are_refused_and_left_as_they_were(run, tmp_path, tiny_features,
                                                                           tiny_desed):
    write_tone(tmp_path / "a.wav", 2.0, 16000, 1, seed=5)
    (tmp_path / "notes.tsv").write_text("my\tnotes\n")
    truth, labels = tiny_features / "eval" / "events.tsv", next((tiny_desed / "metadata").rglob("*.tsv"))
    kept = {path: path.read_bytes() for path in (tmp_path / "a.wav", tmp_path / "notes.tsv", run / "recipe.yaml",
                                                 run / "checkpoints" / "best.pt", truth, labels)}
    # Ground truth and DESED labels have a detections TSV's header: refused as a store's and a DESED's files, the
    # user's own DESED tree's too.
    real = tmp_path / "DESED"
    (real / "audio" / "eval" / "public").mkdir(parents=True)
    (real / "metadata" / "eval").mkdir(parents=True)
    shutil.copy(labels, real / "metadata" / "eval" / "public.tsv")
    for out, held in ((truth, f"the feature store {tiny_features}"), (labels, f"the prepared DESED {tiny_desed}"),
                      (real / "metadata" / "eval" / "public.tsv", f"the DESED tree {real}")):
        with pytest.raises(UserError, match=f"--out {out} is in {held}, which detect would overwrite"):
            detect(run, [tmp_path / "a.wav"], out, progress=False)
    from sedaug.rundir import sedaug_data_holding

    assert sedaug_data_holding(real / "experiments" / "d.tsv") is None  # beside a DESED's audio/ and metadata/: fine
    # Its own input, a file of the user's, a ground truth copied out of DESED (a detections TSV's header)
    shutil.copy(truth, tmp_path / "ground_truth.tsv")
    kept[tmp_path / "ground_truth.tsv"] = truth.read_bytes()
    for out in (tmp_path / "a.wav", tmp_path / "notes.tsv", tmp_path / "ground_truth.tsv"):
        with pytest.raises(UserError, match=f"--out {out} exists and is not a detections TSV that detect wrote"):
            detect(run, [tmp_path / "a.wav"], out, progress=False)
    for option, path in (("out", run / "recipe.yaml"), ("out", run / "checkpoints" / "best.pt"),
                         ("scores_dir", run / "eval" / "scores"), ("plot_dir", run)):
        out = path if option == "out" else tmp_path / "d.tsv"
        extra = {} if option == "out" else {option: path}
        with pytest.raises(UserError, match=f"is in run {run}'s own files"):
            detect(run, [tmp_path / "a.wav"], out, progress=False, **extra)
    assert {path: path.read_bytes() for path in kept} == kept
    # Its own output is overwritten by the next detect; an empty file holds nothing to lose.
    (tmp_path / "d.tsv").touch()
    for _ in range(2):
        assert detect(run, [tmp_path / "a.wav"], tmp_path / "d.tsv", progress=False).n_recordings == 1
    with (tmp_path / "d.tsv").open("a") as f:  # corrected by hand: the user's now
        f.write("a.wav\t0.0\t1.0\tDog\n")
    with pytest.raises(UserError, match="exists and is not a detections TSV that detect wrote"):
        detect(run, [tmp_path / "a.wav"], tmp_path / "d.tsv", progress=False)


@pytest.mark.parametrize("killed_at", ["output", "final mark"])
def test_detect_killed_between_its_mark_and_its_output_takes_either_for_its_own(run, tmp_path, monkeypatch,
                                                                              killed_at):
    """The mark names the new output's hash, beside the old one's, before the output is replaced: killed before
    the output is written or before the mark is cut to the new hash, the next detect replaces the output."""
    import sedaug.detect as detect_module

    write_tone(tmp_path / "a.wav", 2.0, 16000, 1, seed=5)
    out, mark = tmp_path / "d.tsv", tmp_path / ".d.tsv.detect"
    detect(run, [tmp_path / "a.wav"], out, progress=False)
    before = out.read_bytes()
    marks_written = 0

    def killed(write):
        def written(path, content):
            nonlocal marks_written
            marks_written += path == mark
            if killed_at == "output" and path == out or killed_at == "final mark" and marks_written == 2:
                raise KeyboardInterrupt
            write(path, content)
        return written

    with monkeypatch.context() as patch:
        for name in ("write_text", "write_bytes"):
            patch.setattr(detect_module, name, killed(getattr(detect_module, name)))
        with pytest.raises(KeyboardInterrupt):
            detect(run, [tmp_path / "a.wav"], out, threshold=0.01, progress=False)
    assert (out.read_bytes() == before) == (killed_at == "output")
    assert len(mark.read_text().split()) == 2
    assert detect(run, [tmp_path / "a.wav"], out, threshold=0.02, progress=False).n_recordings == 1
    assert out.read_bytes() != before
    assert mark.read_text().split() == [hashlib.sha256(out.read_bytes()).hexdigest()]


def test_score_files_and_plots_replace_only_detects_own(run, tmp_path):
    """An annotation rec.tsv and a picture rec.png beside rec.wav are not detect's: --scores and --plot into that
    folder are refused before anything is written; detect's own files are replaced by the next detect."""
    write_tone(tmp_path / "rec.wav", 2.0, 16000, 1, seed=5)
    (tmp_path / "rec.tsv").write_text("onset\toffset\tevent_label\n0.5\t1.0\tDog\n")
    (tmp_path / "rec.png").write_bytes(b"\x89PNG\r\n\x1a\n my photo")
    kept = {path: path.read_bytes() for path in tmp_path.iterdir()}
    for option in ("scores_dir", "plot_dir"):
        with pytest.raises(UserError, match=r"(--scores|--plot): .*rec\.(tsv|png) exists and is not .*which detect "
                                            r"would replace with rec\.wav's"):
            detect(run, [tmp_path / "rec.wav"], tmp_path / "d.tsv", progress=False, **{option: tmp_path})
    with pytest.raises(UserError, match=r"--out .*rec\.tsv is also rec\.wav's file in --scores"):
        detect(run, [tmp_path / "rec.wav"], tmp_path / "s" / "rec.tsv", progress=False, scores_dir=tmp_path / "s")
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == kept  # nothing written
    (tmp_path / "rec.tsv").unlink()
    (tmp_path / "rec.png").unlink()
    for _ in range(2):  # the second detect replaces the first one's score file and plot
        detect(run, [tmp_path / "rec.wav"], tmp_path / "d.tsv", progress=False, scores_dir=tmp_path,
               plot_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"rec.wav", "d.tsv", ".d.tsv.detect", "rec.tsv", "rec.png"}


def test_a_detect_stopped_or_failing_midway_leaves_no_mix_of_two_models_files(run, tmp_path, monkeypatch):
    """Ctrl-C midway used to leave --scores and --plot holding the new model's files for the recordings done and the
    old one's for the others (beside the old --out); a recording that failed kept an earlier model's score file."""
    import sedaug.detect

    audio = tmp_path / "audio"
    audio.mkdir()
    for seed in range(3):
        write_tone(audio / f"rec{seed}.wav", 2.0, 16000, 1, seed=seed)
    out, scores, plots = tmp_path / "d.tsv", tmp_path / "scores", tmp_path / "plots"
    detect(run, [audio], out, scores_dir=scores, plot_dir=plots, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and audio not in p.parents}
    drawn = []

    def plot_then_ctrl_c(*args, **kwargs):
        if drawn:
            raise KeyboardInterrupt
        drawn.append(sedaug.detect.plot_detections.__wrapped__(*args, **kwargs))

    plot_then_ctrl_c.__wrapped__ = sedaug.detect.plot_detections
    monkeypatch.setattr(sedaug.detect, "plot_detections", plot_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):  # another threshold: other detections and plots
        detect(run, [audio], out, scores_dir=scores, plot_dir=plots, progress=False, threshold=0.2)
    monkeypatch.undo()
    assert drawn and {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and audio not in p.parents} == \
        before  # each file as it was, and no staging folder left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.tsv.detect", "audio", "d.tsv", "plots", "scores"]
    # A recording that fails this time keeps no score file or plot of the earlier model.
    (audio / "rec1.wav").write_bytes(b"RIFF not a wav")
    report = detect(run, [audio], out, scores_dir=scores, plot_dir=plots, progress=False, threshold=0.2)
    assert [p.name for p, _ in report.failures] == ["rec1.wav"]
    assert sorted(p.name for p in scores.iterdir()) == ["rec0.tsv", "rec2.tsv"]
    assert sorted(p.name for p in plots.iterdir()) == ["rec0.png", "rec2.png"]
    with pytest.raises(UserError, match=r"--out .*new is also the --scores folder: give each its own name"):
        detect(run, [audio], tmp_path / "new", scores_dir=tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()  # it was made (the folder) before --out failed on it


def test_an_ensembles_folder_is_no_model_to_detect_with(run, tmp_path):
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    (ensemble / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("name: none", "name: none_ensemble"))
    write_tone(tmp_path / "a.wav", 2.0, 16000, 1, seed=5)
    with pytest.raises(UserError, match="an ensemble's folder, with scores but no model of its own"):
        detect(ensemble, [tmp_path / "a.wav"], tmp_path / "d.tsv", progress=False)


COMMANDS = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}


@pytest.mark.skipif("detect" not in COMMANDS, reason="`sedaug detect` is not wired into sedaug/cli.py yet")
def test_cli_reports_each_unreadable_file_and_exits_1(run, tmp_path):
    write_tone(tmp_path / "good.wav", 12.0, 44100, 2, seed=6)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    result = CliRunner().invoke(app, ["detect", str(run), str(tmp_path), "--out", str(tmp_path / "d.tsv"),
                                      "--plot", str(tmp_path / "plots"), "--checkpoint", "last"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert f"error: {tmp_path / 'bad.wav'}: " in result.output
    assert lines[-1].startswith("detected ") and "1 recording " in lines[-1] and "1 failed" in lines[-1]
    assert "Traceback" not in result.output and (tmp_path / "plots" / "good.png").is_file()
    assert set(pd.read_csv(tmp_path / "d.tsv", sep="\t").filename) <= {"good.wav"}
    result = CliRunner().invoke(app, ["detect", str(run), str(tmp_path / "good.wav"), "--out", f"{tmp_path}/new/"])
    assert result.exit_code == 1 and result.output == f"error: --out {tmp_path}/new/ is a folder: give a file name\n"
    assert not (tmp_path / "new").exists()


def test_a_full_disk_at_detects_mark_names_the_detections_file(tmp_path, monkeypatch):
    """detect's mark (`.<out>.detect`, hidden) was the file named by a full disk's error, not the --out given."""
    import sedaug.detect
    from sedaug.files import write_text

    def full(path, text):
        if path.name.endswith(".detect"):
            raise UserError(f"cannot write {path}: No space left on device")  # as files.writing says it
        write_text(path, text)

    monkeypatch.setattr(sedaug.detect, "write_text", full)
    out = tmp_path / "d.tsv"
    events = pd.DataFrame([("a.wav", 0.0, 1.0, "Dog")], columns=EVENT_COLUMNS)
    with pytest.raises(UserError, match=f"^cannot write {out}: No space left on device$"):
        sedaug.detect._write_detections(out, events)
    assert not out.exists()
