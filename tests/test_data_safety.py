"""Nothing a user already has is thrown away (issue 20): a run without last.pt, an ensemble's --out, detect's --out
and its file names, checkpoints that load but do not fit, non-finite values, and the smaller one-line promises.
Each refusal is exit status != 0, one `error:` line naming the file (and key), no traceback, and every file that
was there before is byte-identical, with no temporary file left."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import checksums, one_line_error, run

from sedaug.detect import _mark, file_stems
from sedaug.errors import UserError
from sedaug.evaluation.results import read_results

REPO = Path(__file__).parents[1]


def train_args(runs: Path, features: Path, overrides: list[str], *extra: str, epochs: int = 1) -> list[str]:
    args = ["train", str(REPO / "recipes" / "none.yaml"), "--runs", str(runs), "--device", "cpu",
            "--set", f"optim.epochs={epochs}"]
    for item in [*overrides, f"data.features={features}", "data.batch_size=4", "optim.max_steps_per_epoch=2",
                 "optim.rampup_epochs=0", *extra]:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def _seeds(tiny_features, tiny_model_overrides, tmp_path_factory) -> Path:
    """runs/none/seed0 and seed1, one epoch each of the tiny model."""
    runs = tmp_path_factory.mktemp("safety") / "runs"
    for seed in (0, 1):
        result = run(*train_args(runs, tiny_features, tiny_model_overrides, f"seed={seed}"))
        assert result.exit_code == 0, result.output
    return runs


@pytest.fixture
def runs(_seeds, tmp_path) -> Path:
    return shutil.copytree(_seeds, tmp_path / "runs")


@pytest.fixture
def train(tiny_features, tiny_model_overrides, runs):
    def train(*args: str, epochs: int = 1):
        return run(*train_args(runs, tiny_features, tiny_model_overrides, epochs=epochs), *args)

    return train


def tone(path: Path, seconds: float = 2.0, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype=subtype)
    return path


# ----------------------------------------------------------------------------- 1. --resume never discards a run


@pytest.mark.parametrize("left", ["best.pt", "metrics", "eval"])
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
def test_a_run_without_last_pt_is_never_restarted_from_scratch(train, runs, left, resume):
    """It was: best.pt deleted, metrics.jsonl emptied, eval/ left behind for a model that no longer exists."""
    seed = runs / "none" / "seed0"
    (seed / "checkpoints" / "last.pt").unlink()
    if left != "best.pt":
        (seed / "checkpoints" / "best.pt").unlink()
    if left != "metrics":
        (seed / "metrics.jsonl").write_text("")
    if left == "eval":
        (seed / "eval").mkdir()
        (seed / "eval" / "results.json").write_text('{"macro": 0.5}')
    (seed / ".lock").write_text("12345\n")  # the lock file the run's own training left (another process's pid)
    before = checksums(runs)
    expected = {"best.pt": "checkpoints/best.pt", "metrics": "1 epoch in metrics.jsonl", "eval": "eval/"}[left]
    line = one_line_error(train(*["--resume"] * resume, epochs=2), str(seed), "no checkpoints/last.pt", expected,
                          "nothing was changed", "train into another --runs or seed")
    assert ("copy best.pt to last.pt" in line) == (left == "best.pt")  # advice that can be followed only
    assert checksums(runs) == before


def test_copying_best_pt_to_last_pt_resumes_as_the_refusal_says(train, runs):
    seed = runs / "none" / "seed0"
    (seed / "checkpoints" / "last.pt").unlink()
    shutil.copy(seed / "checkpoints" / "best.pt", seed / "checkpoints" / "last.pt")
    result = train("--resume", epochs=2)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["epoch"] for line in (seed / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("line", ["garbage", "[1, 2]", '{"epoch": "1"}'], ids=["not-json", "list", "epoch-text"])
def test_resume_refuses_a_damaged_metrics_jsonl(train, runs, line):
    """It was a JSONDecodeError (or KeyError, TypeError) traceback."""
    metrics = runs / "none" / "seed0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + line + "\n")
    before = checksums(runs)
    one_line_error(train("--resume", epochs=2), f"{metrics} line 2", "not a metrics row")
    assert checksums(runs) == before


# ----------------------------------------------------------------------- 2. an ensemble never overwrites a run


def _other_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "baseline.yaml", folder / "recipe.yaml")
    (folder / "eval").mkdir()
    (folder / "eval" / "results.json").write_text('{"macro": 0.4}')
    return folder


@pytest.mark.parametrize("target", ["member", "other-run", "other-recipe", "not-a-recipe", "other-files", "file"])
def test_an_ensemble_out_that_holds_something_else_is_refused(runs, target):
    seeds = [runs / "none" / "seed0", runs / "none" / "seed1"]
    out = {"member": seeds[1], "other-run": runs / "other" / "seed0", "other-recipe": runs / "baseline" / "seed0",
           "not-a-recipe": runs / "junk", "other-files": runs / "notes", "file": runs / "notes.txt"}[target]
    if target == "other-run":
        shutil.copytree(seeds[0], out)
        (out / "recipe.yaml").write_text((out / "recipe.yaml").read_text().replace("name: none", "name: other"))
    elif target == "other-recipe":
        _other_recipe(out)
    elif target == "not-a-recipe":
        out.mkdir()
        (out / "recipe.yaml").write_bytes(b"\x89PNG\r\n")
    elif target == "other-files":
        out.mkdir()
        (out / "paper.tex").write_text("mine")
    elif target == "file":
        out.write_text("mine")
    before = checksums(runs)
    expected = {"member": "one of the ensemble's runs", "other-run": "holds a trained run",
                "other-recipe": "holds recipe baseline", "not-a-recipe": "not sedaug's",
                "other-files": "holds other files", "file": "is a file"}[target]
    one_line_error(run("evaluate", *seeds, "--ensemble", "--out", out, "--device", "cpu"), f"--out {out}", expected)
    assert checksums(runs) == before


def test_the_same_run_twice_is_one_member(runs):
    seed = runs / "none" / "seed0"
    before = checksums(runs)
    one_line_error(run("evaluate", seed, f"{seed}/", "--ensemble", "--device", "cpu"), "given twice", "one member")
    assert checksums(runs) == before and not (runs / "none" / "ensemble").exists()


# -------------------------------------------------------------------------- 3. detect's --out and file names


def earlier_detect(out: Path) -> None:
    """What an earlier detect left at `out`: its TSV, and the record beside it that makes it detect's to replace."""
    out.write_text("filename\tonset\toffset\tevent_label\nold.wav\t1.0\t2.0\tDog\n")
    _mark(out).write_text(hashlib.sha256(out.read_bytes()).hexdigest() + "\n")


def test_detect_keeps_the_previous_out_when_nothing_was_scored(runs, tmp_path):
    out = tmp_path / "detections.tsv"
    earlier_detect(out)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    before = out.read_bytes()
    result = run("detect", runs / "none" / "seed0", tmp_path / "bad.wav", tmp_path / "gone.wav", "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and f"{tmp_path / 'gone.wav'}: " in errors[0] and f"{tmp_path / 'bad.wav'}: " in errors[1]
    assert f"{out} was not written" in result.output
    assert out.read_bytes() == before


def test_file_names_stay_distinct_when_recordings_differ_in_case_or_extension(runs, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a.wav", "a.WAV", "a.flac", "b.wav"):
        tone(audio / name)
    result = run("detect", runs / "none" / "seed0", audio, "--out", tmp_path / "d.tsv",
                 "--scores", tmp_path / "scores", "--plot", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    # The folder's files in order: a.WAV, a.flac, a.wav (a.wav and a.WAV would be one file on a case-insensitive disk).
    stems = ["a.WAV", "a.flac", "a.wav~2", "b"]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == [f"{s}.tsv" for s in stems]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [f"{s}.png" for s in stems]


def test_file_stems_by_hand():
    assert file_stems(["a.wav", "b.flac", "sub/c.WAV"]) == {"a.wav": "a", "b.flac": "b.flac", "sub/c.WAV": "sub/c"}
    # a.wav and a.WAV both lose .wav; a.flac and a.flac.wav both come out as a.flac; A.x and a.x only differ in case.
    # Names that differ only in case get a ~2 (the folder may be on a case-insensitive file system).
    assert file_stems(["a.wav", "a.WAV", "a.flac", "a.flac.wav", "A.x", "a.x"]) == {
        "a.wav": "a.wav", "a.WAV": "a.WAV~2", "a.flac": "a.flac", "a.flac.wav": "a.flac.wav", "A.x": "A.x",
        "a.x": "a.x~2"}
    stems = file_stems(["a.wav", "a.WAV", "a.flac", "a.flac.wav", "A.x", "a.x"]).values()
    assert len({s.casefold() for s in stems}) == 6


# --------------------------------------------------------------- 4. a checkpoint that loads but does not fit


def _edit(path: Path, edit) -> None:
    content = torch.load(path, weights_only=True)
    edit(content)
    torch.save(content, path)


WEIGHT_EDITS = {
    "missing": (lambda c: c["model"].pop("strong.weight"), "model weight strong.weight is missing"),
    "extra": (lambda c: c["model"].__setitem__("extra.weight", torch.zeros(2)), "model weight extra.weight is not"),
    "shape": (lambda c: c["model"].__setitem__("strong.weight", torch.zeros(3, 3)), "strong.weight has shape (3, 3)"),
    "not-a-tensor": (lambda c: c["model"].__setitem__("strong.bias", "zeros"), "strong.bias is the text 'zeros'"),
    "other-model": (lambda c: c["recipe"]["model"].__setitem__("rnn_hidden", 16), "has shape"),
    "nan": (lambda c: c["model"]["strong.weight"].fill_(float("nan")), "strong.weight holds NaN"),
}


@pytest.mark.parametrize("edit", WEIGHT_EDITS)
@pytest.mark.parametrize("command", ["evaluate", "detect", "resume"])
def test_weights_that_do_not_fit_are_one_line(train, runs, tmp_path, edit, command):
    seed = runs / "none" / "seed0"
    target = seed / "checkpoints" / ("last.pt" if command == "resume" else "best.pt")
    change, expected = WEIGHT_EDITS[edit]
    _edit(target, change)
    out = tmp_path / "d.tsv"
    earlier_detect(out)
    before = checksums(runs, out)
    if command == "evaluate":
        result = run("evaluate", seed, "--device", "cpu")
    elif command == "detect":
        result = run("detect", seed, tone(tmp_path / "a.wav"), "--out", out, "--device", "cpu")
    else:
        result = train("--resume", epochs=2)
    if edit == "other-model":  # each compares the checkpoint's recipe with the run's first
        expected = "the recipe differs from" if command == "resume" else "is not the model of"
    one_line_error(result, str(target), expected)
    assert checksums(runs, out) == before


TRAINING_EDITS = {
    "epoch-text": (lambda c: c["state"].__setitem__("epoch", "1"), "state.epoch is the text '1'"),
    "no-global-step": (lambda c: c["state"].pop("global_step"), "state.global_step is missing"),
    "loss-sums": (lambda c: c["state"].__setitem__("loss_sums", torch.zeros(5)), "state.loss_sums is a float32"),
    "state-list": (lambda c: c.__setitem__("state", [1, 2]), "state is a list"),
    "rng-size": (lambda c: c["rng"].__setitem__("torch", torch.zeros(10, dtype=torch.uint8)), "rng.torch"),
    "rng-type": (lambda c: c["rng"].__setitem__("torch", "seed"), "rng.torch is the text"),
    "adam-shape": (lambda c: c["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(7)),
                   "optimizer.state[0].exp_avg is a float32 tensor of shape (7,)"),
    "adam-step": (lambda c: c["optimizer"]["state"][0].__setitem__("step", "one"), "optimizer.state[0].step"),
    "adam-partial": (lambda c: c["optimizer"]["state"][0].pop("exp_avg_sq"), "optimizer.state[0] lacks exp_avg_sq"),
    "adam-betas": (lambda c: c["optimizer"]["param_groups"][0].__setitem__("betas", "0.9"),
                   "optimizer.param_groups[0].betas"),
    "adam-groups": (lambda c: c["optimizer"].__setitem__("param_groups", []), "0 parameter groups"),
    "adam-orphan": (lambda c: c["optimizer"]["state"].__setitem__(999, {}), "optimizer.state[999] belongs to no"),
}


@pytest.mark.parametrize("edit", TRAINING_EDITS)
def test_a_training_state_that_does_not_fit_is_one_line(train, runs, edit):
    seed = runs / "none" / "seed0"
    target = seed / "checkpoints" / "last.pt"
    change, expected = TRAINING_EDITS[edit]
    _edit(target, change)
    before = checksums(runs)
    one_line_error(train("--resume", epochs=2), str(target), expected)
    assert checksums(runs) == before


# ------------------------------------------------------------------------- 5. non-finite values never pass


def test_samples_that_overflow_the_stft_are_refused_by_extract_mels(real_layout, tmp_path):
    """3e38 is finite: the samples passed, and the STFT put NaN into the feature store."""
    clip = real_layout.root / "audio" / "validation" / real_layout.short_clip
    audio = np.full((4 * 44100, 2), 3e38, dtype=np.float32)
    sf.write(clip, audio, 44100, subtype="FLOAT")
    assert run("prepare-desed", "--root", real_layout.root, "--out", tmp_path / "desed").exit_code == 0
    features = tmp_path / "features"
    features.mkdir()
    one_line_error(run("extract-mels", "--data", tmp_path / "desed", "--out", features, "--workers", "1"),
              str(clip), "NaN or infinite")
    assert list(features.iterdir()) == []  # nor a staged file left behind


def test_detect_reports_overflowing_and_absurd_recordings_and_scores_the_others(runs, tmp_path):
    big = tmp_path / "big.wav"
    sf.write(big, np.full(16000, 3e38, dtype=np.float32), 16000, subtype="FLOAT")
    loud = tmp_path / "loud.wav"
    sf.write(loud, 1e4 * np.sin(np.arange(16000) / 3), 16000, subtype="FLOAT")  # 80 dB above full scale
    slow = tmp_path / "slow.wav"
    sf.write(slow, np.zeros(10), 1)
    result = run("detect", runs / "none" / "seed0", big, loud, slow, tone(tmp_path / "good.wav"),
                 "--out", tmp_path / "d.tsv")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.output
    assert f"{slow}: a sample rate of 1 Hz" in errors[0]
    assert f"{big}: " in errors[1] and "NaN or infinite" in errors[1]
    assert f"{loud}: " in errors[2] and "beyond float16" in errors[2]
    assert "1 recording " in result.output and "3 failed" in result.output


@pytest.mark.parametrize("command", ["evaluate", "detect"])
def test_a_model_whose_outputs_are_not_finite_is_refused(runs, tmp_path, command):
    """Finite weights, but a scaler std of 1e-45 makes every normalized input infinite: it was a traceback inside
    sed_scores_eval (evaluate) and "0 events", exit 0 (detect)."""
    seed = runs / "none" / "seed0"
    _edit(seed / "checkpoints" / "best.pt", lambda c: c["model"]["scaler.std"].fill_(1e-45))
    out = tmp_path / "d.tsv"
    earlier_detect(out)
    before = checksums(runs, out)
    if command == "evaluate":
        result = run("evaluate", seed, "--device", "cpu")
    else:
        result = run("detect", seed, tone(tmp_path / "a.wav"), "--out", out, "--device", "cpu")
    one_line_error(result, str(seed / "checkpoints" / "best.pt"), "outputs are not finite")
    assert checksums(runs, out) == before


def test_evaluate_blames_features_that_hold_nan(runs, tiny_features, tmp_path):
    features = shutil.copytree(tiny_features, tmp_path / "features")
    mels = np.load(features / "eval" / "mels.npy", mmap_mode="r+")
    mels[3, 10, 5] = np.nan
    mels.flush()
    del mels
    seed = runs / "none" / "seed0"
    recipe = seed / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace(str(tiny_features), str(features)))
    _edit(seed / "checkpoints" / "best.pt", lambda c: c["recipe"]["data"].__setitem__("features", str(features)))
    before = checksums(runs)
    one_line_error(run("evaluate", seed, "--device", "cpu"), str(features / "eval" / "mels.npy"), "NaN or infinite",
              "re-run `sedaug extract-mels`")
    assert checksums(runs) == before


# ------------------------------------------------------------------------------------------- 8. smaller ones


def test_a_failed_checkpoint_write_is_reported_as_the_checkpoints(train, runs, monkeypatch):
    """The same full disk failed the train_curves.png of the clean-up, whose error hid the checkpoint's."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sedaug.checkpoint.torch.save", full)
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", full)
    seed = runs / "none" / "seed0"
    before = checksums(seed / "checkpoints")
    message = one_line_error(train("--resume", epochs=2), "No space left on device")
    assert "checkpoints/" in message and ".pt" in message and "train_curves" not in message
    assert checksums(seed / "checkpoints") == before


@pytest.mark.parametrize(("content", "expected"), [
    ("[1, 2]", "not a sedaug feature store record (a JSON list)"),
    ("{}", "not a sedaug feature store record (a JSON dict without params)"),
    ('{"params": 3}', "not a sedaug feature store record"),
    ("{not json", "damaged"),
    ("\x89PNG", "damaged"),
], ids=["list", "empty", "params-number", "not-json", "binary"])
def test_a_features_json_that_is_not_sedaugs_is_one_line(train, runs, tiny_features, tmp_path, content, expected):
    features = shutil.copytree(tiny_features, tmp_path / "features")
    (features / "features.json").write_text(content)
    before = checksums(features, runs)
    one_line_error(train("--set", f"data.features={features}", "--set", "seed=7"), str(features / "features.json"),
              expected)
    assert checksums(features, runs) == before


def test_a_store_folder_without_its_record_says_so(train, tiny_features, tmp_path):
    features = shutil.copytree(tiny_features, tmp_path / "features")
    (features / "features.json").unlink()
    one_line_error(train("--set", f"data.features={features}", "--set", "seed=7"), f"no feature store at {features}",
              "no features.json")


def test_what_is_wrong_with_a_run_directory_is_said(runs, tmp_path):
    """It was "RUN/checkpoints/best.pt not found: train the run first" for each of these."""
    (tmp_path / "run").write_text("not a run")
    one_line_error(run("evaluate", tmp_path / "run"), f"{tmp_path / 'run'} is a file, not a run directory")
    one_line_error(run("evaluate", runs), f"{runs} is not a run directory")
    seed = runs / "none" / "seed0"
    (seed / "checkpoints" / "best.pt").unlink()
    one_line_error(run("evaluate", seed), "best.pt not found, last.pt is there: use --checkpoint last")


@pytest.mark.parametrize(("results", "expected"), [
    ({}, "no macro"),
    ({"macro": "0.5", "psds_ct": 0.5}, 'macro is "0.5"'),
    ({"macro": True, "psds_ct": 0.5}, "macro is true"),
    ({"macro": 1e308, "psds_ct": 0.5}, "macro is 1e+308"),
    ({"macro": 0.5, "psds_ct": -0.1}, "psds_ct is -0.1"),
    ({"macro": 0.5, "psds_ct": 0.5, "psds": {"value": 1}}, 'psds is {"value": 1}'),
], ids=["empty", "string", "bool", "huge", "negative", "mapping"])
def test_results_json_values_must_be_scores(tmp_path, results, expected):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(UserError) as err:
        read_results(path, ("macro", "psds_ct"))
    assert str(path) in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)


def test_results_json_as_evaluate_writes_it_is_read(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"macro": 0.25, "psds_ct": None, "psds": 1, "n_clips": 12}))
    assert read_results(path, ("macro", "psds_ct"))["macro"] == 0.25
    path.write_text("NaN")
    with pytest.raises(UserError, match="not the results"):
        read_results(path)


def test_outputs_where_a_file_or_folder_is_the_other_kind_are_refused_before_any_work(runs, tmp_path):
    seed = runs / "none" / "seed0"
    (seed / "eval").write_text("my notes")
    before = checksums(runs)
    one_line_error(run("evaluate", seed, "--device", "cpu"), f"{seed / 'eval'} is a file")
    assert checksums(runs) == before
    one_line_error(run("detect", seed, tone(tmp_path / "a.wav"), "--out", tmp_path), f"--out {tmp_path} is a folder")
    one_line_error(run("detect", seed, tmp_path / "a.wav", "--scores", tmp_path / "a.wav"), "--scores", "is a file")
    assert checksums(runs) == before and not (tmp_path / "detections.tsv").exists()


def test_a_feature_store_inside_a_run_or_another_store_is_refused(runs, tiny_desed, tiny_features):
    """A store made inside a run goes with the run (`rm -r`, a sweep setting it aside), one inside a store is taken
    for part of it: both were accepted."""
    seed = runs / "none" / "seed0"
    before = checksums(runs, tiny_features)
    one_line_error(run("extract-mels", "--data", tiny_desed, "--out", seed / "eval" / "sub"),
                   f"--out {seed / 'eval' / 'sub'} is inside the run {seed}: give --out a new folder")
    one_line_error(run("extract-mels", "--data", tiny_desed, "--out", tiny_features / "sub"),
                   f"--out {tiny_features / 'sub'} is inside the feature store {tiny_features}: give --out a new folder")
    assert checksums(runs, tiny_features) == before and not (seed / "eval" / "sub").exists()


def test_a_mean_teacher_checkpoint_without_a_fitting_teacher_is_one_line(tiny_features, tiny_model_overrides, tmp_path):
    runs = tmp_path / "runs"
    first, resume = (train_args(runs, tiny_features, tiny_model_overrides, epochs=n) for n in (1, 2))
    first[1] = resume[1] = str(REPO / "recipes" / "baseline.yaml")
    assert run(*first).exit_code == 0
    last = runs / "baseline" / "seed0" / "checkpoints" / "last.pt"
    for edit, expected in ((lambda c: c["teacher"].pop("strong.bias"), "teacher weight strong.bias is missing"),
                           (lambda c: c.__setitem__("teacher", None), "no teacher weights")):
        _edit(last, edit)
        before = checksums(runs)
        one_line_error(run(*resume, "--resume"), str(last), expected)
        assert checksums(runs) == before


def test_evaluate_clears_what_a_killed_evaluation_left(runs):
    """An evaluation is written aside (`.eval.tmp<pid>`) and swapped in whole; one killed meanwhile leaves that."""
    seed = runs / "none" / "seed0"
    dead = 2**22 + 1  # above Linux's largest pid: no process has it
    (seed / f".eval.tmp{dead}" / "scores").mkdir(parents=True)
    result = run("evaluate", seed, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (seed / "eval" / "results.json").is_file() and not list(seed.glob(".eval.*"))
