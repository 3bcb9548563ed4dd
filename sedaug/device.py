"""`--device`: the one reading of a device name, for every command and for the Python API."""

from __future__ import annotations

import torch

from sedaug.errors import UserError


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
