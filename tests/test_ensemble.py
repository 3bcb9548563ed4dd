"""`sedaug evaluate --ensemble`: the average of the seeds' frame scores, scored like a single run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sed_scores_eval.base_modules.io import read_sed_scores
from typer.testing import CliRunner

from sedaug.cli import app
from sedaug.data.desed import CLASSES

REPO = Path(__file__).parents[1]


def test_an_ensemble_scores_the_hand_averaged_frame_scores(tiny_features, tiny_model_overrides, tmp_path):
    runner = CliRunner()
    runs = tmp_path / "runs"
    for seed in (0, 1):
        cmd = ["train", str(REPO / "recipes" / "none.yaml"), "--runs", str(runs), "--device", "cpu",
               "--set", "optim.epochs=1", "--set", f"seed={seed}"]
        for item in [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4",
                     "optim.max_steps_per_epoch=2"]:
            cmd += ["--set", item]
        assert runner.invoke(app, cmd).exit_code == 0
    seeds = [runs / "none" / "seed0", runs / "none" / "seed1"]
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

    table = runner.invoke(app, ["table", str(runs), "--format", "csv"])
    assert table.exit_code == 0, table.output
    rows = [line.split(",")[0] for line in table.output.splitlines()[1:]]
    assert rows == ["none", "none_ensemble"]


def test_an_ensemble_of_different_recipes_is_refused(tiny_features, tiny_model_overrides, tmp_path):
    runner = CliRunner()
    runs = tmp_path / "runs"
    for recipe in ("none", "noise_latent"):
        cmd = ["train", str(REPO / "recipes" / f"{recipe}.yaml"), "--runs", str(runs), "--device", "cpu",
               "--set", "optim.epochs=1"]
        for item in [*tiny_model_overrides, f"data.features={tiny_features}", "data.batch_size=4",
                     "optim.max_steps_per_epoch=1"]:
            cmd += ["--set", item]
        assert runner.invoke(app, cmd).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(runs / "none" / "seed0"), str(runs / "noise_latent" / "seed0"),
                                 "--ensemble", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ") and "another recipe" in result.output
