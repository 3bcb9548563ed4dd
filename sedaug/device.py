"""`--device`: the one reading of a device name, for every command and for the Python API; and the training step's
configuration on that device (`resolve_step_config`)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class StepConfig:
    compile: bool
    precision: str  # fp32 or bf16


def resolve_step_config(recipe: Recipe, device: torch.device, steps: int | None) -> StepConfig:
    """`optim.compile` and `optim.precision` as a run of `steps` training steps (None: unknown, taken as short)
    uses them on `device`. `auto` compiles the CNN on a CPU when the run is long enough for the compile time to pay
    back (on CUDA it stays eager until measured), and keeps float32: bf16 autocast is faster on CPUs with bf16 units (1.6x for a full-size forward+backward on
    this project's AVX512-BF16 EPYC) but changes the numbers training sees, which no test bounds yet."""
    optim = recipe.optim
    # On CUDA nothing has been measured yet (docs/speed.md, benchmarks/gpu_check.sh decides): auto stays eager there.
    long_run = (steps or 0) >= COMPILE_AFTER_STEPS and device.type == "cpu"
    compile_ = optim.compile if optim.compile != "auto" else long_run
    precision = optim.precision if optim.precision != "auto" else "fp32"
    return StepConfig(compile=bool(compile_), precision=precision)
