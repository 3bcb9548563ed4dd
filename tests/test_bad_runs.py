"""Bad runs, checkpoints, results and faults through the CLI: each ends in exit status != 0, one `error:` line
that names the file or key, no traceback, and what was written before is unchanged (checksums)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from conftest import checksums, one_line_error
from typer.testing import CliRunner

from sedaug.cli import app
from sedaug.recipe import dump_recipe, load_recipe
from sedaug.rundir import RunDir

REPO = Path(__file__).parents[1]


def _train_command(runs: Path, features: Path, overrides: list[str], recipe: str, epochs: int) -> list[str]:
    cmd = ["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--runs", str(runs), "--device", "cpu",
           "--set", f"optim.epochs={epochs}"]
    for item in [*overrides, f"data.features={features}", "data.batch_size=4", "optim.max_steps_per_epoch=2",
                 "optim.rampup_epochs=0"]:
        cmd += ["--set", item]
    return cmd


@pytest.fixture
def cli(tiny_features, tiny_model_overrides, tmp_path):
    """`sedaug train RECIPE` on the tiny store and model, 2 steps an epoch, into tmp_path/runs."""
    runner = CliRunner()

    def run(*args: str, recipe: str = "none", epochs: int = 1):
        cmd = _train_command(tmp_path / "runs", tiny_features, tiny_model_overrides, recipe, epochs)
        return runner.invoke(app, [*cmd, *args])

    return run


@pytest.fixture(scope="module")
def _trained_template(tiny_features, tiny_model_overrides, tmp_path_factory):
    runs = tmp_path_factory.mktemp("trained") / "runs"
    result = CliRunner().invoke(app, _train_command(runs, tiny_features, tiny_model_overrides, "none", 1))
    assert result.exit_code == 0, result.output
    return runs


@pytest.fixture
def trained(_trained_template, tmp_path) -> Path:
    """tmp_path/runs holding `none` trained for one epoch (what `cli()` would make), copied from one training."""
    shutil.copytree(_trained_template, tmp_path / "runs")
    return tmp_path / "runs" / "none" / "seed0"


def test_a_run_that_stopped_before_its_first_checkpoint_restarts_with_resume(cli, tiny_features, tiny_model_overrides,
                                                                             tmp_path):
    run = tmp_path / "runs" / "none" / "seed0"
    run.mkdir(parents=True)
    command = _train_command(tmp_path / "runs", tiny_features, tiny_model_overrides, "none", 1)
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    # What a kill -9 in the first epoch leaves: the resolved recipe, the log's first line.
    (run / "recipe.yaml").write_text(dump_recipe(load_recipe(REPO / "recipes" / "none.yaml", sets)))
    (run / "train.log").write_text("start none seed 0\n")
    message = one_line_error(cli(), str(run), "stopped before it saved its first epoch", "--resume")
    assert "checkpoints/last.pt" in message
    result = cli("--resume")
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "last.pt").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's traceback
def test_a_full_disk_at_the_first_tensorboard_write_is_one_line_and_resume_restarts(cli, tmp_path, monkeypatch,
                                                                                   capfd):
    """TensorBoard writes in a thread of its own: a full disk was that thread's traceback, then a line without a
    path; and the run, its epoch-1 row in metrics.jsonl but no last.pt, was refused by train and train --resume."""
    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    run = tmp_path / "runs" / "none" / "seed0"
    one_line_error(cli(), f"cannot write {run / 'events.out.tfevents.'}", "No space left on device")
    assert "Traceback" not in capfd.readouterr().err
    assert RunDir(run).metric_rows()[0]["epoch"] == 1 and not (run / "checkpoints" / "last.pt").exists()
    monkeypatch.undo()
    one_line_error(cli(), str(run), "stopped before it saved its first epoch", "--resume")
    result = cli("--resume")
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in RunDir(run).metric_rows()] == [1] and (run / "checkpoints" / "last.pt").is_file()


def test_a_first_epoch_never_saved_restarts_with_its_recipe_and_is_drawn_once(trained, cli, tiny_features,
                                                                              tiny_model_overrides, tmp_path):
    """Killed at the end of epoch 1 after its metrics row and TensorBoard's events, before last.pt (no log line)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (trained / "checkpoints" / "last.pt").unlink()
    log = trained / "train.log"
    log.write_text("".join(line for line in log.read_text().splitlines(True) if not line.startswith("epoch 1 ")))
    (trained / "eval").mkdir()  # evaluated: a run to keep, not to restart
    one_line_error(cli("--resume"), "has no checkpoints/last.pt to continue from", "eval/", "nothing was changed")
    (trained / "eval").rmdir()
    command = _train_command(tmp_path / "runs", tiny_features, tiny_model_overrides, "none", 1)
    at = command.index("optim.epochs=1")
    without_epochs = command[:at - 1] + command[at + 1:]  # the recipe file's 200 epochs: not what the run was begun with
    one_line_error(CliRunner().invoke(app, [*without_epochs, "--resume"]), f"--resume: {trained} is a run of 1 epoch "
                   "and the recipe says optim.epochs 200")
    one_line_error(cli("--resume", "--set", "optim.lr=0.01"), "the recipe differs", "optim.lr",
                   "no epoch was saved there (no last.pt)")
    result = cli("--resume")
    assert result.exit_code == 0, result.output
    board = EventAccumulator(str(trained))
    board.Reload()
    assert [event.step for event in board.Scalars("loss/total")] == [1]  # epoch 1 once, not once per start


def test_a_full_disk_at_the_run_lock_is_one_line_naming_it_and_leaves_nothing(cli, tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(28, "No space left on device")  # as os.pwrite says it: no file name

    monkeypatch.setattr(os, "pwrite", full)
    (tmp_path / "runs").mkdir()
    one_line_error(cli(), f"cannot write {tmp_path / 'runs' / 'none' / 'seed0' / '.lock'}: No space left on device")
    assert list((tmp_path / "runs").iterdir()) == []


def test_runs_inside_a_feature_store_are_refused(tiny_features, tiny_model_overrides, tmp_path):
    store = shutil.copytree(tiny_features, tmp_path / "features")
    before = checksums(store)
    result = CliRunner().invoke(app, _train_command(store, tiny_features, tiny_model_overrides, "none", 1))
    one_line_error(result, f"--runs: {store / 'none' / 'seed0'} would be in the feature store {store}")
    assert checksums(store) == before


def test_divergence_before_any_checkpoint_says_nothing_was_saved(cli, tmp_path):
    one_line_error(cli("--set", "optim.lr=1e30"), "loss became nan", "nothing was saved")
    assert not (tmp_path / "runs" / "none" / "seed0" / "checkpoints" / "last.pt").exists()


def test_a_refused_run_leaves_no_folders_it_made(cli, tmp_path):
    """A store too small for the batch was refused under the run's lock: seed0 went, runs/none stayed, empty."""
    (tmp_path / "runs").mkdir()
    one_line_error(cli("--set", "data.batch_size=4000"), "too few clips")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_diverged_run_is_a_result_the_table_and_evaluate_name(cli, tmp_path):
    from sedaug.table import build_table

    one_line_error(cli("--set", "optim.lr=1e30"), "loss became nan")
    run = tmp_path / "runs" / "none" / "seed0"
    assert json.loads((run / "diverged.json").read_text())["epoch"] == 1
    assert build_table(tmp_path / "runs").rows[0].note == "1 of 1 runs diverged"
    one_line_error(CliRunner().invoke(app, ["evaluate", str(run)]), f"{run}: diverged in epoch 1",
                   "before any epoch ended: no checkpoint to score")  # not "its checkpoints predate that"


def test_resume_cannot_shrink_a_finished_run_and_keeps_its_files_true(cli, tmp_path):
    assert cli(epochs=2).exit_code == 0
    run = tmp_path / "runs" / "none" / "seed0"
    before = checksums(run)
    one_line_error(cli("--resume", epochs=1), "optim.epochs 1 is below the 2 epochs")
    assert checksums(run) == before


def test_resume_without_recipe_yaml_uses_the_checkpoints_recipe(cli, trained, tmp_path):
    run = tmp_path / "runs" / "none" / "seed0"
    (run / "recipe.yaml").unlink()
    assert cli("--resume", epochs=2).exit_code == 0
    assert "epochs: 2" in (run / "recipe.yaml").read_text()


def test_two_processes_never_write_one_run_directory(cli, tmp_path):
    run = tmp_path / "runs" / "none" / "seed0"
    with RunDir(run).lock():  # another process holds it (flock conflicts between open files, even in one process)
        one_line_error(cli(), str(run), "in use by another sedaug process", f"pid {os.getpid()}")
    assert not (run / "checkpoints").exists()
    assert cli().exit_code == 0  # released: the run goes ahead


def hold(run: Path, how: str) -> subprocess.Popen:
    """Another process holding `run` as train (`lock`) or an evaluation (`reading`) does, until its stdin closes."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        from sedaug.rundir import RunDir
        with RunDir(Path({str(run)!r})).{how}():
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_run_is_not_evaluated_while_another_process_trains_it(trained, cli):
    holder = hold(trained, "lock")
    try:
        before = checksums(trained)
        result = CliRunner().invoke(app, ["evaluate", str(trained), "--device", "cpu"])
        one_line_error(result, str(trained), "being trained by another sedaug process", f"pid {holder.pid}")
        assert checksums(trained) == before
    finally:
        holder.communicate("")
    reader = hold(trained, "reading")  # evaluations do not exclude each other; training waits for them
    try:
        result = CliRunner().invoke(app, ["evaluate", str(trained), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        one_line_error(cli("--resume", epochs=2), "in use by another sedaug process (an evaluation reading it)")
    finally:
        reader.communicate("")
    assert CliRunner().invoke(app, ["evaluate", str(trained), "--device", "cpu"]).exit_code == 0  # released


@pytest.mark.parametrize(("content", "why"), [
    (b"", "(an empty file)"), (b"PK\x03\x04 cut short", "(damaged or cut short)"), (b"epoch 3\n", "(not a PyTorch file)"),
    ("objects", "(it holds objects other than tensors: not a file sedaug wrote)"),
    (None, "not a sedaug checkpoint (a dict without model"),
], ids=["empty", "truncated", "text", "objects", "other-tensors"])
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_unreadable_checkpoints_are_one_line(cli, trained, tmp_path, content, why, command):
    run = tmp_path / "runs" / "none" / "seed0"
    target = run / "checkpoints" / ("best.pt" if command == "evaluate" else "last.pt")
    if content is None:
        torch.save({"weights": torch.zeros(2)}, target)  # a checkpoint of something else
    elif content == "objects":
        torch.save({"model": {}, "where": Path("runs")}, target)  # a pickle torch's weights_only load refuses
    else:
        target.write_bytes(content)
    before = checksums(run)
    if command == "evaluate":
        result = CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"])
    else:
        result = cli("--resume", epochs=2)
    one_line_error(result, str(target), "sedaug checkpoint", why)
    assert checksums(run) == before


def test_a_checkpoint_that_is_not_the_runs_is_refused_by_evaluate_and_detect(cli, trained, tmp_path):
    """Another run's best.pt copied in (another seed, another recipe) was scored as this run's, and table counted it
    under this run's name and seed; a recipe.yaml edited by hand (eval.threshold) labelled a row that evaluate scored
    at the checkpoint's threshold."""
    run = trained
    other = tmp_path / "other" / "none" / "seed1"
    shutil.copytree(run, other)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    ckpt["recipe"]["seed"] = 1  # seed 1's model, as far as the checkpoint can tell
    torch.save(ckpt, other / "checkpoints" / "best.pt")
    shutil.copy(other / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    before = checksums(run)
    for args in (["evaluate", str(run), "--device", "cpu"],
                 ["detect", str(run), str(REPO / "README.md"), "--out", str(tmp_path / "d.tsv"), "--device", "cpu"]):
        one_line_error(CliRunner().invoke(app, args), f"{run / 'checkpoints' / 'best.pt'} is not the model of "
                       f"{run / 'recipe.yaml'}: they differ at seed (a checkpoint copied from another run")
    assert checksums(run) == before
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")  # its own back
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("threshold: 0.5", "threshold: 0.3"))
    one_line_error(CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"]), "they differ at eval.threshold")
    recipe.write_text(recipe.read_text().replace("threshold: 0.3", "threshold: 7"))  # no recipe: it was scored
    one_line_error(CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"]),
                   "eval.threshold: Input should be less than 1", "(the run's recipe.yaml, which names its row in the "
                   "table): put back the run's own")
    assert not (run / "eval").exists()


def test_a_second_ctrl_c_stops_at_once_and_says_what_was_saved(cli, tmp_path, monkeypatch):
    assert cli(recipe="baseline").exit_code == 0
    run = tmp_path / "runs" / "baseline" / "seed0"
    before = checksums(run / "checkpoints")

    def interrupt_twice(*args, **kwargs):  # both Ctrl-Cs within one step (the EMA update runs in every step)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("sedaug.train.ema_update", interrupt_twice)
    result = cli("--resume", recipe="baseline", epochs=2)
    assert result.exit_code == 130 and "Traceback" not in result.output
    acknowledged, error = result.stderr.splitlines()  # the first Ctrl-C is answered at once
    assert acknowledged == "Ctrl-C: stopping once last.pt is saved (Ctrl-C again stops at once)"
    assert error.startswith("error: interrupted again: stopped at once") and error.endswith("holds epoch 1")
    assert checksums(run / "checkpoints") == before


def test_sigterm_stops_train_as_ctrl_c_does_and_resume_continues(cli, tmp_path, monkeypatch):
    """A batch system's stop (SLURM, `timeout`, `docker stop`) was an exit 143 with no word and the epoch lost."""
    real_update = __import__("sedaug.train", fromlist=["ema_update"]).ema_update
    calls = {"n": 0}

    def update_then_terminate(*args, **kwargs):
        real_update(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("sedaug.train.ema_update", update_then_terminate)
    handler = signal.getsignal(signal.SIGTERM)
    result = cli(recipe="baseline", epochs=2)
    assert result.exit_code == 143 and "Traceback" not in result.output
    acknowledged, error = result.stderr.splitlines()
    assert acknowledged == "SIGTERM: stopping once last.pt is saved (SIGTERM again stops at once)"
    run = tmp_path / "runs" / "baseline" / "seed0"
    assert error == (f"error: interrupted in epoch 2 at step 1/2: saved {run / 'checkpoints' / 'last.pt'}; continue "
                     "with the same command and --resume")
    assert signal.getsignal(signal.SIGTERM) is handler  # put back
    monkeypatch.setattr("sedaug.train.ema_update", real_update)
    result = cli("--resume", recipe="baseline", epochs=2)
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in RunDir(run).metric_rows()] == [1, 2]


@pytest.mark.parametrize("content", ["[1, 2]", "not json", "\x89PNG"], ids=["list", "not-json", "binary"])
def test_table_refuses_results_that_are_not_results(trained, tmp_path, content):
    results = tmp_path / "runs" / "none" / "seed0" / "eval" / "results.json"
    results.parent.mkdir()
    results.write_text(content)
    one_line_error(CliRunner().invoke(app, ["table", str(tmp_path / "runs")]), str(results), "sedaug evaluate")


def test_table_out_a_folder_is_refused(trained, tmp_path):
    one_line_error(CliRunner().invoke(app, ["table", str(tmp_path / "runs"), "--format", "csv", "--out", str(tmp_path)]),
              f"--out {tmp_path} is a folder")


def test_a_model_too_large_for_memory_is_one_line_and_leaves_no_run(cli, tmp_path):
    """torch's allocator raised a traceback ("you tried to allocate 12000000000000 bytes")."""
    result = cli("--set", "model.rnn_hidden=1000000", recipe="baseline")
    one_line_error(result, "baseline: the model does not fit in the memory of cpu (one of its weights alone is ",
                   "model.rnn_hidden size it")
    assert not (tmp_path / "runs" / "baseline").exists()


def test_a_recipe_named_as_an_ensemble_is_not_trained(cli, tmp_path):
    """`none_ensemble` seed 7 was averaged into `evaluate --ensemble`'s row of that name."""
    one_line_error(cli("--set", "name=none_ensemble"), "none_ensemble: a name ending in _ensemble is an ensemble's")
    assert not (tmp_path / "runs").exists()


def test_table_writes_through_a_fifo_and_leaves_it_one(trained, tmp_path):
    """`--out /dev/null` as root put a regular file in /dev/null's place (the atomic rename over it): a device, a
    FIFO or a terminal is written through (a FIFO here: /dev/null is not to be risked on a test machine)."""
    fifo = tmp_path / "table.md"
    os.mkfifo(fifo)
    read = {}
    reader = threading.Thread(target=lambda: read.setdefault("text", fifo.read_text()), daemon=True)
    reader.start()
    result = CliRunner().invoke(app, ["table", str(tmp_path / "runs"), "--out", str(fifo)])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.stat().st_mode) and read["text"].startswith("| recipe |"), read
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_summaries_stay_one_line_when_not_a_terminal(cli):
    result = cli()
    assert result.exit_code == 0
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert len(line) > 80 and line.startswith("trained none seed 0 (eager, fp32): ")


def test_results_json_holds_json_and_tensorboard_sees_the_run(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cli(epochs=2).exit_code == 0
    run = tmp_path / "runs" / "none" / "seed0"
    assert (run / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run / "eval" / "per_class.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/classification", "loss/consistency", "consistency_weight", "lr", "synthetic_valid/macro_f1"} <= tags
    assert [e.step for e in events.Scalars("synthetic_valid/macro_f1")] == [1, 2]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("synthetic_valid/macro_f1")] == pytest.approx([m["valid_f1"] for m in metrics])
    assert "eval/macro" in tags and "eval/f1/Speech" in tags


def test_a_damaged_checkpoints_advice_names_the_other_one_only_where_it_is(tmp_path):
    from sedaug.checkpoint import advice

    (tmp_path / "best.pt").write_bytes(b"")
    assert advice(tmp_path / "best.pt") == "train the run anew into another --runs or seed"  # no last.pt to score
    (tmp_path / "last.pt").write_bytes(b"")
    assert advice(tmp_path / "best.pt").startswith("score last.pt instead (--checkpoint last), or train the run anew")
    assert advice(tmp_path / "last.pt").startswith("score best.pt instead (--checkpoint best)")
