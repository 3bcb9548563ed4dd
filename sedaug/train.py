"""train(recipe, run_dir): the one training loop, read top to bottom (docs/architecture.md, "Training").

Per step: batch -> student on the clean input -> L_class -> perturbed prediction -> L_const -> Adam -> EMA.
Per epoch: predict synthetic_valid, keep best.pt by event-based macro F1, write last.pt and metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sedaug import watch
from sedaug.augment import SameDraws, consistency_views, mse
from sedaug.checkpoint import Checkpoint, TrainState, load_checkpoint, restore_training, save_checkpoint
from sedaug.data.batches import Batch, ThreeStreams
from sedaug.data.store import FeatureStore, Split
from sedaug.device import StepConfig, allow_tf32, check_runs_on, resolve_step_config
from sedaug.errors import Interrupted, UserError, counted, listed
from sedaug.evaluation.f1 import event_based_f1
from sedaug.evaluation.postprocess import decode
from sedaug.evaluation.predict import predict
from sedaug.files import absolute, write_json, write_text
from sedaug.model import CRNN
from sedaug.progress import STDERR
from sedaug.progress import shown as progress_shown
from sedaug.recipe import Recipe, dump_recipe, load_recipe, what_a_run_trains
from sedaug.rundir import (
    DIVERGED,
    EVALUATED_SPLITS,
    RUN_ENTRIES,
    RunDir,
    enclosing_run,
    environment,
    identity_changes,
    sedaug_data_holding,
)
from sedaug.strict_yaml import diff_keys


class Diverged(UserError):
    """A loss, or the model's validation outputs, became NaN or infinite in `epoch` (1-based) after `step` steps in
    all (metrics.jsonl's count); the last good checkpoint is kept."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step

    def __reduce__(self):  # picklable with its epoch and step (Ray ships a trial's exception to the driver)
        return type(self), (str(self), self.epoch, self.step)


def rampup(step: int, length: float) -> float:
    """dcase20's exp(-5 (1 - t/T)^2) ramp from ~0.0067 to 1 over T steps, then 1."""
    if length <= 0 or step >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - step / length) ** 2)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, step: int, decay: float) -> None:
    """Mean Teacher: teacher <- a teacher + (1 - a) student over parameters only, a = min(1 - 1/(step+1), decay),
    `step` counting the optimizer steps done, this one included (dcase20's global_step: a = 0.5 after the first)."""
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - alpha)


class Losses(NamedTuple):
    """L_class, L_const and the total L_class + w(t)·L_const: tensors from a step, floats as an epoch's means."""

    classification: torch.Tensor | float
    consistency: torch.Tensor | float
    total: torch.Tensor | float


@dataclass(frozen=True)
class TrainResult:
    """What `train` leaves behind: the run directory and its model selection."""

    run_dir: Path
    recipe: str
    seed: int
    epochs: int
    best_f1: float
    best_epoch: int | None
    step: str  # the step configuration optim.compile/precision resolved to, e.g. "compiled CNN, fp32"
    nothing_left: bool = False  # a --resume of a run that had trained all its epochs: nothing was done or written
    epochs_were: int | None = None  # with nothing_left, the optim.epochs recipe.yaml said before (an interrupted run
    # ended where it stopped), when the resume changed it
    short_rampups: str | None = None  # a ramp-up that outlasted the run, said after training (errors stay one line)


def consistency_loss(clean: tuple, perturbed: tuple, mean_teacher: bool, rows: slice) -> torch.Tensor:
    """`augment.mse` over `rows`, in float32; the reference side is detached.

    Mean Teacher pulls the student's clean prediction towards the teacher's perturbed one; l2/none pull the
    perturbed prediction towards the (detached) clean one.
    """
    clean = tuple(c[rows].float() for c in clean)
    perturbed = tuple(p[rows].float() for p in perturbed)
    if mean_teacher:
        return mse(clean, tuple(p.detach() for p in perturbed))
    return mse(tuple(c.detach() for c in clean), perturbed)


class Training(NamedTuple):
    """What a training step updates, and the step configuration it runs in."""

    model: CRNN
    teacher: CRNN | None
    optimizer: torch.optim.Optimizer
    config: StepConfig


@contextmanager
def _fitting_in_memory(recipe: Recipe, device: torch.device) -> Iterator[None]:
    """A model too large for the memory at hand (`--set model.rnn_hidden=1000000`) is one line, not torch's
    allocator's traceback."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        asked = re.search(r"allocate (\d+) bytes", str(err))
        if not isinstance(err, MemoryError) and not re.search(r"allocate|out of memory", str(err), re.IGNORECASE):
            raise
        size = f" (one of its weights alone is {int(asked[1]) / 2**30:,.0f} GiB)" if asked else ""
        raise UserError(f"{recipe.name}: the model does not fit in the memory of {device}{size}: model.cnn_filters, "
                        "model.kernel_size and model.rnn_hidden size it") from None


def build_training(
    recipe: Recipe, scaler: tuple[np.ndarray, np.ndarray], device: torch.device, steps: int | None = None,
    config: StepConfig | None = None,
) -> Training:
    """The student (with the feature store's scaler), its EMA teacher under Mean Teacher, Adam, and the step
    configuration `resolve_step_config` gives a run of `steps` steps on `device`, or `config` instead of the recipe's
    (benchmarks, tests); the CNNs compiled as it says."""
    config = config or resolve_step_config(recipe, device, steps)
    with _fitting_in_memory(recipe, device):
        model = CRNN(recipe.model)
        model.set_scaler(*scaler)
        model.to(device)
        teacher = None
        if recipe.regularization.type == "mean_teacher":
            # dcase20 builds its teacher as a second, independently initialised CRNN (not a copy of the student).
            teacher = CRNN(recipe.model).requires_grad_(False)
            teacher.set_scaler(*scaler)
            teacher.to(device)
    weight_decay = recipe.regularization.weight_decay if recipe.regularization.type == "l2" else 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.optim.lr, betas=recipe.optim.betas, weight_decay=weight_decay)
    if config.compile:
        # One graph per pass kind (train/eval, VAT's record/replay, precision, batch shape), for every model this
        # process compiles (a sweep's trials): past dynamo's default of 8, a frame silently runs eager (slower; the
        # masks are the same, sedaug.model.CRNN.compile_cnn).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for net in filter(None, (model, teacher)):
            net.compile_cnn(config.compile)
    return Training(model, teacher, optimizer, config)


def training_step(recipe: Recipe, training: Training, batch: Batch, step: int, lr: float, weight: float) -> Losses:
    """One optimizer step (and EMA update) on one batch, in `training.config`; returns the detached losses."""
    model, teacher, optimizer, config = training
    if config.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration: CUDA graphs may reuse the last step's outputs
    for group in optimizer.param_groups:
        group["lr"] = lr
    u, w = batch.n_unlabeled, batch.n_weak
    aug = recipe.augmentation
    same_draws = SameDraws(model, batch.mels.device) if aug.type == "vat" and aug.dropout == "shared" else None
    # TF32 is read as each kernel runs: the backward pass runs in the step's precision too.
    with allow_tf32(config.tf32):
        with torch.autocast(batch.mels.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            with same_draws.recording() if same_draws else nullcontext():
                clean = model(batch.mels)
            if aug.type != "none":
                views = consistency_views(aug, model, teacher, clean, batch.mels, same_draws,
                                          update_batchnorm=recipe.consistency.update_batchnorm, frames=batch.frames)
        # Losses in float32 outside autocast (binary_cross_entropy is not autocast-safe).
        strong, weak = clean[0].float(), clean[1].float()
        # A non-finite output would crash binary_cross_entropy (an assert on CUDA): it sees 0.5 instead, and the
        # losses become NaN, which the loop reads back every 10 steps and stops on as "diverged". No host sync here.
        finite = torch.isfinite(strong).all() & torch.isfinite(weak).all()
        strong, weak = torch.where(finite, strong, 0.5), torch.where(finite, weak, 0.5)
        nan_if_not_finite = torch.where(finite, 0.0, float("nan"))
        loss_class = F.binary_cross_entropy(strong[u + w :], batch.strong_labels) + F.binary_cross_entropy(
            weak[u : u + w], batch.weak_labels
        ) + nan_if_not_finite
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
            ema_update(teacher, model, step + 1, recipe.regularization.ema_decay)  # dcase20 counts this step first
        return Losses(loss_class.detach(), loss_const.detach(), loss.detach())


def validate(model: CRNN, split: Split, recipe: Recipe, device: torch.device, on_batch=None) -> float | None:
    """Event-based macro F1 on `split` (synthetic_valid): the model selection of dcase20. None when the model's
    outputs are not finite (an update blew the weights up after the epoch's last loss was read)."""
    strong = predict(model, split.mels, recipe.eval.batch_size, device, on_batch=on_batch)
    if not np.isfinite(strong).all():
        return None
    detections = decode(strong, split.filenames, recipe.eval.threshold, recipe.eval.median_window, split.durations)
    f1 = event_based_f1(detections, split.events, split.filenames)["macro"]
    return f1 if math.isfinite(f1) else 0.0  # no class has a reference event: nothing to select on


def _start(run: RunDir, recipe: Recipe, store: FeatureStore, resume: bool, device: torch.device,
           epochs_given: bool) -> Checkpoint | None:
    """The checkpoint training continues from, or None to start from scratch. Refuses a run directory that holds
    another run or lost its last.pt, a resume with another recipe (`what_a_run_trains`: optim.epochs and paper_row
    may differ), other optim.epochs than the run's not given for this call, fewer epochs than the run has trained
    or begun, and another feature store than the run's."""
    last = run.checkpoint("last")
    if not last.exists() and not run.is_empty() and not _first_epoch_unsaved(run):
        trained = run.trained_outputs()
        if trained:  # last.pt removed (to save disk, say): a restart from scratch would throw these away
            copy = ("; or copy best.pt to last.pt and --resume from best.pt's epoch (the epochs after it are trained "
                    "again)") if run.checkpoint("best").exists() else ""
            raise UserError(
                f"{run.root} has no {last.relative_to(run.root)} to continue from, but holds {', '.join(trained)}: "
                f"nothing was changed. Put last.pt back{copy}; or train into another --runs or seed")
    foreign = sorted(p.name for p in run.root.iterdir() if p.name not in RUN_ENTRIES
                     and not p.name.startswith((".", "events.out.tfevents"))) if run.root.is_dir() else []
    if foreign and not run.recipe.exists():  # what train writes first: without it, a folder of something else
        raise UserError(f"{run.root} holds {listed(foreign)}, which no run holds: give another --runs or seed")
    if not resume:
        if run.is_empty():
            return None
        if last.exists():
            raise UserError(f"{run.root} holds a run: pass --resume to continue it, or change seed/--runs")
        raise UserError(f"{run.root} holds a run that stopped before it saved its first epoch (no {last}): "
                        "pass --resume to restart it from scratch")
    if not last.exists():  # no epoch was saved: --resume restarts the run from scratch, of the same recipe
        recorded = load_recipe(run.recipe) if run.recipe.exists() else None
        diff = [] if recorded is None else _recipe_diff(recipe, recorded)
        if diff:
            raise UserError(f"--resume: the recipe differs from {run.recipe}'s at {', '.join(diff)} (only optim.epochs "
                            f"and paper_row may change); no epoch was saved there (no {last.name}): remove {run.root} "
                            "to start it with this recipe")
        if recorded is not None:
            _check_epochs(run, recipe, recorded, epochs_given)
        # Said before the first step: a typo in --runs would start a new run of hundreds of epochs unnoticed.
        STDERR.print(f"--resume: no {last.relative_to(run.root)} in {run.root}: training it from the start",
                     highlight=False, markup=False, soft_wrap=True)
        return None
    ckpt = load_checkpoint(last, device)  # its recipe is the run's, whatever became of recipe.yaml
    diff = _recipe_diff(recipe, ckpt.recipe)
    if diff:
        raise UserError(f"--resume: the recipe differs from {last}'s at {', '.join(diff)} (only optim.epochs and paper_row may change)")
    begun = ckpt.state.epoch + (ckpt.state.step_in_epoch > 0)  # an interrupted epoch counts: it is half trained
    _check_epochs(run, recipe, ckpt.recipe, epochs_given)
    if recipe.optim.epochs < begun:
        what = "trained" if begun == ckpt.state.epoch else f"begun (interrupted in epoch {begun})"
        raise UserError(f"--resume: optim.epochs {recipe.optim.epochs} is below the {begun} epochs {run.root} has "
                        f"{what}: resume with optim.epochs >= {begun}")
    if ckpt.features is not None and (changed := identity_changes(ckpt.features, store.identity)):
        raise UserError(f"--resume: {store.path} is not the feature store {ckpt.path} was trained on ({', '.join(changed)} "
                        "changed since): resume on that store, or train anew into another --runs")
    return ckpt


def _check_epochs(run: RunDir, recipe: Recipe, recorded: Recipe, epochs_given: bool) -> None:
    """Refuse a resume whose optim.epochs differs from the run's where it was not asked for (a recipe file's 200
    would silently extend a run of 30)."""
    if not epochs_given and recipe.optim.epochs != recorded.optim.epochs:
        raise UserError(f"--resume: {run.root} is a run of {counted(recorded.optim.epochs, 'epoch')} and the recipe "
                        f"says optim.epochs {recipe.optim.epochs}: add --set optim.epochs={recipe.optim.epochs} to "
                        f"train it that long, or --set optim.epochs={recorded.optim.epochs} to keep it as it was")


def _first_epoch_unsaved(run: RunDir) -> bool:
    """Whether the run stopped at the end of its first epoch between its row in metrics.jsonl and last.pt (killed
    there, or a full disk; best.pt may be written): train.log's line of the epoch, written after last.pt, is not
    there. Nothing to continue from, and a restart throws away only that epoch, which it trains again; a last.pt
    removed after the epoch ended is another matter (`_start` refuses that run)."""
    try:
        rows, log = run.metric_rows(), run.log.read_text(encoding="utf-8", errors="replace")
    except (UserError, OSError):
        return False
    evaluated = any(run.split(name).exists() for name in EVALUATED_SPLITS)
    logged = any(line.startswith("epoch 1 ") for line in log.splitlines())
    return [row["epoch"] for row in rows] == [1] and not evaluated and not logged


def _recipe_diff(ours: Recipe, theirs: Recipe) -> list[str]:
    """The keys at which a resumed run's recipe differs from the run's."""
    return sorted(diff_keys(what_a_run_trains(theirs), what_a_run_trains(ours)))


@contextmanager
def _stop_requests(sigterm: bool):
    """The first Ctrl-C (and SIGTERM where asked: a batch system's or `timeout`'s stop) asks the loop to stop after
    the current step (sent in validation: once the epoch is saved); a second one interrupts at once. Yields
    {"stop": the signal's name once one came, else None}."""
    requested: dict[str, str | None] = {"stop": None}

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        STDERR.print(f"{requested['stop']}: stopping once last.pt is saved ({requested['stop']} again stops at once)",
                     highlight=False, soft_wrap=True)

    signals = [signal.SIGINT, *([signal.SIGTERM] if sigterm else [])]
    try:
        previous = {signum: signal.signal(signum, handler) for signum in signals}
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        yield requested
        return
    try:
        yield requested
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def _interrupted(message: str, requested: dict[str, str | None]) -> Interrupted:
    err = Interrupted(message)
    err.exit_code = 143 if requested["stop"] == "SIGTERM" else 130  # the shell's 128 + the signal's number
    return err


def train(
    recipe: Recipe,
    run_dir: Path,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    epochs_given: bool = True,
    stop_on_sigterm: bool = False,
) -> TrainResult:
    """Train `recipe` into `run_dir` (RUNS/<name>/seed<k>), which this process holds locked meanwhile.

    `on_epoch(record)` is called after each epoch once its metrics.jsonl row and checkpoints are written (a sweep
    trial reports to Ray Tune there); whatever it raises ends training and propagates, last.pt holding that epoch.
    `epochs_given`: whether optim.epochs was chosen for this call (the CLI: `--set optim.epochs`); where not, a
    resume whose recipe has other optim.epochs than the run's is refused (a recipe file's 200 would silently extend
    a run of 30). `stop_on_sigterm`: SIGTERM stops training as Ctrl-C does, last.pt saved (the CLI's; a sweep's
    trial leaves its signals to Ray).
    """
    run, device = RunDir(Path(run_dir)), torch.device(device)
    if recipe.name.endswith("_ensemble"):  # table would average this run into the ensemble's row
        raise UserError(f"{recipe.name}: a name ending in _ensemble is an ensemble's (`sedaug evaluate --ensemble`): "
                        "give the recipe another name")
    if (held := sedaug_data_holding(run.root.parent)) is not None:
        raise UserError(f"--runs: {run.root} would be in {held}: give --runs a folder outside it")
    if (outer := enclosing_run(run.root.parent)) is not None:  # `table` would count it twice, `rm -r` remove both
        raise UserError(f"--runs: {run.root} would be inside the run {outer}: give --runs a folder outside it")
    # The run records its store absolute: evaluate, table --ci and detect may run from another directory.
    recorded = _recorded(run)
    features = _same_spelling(recorded, absolute(recipe.data.features))
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"features": features})})
    check_runs_on(recipe, device)
    store = FeatureStore(recipe.data.features)
    with run.lock():  # a refusal under it leaves no folder or lock file behind
        ckpt = _start(run, recipe, store, resume, device, epochs_given)
        if ckpt is not None and ckpt.state.epoch >= recipe.optim.epochs and not ckpt.state.step_in_epoch:
            return _nothing_left(run, recipe, ckpt, recorded)
        return _train(recipe, run, store, ckpt, device, progress, on_epoch, stop_on_sigterm)


def _short_rampups(recipe: Recipe, steps: int, lr_rampup: int, const_rampup: int) -> str | None:
    """Where a ramp-up outlasts the run (a recipe of 200 epochs shortened with --set optim.epochs), what the
    learning rate or the consistency weight ends at, for `sedaug train` to say after training; else None."""
    short = [(key, f"{name} ends at {rampup(steps - 1, length):.1%} of {value}")
             for key, name, value, length in (("optim.rampup_epochs", "the learning rate", "optim.lr", lr_rampup),
                                              ("consistency.rampup_epochs", "the consistency weight",
                                               "consistency.weight", const_rampup))
             if length > steps and (key == "optim.rampup_epochs" or recipe.augmentation.type != "none")]
    if not short:
        return None
    one = len(short) == 1
    return (f"{' and '.join(k for k, _ in short)} outlast{'s' if one else ''} the run's "
            f"{counted(recipe.optim.epochs, 'epoch')}: {', '.join(t for _, t in short)} (--set "
            f"{'it' if one else 'them'} below optim.epochs for a short run)")


def _recorded(run: RunDir) -> Recipe | None:
    """The run's recipe.yaml, or None where there is none to read (a new run)."""
    try:
        return load_recipe(run.recipe)
    except UserError:
        return None


def _same_spelling(recorded: Recipe | None, features: Path) -> Path:
    """The run's recorded path of its store where `features` is another path to the same folder (`data/../data`, a
    link): a resume that finds the store so changes nothing."""
    try:
        same = recorded is not None and os.path.samefile(recorded.data.features, features)
    except OSError:  # no store there: the path as given
        same = False
    return recorded.data.features if same else features


def _nothing_left(run: RunDir, recipe: Recipe, ckpt: Checkpoint, recorded: Recipe | None) -> TrainResult:
    """A resume of a run that has trained all its epochs: nothing to train; its recipe.yaml takes what may change."""
    was = None if recorded is None else recorded.optim.epochs
    if not run.recipe.is_file() or run.recipe.read_text(encoding="utf-8") != dump_recipe(recipe):  # a new paper_row, say
        write_text(run.recipe, dump_recipe(recipe))
    return TrainResult(run.root, recipe.name, recipe.seed, ckpt.state.epoch, ckpt.state.best_f1, ckpt.state.best_epoch,
                       "", nothing_left=True, epochs_were=was if was is not None and was != recipe.optim.epochs else None)


def _restore(
    run: RunDir, ckpt: Checkpoint | None, training: Training, device: torch.device
) -> tuple[TrainState, list[dict]]:
    """The training state and metrics.jsonl's rows to continue from: last.pt's, or a fresh start's."""
    if ckpt is None:
        run.checkpoint("best").unlink(missing_ok=True)  # a restart from scratch: no model from an earlier start
        return TrainState(), []
    state = restore_training(ckpt, training.model, training.teacher, training.optimizer, device)  # one line if unfit
    # Epochs logged after last.pt was written (a crash between the two writes) are trained again.
    return state, run.metric_rows(upto=state.epoch)


def _progress_bar(progress: bool) -> Progress:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[losses]}")]
    return Progress(*columns, disable=not progress_shown(progress), transient=True, console=STDERR)


def _log_line(record: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()) + "\n"


def _train(
    recipe: Recipe,
    run: RunDir,
    store: FeatureStore,
    ckpt: Checkpoint | None,
    device: torch.device,
    progress: bool,
    on_epoch: Callable[[dict], None] | None,
    stop_on_sigterm: bool,
) -> TrainResult:
    """Train the run's remaining epochs from `ckpt` (None: from the start), writing the run directory as it goes."""
    # Data: three training streams and synthetic_valid for model selection.
    streams = ThreeStreams(store, recipe.data.batch_size, recipe.seed, device, resident=device.type == "cuda")
    valid = store.split("synthetic_valid")
    steps_per_epoch = min(streams.steps_per_epoch, recipe.optim.max_steps_per_epoch or streams.steps_per_epoch)
    lr_rampup = recipe.optim.rampup_epochs * steps_per_epoch
    const_rampup = recipe.consistency.rampup_epochs * steps_per_epoch

    def schedule(step: int) -> tuple[float, float]:
        """The learning rate and the consistency weight at a global step."""
        return recipe.optim.lr * rampup(step, lr_rampup), recipe.consistency.weight * rampup(step, const_rampup)

    short_rampups = _short_rampups(recipe, recipe.optim.epochs * steps_per_epoch, lr_rampup, const_rampup)

    torch.manual_seed(recipe.seed)
    training = build_training(recipe, store.scaler(), device, steps=recipe.optim.epochs * steps_per_epoch)
    model, teacher, optimizer = training.model, training.teacher, training.optimizer

    state, metrics = _restore(run, ckpt, training, device)
    (run.root / DIVERGED).unlink(missing_ok=True)  # trained again (a sweep never does: its divergence is a result)
    # The resolved recipe (epochs may have grown on resume), the metrics so far and the environment, before the
    # first step.
    write_text(run.recipe, dump_recipe(recipe))
    run.write_metrics(metrics)
    config = training.config  # what optim.compile/precision (auto) resolved to: on record beside the environment
    write_json(run.env, {**environment(device), "step": asdict(config), "features": store.identity})
    log = run.log.open("a", encoding="utf-8")
    log.write(f"{'resume' if ckpt is not None else 'start'} {recipe.name} seed {recipe.seed} on {device}: "
              f"{steps_per_epoch} steps/epoch, {recipe.optim.epochs} epochs; {config}\n"
              + (f"note: {short_rampups}\n" if short_rampups else ""))
    log.flush()
    board = watch.Board(run, purge_from=state.epoch + 1)

    def saved() -> str:
        return (f"{run.checkpoint('last')} holds epoch {state.epoch}" if run.checkpoint("last").exists()
                else "no epoch had ended, nothing was saved")

    def checkpoint(which: str) -> None:
        save_checkpoint(run.checkpoint(which), model=model, teacher=teacher, optimizer=optimizer, state=state,
                        recipe=recipe, device=device, features=store.identity)

    drawn: list[int] = []  # the number of epochs train_curves.png shows, once drawn

    def draw_curves() -> None:
        watch.plot_train_curves(metrics, run.curves, consistency=recipe.augmentation.type != "none")
        drawn.append(len(metrics))

    bar = _progress_bar(progress)
    first_epoch = state.epoch
    requested: dict[str, str | None] = {"stop": None}  # until the handlers are in
    try:
        with _stop_requests(stop_on_sigterm) as requested, bar:
            while state.epoch < recipe.optim.epochs:
                if requested["stop"]:  # sent during the previous epoch's validation or checkpoints
                    raise _interrupted(f"interrupted after epoch {state.epoch}: {saved()}; continue with the same "
                                       "command and --resume", requested)
                epoch = state.epoch
                compiling = config.compile is not None and epoch == first_epoch  # this process's first steps
                task = bar.add_task(f"epoch {epoch + 1}/{recipe.optim.epochs}", total=steps_per_epoch,
                                    completed=state.step_in_epoch,
                                    losses="compiling the CNN: the first steps take a while" if compiling else "")
                # Losses are summed on the device and read back only when shown or logged (no per-step sync).
                sums = torch.zeros(3, device=device) if state.loss_sums is None else state.loss_sums.to(device)
                start = time.perf_counter()
                model.train()
                for batch in streams.epoch(epoch, start=state.step_in_epoch, stop=steps_per_epoch):
                    step = state.global_step
                    lr, weight = schedule(step)
                    sums += torch.stack(training_step(recipe, training, batch, step, lr, weight))
                    state.global_step += 1
                    state.step_in_epoch += 1
                    done = state.step_in_epoch
                    if done % 10 == 0 or done == steps_per_epoch:
                        mean = Losses(*(sums / done).tolist())
                        if not all(map(math.isfinite, mean)):
                            raise Diverged(f"{recipe.name}: loss became {mean.total} in epoch {epoch + 1} (step "
                                           f"{state.global_step}): stopped; {saved()}", epoch + 1, state.global_step)
                        bar.update(task, completed=done, losses=f"class {mean.classification:.4f} "
                                   f"const {mean.consistency:.4f} w {weight:.3f}")
                    if requested["stop"]:
                        if not torch.isfinite(sums).all():  # never save a diverged model
                            raise Diverged(f"{recipe.name}: loss became NaN in epoch {epoch + 1}: stopped; {saved()}",
                                           epoch + 1, state.global_step)
                        state.loss_sums = sums.cpu()
                        checkpoint("last")
                        raise _interrupted(
                            f"interrupted in epoch {epoch + 1} at step {done}/{steps_per_epoch}: saved "
                            f"{run.checkpoint('last')}; continue with the same command and --resume", requested
                        )
                bar.remove_task(task)

                mean = Losses(*(sums / steps_per_epoch).tolist())
                lr, weight = schedule(state.global_step - 1)  # the epoch's last step (resumed after it: no step ran)
                task = bar.add_task(f"epoch {epoch + 1}: synthetic_valid", total=len(valid), losses="")
                valid_f1 = validate(model, valid, recipe, device, on_batch=lambda n, task=task: bar.advance(task, n))
                bar.remove_task(task)
                if valid_f1 is None:
                    raise Diverged(f"{recipe.name}: the model's outputs on synthetic_valid became NaN or infinite in "
                                   f"epoch {epoch + 1} (step {state.global_step}): stopped; {saved()}", epoch + 1,
                                   state.global_step)
                state.epoch, state.step_in_epoch, state.loss_sums = epoch + 1, 0, None
                record = {
                    "epoch": epoch + 1, "step": state.global_step,
                    "loss_class": mean.classification, "loss_const": mean.consistency, "loss_total": mean.total,
                    "weight": weight, "lr": lr, "valid_f1": valid_f1, "time_s": round(time.perf_counter() - start, 3),
                }
                metrics.append(record)
                run.write_metrics(metrics)
                board.epoch(record)
                if valid_f1 > state.best_f1:
                    state.best_f1, state.best_epoch = valid_f1, epoch + 1
                    checkpoint("best")
                checkpoint("last")
                log.write(_log_line(record))  # after last.pt: `_first_epoch_unsaved` reads it
                log.flush()
                if on_epoch is not None:
                    if state.epoch == recipe.optim.epochs:  # Ray Tune may end a trial's process once it reports
                        draw_curves()
                    on_epoch(record)
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): out at once, mid-step
        raise _interrupted(f"interrupted again: stopped at once; {saved()}", requested) from None
    except Diverged as e:  # a result: `table` counts the run as diverged, `evaluate` does not score its checkpoints
        write_json(run.root / DIVERGED, {"epoch": e.epoch, "step": e.step, "message": str(e)})
        raise
    finally:
        # Ctrl-C again while the curves are drawn: what was said above stands (last.pt is saved), not a bare one.
        with contextlib.suppress(KeyboardInterrupt):
            log.close()
            board.close()
            if metrics and drawn[-1:] != [len(metrics)]:
                draw_curves()
    return TrainResult(run.root, recipe.name, recipe.seed, state.epoch, state.best_f1, state.best_epoch, str(config),
                       short_rampups=short_rampups)
