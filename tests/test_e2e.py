"""prepare -> extract -> train -> evaluate -> table on the tiny synthetic DESED, through the CLI, as a user runs it."""

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from sedaug.cli import app
from sedaug.data.desed import CLASSES

RECIPES = Path(__file__).parents[1] / "recipes"


def sedaug(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_end_to_end(tmp_path, tiny_model_overrides):
    data, features, runs = tmp_path / "desed", tmp_path / "features", tmp_path / "runs"
    sedaug("prepare-desed", "--synthetic", "--size", "tiny", "--out", data)
    assert (data / "metadata" / "eval" / "public.tsv").is_file() and (data / "manifest").is_dir()
    sedaug("extract-mels", "--data", data, "--out", features, "--workers", "1")
    assert (features / "features.json").is_file()

    overrides = [*tiny_model_overrides, f"data.features={features}", "data.batch_size=4", "optim.max_steps_per_epoch=2", "optim.epochs=1"]
    for recipe in ("none", "vat_latent"):
        sedaug("train", RECIPES / f"{recipe}.yaml", "--runs", runs, *[x for o in overrides for x in ("--set", o)])
        run = runs / recipe / "seed0"
        sedaug("evaluate", run, "--split", "eval")

        out = run / "eval"
        results = json.loads((out / "results.json").read_text())
        for metric in ("macro", "psds", "psds_ct", "psds_macro", "psds1", "psds2"):
            assert 0.0 <= results[metric] <= 1.0, metric
        assert results["checkpoint"]["epoch"] == 1
        scores = sorted((out / "scores").glob("*.tsv"))
        eval_clips = pd.read_csv(features / "eval" / "clips.tsv", sep="\t")
        assert len(scores) == len(eval_clips)
        frame_scores = pd.read_csv(scores[0], sep="\t")
        assert list(frame_scores.columns) == ["onset", "offset", *CLASSES]
        detections = pd.read_csv(out / "detections.tsv", sep="\t")
        assert list(detections.columns) == ["filename", "onset", "offset", "event_label"]
        assert (out / "psd_roc.png").stat().st_size > 0

    # A run that was trained but not evaluated is listed, not dropped.
    sedaug("train", RECIPES / "baseline.yaml", "--runs", runs, *[x for o in overrides for x in ("--set", o)])
    table = sedaug("table", runs, "--format", "markdown", "--metrics", "macro,psds_ct")
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3
    assert any("none" in line for line in lines) and any("vat_latent" in line for line in lines)
    assert any("baseline" in line and "not evaluated" in line for line in lines)
