"""A run directory's paths (docs/architecture.md, "Run directory") and the environment recorded in its env.json."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import yaml

import sedaug
from sedaug.deps import import_torchaudio
from sedaug.errors import UserError
from sedaug.files import is_running, read_json_object, write_text, writing

LOCK = ".lock"
_HELD: set[Path] = set()  # the run directories this process holds locked
DIVERGED = "diverged.json"  # a run whose loss became non-finite: {epoch, step, message} (sedaug.train)
# The splits `sedaug evaluate` scores into RUN/<split>/.
EVALUATED_SPLITS = ("eval", "validation", "synthetic_valid")
# What train, evaluate and a sweep write in a run directory (TensorBoard's event files too: events.out.tfevents.*).
RUN_ENTRIES = ("recipe.yaml", "env.json", "train.log", "metrics.jsonl", "train_curves.png", "checkpoints",
               *EVALUATED_SPLITS, LOCK, DIVERGED)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "train_curves.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        return self.checkpoints / f"{which}.pt"

    def split(self, name: str) -> Path:
        return self.root / name

    def results(self, split: str) -> Path:
        return self.split(split) / "results.json"

    def is_empty(self) -> bool:
        return not self.root.exists() or not any(p.name != LOCK for p in self.root.iterdir())

    def trained_outputs(self) -> list[str]:
        """What in the run directory comes from training (best.pt, epochs in metrics.jsonl, evaluations), said
        for a message; empty when nothing was trained."""
        found = []
        if self.checkpoint("best").exists():
            found.append(str(self.checkpoint("best").relative_to(self.root)))
        if self.metrics.is_file():
            with self.metrics.open("rb") as f:
                rows = sum(1 for line in f if line.strip())
            if rows:
                found.append(f"{rows} epoch{'s' if rows > 1 else ''} in {self.metrics.name}")
        found += [f"{name}/" for name in EVALUATED_SPLITS if self.split(name).exists()]
        return found

    def metric_rows(self, upto: int | None = None) -> list[dict]:
        """metrics.jsonl's rows (of epochs 1..`upto`); a line that is not such a row is a one-line UserError."""
        if not self.metrics.exists():
            return []
        rows = []
        try:
            lines = self.metrics.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{self.metrics}: unreadable ({err}): repair or remove it") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool):
                raise UserError(f"{self.metrics} line {n}: not a metrics row with an integer epoch: repair or remove "
                                "the line")
            if upto is None or row["epoch"] <= upto:
                rows.append(row)
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        """metrics.jsonl, written whole (atomically: a full disk leaves the previous file)."""
        write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in rows))

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Read the run while no other process trains it (a shared flock against train's exclusive one: an
        evaluation never scores a checkpoint about to change). Readers do not exclude each other, a read-only run
        can be read, nothing is written; a run without a lock file has never had a writer. Within the process that
        holds the run (a sweep trial evaluating inside its train call), reading is free."""
        if self.root.resolve() in _HELD:
            yield
            return
        with self._shared() as holder:
            if holder is not None:
                raise UserError(f"{self.root} is being trained by another sedaug process (pid {holder or '?'}): wait "
                                "for it, or stop it first")
            yield

    def in_training(self) -> bool:
        """Whether another process holds the run to write it (train, or a sweep's trial), as `reading` would find."""
        try:
            with self._shared() as holder:
                return holder is not None
        except OSError:
            return False

    @contextmanager
    def _shared(self) -> Iterator[str | None]:
        """A shared flock of the run's lock file for the block: yields None, or where another process holds the run
        to write it, that process's pid as its lock file says ("" if unknown), the flock not taken. No lock file:
        None (the run never had a writer)."""
        try:
            fd = os.open(self.root / LOCK, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            yield _flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process (an flock the OS drops when the process dies, kill -9 too): a
        second writer is refused with the holder's pid instead of interleaving its files, and so is a reader
        (`reading`)."""
        key = self.root.resolve()
        created = [p for p in (self.root, *self.root.parents) if not p.exists()]  # runs/<name>/seed0 upwards
        self.root.mkdir(parents=True, exist_ok=True)
        lock_created = not (self.root / LOCK).exists()
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            holder = _flock(fd, fcntl.LOCK_EX)
            if holder is not None:  # the file holds the last writer's pid; a reader (`reading`) writes none
                who = f"pid {holder}" if holder.isdigit() and is_running(int(holder)) else "an evaluation reading it"
                raise UserError(f"{self.root} is in use by another sedaug process ({who}): wait for it, or stop it "
                                "first")
            previous = os.pread(fd, 64, 0)  # the last holder's pid, put back if this process is refused
            _HELD.add(key)
            try:
                with writing(self.root / LOCK):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                yield
            except BaseException:
                if lock_created:  # a refusal (or failure) leaves no lock file, nor the folders it made and left empty
                    (self.root / LOCK).unlink(missing_ok=True)
                else:  # nor a byte changed in one that was there (where the disk lets it be put back)
                    with suppress(OSError):
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, previous, 0)
                with suppress(OSError):  # another process's run begun beside it: that folder stays
                    for folder in created:
                        if any(folder.iterdir()):
                            break
                        folder.rmdir()
                raise
        finally:
            _HELD.discard(key)
            os.close(fd)  # releases the lock


def _flock(fd: int, mode: int) -> str | None:
    """Take the flock `mode` without waiting: None, or, where another process holds the file, what it holds (the
    last writer's pid)."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    return None


def enclosing_run(path: Path) -> Path | None:
    """The run directory, or ensemble folder, that `path` is or lies in, else None."""
    path = Path(path).resolve()
    return next((run.root for run in map(RunDir, (path, *path.parents))
                 if run.recipe.is_file() and (run.checkpoints.is_dir() or is_ensemble(run.root))), None)


def run_holding(path: Path) -> Path | None:
    """The run directory, or ensemble folder, whose own file or folder `path` is or lies in (the run directory
    itself included), else None: where another command's output would overwrite a run's."""
    root = enclosing_run(path)
    if root is None:
        return None
    parts = Path(path).resolve().relative_to(root).parts
    own = not parts or parts[0] in RUN_ENTRIES or parts[0].startswith("events.out.tfevents")
    return root if own else None


def is_ensemble(root: Path) -> bool:
    """Whether `root` is an ensemble's folder (`evaluate --ensemble` wrote it): a recipe named `<name>_ensemble`, no
    checkpoints of its own."""
    run = RunDir(Path(root))
    try:
        recipe = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    ensemble = isinstance(recipe, dict) and str(recipe.get("name", "")).endswith("_ensemble")
    return ensemble and not run.checkpoints.is_dir()


def sedaug_data_holding(path: Path) -> str | None:
    """What `path` is or lies in that another command's output must not overwrite: a run's own files, a feature
    store, a prepared DESED (its manifest, a synthetic one's audio and labels), or a DESED tree's audio/ and metadata/
    (beside each other: a real DESED's label TSVs have a detections TSV's header); None else."""
    from sedaug.data.desed import MANIFEST_DIR, PREPARE_JSON
    from sedaug.data.store import is_store

    if (run := run_holding(path)) is not None:
        return f"run {run}'s own files"
    resolved = Path(path).resolve()
    for root in (resolved, *resolved.parents):
        if is_store(root):
            return f"the feature store {root}"
        if (root / MANIFEST_DIR / PREPARE_JSON).is_file():
            return f"the prepared DESED {root}"
        desed = (root / "audio").is_dir() and any((root / "metadata" / d).is_dir() for d in ("train", "validation", "eval"))
        if desed and resolved.relative_to(root).parts[:1] in (("audio",), ("metadata",)):
            return f"the DESED tree {root}"
    return None


def trained_on(run_dir: Path) -> str | None:
    """The identity of the feature store a run trained on (env.json's record of it), as text to compare (its
    features' hash, where recorded, not where its tree lay); None for an ensemble, or a run trained before
    env.json recorded it."""
    features = (read_json_object(RunDir(Path(run_dir)).env) or {}).get("features")
    return json.dumps(_what_identifies(features), sort_keys=True) if isinstance(features, dict) else None


def _what_identifies(identity: dict) -> dict:
    """A store's identity without its manifest's hash where its features' hash is recorded: the features are the
    data, wherever the tree lay (a tree moved and extracted again is the same store)."""
    return {k: v for k, v in identity.items() if k != "manifest_hash" or "features_hash" not in identity}


def identity_changes(recorded: dict, identity: dict) -> list[str]:
    """The keys at which a run's record of its feature store differs from a store's identity (an older record,
    without the features' hash, is compared by the manifest's)."""
    return [key for key, value in _what_identifies(recorded).items() if identity.get(key) != value]


def best_epoch(rows: list[dict]) -> dict | None:
    """metrics.jsonl's row of the first epoch with the highest valid_f1: the one best.pt keeps (a tie does not
    replace it)."""
    scored = [r for r in rows if isinstance(r.get("valid_f1"), int | float) and isinstance(r.get("epoch"), int)]
    return max(scored, key=lambda r: (r["valid_f1"], -r["epoch"]), default=None)


def ensemble_members(results: Path) -> list[str] | None:
    """The member runs an ensemble's results.json records (`evaluate --ensemble` writes them resolved), sorted (given
    in another order, they are the same), or None where it records none."""
    members = (read_json_object(results) or {}).get("members")
    return sorted(str(m.get("run")) for m in members if isinstance(m, dict)) if isinstance(members, list) else None


def read_diverged(run_dir: Path) -> dict | None:
    """`{epoch, step, message}` of a run whose loss became non-finite (train writes it), or None."""
    return read_json_object(Path(run_dir) / DIVERGED)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(sedaug.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment(device) -> dict:
    import torch

    torchaudio = import_torchaudio()
    return {
        "sedaug": sedaug.__version__,
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "command": sys.argv,
    }
