"""The CLI as a user meets it: help everywhere, and one-line errors with exit status 1 for bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error, run

COMMANDS = ["prepare-desed", "extract-mels", "train", "evaluate", "table", "sweep", "detect"]
RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_everywhere(flag):
    result = run(flag)
    assert result.exit_code == 0 and all(c in result.output for c in COMMANDS)
    for command in COMMANDS:
        result = run(command, flag)
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_help_names_values_as_a_user_types_them(monkeypatch):
    """A flag takes no value (typer 0.29 writes `<bool>` beside it, and `--resume true` is then an error); a choice
    of splits does not wrap mid-word at 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")
    for command in COMMANDS:
        text = run(command, "--help").output
        assert [line for line in text.splitlines() if "<bool>" in line and "--help" not in line] == [], command
        assert [w for w in text.split() if w.startswith("<") and not w.endswith(">")] == [], command  # cut: <a|b|c d>
    assert "SPLIT" in run("table", "--help").output


def test_version():
    from sedaug import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.output == f"sedaug {__version__}\n"


def test_python_dash_m_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "sedaug", "--help"], capture_output=True, text=True, check=True)
    assert all(c in out.stdout for c in COMMANDS)


@pytest.mark.parametrize(("args", "message"), [
    (["train"], "error: sedaug train: Missing argument 'RECIPE.yaml'. (see sedaug train --help)"),
    (["frob"], "error: sedaug: No such command 'frob'. (see sedaug --help)"),
    (["table", "--split", "foo"], "error: sedaug table: Invalid value for '--split': 'foo' is not one of 'eval', "
                                  "'validation', 'synthetic_valid'. (see sedaug table --help)"),
    (["evaluate", "runs/x", "--bogus"], "error: sedaug evaluate: No such option: --bogus"),
    (["train", "r.yaml", "--bogus"], "error: sedaug train: No such option: --bogus (see sedaug train --help)"),
    (["train", "r.yaml", "--resum"], "error: sedaug train: No such option: --resum (did you mean --resume?) (see "),
    (["train", "r.yaml", "--set"], "error: sedaug train: Option '--set' requires an argument. (see sedaug train --help)"),
    (["extract-mels", "--out"], "error: sedaug extract-mels: Option '--out' requires an argument. (see sedaug "
                                "extract-mels --help)"),
])
def test_usage_errors_are_one_line_too(args, message):
    out = subprocess.run([sys.executable, "-m", "sedaug", *args], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(message), out.stderr


def test_an_input_that_ends_is_one_line_too(monkeypatch, capsys, tmp_path):
    from sedaug.cli import main

    def ended(*args, **kwargs):
        raise EOFError

    monkeypatch.setattr("sedaug.table.build_table", ended)
    monkeypatch.setattr(sys, "argv", ["sedaug", "table", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1 and capsys.readouterr().err == "error: aborted: the input ended\n"


def test_a_reader_gone_from_the_pipe_ends_quietly_and_another_broken_pipe_is_an_error(monkeypatch, tmp_path):
    runs = Path(__file__).parent / "fixtures" / "table" / "runs"
    for args in ("--format csv", "", "--per-class"):  # print(), and rich's own (it ended with a silent exit 1)
        piped = subprocess.run(["bash", "-c", f'"{sys.executable}" -m sedaug table "{runs}" {args} | head -c 0; '
                                'echo "${PIPESTATUS[0]}"'], capture_output=True, text=True)
        assert (piped.stdout, piped.stderr) == ("141\n", ""), args  # `| head`: nothing to tell a reader that left
    closed = subprocess.run(["bash", "-c", f'"{sys.executable}" -m sedaug table "{runs}" >&-; echo $?'],
                            capture_output=True, text=True)
    assert (closed.stdout, closed.stderr) == ("0\n", "")  # no stdout at all (`>&-`): nothing to flush at the end

    def gone(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")  # a socket's, say: stdout is fine

    monkeypatch.setattr("sedaug.table.build_table", gone)
    one_line_error(run("table", tmp_path), "error: sedaug: Broken pipe")


def test_ctrl_c_outside_training_is_one_line_with_status_130(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sedaug.evaluate.evaluate_run", interrupted)
    result = run("evaluate", tmp_path, "--device", "cpu")
    assert result.exit_code == 130
    assert result.output == "error: interrupted (sedaug writes each file whole, then renames it: nothing is half-written)\n"


def test_ctrl_c_while_the_command_loads_is_one_line_with_status_130():
    """A Ctrl-C in the first half second (importing sedaug.cli and its libraries) printed a traceback."""
    loading = ("import sys\n"
               "class Pressed:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name == 'sedaug.cli':\n"
               "            raise KeyboardInterrupt\n"
               "sys.meta_path.insert(0, Pressed())\n"
               "import runpy\n"
               "runpy.run_module('sedaug', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", loading, "table", "."], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (130, "")
    assert out.stderr == "error: interrupted (sedaug writes each file whole, then renames it: nothing is half-written)\n"


def test_ctrl_c_while_typer_parses_is_one_line_too(monkeypatch, capsys):
    """typer turns a KeyboardInterrupt outside a command's body into status 130 and says nothing."""
    import functools

    from sedaug.cli import _options, app, main

    @functools.wraps(_options)
    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(app.registered_callback, "callback", pressed)  # typer runs it before any command
    monkeypatch.setattr(sys, "argv", ["sedaug", "table", "."])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 130
    assert capsys.readouterr().err == ("error: interrupted (sedaug writes each file whole, then renames it: nothing "
                                       "is half-written)\n")


def test_recipe_with_unknown_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\noptim:\n  learning_rate: 0.1\n")
    one_line_error(run("train", recipe, "--runs", tmp_path), "optim.learning_rate", "not a key of optim")


def test_recipe_with_wrong_type_and_duplicate_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nseed: one\n")
    one_line_error(run("train", recipe), "seed: one is not an integer")
    recipe.write_text("name: x\nseed: 1\nseed: 2\n")
    one_line_error(run("train", recipe), "duplicate key 'seed'")
    one_line_error(run("train", RECIPES / "none.yaml", "--set", "optim.epochs=ten"), "optim.epochs")


def test_missing_feature_store(tmp_path):
    result = run("train", RECIPES / "none.yaml", "--runs", tmp_path, "--set", f"data.features={tmp_path / 'nowhere'}")
    one_line_error(result, "nowhere")


def test_wrong_desed_root(tmp_path):
    (tmp_path / "audio").mkdir()
    one_line_error(run("prepare-desed", "--root", tmp_path, "--out", tmp_path / "out"), "has no audio/train/weak")
    (tmp_path / "audio" / "train").mkdir()
    (tmp_path / "audio" / "train" / "weak").symlink_to(tmp_path / "unmounted" / "weak")  # a disk not mounted
    one_line_error(run("prepare-desed", "--root", tmp_path, "--out", tmp_path / "out"),
                   f"error: {tmp_path}/audio/train/weak is a link to {tmp_path}/unmounted/weak, which is not there")


def test_prepare_desed_out_a_file_is_refused_before_reading_anything(real_layout, tmp_path):
    junk = tmp_path / "junk.yaml"
    junk.write_text("mine\n")
    one_line_error(run("prepare-desed", "--root", real_layout.root, "--out", junk), f"--out {junk} is a file")
    assert junk.read_text() == "mine\n"


def test_corrupt_audio_is_named(real_layout, tmp_path):
    victim = next((real_layout.root / "audio" / "validation").glob("*.wav"))
    victim.write_bytes(b"RIFF not really a wave file")
    one_line_error(run("prepare-desed", "--root", real_layout.root, "--out", tmp_path / "out"), victim.name)


def test_incompatible_feature_store(tiny_desed, tiny_features, tmp_path):
    store = tmp_path / "features"
    shutil.copytree(tiny_features, store)
    meta = json.loads((store / "features.json").read_text())
    meta["params"]["hop_length" if "hop_length" in meta["params"] else "hop"] = 256
    (store / "features.json").write_text(json.dumps(meta))
    result = run("train", RECIPES / "none.yaml", "--runs", tmp_path / "runs", "--set", f"data.features={store}")
    one_line_error(result, "256")
    assert not (tmp_path / "runs").exists()


def test_a_store_other_than_the_one_a_run_trained_on_is_refused_unless_asked_for(tiny_features, tiny_model_overrides,
                                                                                  tmp_path):
    """A store extracted again, in place, from another DESED (or another store given) may hold the run's training
    clips among those it scores: refused in one line, nothing written; --other-store scores on it."""
    store = tmp_path / "features"
    shutil.copytree(tiny_features, store)
    recipe = Path(__file__).parents[1] / "recipes" / "none.yaml"
    sets = [*tiny_model_overrides, f"data.features={store}", "optim.epochs=1", "optim.max_steps_per_epoch=1"]
    runs = tmp_path / "runs"
    assert run("train", recipe, "--runs", runs, "--device", "cpu", *(f"--set={s}" for s in sets)).exit_code == 0
    seed0 = runs / "none" / "seed0"
    assert run("evaluate", seed0, "--device", "cpu").exit_code == 0
    scored = (seed0 / "eval" / "results.json").read_bytes()
    record = json.loads((store / "features.json").read_text())
    record["manifest_hash"] = record["features_hash"] = "0" * 64  # what another DESED's manifest gives
    (store / "features.json").write_text(json.dumps(record))
    for split in ("eval", "synthetic_valid"):
        one_line_error(run("evaluate", seed0, "--device", "cpu", "--split", split),
                       f"{store} is not the feature store {seed0} was trained on (features_hash changed",
                       f"its {split} clips may be ones the model trained on", "--other-store")
    assert (seed0 / "eval" / "results.json").read_bytes() == scored and not (seed0 / "synthetic_valid").exists()
    assert run("evaluate", seed0, "--device", "cpu", "--other-store").exit_code == 0
    assert json.loads((seed0 / "eval" / "results.json").read_text())["features"] == str(store)


def test_a_resume_keeps_the_runs_epochs_unless_told_and_runs_do_not_nest(tiny_features, tiny_model_overrides, tmp_path):
    """A run of 2 epochs resumed without its `--set optim.epochs=2` was trained on to the recipe file's 200; and a
    --runs inside a run put a second run in it (`table` counted it twice, `rm -r` of one removed both)."""
    recipe = Path(__file__).parents[1] / "recipes" / "none.yaml"
    sets = [f"--set={s}" for s in (*tiny_model_overrides, f"data.features={tiny_features}",
                                   "optim.max_steps_per_epoch=1")]
    runs, seed0 = tmp_path / "runs", tmp_path / "runs" / "none" / "seed0"
    assert run("train", recipe, "--runs", runs, "--device", "cpu", *sets, "--set", "optim.epochs=2").exit_code == 0
    files = {p: p.read_bytes() for p in seed0.rglob("*") if p.is_file()}
    one_line_error(run("train", recipe, "--runs", runs, "--device", "cpu", *sets, "--resume"),
                   f"--resume: {seed0} is a run of 2 epochs and the recipe says optim.epochs 200: add --set "
                   "optim.epochs=200 to train it that long, or --set optim.epochs=2 to keep it as it was")
    assert {p: p.read_bytes() for p in seed0.rglob("*") if p.is_file()} == files
    kept = run("train", recipe, "--runs", runs, "--device", "cpu", *sets, "--resume", "--set", "optim.epochs=2")
    assert kept.exit_code == 0 and "nothing to train" in kept.output
    longer = run("train", recipe, "--runs", runs, "--device", "cpu", *sets, "--resume", "--set", "optim.epochs=3")
    assert longer.exit_code == 0 and "3 epochs" in longer.output
    one_line_error(run("train", recipe, "--runs", seed0, "--device", "cpu", *sets, "--set", "optim.epochs=1"),
                   f"--runs: {seed0 / 'none' / 'seed0'} would be inside the run {seed0}: give --runs a folder "
                   "outside it")
    assert not (seed0 / "none").exists()


def test_evaluating_again_keeps_what_else_the_split_folder_holds_and_says_a_checkpoint_changed(
        tiny_features, tiny_model_overrides, tmp_path):
    """RUN/eval/ is replaced whole by a new evaluation: a user's notes there were lost with the old one; and an
    evaluation of last.pt silently replaced one of best.pt."""
    recipe = Path(__file__).parents[1] / "recipes" / "none.yaml"
    sets = [f"--set={s}" for s in (*tiny_model_overrides, f"data.features={tiny_features}", "optim.epochs=1",
                                   "optim.max_steps_per_epoch=1")]
    assert run("train", recipe, "--runs", tmp_path / "runs", "--device", "cpu", *sets).exit_code == 0
    seed0 = tmp_path / "runs" / "none" / "seed0"
    assert run("evaluate", seed0, "--device", "cpu").exit_code == 0
    (seed0 / "eval" / "my_analysis.md").write_text("notes")
    (seed0 / "eval" / "figs").mkdir()
    (seed0 / "eval" / "figs" / "f.pdf").write_bytes(b"%PDF mine")
    again = run("evaluate", seed0, "--device", "cpu", "--checkpoint", "last")
    assert again.exit_code == 0
    assert f"note: replaced the evaluation of best.pt in {seed0 / 'eval'}" in again.output
    assert (seed0 / "eval" / "my_analysis.md").read_text() == "notes"
    assert (seed0 / "eval" / "figs" / "f.pdf").read_bytes() == b"%PDF mine"
    assert json.loads((seed0 / "eval" / "results.json").read_text())["checkpoint"]["name"] == "last"
    assert "note:" not in run("evaluate", seed0, "--device", "cpu", "--checkpoint", "last").output


def test_a_desed_tree_moved_and_prepared_again_is_the_same_data(tiny_desed, tiny_model_overrides, tmp_path):
    """The store's manifest hash holds where the tree lay and its files' times: moved (to a faster disk, say) and
    prepared again, its runs could not resume, nor be scored without --other-store. The content is the data."""
    tree, store, runs = tmp_path / "a", tmp_path / "features", tmp_path / "runs"
    shutil.copytree(tiny_desed, tree)
    assert run("prepare-desed", "--synthetic", "--size", "tiny", "--out", tree).exit_code == 0  # its own manifest
    assert run("extract-mels", "--data", tree, "--out", store, "--workers", "1").exit_code == 0
    recipe = Path(__file__).parents[1] / "recipes" / "none.yaml"
    sets = [f"--set={s}" for s in (*tiny_model_overrides, f"data.features={store}", "optim.max_steps_per_epoch=1")]
    assert run("train", recipe, "--runs", runs, "--device", "cpu", *sets, "--set", "optim.epochs=1").exit_code == 0
    tree.rename(tmp_path / "b")
    assert run("prepare-desed", "--synthetic", "--size", "tiny", "--out", tmp_path / "b").exit_code == 0
    again = run("extract-mels", "--data", tmp_path / "b", "--out", store, "--workers", "1")
    assert again.exit_code == 0 and "written" in again.output, again.output
    resumed = run("train", recipe, "--runs", runs, "--device", "cpu", *sets, "--set", "optim.epochs=2", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert run("evaluate", runs / "none" / "seed0", "--device", "cpu").exit_code == 0
    # A clip replaced by one of the same size (at half the amplitude) is other data, though the manifest's sizes agree.
    import soundfile as sf

    clip = sorted((tmp_path / "b" / "audio" / "eval").rglob("*.wav"))[0]
    audio, rate = sf.read(clip, dtype="int16")
    sf.write(clip, audio // 2, rate, subtype="PCM_16")
    assert run("prepare-desed", "--synthetic", "--size", "tiny", "--out", tmp_path / "b").exit_code == 0
    assert run("extract-mels", "--data", tmp_path / "b", "--out", store, "--workers", "1").exit_code == 0
    one_line_error(run("evaluate", runs / "none" / "seed0", "--device", "cpu"), "(features_hash changed")


def test_a_cuda_only_step_setting_on_a_cpu_is_refused_before_anything_is_written(tmp_path, tiny_features):
    for setting in ("optim.precision=tf32", "optim.compile=reduce-overhead"):
        result = run("train", RECIPES / "none.yaml", "--runs", tmp_path / "runs", "--device", "cpu",
                     "--set", f"data.features={tiny_features}", "--set", setting)
        one_line_error(result, setting.replace("=", " "), "runs on CUDA only")
        assert not (tmp_path / "runs").exists()


def test_non_empty_run_dir(tmp_path, tiny_features):
    run_dir = tmp_path / "none" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    result = run("train", RECIPES / "none.yaml", "--runs", tmp_path, "--set", f"data.features={tiny_features}")
    one_line_error(result, f"{run_dir} holds notes.txt, which no run holds: give another --runs or seed")
    assert (run_dir / "notes.txt").read_text() == "mine" and len(list(run_dir.iterdir())) == 1


def test_evaluate_without_checkpoint_and_table_of_nothing(tmp_path):
    one_line_error(run("evaluate", tmp_path), "is not a run directory")
    (tmp_path / "recipe.yaml").write_text("name: x\n")  # a run whose training never checkpointed
    one_line_error(run("evaluate", tmp_path), "best.pt")
    (tmp_path / "recipe.yaml").unlink()
    one_line_error(run("table", tmp_path), "no runs found")
    seed = tmp_path / "runs" / "none" / "seed0"  # table of a run's eval/ folder
    (seed / "checkpoints").mkdir(parents=True)
    (seed / "recipe.yaml").write_text("name: none\n")
    (seed / "eval").mkdir()
    for _ in range(2):  # an evaluated run's eval/ too (a traceback from the evaluated folders left out)
        one_line_error(run("table", seed / "eval"), f"{seed / 'eval'} is inside the run {seed}: give the folder "
                       f"that holds the runs (e.g. {tmp_path / 'runs'})")
        (seed / "eval" / "results.json").write_text("{}")


def test_bad_flags(tmp_path):
    one_line_error(run("prepare-desed", "--root", tmp_path, "--synthetic"), "exclusive")
    one_line_error(run("train", RECIPES / "none.yaml", "--device", "tpu"), "--device tpu")
    one_line_error(run("train", RECIPES / "none.yaml", "--out", tmp_path),  # as the other commands call it
                   f"train has no --out: give --runs {tmp_path}, under which the run goes")


def test_batch_larger_than_the_store(tiny_features, tmp_path):
    result = run("train", RECIPES / "none.yaml", "--runs", tmp_path, "--set", f"data.features={tiny_features}",
                 "--set", "data.batch_size=200")
    one_line_error(result, "too few clips", "data.batch_size 200")


def test_a_run_trained_on_a_relative_store_is_evaluated_from_anywhere(tiny_features, tiny_model_overrides, tmp_path,
                                                                      monkeypatch):
    import hashlib

    from sedaug.data.store import FeatureStore
    from sedaug.recipe import load_recipe

    project = tmp_path / "project"
    shutil.copytree(tiny_features, project / "data" / "features")
    (project / "work").mkdir()
    monkeypatch.chdir(project / "work")
    recipe = Path(__file__).parents[1] / "recipes" / "none.yaml"
    sets = [*tiny_model_overrides, "data.features=../data/features", "optim.epochs=1", "optim.max_steps_per_epoch=1"]
    assert run("train", recipe, "--runs", "../runs", "--device", "cpu", *(f"--set={s}" for s in sets)).exit_code == 0
    seed0 = project / "runs" / "none" / "seed0"
    # Recorded absolute, without `..`: the folder it was relative to may go (it was `project/work/../data/...`).
    assert load_recipe(seed0 / "recipe.yaml").data.features == project / "data" / "features"
    monkeypatch.chdir(tmp_path)
    (project / "work").rmdir()
    assert run("evaluate", "project/runs/none/seed0", "--device", "cpu").exit_code == 0
    results = json.loads((seed0 / "eval" / "results.json").read_text())
    assert results["features"] == str(project / "data" / "features")  # absolute: table --ci reads it from anywhere
    names = "\n".join(sorted(FeatureStore(project / "data" / "features").split("eval").filenames))
    assert results["clips_sha256"] == hashlib.sha256(names.encode()).hexdigest()
    # The store moved away: one line naming the run and the key; --features points at it.
    (project / "data" / "features").rename(project / "store")
    one_line_error(run("evaluate", "project/runs/none/seed0", "--device", "cpu"),
                   "project/runs/none/seed0: the feature store of its recipe, data.features", "give --features")
    assert run("evaluate", "project/runs/none/seed0", "--device", "cpu", "--features", "project/store").exit_code == 0
    # Among several runs, one that cannot be scored (no best.pt yet) is said, and the others are scored.
    (project / "runs" / "none" / "seed0" / "eval" / "results.json").unlink()
    unfinished = project / "runs" / "none" / "seed1"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "recipe.yaml").write_text((seed0 / "recipe.yaml").read_text())
    result = run("evaluate", "project/runs/none/seed1", "project/runs/none/seed0", "--device", "cpu", "--features",
                 "project/store")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        "error: project/runs/none/seed1/checkpoints/best.pt not found: train the run first (sedaug train)",
        "error: 1 run of 2 not scored: project/runs/none/seed1"]
    assert (seed0 / "eval" / "results.json").is_file()


def test_an_ascii_locale_cannot_write_a_non_ascii_path_and_says_so_in_one_line(tmp_path):
    """Without Python's UTF-8 mode, a C locale decodes a name's non-ASCII bytes as surrogates, which UTF-8 text (a
    manifest's paths) cannot hold: that was pandas' traceback."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"], env=env,
                           capture_output=True, text=True, check=True)
    if probe.stdout.strip() != "ascii":
        pytest.skip("this platform's C locale is not ASCII")
    out_dir = os.fsencode(tmp_path) + "/d\u00e9".encode() + b"/desed"
    out = subprocess.run([os.fsencode(sys.executable), b"-m", b"sedaug", b"prepare-desed", b"--synthetic", b"--size",
                          b"tiny", b"--out", out_dir], env=env, capture_output=True)
    err = out.stderr.decode()
    assert out.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {tmp_path}/d\\udcc3\\udca9/desed/audio/") and "PYTHONUTF8=1" in err, err


@pytest.mark.parametrize("locale", ["C", "latin-1"])
def test_a_locale_whose_file_names_are_not_utf8_is_one_line_not_clips_missing(tmp_path, real_layout, locale):
    """DESED's TSVs are UTF-8: under a Latin-1 locale a non-ASCII name listed there is not the file's name on disk,
    which was counted as missing (left out of training, silently); under an ASCII one, os.stat's traceback."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    if locale == "latin-1":  # compiled here where the system has none (glibc's localedef)
        env["LOCPATH"] = str(tmp_path / "locales")
        os.mkdir(env["LOCPATH"])
        subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", f"{env['LOCPATH']}/en_US.ISO-8859-1"],
                       capture_output=True, check=False)
        env["LC_ALL"] = env["LANG"] = "en_US.ISO-8859-1"
        if not _has_locale(env, "iso8859-1"):
            pytest.skip("no Latin-1 locale here, nor glibc's localedef to make one")
    root = real_layout.root
    weak = root / "metadata" / "train" / "weak.tsv"
    name = "Ycaf\u00e9_0.000_10.000.wav"
    os.rename(root / "audio" / "train" / "weak" / "Yaaaaaaaaaaa_0.000_10.000.wav",
              os.fsencode(root / "audio" / "train" / "weak") + b"/" + name.encode())
    weak.write_text(weak.read_text().replace("Yaaaaaaaaaaa_0.000_10.000.wav", name), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sedaug", "prepare-desed", "--root", str(root), "--out",
                          str(tmp_path / "prepared")], env=env, capture_output=True)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{weak}:2:" in err and "are not UTF-8" in err and "PYTHONUTF8=1" in err, err
    assert not (tmp_path / "prepared").exists()


def _has_locale(env: dict, encoding: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"], env=env,
                           capture_output=True, text=True)
    return probe.stdout.strip() == encoding
