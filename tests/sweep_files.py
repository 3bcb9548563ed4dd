"""The sweep files tests/test_sweep_study.py and tests/test_sweep_cluster.py run: a tiny CRNN, 2 epochs of 2 steps."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from sedaug.cli import app

REPO = Path(__file__).parents[1]
TINY = {"model.cnn_filters": [4, 8], "model.cnn_pooling": [[4, 4], [1, 32]], "model.rnn_hidden": 8,
        "model.init": "pytorch"}
EPOCHS = 2


def sweep_cli(*args) -> object:
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


def study(features: Path, sigmas: list[float]) -> dict:
    """Two rows: `none` with a learning rate that diverges at once, `noise_latent` over `sigmas`; searched on seed 0,
    the winners trained on seed 1."""
    return {
        "recipes": [{"recipe": str(REPO / "recipes" / "none.yaml"), "search": {"optim.lr": {"grid": [1e-3, 1e30]}}},
                    {"recipe": str(REPO / "recipes" / "noise_latent.yaml"),
                     "search": {"augmentation.sigma": {"grid": sigmas}}}],
        "set": {**TINY, "data.features": str(features), "optim.epochs": EPOCHS, "optim.max_steps_per_epoch": 2,
                "optim.rampup_epochs": 0, "consistency.rampup_epochs": 0, "eval.threshold": 0.3},
        "seeds": [1],
        "search_seed": 0,
        "max_concurrent_trials": 2,
        "resources": {"cpus": 1, "memory": 1.0},
    }


def write_sweep(path: Path, sweep: dict) -> Path:
    path.write_text(json.dumps(sweep))  # JSON is YAML
    return path
