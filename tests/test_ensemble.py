"""`sedaug evaluate --ensemble`: the average of the seeds' frame scores, scored like a single run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from sed_scores_eval.base_modules.io import read_sed_scores
from typer.testing import CliRunner

from sedaug.cli import app
from sedaug.data.desed import CLASSES

REPO = Path(__file__).parents[1]


def train(runner: CliRunner, runs: Path, recipe: str, seed: int, steps: int, overrides: list[str], features,
          epochs: int = 1) -> Path:
    cmd = ["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--runs", str(runs), "--device", "cpu",
           "--set", f"optim.epochs={epochs}", "--set", f"seed={seed}"]
    for item in [*overrides, f"data.features={features}", "data.batch_size=4", f"optim.max_steps_per_epoch={steps}"]:
        cmd += ["--set", item]
    assert runner.invoke(app, cmd).exit_code == 0
    return runs / recipe / f"seed{seed}"


def test_an_ensemble_scores_the_hand_averaged_frame_scores(tiny_features, tiny_model_overrides, tmp_path):
    runner = CliRunner()
    runs = tmp_path / "runs"
    seeds = [train(runner, runs, "none", seed, 2, tiny_model_overrides, tiny_features) for seed in (0, 1)]
    result = runner.invoke(app, ["evaluate", *map(str, seeds), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", *map(str, seeds), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ensemble = runs / "none" / "ensemble"
    assert str(ensemble / "eval") in result.output

    members = [read_sed_scores(seed / "eval" / "scores") for seed in seeds]
    averaged = read_sed_scores(ensemble / "eval" / "scores")
    assert sorted(averaged) == sorted(members[0])
    for clip, frame in averaged.items():
        by_hand = (members[0][clip][list(CLASSES)].to_numpy() + members[1][clip][list(CLASSES)].to_numpy()) / 2
        np.testing.assert_allclose(frame[list(CLASSES)].to_numpy(), by_hand, atol=1.5e-6)  # each side rounded to 1e-6
    results = json.loads((ensemble / "eval" / "results.json").read_text())
    assert results["recipe"] == "none_ensemble" and [m["seed"] for m in results["members"]] == [0, 1]

    # `evaluate runs/none/*` meets the ensemble's folder too: skipped, the seeds scored; alone, refused in one line.
    result = runner.invoke(app, ["evaluate", *map(str, sorted((runs / "none").iterdir())), "--device", "cpu"])
    assert result.exit_code == 0 and f"skipped {ensemble}: an ensemble" in result.output, result.output
    result = runner.invoke(app, ["evaluate", str(ensemble), "--device", "cpu"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {ensemble}: an ensemble"), result.output
    result = runner.invoke(app, ["evaluate", *map(str, sorted((runs / "none").iterdir())), "--ensemble", "--device",
                                 "cpu"])  # again, over runs/none/*: the ensemble's own folder is no member
    assert result.exit_code == 0 and f"skipped {ensemble}: an ensemble's folder" in result.output, result.output
    assert "replaced" not in result.output  # the same members again
    result = runner.invoke(app, ["evaluate", *map(str, seeds[::-1]), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 0 and "replaced" not in result.output, result.output  # in another order: the same

    table = runner.invoke(app, ["table", str(runs), "--format", "csv"])
    assert table.exit_code == 0, table.output
    rows = [line.split(",")[0] for line in table.output.splitlines()[1:]]
    assert rows == ["none", "none_ensemble"]

    # The ensemble's folder is kept like a run's: no ensemble inside a store or a run, no detections or plot over its
    # files; nothing is written by any of these.
    before = {p: p.read_bytes() for p in [*ensemble.rglob("*"), *Path(tiny_features).rglob("*")] if p.is_file()}
    for out, held in ((Path(tiny_features) / "ens", f"the feature store {Path(tiny_features).resolve()}"),
                      (seeds[0] / "ens", f"run {seeds[0].resolve()}'s own files")):
        result = runner.invoke(app, ["evaluate", *map(str, seeds), "--ensemble", "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 1 and f"--out {out} would be in {held}" in result.output, result.output
    result = runner.invoke(app, ["table", str(runs), "--plot", str(ensemble / "eval" / "per_class.png")])
    assert result.exit_code == 1 and f"is in run {ensemble.resolve()}'s own files" in result.output, result.output
    result = runner.invoke(app, ["detect", str(seeds[0]), str(REPO / "tests"), "--out",
                                 str(ensemble / "eval" / "detections.tsv")])
    assert result.exit_code == 1 and f"is in run {ensemble.resolve()}'s own files" in result.output, result.output
    assert {p: p.read_bytes() for p in [*ensemble.rglob("*"), *Path(tiny_features).rglob("*")] if p.is_file()} == before

    # Other members replace the ensemble's scores: said.
    seeds.append(train(runner, runs, "none", 2, 2, tiny_model_overrides, tiny_features))
    result = runner.invoke(app, ["evaluate", *map(str, seeds), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"note: replaced the ensemble of {seeds[0].resolve()}, {seeds[1].resolve()} in {ensemble / 'eval'}" in \
        " ".join(result.output.split()), result.output


def test_an_ensemble_of_different_recipes_is_refused(tiny_features, tiny_model_overrides, tmp_path):
    runner = CliRunner()
    runs = tmp_path / "runs"
    for recipe in ("none", "noise_latent"):
        train(runner, runs, recipe, 0, 1, tiny_model_overrides, tiny_features)
    result = runner.invoke(app, ["evaluate", str(runs / "none" / "seed0"), str(runs / "noise_latent" / "seed0"),
                                 "--ensemble", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ") and "another recipe" in result.output
    assert "(name, augmentation.type, augmentation.locations and " in result.output

    # Seeds of one recipe trained on two stores (another DESED): no ensemble.
    seed1 = train(runner, runs, "none", 1, 1, tiny_model_overrides, tiny_features)
    env = json.loads((seed1 / "env.json").read_text())
    assert env["features"]["manifest_hash"] and env["features"]["features_hash"]
    other = {**env["features"], "manifest_hash": "0" * 64, "features_hash": "0" * 64}  # another DESED's
    (seed1 / "env.json").write_text(json.dumps({**env, "features": other}))
    result = runner.invoke(app, ["evaluate", str(runs / "none" / "seed0"), str(seed1), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 1 and "were trained on different feature stores" in result.output, result.output

    # Consistency settings where no augmentation makes a consistency loss train nothing: one recipe, as in `table`.
    seed2 = train(runner, runs, "none", 2, 1, [*tiny_model_overrides, "consistency.weight=1.0"], tiny_features)
    result = runner.invoke(app, ["evaluate", str(runs / "none" / "seed0"), str(seed2), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 0, result.output

    # A copy of a run is the same seed: refused as table refuses it, not averaged as two members.
    copy = shutil.copytree(runs / "none" / "seed0", tmp_path / "copies" / "none" / "seed0")
    result = runner.invoke(app, ["evaluate", str(runs / "none" / "seed0"), str(copy), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 1 and result.output == (f"error: --ensemble: {runs / 'none' / 'seed0'} and {copy} are both "
                                                       "seed 0: an ensemble averages distinct seeds; list one of them\n")


def test_an_ensemble_takes_a_resumed_seed_and_refuses_seeds_of_other_lengths(tiny_features, tiny_model_overrides,
                                                                              tmp_path):
    """A resumed seed's best.pt may come from before the resume, its recipe with fewer epochs: its recipe.yaml, which
    the resume rewrote, is what counts."""
    runner = CliRunner()
    runs = tmp_path / "runs"
    seed0 = train(runner, runs, "none", 0, 1, tiny_model_overrides, tiny_features, epochs=2)
    seed1 = train(runner, runs, "none", 1, 1, tiny_model_overrides, tiny_features, epochs=1)
    result = runner.invoke(app, ["evaluate", str(seed0), str(seed1), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 1 and "(optim.epochs differ)" in result.output, result.output
    cmd = ["train", str(REPO / "recipes" / "none.yaml"), "--runs", str(runs), "--device", "cpu", "--resume",
           *(f"--set={o}" for o in [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4",
                                    "optim.max_steps_per_epoch=1", "optim.epochs=2", "seed=1"])]
    assert runner.invoke(app, cmd).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(seed0), str(seed1), "--ensemble", "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_a_diverged_run_of_a_sweep_is_not_scored_and_the_other_seeds_are(tiny_features, tiny_model_overrides, tmp_path):
    runner = CliRunner()
    seed0, seed1 = (train(runner, tmp_path / "runs", "none", seed, 1, tiny_model_overrides, tiny_features)
                    for seed in (0, 1))
    (seed1 / "diverged.json").write_text(json.dumps({"epoch": 2, "step": 9, "message": "loss became nan"}))
    alone = runner.invoke(app, ["evaluate", str(seed1), "--device", "cpu"])
    assert alone.exit_code == 1 and len(alone.output.strip().splitlines()) == 1
    assert f"{seed1}: diverged in epoch 2 (diverged.json)" in alone.output and "remove diverged.json" in alone.output
    both = runner.invoke(app, ["evaluate", str(seed1), str(seed0), "--device", "cpu"])
    assert both.exit_code == 0, both.output
    assert both.output.startswith(f"skipped {seed1}: diverged") and f"evaluated {seed0}" in both.output
    assert (seed0 / "eval" / "results.json").is_file() and not (seed1 / "eval").exists()
    ensemble = runner.invoke(app, ["evaluate", str(seed0), str(seed1), "--ensemble", "--device", "cpu"])
    assert ensemble.exit_code == 1 and "diverged in epoch 2" in ensemble.output
    assert not (tmp_path / "runs" / "none" / "ensemble").exists()
