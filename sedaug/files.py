"""The files every part of sedaug reads and writes: atomic writes, TSV, JSON and JSON lines.

A write goes to a temporary sibling that replaces the target only once it is complete, so a reader (or a crash)
sees the old file or the new one, never half of one. A write that fails (a full disk, a read-only folder) removes
its temporary file and raises a one-line `UserError` naming the target; the old file stays as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from sedaug.errors import UserError

# The temporary siblings below are named `.<name>.tmp<pid>...` and `.<name>.old<pid>`.
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)(\d+)(?:\.[^.]*)?$")


def absolute(path: str | Path) -> Path:
    """`path` (`~` expanded) absolute and without `..`, as a run or a sweep records it: the working folder it was
    relative to may go. The part up to the last `..` is resolved as the file system does (after a link, the
    target's parent); what follows keeps its spelling (a link's own name)."""
    path = Path(path)
    with contextlib.suppress(RuntimeError):  # `~nosuchuser`: kept as written, and said missing where it is read
        path = path.expanduser()
    parts = path.absolute().parts
    if ".." not in parts:
        return path.absolute()
    last = len(parts) - parts[::-1].index("..")
    return Path(*parts[:last]).resolve().joinpath(*parts[last:])


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError raised by the block (the disk is full, the folder read-only) into a one-line UserError
    naming `path`."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` only if the block succeeds. The name keeps
    the suffix (numpy appends `.npy` otherwise). An OSError in the block is a one-line UserError naming `path`.
    A device, a FIFO or a terminal (`--out /dev/null`, `/dev/stdout`) is written through: a rename would put a
    regular file in its place (as root, in /dev)."""
    if is_special(path):
        with writing(path):
            yield path
        return
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only folder: what went wrong was said above, naming `path`
            tmp.unlink(missing_ok=True)


def is_special(path: Path) -> bool:
    """Whether `path` (its links followed) is neither a regular file nor a folder: a device, a FIFO, a socket."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder to fill; it replaces the folder `path` whole only if the block
    succeeds (else it is removed and `path` stays as it was). The folder is made with `mkdir`, so that it gets the
    user's normal permissions (umask), not the 0700 of a `tempfile.mkdtemp` folder, which a rename would keep.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    try:
        with writing(path), named_as(tmp, path):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            if path.exists():
                path.rename(old)
            tmp.rename(path)
    finally:
        if os.path.lexists(old) and not os.path.lexists(path):  # stopped between the two renames: the old one goes back
            old.rename(path)
        for leftover in (tmp, old):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:  # `path` was a file (or a link): its renamed self
                with contextlib.suppress(OSError):  # a read-only folder: said above, naming `path`
                    leftover.unlink(missing_ok=True)


@contextmanager
def named_as(staging: Path, path: Path) -> Iterator[None]:
    """A UserError raised by the block names the files of the folder `path` that `staging`, its temporary twin,
    stands for (the twin is gone by the time the user reads it)."""
    try:
        yield
    except UserError as err:
        message = str(err).replace(str(staging), str(path))
        if message == str(err):
            raise
        raise UserError(message) from err


def is_temporary(name: str) -> bool:
    """Whether a file name is one of sedaug's temporaries (`.<name>.tmp<pid>...`, `.<name>.old<pid>`)."""
    return _TEMPORARY.match(name) is not None


def remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporary siblings (`.<name>.tmp<pid>...`, `.<name>.old<pid>`) that a process killed before its
    clean-up left in `directory`; those of running processes are kept."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or is_running(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def is_running(pid: int) -> bool:
    """Whether process `pid` exists (this one included), not as a zombie: one killed a moment ago (kill -9, then the
    command again) is one until its parent reaps it, and its temporaries would stay."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    try:  # Linux: the state after the command's name, in parentheses
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # whatever the locale


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json_object(path: Path) -> dict | None:
    """A JSON file sedaug wrote, as its object; None where it is missing, unreadable, not JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_tsv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (a small one: read whole)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_tsv(path: Path) -> pd.DataFrame:
    """Every cell as a string; empty cells stay empty strings (DESED uses them for clips without events)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)


def append_jsonl(path: Path, obj: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(obj) + "\n")
