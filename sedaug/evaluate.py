"""`sedaug evaluate`: score a run's checkpoint on a strong split and write `RUN/<split>/` (docs/architecture.md,
"Evaluation"). The pieces live in `sedaug/evaluation/`, shared with the training loop's model selection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sedaug.checkpoint import advice, load_model
from sedaug.data.store import FeatureStore, Split
from sedaug.errors import UserError, listed
from sedaug.evaluation.predict import predict
from sedaug.evaluation.results import evaluate_scores, timed, write_evaluation
from sedaug.files import absolute, remove_stale_temporaries, write_text
from sedaug.recipe import Recipe, dump_recipe, load_recipe, seed_settings
from sedaug.rundir import (
    DIVERGED,
    RunDir,
    ensemble_members,
    identity_changes,
    is_ensemble,
    read_diverged,
    sedaug_data_holding,
    trained_on,
)
from sedaug.strict_yaml import diff_keys
from sedaug.watch import log_evaluation


def evaluate_run(
    run_dir: Path,
    split: str = "eval",
    checkpoint: str = "best",
    device="cpu",
    progress: bool = True,
    features: Path | None = None,
    other_store: bool = False,
) -> dict[str, Any]:
    """Score a run's checkpoint on a strong split; writes RUN/<split>/ and returns results.json's dict.

    The feature store is the checkpoint recipe's `data.features` (absolute since sedaug 0.2; an older run's relative
    path is the working directory's), unless `features` is given. A store other than the one the run trained on is
    refused unless `other_store`.
    """
    run = RunDir(Path(run_dir))
    _check_not_diverged(run.root)
    with _held([run.root]):
        return _evaluate_run(run, split, checkpoint, device, progress, features, other_store)


def _evaluate_run(run: RunDir, split: str, checkpoint: str, device, progress: bool, features: Path | None,
                  other_store: bool) -> dict:
    timing: dict[str, float] = {}
    model, recipe, state = load_model(run.root, checkpoint, device)  # UserError when the checkpoint is missing
    _check_folder(run.split(split))
    data, features = _strong_split(features, recipe, split, [run.root], other_store)
    with timed(timing, "predict"):
        strong = predict(model, data.mels, recipe.eval.batch_size, device, progress=progress)
    check_finite(strong, data, run.checkpoint(checkpoint), features)
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
    features: Path | None = None,
    other_store: bool = False,
) -> tuple[Path, dict[str, Any], list[str] | None]:
    """Average the frame scores of several runs of one recipe (seeds) and score the average like a single run,
    into `out` (default: RUNS/<name>/ensemble), a run directory of its own whose recipe is named `<name>_ensemble`,
    so `sedaug table` shows it as a row beside the single runs. Returns (out, results, the members of the ensemble
    this one replaced where they were others, else None)."""
    run_dirs = [Path(r) for r in run_dirs]
    seen: dict[Path, Path] = {}
    for path in run_dirs:
        if path.resolve() in seen:
            also = f" (as {seen[path.resolve()]} too)" if str(seen[path.resolve()]) != str(path) else ""
            raise UserError(f"--ensemble: {path} is given twice{also}: it is one member; list each run once")
        seen[path.resolve()] = path
    if len(run_dirs) < 2:
        raise UserError("--ensemble needs at least two run directories")
    for path in run_dirs:
        _check_not_diverged(path)
    with _held(run_dirs):
        return _evaluate_ensemble(run_dirs, split, checkpoint, device, progress, out, features, other_store)


def _evaluate_ensemble(run_dirs: list[Path], split: str, checkpoint: str, device, progress: bool, out: Path | None,
                       features: Path | None, other_store: bool) -> tuple[Path, dict[str, Any], list[str] | None]:
    timing: dict[str, float] = {}
    members = [(path, *load_model(path, checkpoint, device)) for path in run_dirs]  # each a run: said first
    # Each run's recipe.yaml, which a resume rewrites (a resumed run's best.pt may keep the recipe of fewer epochs);
    # where each found its store, and with what batch it is scored, do not matter: the ensemble is scored on one.
    recipe = load_recipe(RunDir(run_dirs[0]).recipe)
    first = {"name": recipe.name, **seed_settings(recipe)}
    seeds = {recipe.seed: run_dirs[0]}
    for path in run_dirs[1:]:
        other = load_recipe(RunDir(path).recipe)
        differ = diff_keys(first, {"name": other.name, **seed_settings(other)})
        if differ:
            raise UserError(f"{path}: another recipe than {run_dirs[0]}'s ({listed(differ)} differ): an ensemble averages "
                            "seeds of one recipe")
        if other.seed in seeds:  # a copy of one run (as table refuses it), or one seed trained twice
            raise UserError(f"--ensemble: {seeds[other.seed]} and {path} are both seed {other.seed}: an ensemble averages "
                            "distinct seeds; list one of them")
        seeds[other.seed] = path
    stores = {trained_on(path) for path in run_dirs} - {None}
    if len(stores) > 1:
        raise UserError(f"--ensemble: {', '.join(map(str, run_dirs))} were trained on different feature stores (another "
                        "DESED or synthetic set): an ensemble averages seeds of one recipe on one training set")
    out = Path(out) if out is not None else members[0][0].parent / "ensemble"
    ensemble = recipe.model_copy(update={"name": f"{recipe.name}_ensemble", "seed": 0})
    _check_ensemble_out(out, ensemble.name, run_dirs)
    _check_folder(out / split)
    data, features = _strong_split(features, recipe, split, run_dirs, other_store)
    with timed(timing, "predict"):
        outputs = []
        for path, model, _, _ in members:
            outputs.append(predict(model, data.mels, recipe.eval.batch_size, device, progress=progress))
            check_finite(outputs[-1], data, RunDir(path).checkpoint(checkpoint), features)
        strong = sum(outputs) / len(members)
    about = {"run": str(out), "recipe": ensemble.name, "seed": 0, "split": split, "features": str(features),
             "checkpoint": {"name": checkpoint, "epoch": None, "step": None},
             "members": [{"run": str(Path(path).resolve()), "seed": r.seed, "epoch": state.epoch}
                         for path, _, r, state in members]}
    run = RunDir(out)
    before = ensemble_members(run.results(split))
    results = _score(strong, data, recipe, about, out / split, timing, progress)
    write_text(run.recipe, dump_recipe(ensemble))  # after the scores: a failure leaves no row behind
    return out, results, before if before is not None and before != ensemble_members(run.results(split)) else None


def _check_ensemble_out(out: Path, name: str, members: list[Path]) -> None:
    """Refuse an ensemble folder that would overwrite anything but an earlier ensemble of the same recipe: a run
    (a member or another), another recipe's folder, or a folder of other files."""
    advice = "give --out a new folder (or leave it out: RUNS/<name>/ensemble)"
    run = RunDir(out)
    if (held := sedaug_data_holding(out.parent)) is not None:
        raise UserError(f"--out {out} would be in {held}: {advice}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: {advice}")
    if any(out.resolve() == m.resolve() for m in members):
        raise UserError(f"--out {out} is one of the ensemble's runs: {advice}")
    if run.checkpoints.exists():
        raise UserError(f"--out {out} holds a trained run (checkpoints/), which the ensemble would overwrite: {advice}")
    if run.recipe.exists():
        try:
            theirs = load_recipe(run.recipe).name
        except UserError:
            theirs = None
        if theirs != name:
            what = f"recipe {theirs}" if theirs else "a recipe.yaml that is not sedaug's"
            raise UserError(f"--out {out} holds {what}, not the ensemble {name}: {advice}")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} holds other files (no ensemble recipe.yaml): {advice}")


@contextmanager
def _held(run_dirs: list[Path]) -> Iterator[None]:
    """The runs held while they are read (`RunDir.reading`): one still training is refused. A path that is no run
    directory is left to load_model to explain."""
    with ExitStack() as stack:
        for path in run_dirs:
            if Path(path).is_dir():
                stack.enter_context(RunDir(Path(path)).reading())
        yield


class NotScored(UserError):
    """A folder given among runs that is none to score; among several it is skipped, the others scored."""


class DivergedRun(NotScored):
    """A run that diverged is a result (no score, `sedaug table` says so), not a run to score by the checkpoints it
    saved before diverging."""


def _check_not_diverged(run_dir: Path) -> None:
    """Refuse a diverged run, and an ensemble's folder (its members are scored, with --ensemble)."""
    if is_ensemble(run_dir):
        raise NotScored(f"{run_dir}: an ensemble (no checkpoints of its own): score it with `sedaug evaluate "
                        "SEED_RUNS... --ensemble`")
    diverged = read_diverged(run_dir)
    if diverged is not None:
        where = f"{run_dir}: diverged in epoch {diverged.get('epoch', '?')} ({DIVERGED})"
        if not RunDir(run_dir).checkpoint("last").exists():
            raise DivergedRun(f"{where} before any epoch ended: no checkpoint to score (train it again with other "
                              "settings)")
        raise DivergedRun(f"{where}: its checkpoints predate that, and the table counts it as diverged; to score them "
                          f"anyway, remove {DIVERGED}")


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, where the evaluation's folder goes: move it away")


def check_finite(strong: np.ndarray, data: Split, checkpoint: Path, features: Path) -> None:
    """Refuse frame scores that are not finite: the clip's features when they hold NaN or infinity, else the model."""
    bad = ~np.isfinite(strong).reshape(len(strong), -1).all(axis=1)
    if not bad.any():
        return
    i = int(bad.argmax())
    clip = data.filenames[i]
    if not np.isfinite(np.asarray(data.mels[i], dtype=np.float32)).all():
        raise UserError(f"{features / data.name / 'mels.npy'}: the features of {clip} hold NaN or infinite values: "
                        "re-run `sedaug extract-mels`")
    raise UserError(f"{checkpoint}: the model's outputs are not finite (NaN or infinity on {clip}, {int(bad.sum())} "
                    f"clips in all): the checkpoint is damaged or diverged; {advice(checkpoint)}")


def _strong_split(features: Path | None, recipe: Recipe, split: str, runs: list[Path],
                  other_store: bool) -> tuple[Split, Path]:
    """The split to score, from `features` (--features) or else the recipe's data.features; and that store's path,
    absolute (results.json records it: `table --ci` reads the ground truth there, from any directory)."""
    given, run = features is not None, runs[0]
    features = absolute(features if given else recipe.data.features)
    try:
        store = FeatureStore(features)
        data = store.split(split)
    except UserError:
        if features.exists():
            raise
        if given:
            raise UserError(f"--features {features} does not exist") from None
        raise UserError(f"{run}: the feature store of its recipe, data.features {features}, does not exist (moved or "
                        "deleted?): give --features where it is") from None
    if data.events is None:
        raise UserError(f"split {split} has no strong labels: evaluate on eval, validation or synthetic_valid")
    if len(data) == 0:
        raise UserError(f"split {split} of {features} holds no clip")
    if not other_store:
        _check_trained_on(store, runs, split)
    return data, features


def _check_trained_on(store: FeatureStore, runs: list[Path], split: str) -> None:
    """Refuse a store other than the one a run trained on (extracted again from another DESED or synthetic set, or
    another store given): the clips it scores may be ones the model trained on."""
    for run in runs:
        recorded = trained_on(run)
        changed = [] if recorded is None else identity_changes(json.loads(recorded), store.identity)
        if not changed:
            continue
        raise UserError(f"{store.path} is not the feature store {run} was trained on ({listed(changed)} changed: "
                        f"extracted since from another DESED or synthetic set?), so its {split} clips may be ones the "
                        "model trained on: give --features the store it trained on, or pass --other-store to score "
                        "on this one anyway")


def _score(strong, data: Split, recipe: Recipe, about: dict[str, Any], out: Path, timing: dict, progress: bool) -> dict[str, Any]:
    remove_stale_temporaries(out.parent)  # the folder an evaluation killed while writing left beside `out`
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
            else f"{ckpt['name']}.pt, epoch {ckpt['epoch']}, step {ckpt['step']}")  # a last.pt inside epoch 1: epoch 0
    return (
        f"evaluated {run_dir} ({what}) on {results['split']} "
        f"({results['n_clips']} clips): macro F1 {fmt(results['macro'])}, PSDS {fmt(results['psds'])}, "
        f"PSDS-ct {fmt(results['psds_ct'])}, PSDS-macro {fmt(results['psds_macro'])}, "
        f"PSDS1 {fmt(results['psds1'])}, PSDS2 {fmt(results['psds2'])} -> {Path(run_dir) / results['split']}"
    )
