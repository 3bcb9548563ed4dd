import json
import math
import os
import pickle
import shutil
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
from typer.testing import CliRunner

from sedaug import watch
from sedaug.checkpoint import load_checkpoint
from sedaug.cli import app
from sedaug.errors import UserError
from sedaug.recipe import Recipe, dump_recipe, load_recipe
from sedaug.train import Diverged, Interrupted, consistency_loss, ema_update, rampup, train

REPO = Path(__file__).parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture
def tiny(tiny_features, tiny_model_overrides):
    """tiny(recipe, *overrides): the recipe with the tiny CRNN on the tiny store, two 4-clip steps an epoch."""

    def load(recipe: Path, *extra: str) -> Recipe:
        return load_recipe(recipe, [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4",
                                    "optim.max_steps_per_epoch=2", *extra])

    return load


def test_rampup_at_0_half_and_end():
    assert rampup(0, 100) == pytest.approx(math.exp(-5))
    assert rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert rampup(100, 100) == 1.0 and rampup(500, 100) == 1.0 and rampup(3, 0) == 1.0


def test_the_learning_rate_and_the_consistency_weight_ramp_up_per_step(tiny, tmp_path):
    """dcase20's schedule: lr and w(t) follow exp(-5 (1 - t/T)^2) over their own T in steps (2 steps an epoch
    here), as metrics.jsonl records at each epoch's last step and Adam's state holds after it."""
    recipe = tiny(REPO / "recipes" / "baseline.yaml", "optim.epochs=3", "optim.lr=0.002", "consistency.weight=3",
                  "optim.rampup_epochs=4", "consistency.rampup_epochs=1")
    result = train(recipe, tmp_path / "run", progress=False)
    rows = _metrics(tmp_path / "run")
    last_steps = [1, 3, 5]  # 0-based: each epoch's last step; T = 8 steps for lr, 2 for the weight
    assert [r["lr"] for r in rows] == pytest.approx([0.002 * math.exp(-5 * (1 - t / 8) ** 2) for t in last_steps])
    assert [r["weight"] for r in rows] == pytest.approx([3 * math.exp(-5 * 0.5 ** 2), 3.0, 3.0])
    adam = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["optimizer"]
    assert adam["param_groups"][0]["lr"] == pytest.approx(0.002 * math.exp(-5 * (3 / 8) ** 2))
    # The lr's ramp-up outlasts the run: said (by `sedaug train` after training, and in train.log), with where it
    # ends, exp(-5 (3/8)^2) = 49.5 %; the weight's does not.
    assert result.short_rampups == ("optim.rampup_epochs outlasts the run's 3 epochs: the learning rate ends at 49.5% "
                                    "of optim.lr (--set it below optim.epochs for a short run)")
    assert f"note: {result.short_rampups}\n" in (tmp_path / "run" / "train.log").read_text()


def test_ema_after_two_steps_is_hand_computed():
    teacher, student = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(10.0)
        student.weight.fill_(2.0)
    ema_update(teacher, student, step=0, decay=0.999)  # alpha = min(1 - 1/1, .999) = 0: copy the student
    assert teacher.weight.item() == 2.0
    with torch.no_grad():
        student.weight.fill_(4.0)
    ema_update(teacher, student, step=1, decay=0.999)  # alpha = 0.5: 0.5 * 2 + 0.5 * 4
    assert teacher.weight.item() == 3.0
    ema_update(teacher, student, step=10_000, decay=0.9)  # alpha capped at the decay: 0.9 * 3 + 0.1 * 4
    assert teacher.weight.item() == pytest.approx(3.1)


@pytest.mark.parametrize("mean_teacher", [False, True])
def test_consistency_on_unlabeled_ignores_labeled_rows(mean_teacher):
    torch.manual_seed(0)
    clean = (torch.rand(8, 5, 3, requires_grad=True), torch.rand(8, 3, requires_grad=True))
    perturbed = (torch.rand(8, 5, 3, requires_grad=True), torch.rand(8, 3, requires_grad=True))
    unlabeled = slice(0, 4)
    loss = consistency_loss(clean, perturbed, mean_teacher, unlabeled)
    changed = tuple(p.detach().clone() for p in perturbed)
    changed[0][4:] = 0.0  # the labeled rows
    changed[1][4:] = 1.0
    assert consistency_loss(clean, changed, mean_teacher, unlabeled).item() == loss.item()
    expected = ((clean[0][:4] - perturbed[0][:4]) ** 2).mean() + ((clean[1][:4] - perturbed[1][:4]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert consistency_loss(clean, changed, mean_teacher, slice(None)).item() != loss.item()
    # The reference side carries no gradient.
    loss.backward()
    grad_side, ref_side = (clean, perturbed) if mean_teacher else (perturbed, clean)
    assert ref_side[0].grad is None and grad_side[0].grad is not None


def _weights(run: Path, which: str = "last") -> dict:
    return torch.load(run / "checkpoints" / f"{which}.pt", weights_only=False)["model"]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("time_s")
    return rows


def test_resume_continues_exactly(tiny, tmp_path):
    recipe = REPO / "recipes" / "vat_latent.yaml"
    straight = tiny(recipe, "optim.epochs=2")
    train(straight, tmp_path / "straight", progress=False)
    train(tiny(recipe, "optim.epochs=1"), tmp_path / "resumed", progress=False)
    train(straight, tmp_path / "resumed", resume=True, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "resumed")
    events = sorted((tmp_path / "resumed").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per training process
    files = {p: p.read_bytes() for p in (tmp_path / "resumed").rglob("*") if p.is_file()}
    features = straight.data.features
    respelled = Path(features.parent, "..", features.parent.name, features.name)  # the same store, spelled otherwise
    again = straight.model_copy(update={"data": straight.data.model_copy(update={"features": respelled})})
    again = train(again, tmp_path / "resumed", resume=True, progress=False)  # nothing left to train
    assert again.nothing_left and again.epochs == 2
    assert {p: p.read_bytes() for p in (tmp_path / "resumed").rglob("*") if p.is_file()} == files  # nothing written
    assert sorted((tmp_path / "resumed").glob("events.out.tfevents.*")) == events
    labelled = straight.model_copy(update={"paper_row": 8})  # the one other key a resume may change
    assert train(labelled, tmp_path / "resumed", resume=True, progress=False).nothing_left
    assert load_recipe(tmp_path / "resumed" / "recipe.yaml").paper_row == 8


def test_resume_refuses_a_feature_store_that_changed_since(tiny, tiny_features, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(tiny_features, features)
    recipe = tiny(REPO / "recipes" / "none.yaml", "optim.epochs=1", f"data.features={features}")
    train(recipe, tmp_path / "run", progress=False)
    before = _weights(tmp_path / "run")
    record = json.loads((features / "features.json").read_text())
    record["manifest_hash"] = record["features_hash"] = "0" * 64  # re-extracted from another DESED
    (features / "features.json").write_text(json.dumps(record))
    more = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"epochs": 2})})
    with pytest.raises(UserError, match=rf"--resume: {features} is not the feature store .*last\.pt was trained on "
                                        r"\(features_hash changed since\)"):
        train(more, tmp_path / "run", resume=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in _weights(tmp_path / "run").items())
    assert len(_metrics(tmp_path / "run")) == 1


# A Ctrl-C during the third step (mid-epoch 2 of 2-step epochs), or the fourth, its last: resumed, it validates and
# ends the epoch without a step.
@pytest.mark.parametrize("step", [3, 4])
def test_ctrl_c_saves_last_and_resume_is_exact(step, tiny, tmp_path, monkeypatch):
    recipe = tiny(REPO / "recipes" / "baseline.yaml", "optim.epochs=3")
    train(recipe, tmp_path / "straight", progress=False)

    real_update = __import__("sedaug.train", fromlist=["ema_update"]).ema_update
    calls = {"n": 0}

    def update_then_interrupt(*args, **kwargs):
        real_update(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("sedaug.train.ema_update", update_then_interrupt)
    with pytest.raises(Interrupted, match="continue with the same command and --resume"):
        train(recipe, tmp_path / "resumed", progress=False)
    assert len(_metrics(tmp_path / "resumed")) == 1  # stopped in epoch 2
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt").state.step_in_epoch == step - 2
    monkeypatch.setattr("sedaug.train.ema_update", real_update)
    fewer = recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"epochs": 1})})
    with pytest.raises(UserError, match=r"optim\.epochs 1 is below the 2 epochs .* has begun \(interrupted in epoch 2\)"):
        train(fewer, tmp_path / "resumed", resume=True, progress=False)
    train(recipe, tmp_path / "resumed", resume=True, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "resumed")


def test_ctrl_c_during_validation_stops_once_the_epoch_is_saved(tiny, tmp_path, monkeypatch, capsys):
    recipe = tiny(REPO / "recipes" / "none.yaml", "optim.epochs=3")
    real_validate = __import__("sedaug.train", fromlist=["validate"]).validate

    def interrupt_then_validate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr("sedaug.train.validate", interrupt_then_validate)
    with pytest.raises(Interrupted, match=r"interrupted after epoch 1: .*last\.pt holds epoch 1; continue with the "
                                          "same command and --resume"):
        train(recipe, tmp_path / "run", progress=False)
    assert "Ctrl-C: stopping once last.pt is saved" in capsys.readouterr().err
    assert len(_metrics(tmp_path / "run")) == 1
    # Ctrl-C again while the curves are drawn: the interruption's message stands (it was a bare KeyboardInterrupt).
    other = tmp_path / "again"

    def interrupted_plot(*args, **kwargs):
        raise KeyboardInterrupt

    real_plot = watch.plot_train_curves
    monkeypatch.setattr("sedaug.watch.plot_train_curves", interrupted_plot)
    with pytest.raises(Interrupted, match=r"interrupted after epoch 1: .*last\.pt holds epoch 1"):
        train(recipe, other, progress=False)
    monkeypatch.setattr("sedaug.watch.plot_train_curves", real_plot)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").state.epoch == 1
    # Resumed with the epochs it holds, it ends there: nothing to train, and the recipe's change is reported.
    monkeypatch.setattr("sedaug.train.validate", real_validate)
    ended = train(recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"epochs": 1})}), tmp_path / "run",
                  resume=True, progress=False)
    assert ended.nothing_left and ended.epochs_were == 3
    assert load_recipe(tmp_path / "run" / "recipe.yaml").optim.epochs == 1


def test_run_dir_is_refused_when_in_use_and_resume_checks_the_recipe(tiny, tmp_path):
    recipe = tiny(REPO / "recipes" / "none.yaml", "optim.epochs=1")
    run = tmp_path / "run"
    train(recipe, run, progress=False)
    before = _weights(run)
    with pytest.raises(UserError, match="holds a run: pass --resume"):
        train(recipe, run, progress=False)
    with pytest.raises(UserError, match=r"recipe differs .* at optim\.lr"):
        train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=1", "optim.lr=0.01"), run, resume=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in _weights(run).items())
    # paper_row only labels the table's row: a run trained before the recipes had one resumes with them.
    assert train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=1", "paper_row=null"), run, resume=True,
                 progress=False).epochs == 1
    # --resume where nothing was saved yet starts from scratch: the same weights as a plain start.
    train(recipe, tmp_path / "fresh", resume=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in _weights(tmp_path / "fresh").items())
    # ... of the recipe it was started with (a run killed inside its first epoch, resumed with another --set).
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text(dump_recipe(recipe))
    with pytest.raises(UserError, match=r"recipe differs from .*recipe\.yaml's at optim\.lr .* remove "):
        train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=1", "optim.lr=0.01"), unfinished, resume=True,
              progress=False)
    assert [p.name for p in unfinished.iterdir()] == ["recipe.yaml"]
    notes = tmp_path / "notes"  # a folder of something else: no run to resume or restart
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(UserError, match=f"{notes} holds notes.txt, which no run holds: give another --runs or seed"):
            train(recipe, notes, resume=resume, progress=False)
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]
    assert train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=2"), unfinished, resume=True,
                 progress=False).epochs == 2


def test_nan_loss_stops_cleanly_keeping_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    recipe = tiny(REPO / "recipes" / "none.yaml", "optim.epochs=1")
    run = tmp_path / "run"
    train(recipe, run, progress=False)
    good = _weights(run)
    monkeypatch.setattr("sedaug.train.F.binary_cross_entropy", lambda scores, target: scores.sum() * float("nan"))
    with pytest.raises(Diverged, match="loss became nan") as diverged:
        train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=2"), run, resume=True, progress=False)
    assert all(torch.equal(good[k], v) for k, v in _weights(run).items())
    steps = _metrics(run)[0]["step"]  # steps per epoch; losses are read back every 10 steps, counted as metrics.jsonl
    assert (diverged.value.epoch, diverged.value.step) == (2, steps + min(10, steps))
    copy = pickle.loads(pickle.dumps(diverged.value))  # as Ray ships it from a trial to the driver
    assert (str(copy), copy.epoch, copy.step) == (str(diverged.value), 2, diverged.value.step)


def test_outputs_that_blow_up_after_the_last_loss_read_are_a_divergence_too(tiny, tmp_path, monkeypatch):
    """An update can blow the weights up after the epoch's last loss was read: validation then sees NaN outputs,
    which it used to score as F1 0 (a 'trained' run whose best.pt cannot be evaluated)."""
    import numpy as np

    real = __import__("sedaug.train", fromlist=["predict"]).predict
    monkeypatch.setattr("sedaug.train.predict", lambda *a, **k: np.full_like(real(*a, **k), np.nan))
    with pytest.raises(Diverged, match=r"outputs on synthetic_valid became NaN or infinite in epoch 1 \(step 2\): "
                                       "stopped; no epoch had ended") as diverged:
        train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=2"), tmp_path / "run", progress=False)
    assert (diverged.value.epoch, diverged.value.step) == (1, 2)
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists() and _metrics(tmp_path / "run") == []


def test_on_epoch_sees_each_written_epoch_and_what_it_raises_ends_training(tiny, tmp_path):
    recipe, run = tiny(REPO / "recipes" / "none.yaml", "optim.epochs=3"), tmp_path / "run"
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(record):
        seen.append((record, load_checkpoint(run / "checkpoints" / "last.pt").state.epoch, len(_metrics(run))))
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(recipe, run, progress=False, on_epoch=on_epoch)
    assert [(r["epoch"], saved, rows) for r, saved, rows in seen] == [(1, 1, 1), (2, 2, 2)]  # written before the call
    assert [r["valid_f1"] for r, _, _ in seen] == [m["valid_f1"] for m in _metrics(run)]
    assert (run / "train_curves.png").is_file()  # drawn on the way out

    # The last epoch's curves are drawn before the call: Ray Tune may end a trial's process as soon as it reports
    # (ASHA stops a trial at its last epoch), and 3 of 4 finished trials of a user's sweep had none.
    (run / "train_curves.png").unlink()
    drawn = []

    def last_report(record):
        drawn.append((record["epoch"], (run / "train_curves.png").is_file()))
        if record["epoch"] == 3:
            raise SystemExit  # what Tune's report raises in a trial it stops

    with pytest.raises(SystemExit), mock.patch("sedaug.watch.plot_train_curves", wraps=watch.plot_train_curves) as plot:
        train(recipe, run, resume=True, progress=False, on_epoch=last_report)
    assert drawn == [(3, True)] and plot.call_count == 1  # not drawn again on the way out


def test_model_selection_uses_the_shared_f1(tiny, tmp_path, monkeypatch):
    scores = iter([0.2, 0.5, 0.4])
    monkeypatch.setattr("sedaug.train.event_based_f1", lambda *a: {"macro": next(scores)})
    train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=3"), tmp_path / "run", progress=False)
    assert [m["valid_f1"] for m in _metrics(tmp_path / "run")] == [0.2, 0.5, 0.4]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt").state.best_epoch == 2


def test_resume_of_a_run_that_is_not_there_says_it_starts_from_scratch(tiny_features, tiny_model_overrides, tmp_path):
    args = ["train", str(REPO / "recipes" / "none.yaml"), "--runs", str(tmp_path), "--device", "cpu", "--resume"]
    for item in [*tiny_model_overrides, f"data.features={tiny_features}", "optim.epochs=1", "optim.max_steps_per_epoch=1"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"--resume: no checkpoints/last.pt in {tmp_path / 'none' / 'seed0'}: training it "
                                    "from the start\n")
    assert "--resume: no" not in CliRunner().invoke(app, args).output  # there now: nothing to train, nothing said


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_trains_one_epoch_through_the_cli(recipe, tiny_features, tiny_model_overrides, tmp_path):
    args = ["train", str(recipe), "--runs", str(tmp_path), "--device", "cpu", "--set", "optim.epochs=1"]
    for item in [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4", "optim.max_steps_per_epoch=2"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / recipe.stem / "seed0"
    for name in ("recipe.yaml", "env.json", "train.log", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    saved = load_recipe(run / "recipe.yaml")
    assert saved.optim.epochs == 1 and saved.model.cnn_filters == [4, 8]
    (row,) = _metrics(run)
    assert row["epoch"] == 1 and math.isfinite(row["loss_total"]) and 0.0 <= row["valid_f1"] <= 1.0
    assert (row["loss_const"] > 0) == (saved.augmentation.type != "none")
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["step"] == {"compile": None, "precision": "fp32"}  # two steps: eager
    assert (run / "train.log").read_text().splitlines()[0].endswith("1 epochs; eager, fp32")


@pytest.mark.parametrize("option", ["optim.precision=bf16", "optim.compile=true"])
def test_numerics_options_train_and_stay_close_to_fp32_eager(option, tiny, tmp_path, monkeypatch):
    """bf16 autocast and torch.compile are the GPU options; their code path runs here on CPU. The progress bar says
    when the first steps are compiling (on a CPU, half a minute of nothing else)."""
    import io

    from rich.console import Console

    import sedaug.train

    reference = tiny(REPO / "recipes" / "noise_latent.yaml", "optim.epochs=1")
    train(reference, tmp_path / "fp32", progress=False)
    terminal = io.StringIO()
    monkeypatch.setattr(sedaug.train, "STDERR", Console(file=terminal, force_terminal=True, width=200))
    monkeypatch.setattr(sedaug.train, "progress_shown", lambda enabled: enabled)
    train(tiny(REPO / "recipes" / "noise_latent.yaml", "optim.epochs=1", option), tmp_path / "opt", progress=True)
    assert "epoch 1/1" in terminal.getvalue()
    assert ("compiling the CNN" in terminal.getvalue()) == (option == "optim.compile=true")
    (a,), (b,) = _metrics(tmp_path / "fp32"), _metrics(tmp_path / "opt")
    assert math.isfinite(b["loss_total"])
    assert b["loss_class"] == pytest.approx(a["loss_class"], rel=0.05)  # same seed, same batches
    assert load_recipe(tmp_path / "opt" / "recipe.yaml").optim.model_dump() != reference.optim.model_dump()


def test_train_tells_the_step_configuration_how_long_the_run_is(tiny, tmp_path, monkeypatch):
    """`optim.compile: auto` compiles a long run only: train must pass its length (epochs x steps per epoch)."""
    import sedaug.train

    seen, real = [], sedaug.train.build_training
    monkeypatch.setattr(sedaug.train, "build_training", lambda *a, steps: seen.append(steps) or real(*a, steps=steps))
    train(tiny(REPO / "recipes" / "none.yaml", "optim.epochs=3"), tmp_path / "run", progress=False)
    assert seen == [_metrics(tmp_path / "run")[-1]["step"]]  # 3 epochs' steps


def test_train_curves_draw_an_f1_of_zero_over_the_axis_not_under_it(tmp_path, monkeypatch):
    """A short run's synthetic_valid F1 is 0 in every epoch: its line lies on the x axis, where a clipped line is
    half hidden by the axis."""
    from matplotlib.axes import Axes

    from sedaug.watch import plot_train_curves

    drawn, real = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: drawn.append((list(a[1]), k)) or real(self, *a, **k))
    rows = [{"epoch": e, "loss_total": 1.0 / e, "loss_class": 0.9 / e, "loss_const": 0.01, "lr": 1e-3, "weight": 2.0,
             "valid_f1": 0.0} for e in (1, 2, 3)]
    plot_train_curves(rows, tmp_path / "curves.png")
    [f1] = [k for y, k in drawn if y == [0.0, 0.0, 0.0]]
    assert f1.get("clip_on") is False and (tmp_path / "curves.png").stat().st_size > 10_000
