"""Where a sweep's trials run: a local Ray started for the sweep (its logs and state under <out>/ray, addresses on
localhost, a per-process token, no dashboard), or an existing cluster given by --address; and the one-driver lock of
a sweep directory (docs/sweeps.md, "Ray").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sedaug.errors import UserError
from sedaug.sweep.spec import LoadedSweep

# Ray's Unix sockets live at <temp>/session_<date>_<pid>/sockets/plasma_store: 107 bytes at most on Linux, so
# Ray's temp dir may have ~40 characters; a longer one is reached through a short link in /tmp.
MAX_TEMP_DIR = 40


@contextlib.contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """One driver per sweep directory (the kernel drops the lock when the driver dies, even by kill -9)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out / ".sweep.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another `sedaug sweep` is running on this directory") from None
        yield


# ---------------------------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def ray_session(out: Path, address: str | None) -> Iterator[list[str]]:
    """A local Ray (logs and state under <out>/ray, localhost, token-protected, no dashboard) or the cluster at
    `address`; Ray's Python logs go to <out>/ray/driver.log. Yields notes for the summary."""
    import ray

    ray_dir = out / "ray"
    ray_dir.mkdir(parents=True, exist_ok=True)
    # No usage report, no Tune console output (the view draws), and Ctrl-C raises KeyboardInterrupt at once.
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1"}
    notes: list[str] = []
    link = None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                              "logging_level": logging.WARNING}
    if address is None:
        if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
            # Ray protects a new local cluster with a token it would write to ~/.ray/auth_token; this one lives in
            # the environment of this process and of the cluster's (one per driver process: Ray caches it).
            env["RAY_AUTH_TOKEN"] = _token()
        temp = ray_dir / "tmp"
        temp.mkdir(exist_ok=True)
        if len(str(temp)) > MAX_TEMP_DIR:
            link = _short_link(temp)
            notes.append(f"Ray's temp dir {temp} is reached through {link} (Unix socket paths are limited to 107 bytes)")
        kwargs |= {"_temp_dir": str(link or temp), "_node_ip_address": "127.0.0.1", "object_store_memory": 256 * 2**20}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    handler = logging.FileHandler(ray_dir / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # ray.init(configure_logging=False) empties the "ray" logger's handlers: "ray._private" (init's own warnings)
    # gets the file before, "ray" (Tune's) after; Optuna's study messages go there too.
    loggers = [logging.getLogger("ray._private"), logging.getLogger("optuna"), logging.getLogger("ray")]
    saved_loggers = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers[:2]:
        lg.handlers, lg.propagate = [handler], False
    try:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise UserError(f"--address {address}: cannot connect to a Ray cluster there ({e})") from None
        loggers[2].handlers, loggers[2].propagate = [handler], False
        yield notes
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        for lg, (handlers, propagate) in zip(loggers, saved_loggers, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if link is not None:
            with contextlib.suppress(OSError):
                os.unlink(link)


@functools.cache
def _token() -> str:
    return secrets.token_hex(32)


def _short_link(target: Path) -> Path:
    """/tmp/sedaug-ray-<hash of target> -> target (a link, so that Ray's files stay under the sweep directory)."""
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(os.path.realpath(os.sep))
    digest = hashlib.sha1(str(target).encode()).hexdigest()
    for n in range(8, len(digest)):
        link = base / f"sedaug-ray-{digest[:n]}"
        if link.is_symlink() and os.readlink(link) == str(target):
            return link
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
            return link
    raise UserError(f"cannot make a short link to Ray's temp dir {target} in {base}")


def check_resources(loaded: LoadedSweep) -> None:
    import ray

    have = ray.cluster_resources()
    res = loaded.sweep.resources
    where = f"{loaded.path}: resources"
    if res.cpus > have.get("CPU", 0):
        raise UserError(f"{where}.cpus: {res.cpus:g} per trial, but the Ray cluster has {have.get('CPU', 0):g} CPUs")
    if res.gpus > have.get("GPU", 0):
        raise UserError(f"{where}.gpus: {res.gpus:g} per trial, but the Ray cluster has {have.get('GPU', 0):g} GPUs")
