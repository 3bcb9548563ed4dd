"""One trial, as a Ray Tune function trainable: an ordinary run directory trained by one `sedaug.train.train` call.

`train` reports each epoch through its `on_epoch` callback, where the trial passes `{epoch, valid_f1, best_valid_f1,
score}` to Ray Tune: the process, its features (resident on a GPU) and its compiled model live for the whole run,
ASHA stops the trial between epochs (Tune's report raises SystemExit in the training thread, and last.pt holds that
epoch), and a retried trial (its worker died) resumes from last.pt. A run directory that already holds every epoch
reports once and returns: that is what makes `sedaug sweep --resume` cheap. The run directory is the truth, not
Ray's state.

A trial whose loss becomes non-finite is a result, not a failure: `train` writes `diverged.json` (epoch, step,
message) into its run directory and raises `Diverged`; the trial reports it and returns, so Ray does not retry it.

Layout (docs/sweeps.md): `<out>/search/<recipe>/<setting>/seed<k>/` and `<out>/final/<recipe>/seed<k>/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedaug.files import read_json_object
from sedaug.rundir import RunDir, read_diverged

DEFAULT_SETTING = "default"  # the setting id of a recipe searched over nothing


def setting_id(params: dict[str, Any]) -> str:
    """A short, stable name for a setting: 8 hex digits of its canonical JSON ("default" when nothing is searched)."""
    if not params:
        return DEFAULT_SETTING
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def search_dir(out: Path, recipe: str, params: dict[str, Any], seed: int, setting: str | None = None) -> Path:
    """A search trial's run directory; `setting` names an existing folder that holds the same resolved recipe
    (a resumed sweep whose search keys changed), else the setting's own id."""
    return Path(out) / "search" / recipe / (setting or setting_id(params)) / f"seed{seed}"


def final_dir(out: Path, recipe: str, seed: int) -> Path:
    return Path(out) / "final" / recipe / f"seed{seed}"


@dataclass(frozen=True)
class Plan:
    """What every trial of a stage shares (sent once through the object store by tune.with_parameters)."""

    out: str
    bases: dict[str, dict]  # recipe name -> base recipe raw dict
    select_split: str | None  # Selection.evaluated_split
    select_metric: str
    cpus: float
    gpus: float
    argv: list[str]  # the driver's command line, recorded in each run's env.json


def checkpointed_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's epochs that last.pt holds (its own count: an epoch's row is written before its checkpoint, so
    a worker killed between the two leaves a row too many; a copy of the run may have changed the files' times)."""
    # torch, imported only where a checkpoint is read: `sedaug table` starts quick
    from sedaug.checkpoint import epochs_held

    run = RunDir(Path(run_dir))
    held = epochs_held(run.checkpoint("last"))
    if held is None:
        return []
    return run.metric_rows(upto=held)


def split_results(run_dir: Path, split: str) -> dict | None:
    """A run's results.json on `split`, as written; None where it is missing or unreadable (the trial evaluates
    again). evaluation.results.read_results checks one for the table."""
    return read_json_object(RunDir(Path(run_dir)).results(split))


def best_valid_f1(rows: list[dict]) -> float | None:
    scores = [r["valid_f1"] for r in rows if isinstance(r.get("valid_f1"), int | float)]
    return max(scores) if scores else None


def trial_lock(run_dir: Path) -> Path:
    """The lock file of a trial's run directory: beside it (the run may not exist yet), hidden (not a run to `seed*`)."""
    return run_dir.with_name(f".{run_dir.name}.lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside a run directory, held while a trial works on it (two trials of one setting, as
    Optuna may suggest, then run one after the other). Released by the kernel when the worker dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _copy_run(source: Path, dest: Path) -> None:
    """The search trial of the winner on the search seed is the final run of that seed (same recipe, same seed:
    the same weights on CPU, docs/architecture.md, "Checkpoints and resume"): copied, not trained again."""
    tmp = dest.with_name(f".{dest.name}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    os.replace(tmp, dest)


def trial_spec(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune config as {stage, recipe, seed, params, [setting], [copy_from], [evaluate]}: Tune's config holds them
    under "trial" (a grid over explicit trials), with "params" beside it when a searcher (Optuna) suggests them."""
    spec = dict(config["trial"])
    spec["params"] = dict(config.get("params") or spec.get("params") or {})
    return spec


def trial_dir(out: Path, spec: dict[str, Any]) -> Path:
    if spec["stage"] == "final":
        return final_dir(out, spec["recipe"], spec["seed"])
    return search_dir(out, spec["recipe"], spec["params"], spec["seed"], spec.get("setting"))


def run_trial(config: dict[str, Any], plan: Plan) -> None:
    """The Ray Tune trainable (see trial_spec for its config)."""
    import torch
    from ray import tune

    from sedaug.evaluate import evaluate_run
    from sedaug.recipe import validate_recipe
    from sedaug.sweep.spec import apply_params
    from sedaug.train import Diverged, train

    config = trial_spec(config)
    torch.set_num_threads(max(1, int(plan.cpus)))
    sys.argv = list(plan.argv)  # env.json records the command that made the run
    device = "cuda" if plan.gpus > 0 else "cpu"
    stage, run_dir = config["stage"], trial_dir(Path(plan.out), config)
    recipe = validate_recipe(apply_params(plan.bases[config["recipe"]], config["params"], config["seed"]),
                             str(RunDir(run_dir).recipe))
    epochs = recipe.optim.epochs
    selection = plan.select_split if stage == "search" else None

    run_dir.with_name(run_dir.name + ".lock").unlink(missing_ok=True)  # sedaug 0.1's name, matched by seed*
    with locked(trial_lock(run_dir)):
        last = RunDir(run_dir).checkpoint("last")
        diverged = read_diverged(run_dir)
        if diverged is not None:  # a result already: report it again, never train it again
            rows = checkpointed_metrics(run_dir)
            tune.report(_diverged_result(rows, best_valid_f1(rows), stage, diverged))
            return
        if config.get("copy_from") and not run_dir.exists():
            _copy_run(Path(config["copy_from"]), run_dir)
        elif run_dir.exists() and not last.exists():
            shutil.rmtree(run_dir)  # died inside its first epoch: nothing to resume, start again
        rows = checkpointed_metrics(run_dir)
        best = best_valid_f1(rows)

        def finish() -> float | None:
            """Evaluate what the trial needs (before its last report: ASHA stops a trial at its last epoch)."""
            for split in dict.fromkeys(s for s in (selection, config.get("evaluate")) if s):
                if split_results(run_dir, split) is None:
                    evaluate_run(run_dir, split=split, checkpoint="best", device=device, progress=False)
            if selection is None:
                return None
            value = (split_results(run_dir, selection) or {}).get(plan.select_metric)
            return float(value) if isinstance(value, int | float) else float("nan")

        if rows:  # catch up: where the run directory stands (complete: the trial's one report)
            tune.report(_result(rows[-1], best, stage, finish() if len(rows) >= epochs else None))
            if len(rows) >= epochs:
                return

        def report(record: dict) -> None:
            nonlocal best
            best = record["valid_f1"] if best is None else max(best, record["valid_f1"])
            tune.report(_result(record, best, stage, finish() if record["epoch"] >= epochs else None))

        try:
            result = train(recipe, run_dir, resume=last.exists(), device=device, progress=False, on_epoch=report)
            if result.nothing_left:  # metrics.jsonl lacked rows that last.pt holds: train had nothing to do
                last_row = {"epoch": result.epochs, "valid_f1": result.best_f1}  # what last.pt's state says
                tune.report(_result(last_row, result.best_f1, stage, finish()))
        except Diverged as e:  # train wrote diverged.json
            diverged = {"epoch": e.epoch, "step": e.step, "message": str(e)}
            tune.report(_diverged_result(checkpointed_metrics(run_dir), best, stage, diverged))


def _result(row: dict, best: float | None, stage: str, score: float | None = None) -> dict:
    """A report: `score` is the running best synthetic_valid F1, or at the end the selection metric when another
    is asked for (ASHA and Optuna's intermediate values see the F1, Optuna's final value the selection)."""
    best = 0.0 if best is None else float(best)
    return {"epoch": int(row["epoch"]), "valid_f1": float(row["valid_f1"]), "best_valid_f1": best,
            "score": best if score is None else score, "stage": stage}


def _diverged_result(rows: list[dict], best: float | None, stage: str, diverged: dict) -> dict:
    """The last report of a diverged trial: its last good epoch, score 0 (Optuna learns the region is bad; ASHA has
    that epoch already), and where it diverged."""
    row = rows[-1] if rows else {"epoch": 0, "valid_f1": 0.0}
    result = _result(row, best, stage, 0.0)
    result.update(diverged=1, diverged_epoch=int(diverged.get("epoch", 0)), diverged_step=int(diverged.get("step", 0)))
    return result
