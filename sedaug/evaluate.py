"""`sedaug evaluate`: score a run's checkpoint on a strong split and write `RUN/<split>/` (docs/architecture.md,
"Evaluation"). The pieces live in `sedaug/evaluation/`, shared with the training loop's model selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sedaug.checkpoint import load_model
from sedaug.data.store import FeatureStore
from sedaug.errors import UserError
from sedaug.evaluation.predict import predict
from sedaug.evaluation.results import evaluate_scores, timed, write_evaluation
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
    data = FeatureStore(features).split(split)
    if data.events is None:
        raise UserError(f"split {split} has no strong labels: evaluate on eval, validation or synthetic_valid")
    if len(data) == 0:
        raise UserError(f"split {split} of {features} holds no clip")
    with timed(timing, "predict"):
        strong = predict(model, data.mels, recipe.eval.batch_size, device, progress=progress)
    evaluation = evaluate_scores(
        strong, data.filenames, data.durations, data.events, threshold=recipe.eval.threshold,
        median_window=recipe.eval.median_window, progress=progress, timing=timing,
    )
    evaluation.results = {
        "run": str(run.root),
        "recipe": recipe.name,
        "seed": recipe.seed,
        "split": split,
        "features": str(features),
        "checkpoint": {"name": checkpoint, "path": str(run.checkpoint(checkpoint)),
                       "epoch": state.epoch, "step": state.global_step},
        **evaluation.results,
    }
    results = write_evaluation(evaluation, run.split(split), timing)
    log_evaluation(run, results)
    return results


def summary(run_dir: Path, results: dict[str, Any]) -> str:
    """The one line `sedaug evaluate` prints."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    ckpt = results["checkpoint"]
    return (
        f"evaluated {run_dir} ({ckpt['name']}.pt, epoch {ckpt['epoch']}) on {results['split']} "
        f"({results['n_clips']} clips): macro F1 {fmt(results['macro'])}, PSDS {fmt(results['psds'])}, "
        f"PSDS-ct {fmt(results['psds_ct'])}, PSDS-macro {fmt(results['psds_macro'])}, "
        f"PSDS1 {fmt(results['psds1'])}, PSDS2 {fmt(results['psds2'])} -> {Path(run_dir) / results['split']}"
    )
