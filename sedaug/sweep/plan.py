"""What a sweep will run, known before Ray starts: the search trials (each matched with the folder that already holds
its resolved recipe, so that a resumed sweep whose search keys changed keeps what it ran), the final runs, each
trial's resources (a default `memory` from the model, batch and family), and `--dry-run`'s estimate of the cost from
a few training steps timed on this machine's device (docs/sweeps.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedaug.errors import UserError, counted, listed
from sedaug.recipe import Recipe, load_recipe, validate_recipe, what_a_run_trains
from sedaug.rundir import RunDir
from sedaug.strict_yaml import get_key
from sedaug.sweep.cluster import local_resources, resources_short, usable_cpus
from sedaug.sweep.spec import LoadedSweep, Space, apply_params, grid_settings, refused_settings
from sedaug.sweep.trial import checkpointed_metrics, search_dir, setting_id

GIB = 2**30


# ---------------------------------------------------------------------------------------------- the trials


def settings(loaded: LoadedSweep, name: str) -> list[dict[str, Any]]:
    """The grid's settings, or `trials` random ones drawn by Ray Tune's samplers from the algorithm's seed and the
    row's name (the same list every time, whatever rows the sweep has around it, so that --resume finds the same
    trials); duplicates drawn twice are run once. Optuna's are not known in advance: []."""
    sweep, space = loaded.sweep, loaded.spaces[name]
    if sweep.algorithm.type == "grid":
        return grid_settings(space)
    if sweep.algorithm.type == "optuna":
        return []
    import zlib

    import numpy as np

    rng = np.random.default_rng([sweep.algorithm.seed, zlib.crc32(name.encode())])
    found: dict[str, dict] = {}
    for _ in range(sweep.algorithm.trials):
        params = {key: sample(dom, rng) for key, dom in space.items()}
        found.setdefault(setting_id(params), params)
    return list(found.values())


def check_drawn(loaded: LoadedSweep) -> None:
    """Refuse, before anything is written, a random sweep's drawn setting that the recipe refuses (values that pass
    one by one may not together), as load_sweep refuses a grid's and an all-choice Optuna space's."""
    if loaded.sweep.algorithm.type != "random":
        return
    problems = [line for i, (name, base) in enumerate(loaded.bases.items())
                for line in refused_settings(base, name, settings(loaded, name), f"{loaded.path}: recipes[{i}].search",
                                             "the drawn setting")]
    if problems:
        raise UserError("\n".join(problems))


def optuna_trials(loaded: LoadedSweep, name: str) -> int:
    """An Optuna row's budget: its `trials`, or the base recipe's one trial where it searches nothing."""
    return loaded.sweep.algorithm.trials if loaded.spaces[name] else 1


def _optuna_trainings(loaded: LoadedSweep, name: str) -> int:
    """The trials an Optuna row trains at most: its budget, or where every key is a choice, the settings there are
    (a suggestion made again shares its folder)."""
    space = loaded.spaces[name].values()
    settings = math.prod(len({json.dumps(v, sort_keys=True) for v in d.choice}) for d in space) \
        if all(d.kind == "choice" for d in space) else math.inf
    return int(min(optuna_trials(loaded, name), settings))


def domain(dom: Space):
    from ray import tune

    if dom.kind == "choice":
        return tune.choice(dom.choice)
    if dom.kind == "uniform":
        return tune.uniform(*dom.uniform)
    return tune.loguniform(*dom.loguniform)


def sample(dom: Space, rng) -> Any:
    value = domain(dom).sample(random_state=rng)
    return value.item() if hasattr(value, "item") else value  # numpy scalars -> plain numbers (YAML, JSON)


def _fits(params: dict[str, Any], space: dict[str, Space]) -> bool:
    """Whether an Optuna trial on disk lies in the (possibly edited) search space."""
    if set(params) != set(space):
        return False
    for key, dom in space.items():
        value = params[key]
        if dom.kind in ("choice", "grid"):
            if value not in (dom.choice or dom.grid):
                return False
        elif not isinstance(value, int | float) or not (dom.uniform or dom.loguniform)[0] <= value <= (
                dom.uniform or dom.loguniform)[1]:
            return False
    return True


def _canonical(raw: dict) -> str:
    """A resolved recipe as a comparable string (a trial's recipe.yaml may hold fewer epochs)."""
    return json.dumps(what_a_run_trains(validate_recipe(raw)), sort_keys=True)


@dataclass
class SearchPlan:
    trials: list[dict]  # {stage, recipe, seed, params, setting} per grid/random trial, in the sweep's order
    on_disk: dict[str, list[Path]] = field(default_factory=dict)  # recipe -> the trial folders selection reads
    ignored: list[Path] = field(default_factory=list)  # trial folders of settings (or rows) no longer in the sweep

    def note(self, out: Path) -> str | None:
        if not self.ignored:
            return None
        return (f"{counted(len(self.ignored), 'search trial')} of settings no longer in the sweep left on disk, ignored "
                f"by selection ({listed(p.relative_to(out) for p in self.ignored)})")


def plan_search(loaded: LoadedSweep, out: Path) -> SearchPlan:
    """Every search trial of the sweep, each pointed at the folder that holds its resolved recipe when one exists
    (its own setting id, or a folder of an earlier version of the sweep file with the same recipe)."""
    sweep, seed = loaded.sweep, loaded.sweep.trial_seed
    plan = SearchPlan([])
    for name in loaded.bases:
        existing = sorted(p for p in (Path(out) / "search" / name).glob(f"*/seed{seed}") if RunDir(p).recipe.is_file())
        used: set[Path] = set()
        if sweep.algorithm.type == "optuna":
            from sedaug.strict_yaml import read_yaml

            for run_dir in existing:
                raw = read_yaml(RunDir(run_dir).recipe, "trial recipe")
                params = {k: get_key(raw, k) for k in loaded.spaces[name] if _has(raw, k)}
                if _fits(params, loaded.spaces[name]):
                    used.add(run_dir)
        else:
            by_recipe: dict[str, Path] | None = None
            for params in settings(loaded, name):
                run_dir = search_dir(out, name, params, seed)
                if run_dir not in existing:
                    if by_recipe is None:  # read only when an edited sweep needs it
                        by_recipe = _index(existing)
                    run_dir = by_recipe.get(_canonical(apply_params(loaded.bases[name], params, seed)), run_dir)
                plan.trials.append({"stage": "search", "recipe": name, "seed": seed, "params": params,
                                    "setting": run_dir.parent.name})
                used.add(run_dir)
        plan.on_disk[name] = [p for p in existing if p in used]
        plan.ignored += [p for p in existing if p not in used]
    for row in sorted((Path(out) / "search").glob("*")):
        if row.is_dir() and row.name not in loaded.bases:
            plan.ignored += sorted(p for p in row.glob(f"*/seed{seed}") if p.is_dir())
    return plan


_ABSENT = object()


def _has(raw: dict, key: str) -> bool:
    return get_key(raw, key, _ABSENT) is not _ABSENT


def _index(run_dirs: list[Path]) -> dict[str, Path]:
    from sedaug.errors import UserError
    from sedaug.strict_yaml import read_yaml

    index = {}
    for run_dir in run_dirs:
        try:
            index.setdefault(_canonical(read_yaml(RunDir(run_dir).recipe, "trial recipe")), run_dir)
        except UserError:
            continue  # not a recipe this sedaug reads: not a match
    return index


def same_recipe(run_dir: Path, base: dict, params: dict[str, Any], seed: int) -> bool:
    """Whether a run directory holds the resolved recipe of `params` on `seed` (epochs aside)."""
    from sedaug.errors import UserError
    from sedaug.strict_yaml import read_yaml

    try:
        held = _canonical(read_yaml(RunDir(Path(run_dir)).recipe, "trial recipe"))
    except UserError:
        return False
    return held == _canonical(apply_params(base, params, seed))


def final_trials(loaded: LoadedSweep, chosen: dict) -> list[dict]:
    """Each winner on every seed, evaluated on eval; the search seed's run, if it is a final seed, is the winner's
    search run (copied: same recipe, same seed)."""
    sweep, trials = loaded.sweep, []
    for name, w in chosen.items():
        for seed in sweep.seeds:
            trial = {"stage": "final", "recipe": name, "seed": seed, "params": w.params, "evaluate": "eval"}
            if seed == sweep.trial_seed and w.complete:
                trial["copy_from"] = str(w.run_dir)
            trials.append(trial)
    return trials


# ---------------------------------------------------------------------------------------------- resources


def _activation_elements(recipe: Recipe) -> int:
    """Elements of the CNN's block outputs for one clip (each block keeps ~8 tensors of its input's size for the
    backward pass: conv, batch norm, the gated unit's linear, sigmoid and product, dropout, its mask, the pool)."""
    from sedaug.data.grid import PARAMS

    frames, bands, total = PARAMS.n_frames, PARAMS.n_mels, 0
    for channels, (pool_t, pool_f) in zip(recipe.model.cnn_filters, recipe.model.cnn_pooling, strict=True):
        total += 8 * channels * frames * bands
        frames, bands = frames // pool_t, bands // pool_f
    return total + 12 * frames * recipe.model.rnn_hidden * recipe.model.rnn_layers


def graph_passes(recipe: Recipe) -> int:
    """Forward passes whose graphs the backward holds: the clean one, and the perturbed one where it is the
    student's (l2, none); adversarial and VAT also hold the clean graph beside their direction pass."""
    aug, reg = recipe.augmentation.type, recipe.regularization.type
    if aug == "none" or (reg == "mean_teacher" and aug not in ("adversarial", "vat")):
        return 1
    return 2


def default_memory(recipe: Recipe, gpus: float) -> int:
    """Ray's `memory` request of one trial, in bytes (rounded up to 1/4 GiB): the process (PyTorch, Python, on a
    GPU its CUDA libraries) and, on CPU, the activations of a step with 30 % for the allocator and the gradients.
    The feature store is not counted: a CPU trial maps it (page cache, shared by the node's trials), a GPU trial
    copies it to device memory. Checked against measured peaks by benchmarks/trial_memory.py (docs/sweeps.md)."""
    if gpus > 0:
        need = 3.0 * GIB
    else:
        per_clip = 4 * _activation_elements(recipe) * (0.5 if recipe.optim.precision == "bf16" else 1.0)
        need = 1.0 * GIB + 1.3 * recipe.data.batch_size * per_clip * graph_passes(recipe)
    return int(math.ceil(need / (GIB / 4)) * (GIB / 4))


def trial_resources(loaded: LoadedSweep) -> dict[str, dict[str, float]]:
    """Per recipe, what each of its trials asks Ray for: CPUs, GPU (a fraction shares one), memory in bytes."""
    res = loaded.sweep.resources
    out = {}
    for name, base in loaded.bases.items():
        memory = res.memory * GIB if res.memory is not None else default_memory(validate_recipe(base), res.gpus)
        out[name] = {"cpu": res.cpus, "gpu": res.gpus, "memory": int(memory)}
    return out


# ---------------------------------------------------------------------------------------------- --dry-run


@dataclass
class RowCost:
    recipe: str
    trials: int
    finals: int
    copied: int  # final runs that are the winner's search run (the search seed is a final seed)
    epochs: int
    steps: int  # per epoch (of the first setting)
    step_s: float | None  # measured on this machine's device
    memory: int
    # Steps per epoch of each search trial where they differ between settings (a searched data.batch_size or
    # optim.max_steps_per_epoch); a final run counts the most. Empty: every trial has `steps`.
    each_steps: tuple[int, ...] = ()
    done_steps: int = 0  # on --resume: the training steps on disk already, or no longer needed (a stopped trial's)

    @property
    def left_hours(self) -> float | None:
        if self.trial_hours is None:
            return None
        return max(0.0, self.trial_hours - self.done_steps * self.step_s / 3600)

    @property
    def trial_hours(self) -> float | None:
        if self.step_s is None:
            return None
        if not self.each_steps:
            return (self.trials + self.finals - self.copied) * self.epochs * self.steps * self.step_s / 3600
        steps = sum(self.each_steps) + (self.finals - self.copied) * max(self.each_steps)
        return steps * self.epochs * self.step_s / 3600


@dataclass
class DryRun:
    name: str
    rows: list[RowCost]
    device: str
    seeds: list[int]
    search_seed: int
    notes: list[str]
    recipes: dict[str, Recipe] = field(default_factory=dict)  # row -> the recipe its steps are timed with
    cpus: int = 1

    def header(self) -> str:
        trials, finals = sum(r.trials for r in self.rows), sum(r.finals for r in self.rows)
        return (f"sweep {self.name}: {counted(trials, 'search trial')} (seed {self.search_seed}) and "
                f"{counted(finals, 'final run')} (seed{'s' * (len(self.seeds) != 1)} "
                f"{', '.join(map(str, self.seeds))}) -- nothing is started")

    def row_line(self, r: RowCost) -> str:
        width = max(len(row.recipe) for row in self.rows)
        time_s = "" if r.step_s is None else f", {r.step_s:.3g} s/step -> {_duration(r.trial_hours)}"
        copied = f" ({r.copied} the search run)" if r.copied else ""
        trials = f"{r.trials:>4} trial{'s' if r.trials != 1 else ' '}"
        steps = f"{min(r.each_steps)}-{max(r.each_steps)}" if r.each_steps else r.steps
        return (f"  {r.recipe:<{width}}  {trials} + {r.finals} final{copied} x {counted(r.epochs, 'epoch')} x "
                f"{steps} step{'s' * (steps != 1)}{time_s}, memory {r.memory / GIB:.3g} GiB")

    def footer(self) -> list[str]:
        total = [r.trial_hours for r in self.rows]
        out = []
        if all(h is not None for h in total):
            out.append(f"  total: {_duration(sum(total))} of training steps summed over the trials on {self.device} (timed alone; "
                       "validation, evaluation and trials sharing a device add to it)")
            if any(r.done_steps for r in self.rows):
                out.append(f"  left: {_duration(sum(r.left_hours for r in self.rows))} (what --resume finds "
                           "done taken off)")
        return out + self.notes

    def lines(self) -> list[str]:
        return [self.header(), *map(self.row_line, self.rows), *self.footer()]

    def timed(self) -> Iterator[RowCost]:
        """Time a few training steps of each recipe family on the device, in the step configuration its trials run
        (a long CPU run's compiled CNN: compiled here first, untimed), row by row (rows of one family share)."""
        import torch

        from sedaug.device import resolve_step_config

        threads = torch.get_num_threads()
        torch.set_num_threads(self.cpus)  # as a trial runs; this process's own count again afterwards
        timings: dict[tuple, float] = {}
        try:
            for row in self.rows:
                recipe, run_steps = self.recipes[row.recipe], row.epochs * row.steps
                if not row.steps:  # a batch larger than a split: said in the notes, nothing to time
                    yield row
                    continue
                try:
                    key = _family(recipe), resolve_step_config(recipe, torch.device(self.device), run_steps)
                except UserError as e:  # a GPU sweep's CUDA-only setting, timed on a CPU
                    self.notes.append(f"not timed: {e}")
                    yield row
                    continue
                if key not in timings:
                    timings[key] = step_seconds(recipe, self.device, run_steps)
                row.step_s = timings[key]
                yield row
        finally:
            torch.set_num_threads(threads)


def _duration(hours: float) -> str:
    """`7,720 h`, `62.7 h`, `12.5 min`, `4 s`: a tiny sweep's estimate in hours read 0.00194."""
    value, unit = (hours, "h") if hours >= 1 else (hours * 60, "min") if hours >= 1 / 60 else (hours * 3600, "s")
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def _steps_per_epoch(recipe: Recipe) -> tuple[int, str | None]:
    """The recipe's steps per epoch from its feature store's split sizes (DESED's when there is no store yet)."""
    from sedaug.data.batches import STREAMS, steps_per_epoch
    from sedaug.data.store import read_record

    record = read_record(Path(recipe.data.features)) or {}
    sizes, note = record.get("splits"), None
    if not isinstance(sizes, dict):
        sizes, note = {"unlabeled": 14412, "weak": 1578, "synthetic_train": 2067}, (
            f"no feature store at {recipe.data.features}: steps per epoch assume DESED's sizes")
    steps = steps_per_epoch([int(sizes.get(name, 0)) for name in STREAMS], recipe.data.batch_size)
    return min(steps, recipe.optim.max_steps_per_epoch or steps), note


def no_step_settings(loaded: LoadedSweep, name: str) -> str | None:
    """One line naming a row's settings (Optuna's: the base recipe) that leave no training step in an epoch of its
    feature store (a batch larger than a split, which train refuses: the row could never finish), or None."""
    listed = settings(loaded, name) or [{}]
    empty = [params for params in listed
             if _steps_per_epoch(validate_recipe(apply_params(loaded.bases[name], params)))[0] == 0]
    if not empty:
        return None
    if any("data.batch_size" in params for params in empty):
        searched = ", ".join("; ".join(f"{k}={v}" for k, v in params.items()) for params in empty)
        return (f"{loaded.path}: {name}: no training step in an epoch with {searched} (a batch larger than a "
                "split): take it out of the search")
    batch = validate_recipe(loaded.bases[name]).data.batch_size  # the recipe's or set's: no searched value
    return (f"{loaded.path}: {name}: no training step in an epoch: data.batch_size {batch} is a batch larger than a "
            "split of its feature store: set a smaller one")


def steps_done(run_dir: Path, epochs: int, settled: bool) -> int:
    """Training steps of a sweep's run that are behind it: all of them for a settled one (done, stopped early or
    diverged: nothing of it is trained again), else its checkpointed epochs'."""
    recipe = RunDir(run_dir).recipe
    if not recipe.is_file():
        return 0
    per_epoch, _ = _steps_per_epoch(load_recipe(recipe))
    return per_epoch * (epochs if settled else min(epochs, len(checkpointed_metrics(run_dir))))


def _family(recipe: Recipe) -> str:
    """What sets a step's time besides its step configuration: the model, the augmentation and where, the
    regularization and the batch."""
    dump = recipe.model_dump(mode="json")
    return json.dumps([dump["model"], dump["augmentation"].get("type"), dump["augmentation"].get("locations"),
                       dump["regularization"]["type"], dump["data"]["batch_size"]], sort_keys=True)


def step_seconds(recipe: Recipe, device: str, run_steps: int | None = None, steps: int = 4) -> float:
    """Best of `steps` timed training steps on random mels of the recipe's batch, in the step configuration a run of
    `run_steps` steps gets (sedaug.device.resolve_step_config), after one untimed warm-up step (which compiles)."""
    import numpy as np
    import torch

    from sedaug.data.batches import Batch, stream_batch_sizes
    from sedaug.data.desed import CLASSES
    from sedaug.data.grid import PARAMS
    from sedaug.train import build_training, training_step

    torch.manual_seed(0)
    dev = torch.device(device)
    n_frames, n_mels, n_classes = PARAMS.n_frames, PARAMS.n_mels, len(CLASSES)
    scaler = (np.zeros(n_mels, np.float32), np.ones(n_mels, np.float32))
    training = build_training(recipe, scaler, dev, steps=run_steps)
    b = recipe.data.batch_size
    n_unlabeled, n_weak, n_synthetic = stream_batch_sizes(b)
    mels = (torch.rand(b, n_frames, n_mels) ** 4 * 10).to(dev)
    with torch.no_grad():
        out_frames = training.model(mels[:1])[0].shape[1]
    batch = Batch(mels=mels, weak_labels=(torch.rand(n_weak, n_classes) < 0.3).float().to(dev),
                  strong_labels=(torch.rand(n_synthetic, out_frames, n_classes) < 0.2).float().to(dev),
                  n_unlabeled=n_unlabeled, n_weak=n_weak, frames=torch.full((b,), n_frames, device=dev))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    best = float("inf")
    for i in range(steps + 1):
        start = time.perf_counter()
        training_step(recipe, training, batch, i, recipe.optim.lr, recipe.consistency.weight)
        sync()
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def dry_run(loaded: LoadedSweep, device: str | None = None, timed: bool = True) -> DryRun:
    """The plan of a sweep with its cost: trials and final runs per row, epochs, steps and memory, and (`timed`) a
    few training steps of each recipe family timed on `device` (default: cuda when the sweep asks for GPUs and this
    machine has one, else cpu); `DryRun.timed()` times them row by row instead."""
    import torch

    sweep = loaded.sweep
    check_drawn(loaded)
    if device is None:
        device = "cuda" if sweep.resources.gpus > 0 and torch.cuda.is_available() else "cpu"
    notes = []
    if sweep.resources.gpus > 0 and device == "cpu":
        notes.append("timed on this machine's CPU: the trials will run on GPUs, much faster")
    resources = trial_resources(loaded)
    rows, recipes = [], {}
    for name, base in loaded.bases.items():
        listed = settings(loaded, name) or [{}]  # Optuna's: the base recipe stands for each
        recipes[name] = recipe = validate_recipe(apply_params(base, listed[0], sweep.trial_seed))
        n = _optuna_trainings(loaded, name) if sweep.algorithm.type == "optuna" else len(listed)
        steps, note = _steps_per_epoch(recipe)
        if note and note not in notes:
            notes.append(note)
        each = tuple(_steps_per_epoch(validate_recipe(apply_params(base, params, sweep.trial_seed)))[0]
                     for params in listed)
        if len(set(each)) > 1:
            notes.append(f"{name}: steps per epoch differ between settings ({min(each)}-{max(each)}), each timed at "
                         "the first setting's step")
        if (empty := no_step_settings(loaded, name)) is not None:
            notes.append(f"{empty} (a sweep would be refused)")
        copied = int(sweep.trial_seed in sweep.seeds)  # that seed's final run is the winner's search run
        rows.append(RowCost(name, n, len(sweep.seeds), copied, recipe.optim.epochs, steps, None,
                            resources[name]["memory"], each if len(set(each)) > 1 else ()))
    threads, here = max(1, int(sweep.resources.cpus)), usable_cpus()
    if threads > here:  # a local sweep is refused (or waits, with --wait-for-resources); a cluster's nodes may have them
        notes.append(f"resources.cpus {sweep.resources.cpus:g} per trial, but this machine has {here}: timed with {here} "
                     "threads; a sweep on this machine would be refused")
        threads = here
    short = resources_short(resources, local_resources(), "this machine")
    notes += [f"resources.{short[k]}: a sweep on this machine would be refused (a cluster's nodes may have it)"
              for k in ("gpus", "memory") if k in short]
    plan = DryRun(Path(loaded.path).stem, rows, device, list(sweep.seeds), sweep.trial_seed, notes, recipes, threads)
    if timed:
        for _ in plan.timed():
            pass
    return plan
