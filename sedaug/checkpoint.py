"""Checkpoints: what `checkpoints/last.pt` and `best.pt` hold, how they are written and read back
(docs/architecture.md, "Checkpoints and resume").

A checkpoint holds the student, the EMA teacher (Mean Teacher runs), Adam's state, the training state
(`TrainState`), the RNG states and the resolved recipe: all that `--resume` needs to continue bitwise. It is
written atomically. Reading it back checks every part before anything uses it (a file that loads but does not fit
the model its recipe builds is one line naming the file and the first offending key, never a traceback).
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sedaug.device import restore_rng, rng_state
from sedaug.errors import UserError
from sedaug.files import atomic_path
from sedaug.model import CRNN
from sedaug.recipe import Recipe, load_recipe, validate_recipe, what_a_run_trains
from sedaug.rundir import RunDir
from sedaug.strict_yaml import diff_keys


def advice(path: Path) -> str:
    """What to do with a damaged checkpoint: score or resume from the other one where it is there (train refuses a
    run that has one)."""
    anew = "train the run anew into another --runs or seed"
    other = Path(path).with_name("last.pt" if Path(path).name == "best.pt" else "best.pt")
    if not other.is_file():
        return anew
    if Path(path).name == "best.pt":
        return f"score last.pt instead (--checkpoint last), or {anew}"
    return ("score best.pt instead (--checkpoint best), or copy best.pt over it and --resume from best's "
            "epoch (not an exact resume)")


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
        """Raises ValueError naming the first field that is missing or of the wrong type or size."""
        if not isinstance(state, dict):
            raise ValueError(f"state is a {type(state).__name__}, not a mapping")
        for f in dataclasses.fields(self):
            if f.name not in state:
                raise ValueError(f"state.{f.name} is missing")
            value = state[f.name]
            if f.name == "loss_sums":
                ok = value is None or (isinstance(value, torch.Tensor) and value.is_floating_point()
                                       and tuple(value.shape) == (3,))
                expected = "None or 3 floats"
            elif f.name == "best_f1":
                ok = _is_number(value) and math.isfinite(value)
                expected = "a finite number"
            else:
                ok = (value is None and f.name == "best_epoch") or (_is_int(value) and value >= 0)
                expected = "an integer >= 0"
            if not ok:
                raise ValueError(f"state.{f.name} is {_describe(value)}, not {expected}")
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
    path: Path | None = None  # the file it was read from: what errors name
    features: dict | None = None  # the feature store's identity (FeatureStore.identity); None in older checkpoints


def save_checkpoint(
    path: Path,
    *,
    model: CRNN,
    teacher: CRNN | None,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    recipe: Recipe,
    device: torch.device,
    features: dict | None = None,
) -> None:
    content = {
        "model": model.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "optimizer": optimizer.state_dict(),
        "state": state.state_dict(),
        "rng": rng_state(device),
        "recipe": recipe.model_dump(mode="json"),
        "features": features,
    }
    with atomic_path(path) as tmp:
        # Serialized in memory, then written: torch.save onto a full disk fails with a RuntimeError of its zip
        # writer ("iostream error"), where a plain write says what went wrong (ENOSPC, EFBIG) as an OSError.
        buffer = io.BytesIO()
        torch.save(content, buffer)
        with tmp.open("wb") as f:
            f.write(buffer.getbuffer())


def epochs_held(path: Path) -> int | None:
    """The epochs a checkpoint holds (its state's), read without its weights (memory-mapped, never loaded); None for
    a missing or unreadable file. What a run has trained, whatever its files' times (a copy may change them)."""
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state"]["epoch"]
    except Exception:  # missing, empty, truncated or foreign: load_checkpoint says which, where it matters
        return None
    return epoch if _is_int(epoch) and epoch >= 0 else None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read and check a checkpoint file: its recipe, training state and RNG entries (the weights and the optimizer
    are checked against the networks they go into, by `restore_weights` and `restore_training`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: train the run first (sedaug train)")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # empty, truncated or foreign files fail in many types (EOFError, RuntimeError, ...)
        raise UserError(f"{path}: not a readable sedaug checkpoint ({_unreadable(path, e)}); {advice(path)}") from None
    if not isinstance(raw, dict) or not {"model", "optimizer", "recipe", "rng"} <= raw.keys():
        raise UserError(f"{path}: not a sedaug checkpoint (a {type(raw).__name__} without model, optimizer, rng and "
                        f"recipe): {advice(path)}")
    if "state" not in raw:
        raise UserError(f"{path} is in an earlier sedaug checkpoint format (no training state): train the run again")
    state = TrainState()
    try:
        state.load_state_dict(raw["state"])
        _check_rng(raw["rng"])
    except ValueError as err:
        raise UserError(f"{path}: {err}: {advice(path)}") from None
    recipe = validate_recipe(raw["recipe"], str(path))
    features = raw.get("features") if isinstance(raw.get("features"), dict) else None
    return Checkpoint(raw["model"], raw.get("teacher"), raw["optimizer"], state, raw["rng"], recipe, path, features)


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load failed, in words (its own messages are long and about its internals)."""
    if path.is_dir():
        return "a folder"
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        return "an empty file"
    if head == b"PK\x03\x04":  # torch.save's zip container
        if "Weights only load failed" in str(error):
            return "it holds objects other than tensors: not a file sedaug wrote"
        return "damaged or cut short"
    return "not a PyTorch file"


def restore_weights(net: torch.nn.Module, weights: Any, path: Path, what: str = "model") -> None:
    """Load `weights` into `net` after checking them: the same keys, tensors of the same shapes, finite values.
    Anything else is a UserError naming `path` and the first offending key."""
    expected = net.state_dict()
    problem = _weights_problem(weights, expected, what)
    if problem is not None:
        raise UserError(f"{path}: {problem}: {advice(path)}")
    net.load_state_dict(weights)


def restore_training(
    ckpt: Checkpoint, model: CRNN, teacher: CRNN | None, optimizer: torch.optim.Optimizer, device: torch.device
) -> TrainState:
    """The whole restore of `--resume`: student, teacher, Adam and the RNG, each checked before it is used."""
    restore_weights(model, ckpt.model, ckpt.path, "model")
    if teacher is not None:
        if ckpt.teacher is None:
            raise UserError(f"{ckpt.path}: no teacher weights in a Mean Teacher run: {advice(ckpt.path)}")
        restore_weights(teacher, ckpt.teacher, ckpt.path, "teacher")
    problem = _optimizer_problem(ckpt.optimizer, optimizer)
    if problem is not None:
        raise UserError(f"{ckpt.path}: {problem}: {advice(ckpt.path)}")
    optimizer.load_state_dict(ckpt.optimizer)
    if device.type == "cuda" and ckpt.rng.get("cuda") is not None:
        size = torch.cuda.get_rng_state(device).numel()
        if ckpt.rng["cuda"].numel() != size:
            raise UserError(f"{ckpt.path}: rng.cuda holds {ckpt.rng['cuda'].numel()} bytes, not {size}: "
                            f"{advice(ckpt.path)}")
    restore_rng(ckpt.rng, device)
    return ckpt.state


def load_model(run_dir: Path, which: str = "best", device: torch.device | str = "cpu") -> tuple[CRNN, Recipe, TrainState]:
    """The student of a run's checkpoint `which` (best or last), in eval mode, with its recipe and training state."""
    run = RunDir(Path(run_dir))
    if run.root.exists() and not run.root.is_dir():
        raise UserError(f"{run.root} is a file, not a run directory (runs/<name>/seed<k>)")
    if not run.root.exists():
        raise UserError(f"{run.root}: run directory not found (runs/<name>/seed<k>): train one with `sedaug train`")
    if not run.checkpoints.exists() and not run.recipe.exists():
        raise UserError(f"{run.root} is not a run directory (no recipe.yaml, no checkpoints/): give "
                        "runs/<name>/seed<k>")
    other = "last" if which == "best" else "best"
    if not run.checkpoint(which).exists() and run.checkpoint(other).exists():
        raise UserError(f"{run.checkpoint(which)} not found, {other}.pt is there: use --checkpoint {other}")
    ckpt = load_checkpoint(run.checkpoint(which), device)
    _check_is_the_runs(run, ckpt)
    model = CRNN(ckpt.recipe.model)
    restore_weights(model, ckpt.model, ckpt.path)
    return model.to(device).eval(), ckpt.recipe, ckpt.state


def _check_is_the_runs(run: RunDir, ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose recipe is not the run's recipe.yaml (what `train --resume` refuses too): one copied
    from another run would be scored as this run's, and table would count it under this run's name and seed."""
    if not run.recipe.is_file():  # the checkpoint's own recipe is all there is (table leaves the run out)
        return
    try:
        recorded = load_recipe(run.recipe)
    except UserError as err:  # edited by hand: table would refuse the whole folder for it
        raise UserError(f"{err} (the run's recipe.yaml, which names its row in the table): put back the run's "
                        "own") from None
    if keys := diff_keys(what_a_run_trains(recorded), what_a_run_trains(ckpt.recipe)):
        raise UserError(f"{ckpt.path} is not the model of {run.recipe}: they differ at {', '.join(keys)} (a "
                        "checkpoint copied from another run, or recipe.yaml edited by hand): put back the run's own")


def _weights_problem(weights: Any, expected: dict[str, torch.Tensor], what: str) -> str | None:
    """Why `weights` do not fit a network whose state_dict is `expected` (the first offending key), or None."""
    problem = _weights_mismatch(weights, expected, what)
    if problem is not None:
        return f"{problem} (the checkpoint's recipe builds another model, or the file was altered)"
    for key, value in weights.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{what} weight {key} holds NaN or infinite values (a diverged or damaged model)"
    return None


def _weights_mismatch(weights: Any, expected: dict[str, torch.Tensor], what: str) -> str | None:
    if not isinstance(weights, dict):
        return f"{what} is {_describe(weights)}, not a mapping of tensors"
    for key, reference in expected.items():
        if key not in weights:
            return f"{what} weight {key} is missing"
        value = weights[key]
        if not isinstance(value, torch.Tensor):
            return f"{what} weight {key} is {_describe(value)}, not a tensor"
        if value.shape != reference.shape:
            return f"{what} weight {key} has shape {tuple(value.shape)}, where the model takes {tuple(reference.shape)}"
    extra = [key for key in weights if key not in expected]
    if extra:
        return f"{what} weight {extra[0]} is not one of the model's"
    return None


def _optimizer_problem(saved: Any, optimizer: torch.optim.Optimizer) -> str | None:
    """Why Adam's saved state would not fit `optimizer` (or fail in its first step), or None."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        return "optimizer is not an optimizer state (state and param_groups)"
    if len(saved["param_groups"]) != len(fresh["param_groups"]):
        return f"optimizer has {len(saved['param_groups'])} parameter groups, not {len(fresh['param_groups'])}"
    params = {}
    for g, (group, reference) in enumerate(zip(saved["param_groups"], fresh["param_groups"], strict=True)):
        if not isinstance(group, dict):
            return f"optimizer.param_groups[{g}] is {_describe(group)}, not a mapping"
        if "params" not in group:
            return f"optimizer.param_groups[{g}].params is missing"
        for key, default in reference.items():
            where = f"optimizer.param_groups[{g}].{key}"
            if key not in group:
                continue  # Adam fills in what an older torch did not save
            if key == "params":
                if not isinstance(group[key], list) or len(group[key]) != len(default):
                    return f"{where} does not list {len(default)} parameters"
            elif not _same_kind(group[key], default):
                return f"{where} is {_describe(group[key])}, where Adam takes {_describe(default)}"
        params.update(zip(group["params"], optimizer.param_groups[g]["params"], strict=True))
    for index, entry in saved["state"].items():
        where = f"optimizer.state[{index}]"
        if index not in params:
            return f"{where} belongs to no parameter"
        if not isinstance(entry, dict):
            return f"{where} is {_describe(entry)}, not a mapping"
        if entry and not {"step", "exp_avg", "exp_avg_sq"} <= entry.keys():
            return f"{where} lacks {', '.join(sorted({'step', 'exp_avg', 'exp_avg_sq'} - entry.keys()))}"
        for key, value in entry.items():
            if key == "step":
                if not (_is_number(value) or isinstance(value, torch.Tensor) and value.numel() == 1):
                    return f"{where}.step is {_describe(value)}, not a number"
            elif not isinstance(value, torch.Tensor) or value.shape != params[index].shape:
                return f"{where}.{key} is {_describe(value)}, where its parameter is {_describe(params[index])}"
    return None


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, dict):
        raise ValueError(f"rng is {_describe(rng)}, not a mapping")
    size = torch.get_rng_state().numel()
    value = rng.get("torch")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.numel() != size:
        raise ValueError(f"rng.torch is {_describe(value)}, not the {size} bytes of torch's generator state")
    cuda = rng.get("cuda")
    if cuda is not None and (not isinstance(cuda, torch.Tensor) or cuda.dtype != torch.uint8):
        raise ValueError(f"rng.cuda is {_describe(cuda)}, not a CUDA generator state")


def _same_kind(value: Any, default: Any) -> bool:
    if default is None or isinstance(default, bool):
        return value is None or isinstance(value, bool)
    if _is_number(default):
        return _is_number(value) and math.isfinite(value)
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list) and len(value) == len(default) and all(map(_is_number, value))
    return type(value) is type(default)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return f"a {type(value).__name__}"
