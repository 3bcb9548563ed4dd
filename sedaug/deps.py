"""The binary dependencies that only load beside each other: checked in one line before any command runs.

torchaudio's shared library is built against one torch release, but its metadata admits any newer torch
(torchaudio 2.11.1 declares `torch>=2.11` and fails to load beside torch 2.11.0 with an undefined symbol). So the
check compares the installed versions with sedaug's own exact pins, reading metadata only (no import: `--help`
stays instant), and `import_torchaudio` turns a load failure that slips past it into the same one line.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

from sedaug.errors import UserError

BINARY = ("torch", "torchaudio")
FIX = "run `make install` (reinstalls the locked set), or `pip install torch==2.11.0 torchaudio==2.11.0`"


def binary_mismatch() -> str | None:
    """Why torch and torchaudio will not load as installed, or None when they match sedaug's pins."""
    try:
        pins = [Requirement(r) for r in metadata.requires("sedaug") or []]
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed: nothing to compare
        return None
    for req in pins:
        if req.name not in BINARY or req.marker is not None:
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return f"{req.name} is not installed: {FIX}"
        if not req.specifier.contains(installed, prereleases=True):
            return f"{req.name} {installed} is installed, but sedaug needs {req} (its binary loads only beside the matching torch): {FIX}"
    return None


def import_torchaudio():
    """`import torchaudio`, with a load failure of its shared library as one UserError line."""
    try:
        import torchaudio
    except (OSError, ImportError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        versions = ", ".join(f"{name} {_version(name)}" for name in BINARY)
        raise UserError(f"torchaudio failed to load ({versions}): {first}; {FIX}") from None
    return torchaudio


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
