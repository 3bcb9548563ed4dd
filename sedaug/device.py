"""`--device`: the one reading of a device name, for every command and for the Python API; the training step's
configuration on that device (`StepConfig`, `resolve_step_config`) and the precision each pass runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from sedaug.errors import UserError
from sedaug.recipe import Recipe

# On an idle 2-core CPU, compiling the CNN costs 31 s for a run's first graph (empty inductor cache), a few seconds
# for each further one, and saves 0.23 s (`none`) to 0.73 s (`baseline`) a step of the full-size CRNN (README,
# "Speed"; `make bench`): `compile: auto` compiles runs of at least this many steps, where it pays back.
COMPILE_AFTER_STEPS = 300


def parse_device(name: str | torch.device | None) -> torch.device:
    """cpu, cuda or cuda:N; None picks cuda when available, else cpu. A UserError for anything else."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(name)
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name}: expected cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The RNG states a run's draws come from: the CPU generator's and, on CUDA, the device's."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(rng: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)


@dataclass(frozen=True)
class StepConfig:
    """How a training step runs. `precision`: fp32 (strict: no TF32), tf32 (float32 convolutions and matmuls may
    round their inputs to TF32 on a GPU) or bf16 (the passes under bf16 autocast, TF32 for what stays float32).
    `compile`: the CNN's torch.compile mode (`reduce-overhead`: CUDA graphs), None for eager."""

    compile: Literal["default", "reduce-overhead"] | None
    precision: Literal["fp32", "tf32", "bf16"]

    @property
    def tf32(self) -> bool:
        return self.precision != "fp32"

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def __str__(self) -> str:  # "eager, fp32", "compiled CNN, bf16", "compiled CNN (reduce-overhead), tf32"
        cnn = {None: "eager", "default": "compiled CNN"}.get(self.compile, f"compiled CNN ({self.compile})")
        return f"{cnn}, {self.precision}"


# The configurations a CUDA default may be chosen from: tests/test_cuda.py checks each one and
# benchmarks/gpu_speed.py times each one; the fastest that passes its tests becomes CUDA_AUTO (docs/speed.md).
CONFIGS = {
    "eager": StepConfig(compile=None, precision="fp32"),
    "tf32": StepConfig(compile=None, precision="tf32"),
    "bf16": StepConfig(compile=None, precision="bf16"),
    "compile": StepConfig(compile="default", precision="tf32"),
    "compile-bf16": StepConfig(compile="default", precision="bf16"),
    "compile-reduce-overhead": StepConfig(compile="reduce-overhead", precision="tf32"),
}
# What `auto` runs on CUDA: strict float32, eager, until benchmarks/gpu_check.sh has measured a faster configuration
# that passes its CUDA tests (its report's decisions.cuda_default_config names the CONFIGS entry to put here).
CUDA_AUTO = CONFIGS["eager"]


def resolve_step_config(recipe: Recipe, device: torch.device, steps: int | None) -> StepConfig:
    """`optim.compile` and `optim.precision` as a run of `steps` training steps (None: unknown, taken as short)
    uses them on `device`; a UserError for a CUDA-only setting on a CPU.

    `auto` on CUDA is CUDA_AUTO. On a CPU it compiles the CNN when the run is long enough for the compile time to
    pay back, and keeps float32: bf16 autocast is faster on CPUs with bf16 units (1.6x for a full-size
    forward+backward on this project's AVX512-BF16 EPYC) but changes the numbers training sees, which no test bounds
    on a CPU yet."""
    check_runs_on(recipe, device)
    optim = recipe.optim
    if device.type == "cuda":
        auto = CUDA_AUTO
    else:
        auto = StepConfig(compile="default" if (steps or 0) >= COMPILE_AFTER_STEPS else None, precision="fp32")
    compile_ = {"auto": auto.compile, True: "default", False: None}.get(optim.compile, optim.compile)
    precision = auto.precision if optim.precision == "auto" else optim.precision
    return StepConfig(compile=compile_, precision=precision)


def device_problems(recipe: Recipe, device: torch.device) -> list[str]:
    """One message for each CUDA-only step setting of `recipe`, where `device` is not CUDA."""
    if device.type == "cuda":
        return []
    problems = []
    if recipe.optim.precision == "tf32":
        problems.append(f"{recipe.name}: optim.precision tf32 (a GPU's number format) runs on CUDA only; on {device} "
                        "use fp32 or bf16")
    if recipe.optim.compile == "reduce-overhead":
        problems.append(f"{recipe.name}: optim.compile reduce-overhead (CUDA graphs) runs on CUDA only; on {device} "
                        "use true, false or auto")
    return problems


def check_runs_on(recipe: Recipe, device: torch.device) -> None:
    """A UserError, one line, for the CUDA-only step settings of `recipe` on another device."""
    problems = device_problems(recipe, device)
    if problems:
        raise UserError("; ".join(problems))


@contextmanager
def allow_tf32(enabled: bool) -> Iterator[None]:
    """Whether float32 convolutions and matmuls on a GPU may round to TF32 inside (PyTorch's own default allows it for
    cuDNN's convolutions only). Read when a kernel runs: a training step's backward must run inside too. Both flags
    move together: dynamo guards on the matmul flag only, so a compiled CNN gets one graph per setting (VAT's strict
    probes apart from a TF32 step). Process-wide, like PyTorch's own flags: not for threads that run models."""
    # The legacy flags: PyTorch refuses to read one API's flag after the other API set it.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """float32 without autocast and without TF32, whatever the surrounding code chose: VAT's probe passes, and every
    prediction and feature (evaluate, detect and extract-mels give a GPU's numbers within float32 rounding of a
    CPU's)."""
    with allow_tf32(False), torch.autocast(device.type, enabled=False):
        yield


def tf32_allowed(device: torch.device) -> bool:
    """Whether float32 convolutions or matmuls on `device` may round to TF32 now."""
    return device.type == "cuda" and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
