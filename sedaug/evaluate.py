"""`sedaug evaluate`: score a run's checkpoint on a strong split and write `RUN/<split>/` (docs/architecture.md,
"Evaluation"). The pieces live in `sedaug/evaluation/`, shared with the training loop's model selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sedaug.checkpoint import load_model
from sedaug.data.store import FeatureStore, Split
from sedaug.errors import UserError
from sedaug.evaluation.predict import predict
from sedaug.evaluation.results import evaluate_scores, timed, write_evaluation
from sedaug.files import write_text
from sedaug.recipe import Recipe, dump_recipe
from sedaug.rundir import RunDir
from sedaug.watch import log_evaluation


def evaluate_run(
    run_dir: Path,
    split: str = "eval",
    checkpoint: str = "best",
    device="cpu",
    progress: bool = True,
    features: Path | None = None,
) -> dict[str, Any]:
    """Score a run's checkpoint on a strong split; writes RUN/<split>/ and returns results.json's dict.

    The feature store is the checkpoint recipe's `data.features` (a relative path is relative to the working
    directory, as for `sedaug train`), unless `features` is given.
    """
    run = RunDir(Path(run_dir))
    timing: dict[str, float] = {}
    model, recipe, state = load_model(run.root, checkpoint, device)  # UserError when the checkpoint is missing
    features = Path(features if features is not None else recipe.data.features)
    data = _strong_split(features, split)
    with timed(timing, "predict"):
        strong = predict(model, data.mels, recipe.eval.batch_size, device, progress=progress)
    about = {"run": str(run.root), "recipe": recipe.name, "seed": recipe.seed, "split": split, "features": str(features),
             "checkpoint": {"name": checkpoint, "path": str(run.checkpoint(checkpoint)), "epoch": state.epoch,
                            "step": state.global_step}}
    results = _score(strong, data, recipe, about, run.split(split), timing, progress)
    log_evaluation(run, results)
    return results


def evaluate_ensemble(
    run_dirs: list[Path],
    split: str = "eval",
    checkpoint: str = "best",
    device="cpu",
    progress: bool = True,
    out: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Average the frame scores of several runs of one recipe (seeds) and score the average like a single run,
    into `out` (default: RUNS/<name>/ensemble), a run directory of its own whose recipe is named `<name>_ensemble`,
    so `sedaug table` shows it as a row beside the single runs. Returns (out, results)."""
    if len(run_dirs) < 2:
        raise UserError("--ensemble needs at least two run directories")
    timing: dict[str, float] = {}
    members = [(Path(r), *load_model(r, checkpoint, device)) for r in run_dirs]
    recipe = members[0][2]
    for path, _, other, _ in members[1:]:
        if other.model_copy(update={"seed": recipe.seed}) != recipe:
            raise UserError(f"{path}: another recipe than {members[0][0]}'s: an ensemble averages seeds of one recipe")
    data = _strong_split(Path(recipe.data.features), split)
    with timed(timing, "predict"):
        strong = sum(predict(model, data.mels, recipe.eval.batch_size, device, progress=progress)
                     for _, model, _, _ in members) / len(members)
    out = Path(out) if out is not None else members[0][0].parent / "ensemble"
    ensemble = recipe.model_copy(update={"name": f"{recipe.name}_ensemble", "seed": 0})
    write_text(out / "recipe.yaml", dump_recipe(ensemble))
    about = {"run": str(out), "recipe": ensemble.name, "seed": 0, "split": split, "features": str(recipe.data.features),
             "checkpoint": {"name": checkpoint, "epoch": None, "step": None},
             "members": [{"run": str(path), "seed": r.seed, "epoch": state.epoch} for path, _, r, state in members]}
    return out, _score(strong, data, recipe, about, out / split, timing, progress)


def _strong_split(features: Path, split: str) -> Split:
    data = FeatureStore(features).split(split)
    if data.events is None:
        raise UserError(f"split {split} has no strong labels: evaluate on eval, validation or synthetic_valid")
    if len(data) == 0:
        raise UserError(f"split {split} of {features} holds no clip")
    return data


def _score(strong, data: Split, recipe: Recipe, about: dict[str, Any], out: Path, timing: dict, progress: bool) -> dict[str, Any]:
    evaluation = evaluate_scores(
        strong, data.filenames, data.durations, data.events, threshold=recipe.eval.threshold,
        median_window=recipe.eval.median_window, progress=progress, timing=timing,
    )
    evaluation.results = {**about, **evaluation.results}
    return write_evaluation(evaluation, out, timing)


def summary(run_dir: Path, results: dict[str, Any]) -> str:
    """The one line `sedaug evaluate` prints."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    ckpt = results["checkpoint"]
    what = (f"{len(results['members'])} runs' {ckpt['name']}.pt" if "members" in results
            else f"{ckpt['name']}.pt, epoch {ckpt['epoch']}")
    return (
        f"evaluated {run_dir} ({what}) on {results['split']} "
        f"({results['n_clips']} clips): macro F1 {fmt(results['macro'])}, PSDS {fmt(results['psds'])}, "
        f"PSDS-ct {fmt(results['psds_ct'])}, PSDS-macro {fmt(results['psds_macro'])}, "
        f"PSDS1 {fmt(results['psds1'])}, PSDS2 {fmt(results['psds2'])} -> {Path(run_dir) / results['split']}"
    )
