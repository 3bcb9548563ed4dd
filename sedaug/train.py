"""train(recipe, run_dir): the one training loop, read top to bottom (DESIGN §5–6).

Per step: batch -> student on the clean input -> L_class -> perturbed prediction -> L_const -> Adam -> EMA.
Per epoch: predict synthetic_valid, keep best.pt by event-based macro F1, write last.pt and metrics.jsonl.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sedaug import rundir
from sedaug.augment import SameDraws, consistency_views
from sedaug.data.batches import Batch, ThreeStreams
from sedaug.data.features import FeatureParams, check_params, load_scaler, load_split
from sedaug.errors import UserError
from sedaug.evaluate import decode, event_based_f1, predict
from sedaug.model import CRNN
from sedaug.recipe import Recipe, dump_recipe, parse_yaml, validate_recipe


class Diverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(UserError):
    """Ctrl-C: last.pt was saved, `--resume` continues exactly."""


def rampup(step: int, length: float) -> float:
    """dcase20's exp(-5 (1 - t/T)^2) ramp from ~0.0067 to 1 over T steps, then 1."""
    if length <= 0 or step >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - step / length) ** 2)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, step: int, decay: float) -> None:
    """Mean Teacher: teacher <- a teacher + (1 - a) student over parameters only, a = min(1 - 1/(step+1), decay)."""
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - alpha)


def consistency_loss(clean: tuple, perturbed: tuple, mean_teacher: bool, rows: slice) -> torch.Tensor:
    """MSE on strong and weak outputs over `rows`; the reference side is detached.

    Mean Teacher pulls the student's clean prediction towards the teacher's perturbed one; l2/none pull the
    perturbed prediction towards the (detached) clean one.
    """
    loss = 0.0
    for c, p in zip(clean, perturbed, strict=True):
        c, p = c[rows].float(), p[rows].float()
        loss = loss + (F.mse_loss(c, p.detach()) if mean_teacher else F.mse_loss(c.detach(), p))
    return loss


def build_training(recipe: Recipe, device: torch.device) -> tuple[CRNN, CRNN | None, torch.optim.Optimizer]:
    """The student (with the feature store's scaler), its EMA teacher under Mean Teacher, and Adam."""
    model = CRNN(recipe.model)
    model.set_scaler(*load_scaler(recipe.data.features))
    model.to(device)
    teacher = None
    if recipe.regularization.type == "mean_teacher":
        teacher = copy.deepcopy(model).requires_grad_(False)
    weight_decay = recipe.regularization.weight_decay if recipe.regularization.type == "l2" else 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.optim.lr, betas=recipe.optim.betas, weight_decay=weight_decay)
    if recipe.optim.compile:
        for net in filter(None, (model, teacher)):
            net.cnn.compile()  # the CNN holds the time; the perturbation points stay outside the compiled graph
    return model, teacher, optimizer


def training_step(
    recipe: Recipe,
    model: CRNN,
    teacher: CRNN | None,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    step: int,
    lr: float,
    weight: float,
) -> torch.Tensor:
    """One optimizer step (and EMA update) on one batch; returns the detached losses (class, const, total)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    u, w = batch.n_unlabeled, batch.n_weak
    bf16 = recipe.optim.precision == "bf16"
    aug = recipe.augmentation
    same_draws = SameDraws(model, batch.mels.device) if aug.type == "vat" and aug.dropout == "shared" else None
    with torch.autocast(batch.mels.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        with same_draws.recording() if same_draws else nullcontext():
            clean = model(batch.mels)
        if aug.type != "none":
            views = consistency_views(aug, model, teacher, clean, batch.mels, same_draws,
                                      update_batchnorm=recipe.consistency.update_batchnorm)
    # Losses in float32 outside autocast (binary_cross_entropy is not autocast-safe).
    strong, weak = clean[0].float(), clean[1].float()
    loss_class = F.binary_cross_entropy(strong[u + w :], batch.strong_labels) + F.binary_cross_entropy(
        weak[u : u + w], batch.weak_labels
    )
    if recipe.augmentation.type != "none":
        rows = slice(0, u) if recipe.consistency.data == "unlabeled" else slice(None)
        loss_const = consistency_loss(*views, mean_teacher=teacher is not None, rows=rows)
    else:
        loss_const = torch.zeros((), device=strong.device)
    loss = loss_class + weight * loss_const

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if teacher is not None:
        ema_update(teacher, model, step, recipe.regularization.ema_decay)
    return torch.stack([loss_class, loss_const, loss]).detach()


def validate(model: CRNN, split, recipe: Recipe, device: torch.device) -> float:
    strong = predict(model, split.mels, recipe.eval.batch_size, device)
    detections = decode(strong, split.filenames, recipe.eval.threshold, recipe.eval.median_window, split.durations)
    f1 = event_based_f1(detections, split.events, split.filenames)["macro"]
    return f1 if math.isfinite(f1) else 0.0  # no class has a reference event: nothing to select on


def _check_run_dir(run: rundir.RunDir, recipe: Recipe, resume: bool) -> None:
    """Refuse a non-empty run dir without --resume; on resume, refuse a different recipe (epochs may grow)."""
    if not resume:
        if run.root.exists() and any(run.root.iterdir()):
            raise UserError(f"{run.root} is not empty: pass --resume to continue that run, or change seed/--runs")
        return
    if not run.checkpoint("last").exists():
        raise UserError(f"{run.checkpoint('last')} not found: nothing to resume (train without --resume)")
    saved = validate_recipe(parse_yaml(run.recipe.read_text(), str(run.recipe)), str(run.recipe))
    ours, theirs = recipe.model_dump(mode="json"), saved.model_dump(mode="json")
    ours["optim"].pop("epochs"), theirs["optim"].pop("epochs")
    if ours != theirs:
        diff = sorted(_diff_keys(theirs, ours))
        raise UserError(f"--resume: the recipe differs from {run.recipe} at {', '.join(diff)} (only optim.epochs may change)")


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


@contextmanager
def _stop_on_sigint():
    """The first Ctrl-C asks the loop to stop after the current step; a second one interrupts at once."""
    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        yield requested
        return
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def train(recipe: Recipe, run_dir: Path, resume: bool = False, device: torch.device | str = "cpu", progress: bool = True) -> str:
    device = torch.device(device)
    run = rundir.RunDir(Path(run_dir))
    _check_run_dir(run, recipe, resume)
    features = recipe.data.features
    check_params(features, FeatureParams())

    # Data: three training streams and synthetic_valid for model selection.
    streams = ThreeStreams(features, recipe.data.batch_size, recipe.seed, device, resident=device.type == "cuda")
    valid = load_split(features, "synthetic_valid")
    steps_per_epoch = min(streams.steps_per_epoch, recipe.optim.max_steps_per_epoch or streams.steps_per_epoch)
    lr_rampup = recipe.optim.rampup_epochs * steps_per_epoch
    const_rampup = recipe.consistency.rampup_epochs * steps_per_epoch

    torch.manual_seed(recipe.seed)
    model, teacher, optimizer = build_training(recipe, device)

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_f1": -1.0, "best_epoch": None, "sums": None}
    if resume:
        ckpt = torch.load(run.checkpoint("last"), map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        if teacher is not None:
            teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update({k: ckpt[k] for k in state})
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        # Epochs logged after last.pt was written (a crash between the two writes) are trained again.
        kept = [row for row in rundir.read_jsonl(run.metrics) if row["epoch"] <= state["epoch"]]
        rundir.write_text(run.metrics, "".join(json.dumps(row) + "\n" for row in kept))
    else:
        run.root.mkdir(parents=True, exist_ok=True)
    # The resolved recipe (epochs may have grown on resume) and the environment, before the first step.
    rundir.write_text(run.recipe, dump_recipe(recipe))
    rundir.write_json(run.env, rundir.environment(device))
    log = run.log.open("a")
    log.write(f"{'resume' if resume else 'start'} {recipe.name} seed {recipe.seed} on {device}: "
              f"{steps_per_epoch} steps/epoch, {recipe.optim.epochs} epochs\n")
    log.flush()

    def checkpoint(which: str) -> None:
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        rundir.save_checkpoint(run.checkpoint(which), {
            "model": model.state_dict(),
            "teacher": teacher.state_dict() if teacher is not None else None,
            "optimizer": optimizer.state_dict(),
            **state,
            "rng": rng,
            "recipe": recipe.model_dump(mode="json"),
        })

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[losses]}")]
    bar = Progress(*columns, disable=not progress, transient=True)
    try:
        with _stop_on_sigint() as sigint, bar:
            while state["epoch"] < recipe.optim.epochs:
                epoch = state["epoch"]
                task = bar.add_task(f"epoch {epoch + 1}/{recipe.optim.epochs}", total=steps_per_epoch,
                                    completed=state["step_in_epoch"], losses="")
                # Losses are summed on the device and read back only when shown or logged (no per-step sync).
                sums = torch.zeros(3, device=device) if state["sums"] is None else state["sums"].to(device)
                start = time.perf_counter()
                model.train()
                for batch in streams.epoch(epoch, start=state["step_in_epoch"], stop=steps_per_epoch):
                    step = state["global_step"]
                    lr = recipe.optim.lr * rampup(step, lr_rampup)
                    weight = recipe.consistency.weight * rampup(step, const_rampup)
                    losses = training_step(recipe, model, teacher, optimizer, batch, step, lr, weight)
                    sums += losses
                    state["global_step"] += 1
                    state["step_in_epoch"] += 1
                    done = state["step_in_epoch"]
                    if done % 10 == 0 or done == steps_per_epoch:
                        mean = (sums / done).tolist()
                        if not all(map(math.isfinite, mean)):
                            raise Diverged(
                                f"{recipe.name}: loss became {mean[2]} in epoch {epoch + 1} (step {step}); "
                                f"stopped, {run.checkpoint('last')} holds the last good epoch"
                            )
                        bar.update(task, completed=done, losses=f"class {mean[0]:.4f} const {mean[1]:.4f} w {weight:.3f}")
                    if sigint["stop"]:
                        state["sums"] = sums.cpu()
                        checkpoint("last")
                        raise Interrupted(
                            f"interrupted in epoch {epoch + 1} at step {done}/{steps_per_epoch}: saved "
                            f"{run.checkpoint('last')}; continue with --resume"
                        )
                bar.remove_task(task)

                mean = (sums / steps_per_epoch).tolist()
                valid_f1 = validate(model, valid, recipe, device)
                state.update(epoch=epoch + 1, step_in_epoch=0, sums=None)
                record = {
                    "epoch": epoch + 1, "step": state["global_step"],
                    "loss_class": mean[0], "loss_const": mean[1], "loss_total": mean[2],
                    "weight": weight, "lr": lr, "valid_f1": valid_f1, "time_s": round(time.perf_counter() - start, 3),
                }
                rundir.append_jsonl(run.metrics, record)
                if valid_f1 > state["best_f1"]:
                    state.update(best_f1=valid_f1, best_epoch=epoch + 1)
                    checkpoint("best")
                checkpoint("last")
                log.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()) + "\n")
                log.flush()
    finally:
        log.close()
    return (
        f"trained {recipe.name} seed {recipe.seed}: {state['epoch']} epochs, best synthetic_valid macro F1 "
        f"{state['best_f1']:.3f} (epoch {state['best_epoch']}) -> {run.root}"
    )


def load_model(run_dir: Path, which: str = "best", device: torch.device | str = "cpu") -> tuple[CRNN, dict]:
    """The student of a run's checkpoint, in eval mode, and the checkpoint dict (its epoch, recipe...)."""
    path = rundir.RunDir(Path(run_dir)).checkpoint(which)
    if not path.exists():
        raise UserError(f"{path} not found: train the run first (sedaug train)")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    recipe = validate_recipe(ckpt["recipe"], str(path))
    model = CRNN(recipe.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
