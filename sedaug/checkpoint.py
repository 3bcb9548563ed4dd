"""Checkpoints: what `checkpoints/last.pt` and `best.pt` hold, how they are written and read back
(docs/architecture.md, "Checkpoints and resume").

A checkpoint holds the student, the EMA teacher (Mean Teacher runs), Adam's state, the training state
(`TrainState`), the RNG states and the resolved recipe: all that `--resume` needs to continue bitwise. It is
written atomically; reading it back validates the recipe, so callers get a typed `Recipe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sedaug.errors import UserError
from sedaug.files import atomic_path
from sedaug.model import CRNN
from sedaug.recipe import Recipe, validate_recipe
from sedaug.rundir import RunDir


@dataclass
class TrainState:
    """Where training stands; with the networks, the optimizer and the RNG it is everything the loop carries."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done in the current epoch (non-zero only in a checkpoint saved on Ctrl-C)
    global_step: int = 0
    best_f1: float = -1.0  # best synthetic_valid macro F1 so far
    best_epoch: int | None = None
    loss_sums: torch.Tensor | None = None  # (class, const, total) summed over the current epoch's steps so far

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    state: TrainState
    rng: dict[str, torch.Tensor | None]
    recipe: Recipe


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(rng: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)


def save_checkpoint(
    path: Path,
    *,
    model: CRNN,
    teacher: CRNN | None,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    recipe: Recipe,
    device: torch.device,
) -> None:
    content = {
        "model": model.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "optimizer": optimizer.state_dict(),
        "state": state.state_dict(),
        "rng": rng_state(device),
        "recipe": recipe.model_dump(mode="json"),
    }
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: train the run first (sedaug train)")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # empty, truncated or foreign files fail in many types (EOFError, RuntimeError, ...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a readable sedaug checkpoint (empty, cut short or another file: {reason[:120]}); "
                        "train the run again, or use the other checkpoint") from None
    if not isinstance(raw, dict) or not {"model", "optimizer", "recipe", "rng"} <= raw.keys():
        raise UserError(f"{path}: not a sedaug checkpoint (a {type(raw).__name__} without model, optimizer, rng and "
                        "recipe): train the run again, or use the other checkpoint")
    if "state" not in raw:
        raise UserError(f"{path} is in an earlier sedaug checkpoint format (no training state): train the run again")
    state = TrainState()
    state.load_state_dict(raw["state"])
    recipe = validate_recipe(raw["recipe"], str(path))
    return Checkpoint(raw["model"], raw["teacher"], raw["optimizer"], state, raw["rng"], recipe)


def load_model(run_dir: Path, which: str = "best", device: torch.device | str = "cpu") -> tuple[CRNN, Recipe, TrainState]:
    """The student of a run's checkpoint `which` (best or last), in eval mode, with its recipe and training state."""
    ckpt = load_checkpoint(RunDir(Path(run_dir)).checkpoint(which), device)
    model = CRNN(ckpt.recipe.model)
    model.load_state_dict(ckpt.model)
    return model.to(device).eval(), ckpt.recipe, ckpt.state
