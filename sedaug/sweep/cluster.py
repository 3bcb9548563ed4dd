"""Where a sweep's trials run: a local Ray started for the sweep (its logs and state under <out>/ray, listening on
127.0.0.1 only, a per-process token, no dashboard), or an existing cluster given by --address HOST:PORT or by
RAY_ADDRESS (reached within --connect-timeout); the resources it has against what the trials ask; and the
one-driver lock of a sweep directory (docs/sweeps.md, "Ray"; docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import logging.handlers
import os
import secrets
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sedaug.errors import UserError
from sedaug.sweep.spec import LoadedSweep

# Ray's Unix sockets live at <temp>/session_<date>_<pid>/sockets/plasma_store: 107 bytes at most on Linux, so
# Ray's temp dir may have ~40 characters; a longer one is reached through a short link in /tmp.
MAX_TEMP_DIR = 40
OBJECT_STORE = 256 * 2**20  # a local Ray's object store: trials pass only configs and small results
# Ray turns 127.0.0.1 into the machine's external address, and its servers then listen on every interface, unless it
# believes multi-node clusters are off (its own default on macOS and Windows): then a node listens on 127.0.0.1 only
# and a driver reaches a head on 127.0.0.1 as such. Read by Ray at import (patched then) and by its processes.
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


DRIVER_LOCK = ".sweep.lock"


@contextlib.contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """One driver per sweep directory (the kernel drops the lock when the driver dies, even by kill -9)."""
    with open(out / DRIVER_LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another `sedaug sweep` is running on this directory") from None
        yield


def driver_running(out: Path) -> bool:
    """Whether a `sedaug sweep` holds `out`'s driver lock now (read only: `--dry-run` writes nothing). The probe
    holds a shared lock for an instant: a driver starting in that instant is refused as if another ran."""
    try:
        with open(out / DRIVER_LOCK) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file: no sweep ran there
        return False
    return False


# ---------------------------------------------------------------------------------------------- addresses


RAY_ADDRESS = "RAY_ADDRESS"


def sweep_address(address: str | None) -> str | None:
    """--address, else RAY_ADDRESS where set (Ray's own default: `ray job submit` sets it in a job's environment),
    else None; None and `local` mean a local Ray."""
    return address or os.environ.get(RAY_ADDRESS) or None


def named(address: str) -> str:
    """How a message names the address: as RAY_ADDRESS's value where it is that, else as --address's (quoted as a
    shell would need)."""
    return f"{RAY_ADDRESS}={shlex.quote(address)}" if os.environ.get(RAY_ADDRESS) == address else \
        f"--address {shlex.quote(address)}"


def parse_address(address: str | None) -> tuple[str, int] | str | None:
    """None (a local Ray: None or `local`), "auto", or (host, port) of an existing cluster's GCS; anything else is
    a UserError."""
    if address is None or address == "local":
        return None
    if address == "auto":
        return "auto"
    if address.startswith("ray://"):
        raise UserError(f"{named(address)}: Ray Client (ray://) is not supported: give the head's GCS address as "
                        "HOST:PORT (port 6379 by default) from a machine of the cluster (docs/cluster.md)")
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise UserError(f"{named(address)}: not a Ray address: give HOST:PORT of the head's GCS (e.g. "
                        "10.0.0.1:6379), auto or local")
    return host, int(port)


def is_loopback(where: tuple[str, int] | str | None) -> bool:
    return where is None or (isinstance(where, tuple) and where[0] in ("127.0.0.1", "localhost", "::1"))


TOKEN_HINT = "a Ray 2.60 cluster needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN in this environment (docs/cluster.md)"


def probe(address: str, where: tuple[str, int] | str, timeout: float, name: str) -> None:
    """Connect to the cluster once in a child process, bounded by `timeout` seconds, so that an address where no
    Ray answers, a refused connection or a missing token is one line (naming the address as `name`) instead of
    minutes of Ray's retries."""
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    if isinstance(where, tuple):
        try:
            socket.create_connection(where, timeout=timeout).close()
        except OSError as e:
            reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            raise UserError(f"{name}: cannot reach {where[0]} port {where[1]} ({reason}): is the Ray "
                            "head running there, and its GCS port open to this machine?") from None
    code = ("import logging, sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
            "logging_level=logging.ERROR); ray.shutdown()")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if is_loopback(where):
        env[LOCAL_ONLY] = "0"  # a head on 127.0.0.1 is reached as 127.0.0.1 (see ray_session)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, address], stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                err.seek(0)
                if "Unauthenticated" in err.read():  # Ray retries a refused token for ~30 s: no need to wait
                    raise UserError(f"{name}: the cluster refused this connection's token: {TOKEN_HINT}")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        err.seek(0)
        text = err.read()
    if proc.returncode == 0:
        return
    if "Unauthenticated" in text or "auth" in text.lower():
        raise UserError(f"{name}: the cluster refused this connection's token: {TOKEN_HINT}")
    if time.monotonic() >= deadline:
        raise UserError(f"{name}: no Ray cluster answered within {timeout:g} s (--connect-timeout "
                        "waits longer)")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    raise UserError(f"{name}: cannot join the Ray cluster ({last[-300:]})")


# ---------------------------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def ray_session(out: Path, address: str | None, connect_timeout: float = 30.0,
                before_start: Callable[[dict | None], None] = lambda resources: None) -> Iterator[list[str]]:
    """A local Ray (logs and state under <out>/ray, listening on 127.0.0.1 only, token-protected, no dashboard) or
    the cluster at `address`; Ray's Python logs go to <out>/ray/driver.log. Yields notes for the summary.

    `before_start(resources)` runs before anything is written: joining a cluster, once connected, with its
    resources; for a local Ray (whose files live in <out>) with None, before it starts."""
    import ray
    from ray._private import ray_constants

    where = parse_address(address)
    name = None if where is None else named(address)
    ray_dir = out / "ray"
    # No usage report, no Tune console output (the view draws), and Ctrl-C raises KeyboardInterrupt at once.
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1",
           # ray.init takes RAY_ADDRESS over its own address argument (and a local Ray would join it): ours, or none
           RAY_ADDRESS: "" if where is None else address}
    notes: list[str] = []
    link = None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                              "logging_level": logging.WARNING}
    local_only = ray_constants.ENABLE_RAY_CLUSTER
    if where is None:
        if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
            # Ray protects a new local cluster with a token it would write to ~/.ray/auth_token; this one lives in
            # the environment of this process and of the cluster's (one per driver process: Ray caches it).
            env["RAY_AUTH_TOKEN"] = _token()
    if is_loopback(where):
        env[LOCAL_ONLY] = "0"
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # Ray's messages wait in memory until <out>/ray exists (nothing is written before the checks pass).
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    handler = None
    # ray.init(configure_logging=False) empties the "ray" logger's handlers: "ray._private" (init's own warnings)
    # gets the handler before, "ray" (Tune's) after; Optuna's study messages go there too.
    loggers = [logging.getLogger("ray._private"), logging.getLogger("optuna"), logging.getLogger("ray")]
    saved_loggers = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [buffer], False
    try:
        if is_loopback(where):
            ray_constants.ENABLE_RAY_CLUSTER = False
        if where is not None:
            probe(address, where, connect_timeout, name)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"{name}: cannot join the Ray cluster ({e})") from None
            loggers[2].handlers, loggers[2].propagate = [buffer], False
            before_start(ray.cluster_resources())
            ray_dir.mkdir(parents=True, exist_ok=True)
        else:
            before_start(None)
            temp = ray_dir / "tmp"
            temp.mkdir(parents=True, exist_ok=True)
            if len(str(temp)) > MAX_TEMP_DIR:
                link = _short_link(temp)
                notes.append(f"Ray's temp dir {temp} is reached through {link} (Unix socket paths are limited to 107 "
                             "bytes)")
            kwargs |= {"_temp_dir": str(link or temp), "_node_ip_address": "127.0.0.1",
                       "object_store_memory": OBJECT_STORE}
            ray.init(**kwargs)
        handler = logging.FileHandler(ray_dir / "driver.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        buffer.setTarget(handler)
        buffer.flush()
        for lg in loggers:
            lg.handlers, lg.propagate = [handler], False
        yield notes
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = local_only
        for lg, (handlers, propagate) in zip(loggers, saved_loggers, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        buffer.close()
        if handler is not None:
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


# ---------------------------------------------------------------------------------------------- resources


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one: not macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_resources() -> dict[str, float]:
    """What a local Ray will have: this process's CPUs, the visible GPUs, the physical memory (bytes)."""
    cpus = usable_cpus()
    gpus = 0
    with contextlib.suppress(Exception):
        import torch

        gpus = torch.cuda.device_count()
    try:  # what Ray will offer: the memory available now (cgroup-aware), less the object store sedaug gives it
        from ray._private.utils import estimate_available_memory

        memory = estimate_available_memory() - OBJECT_STORE
    except (ImportError, AttributeError, OSError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") - OBJECT_STORE
    return {"CPU": float(cpus), "GPU": float(gpus), "memory": float(memory)}


def resources_short(per_trial: dict[str, dict[str, float]], have: dict[str, float], where: str) -> dict[str, str]:
    """{cpus|gpus|memory: what is short} of the largest trial request of any row against what `where` has."""
    request = {"CPU": max(r["cpu"] for r in per_trial.values()), "GPU": max(r["gpu"] for r in per_trial.values()),
               "memory": max(r["memory"] for r in per_trial.values())}
    names = {"CPU": "cpus", "GPU": "gpus", "memory": "memory"}
    short = {}
    for key, need in request.items():
        if need > have.get(key, 0):
            if key == "memory":
                short["memory"] = (f"memory: {need / 2**30:.3g} GiB per trial, but {where} has "
                                   f"{have.get(key, 0) / 2**30:.3g} GiB")
            else:
                short[names[key]] = f"{names[key]}: {need:g} per trial, but {where} has {have.get(key, 0):g}"
    return short


def check_resources(loaded: LoadedSweep, per_trial: dict[str, dict[str, float]], have: dict[str, float],
                    where: str, wait: bool) -> list[str]:
    """Each recipe's trial request against what the cluster has: a UserError naming what is short (every row's
    largest request), or, when told to wait for resources (an autoscaling cluster), warnings."""
    short = list(resources_short(per_trial, have, where).values())
    if short and not wait:
        hint = " (an autoscaling cluster: pass --wait-for-resources)" if where != "this machine" else ""
        raise UserError(f"{loaded.path}: resources.{'; resources.'.join(short)}{hint}")
    return [f"waiting for resources: {s}" for s in short]
