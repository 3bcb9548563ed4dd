"""The wheels a lent GPU machine needs to run benchmarks/gpu_check.sh (docs/speed.md, "On a lent GPU machine").

That machine reaches no package registry. Its image ('cuda': Python 3.12, torch and torchaudio 2.11.0, pytest, scipy,
matplotlib, tensorboard, ...) lacks some of what sedaug imports, and holds numpy and pandas at versions that
psds_eval and sed_scores_eval break on. This fills .whl/ (git-ignored) here, where pip reaches PyPI, with CARRY at
requirements.lock's versions for CPython 3.12 on x86-64 Linux; benchmarks/gpu_device.sh installs them there.

    python -m benchmarks.gpu_wheels            # fill .whl/ (about 40 MB); --list: print the pins only
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import Marker

REPO = Path(__file__).resolve().parents[1]
# What sedaug, its tests and its evaluation libraries import that the image lacks (or holds at an unusable version:
# numpy >= 2.4, pandas 3; click and typer where CliRunner's result.stderr needs click >= 8.2).
# setuptools for pkg_resources (dcase_util imports it; setuptools 82 has none), typing-extensions for pydantic.
# Taken from the image as it is (its package list, docs/speed.md): rich, pyyaml, annotated-doc and shellingham
# (typer), six (sed_eval, sed_scores_eval), lazy-loader (librosa); gpu_device.sh names any that goes missing.
CARRY = ["numpy", "pandas", "pytz", "tzdata", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
         "typing-extensions", "soundfile", "cffi", "pycparser", "psds-eval", "sed-eval", "sed-scores-eval", "dcase-util",
         "future", "validators", "lazy-dataset", "librosa", "click", "typer", "setuptools"]
# The device's Python, as its image reports it (docs/speed.md).
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def pins(lock: Path = REPO / "requirements.lock") -> dict[str, str]:
    """CARRY's versions in the lock for the device's Python (a name pinned per Python version: the matching line)."""
    found = {}
    for line in lock.read_text().splitlines():
        m = PIN.match(line)
        if m and m[1].lower() in CARRY and (m[3] is None or Marker(m[3]).evaluate(TARGET)):
            found[m[1].lower()] = m[2]
    missing = sorted(set(CARRY) - set(found))
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not in {lock} for Python {TARGET['python_full_version']}")
    return found


def fetch(versions: dict[str, str], out: Path, python: str) -> None:
    """Binary wheels for the device; a package with none on PyPI is built here by `python` (3.12: a compiled
    extension, such as sed_scores_eval's Cython, must be built for the device's CPython)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for name, version in versions.items():
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", TARGET["python_version"], "--implementation", "cp", *platforms,
                    "-d", str(out), f"{name}=={version}"]
        if subprocess.run(download, capture_output=True).returncode != 0:
            build = [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), f"{name}=={version}"]
            if subprocess.run(build, capture_output=True).returncode != 0:
                raise SystemExit(f"error: {name}=={version}: no wheel for CPython 3.12 on PyPI, and `{' '.join(build)}` "
                                 "failed (run it to see why); .whl/ is unchanged")


def check_python(python: str) -> None:
    """`python` is a CPython 3.12 that runs: the one that builds what PyPI has no wheel of."""
    try:
        found = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        found = ""
    if found != TARGET["python_version"]:
        raise SystemExit(f"error: --python {python}: {'Python ' + found if found else 'does not run'}; a CPython "
                         f"{TARGET['python_version']} is needed to build the wheels PyPI lacks (make gpu-wheels "
                         "PYTHON312=/path/to/python3.12)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_wheels", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".whl")
    parser.add_argument("--python", default=shutil.which("python3.12") or "python3.12",
                        help="a CPython 3.12 to build wheels PyPI has none of (default: python3.12 on PATH)")
    parser.add_argument("--list", action="store_true", help="print the pins and stop")
    args = parser.parse_args(argv)
    versions = pins()
    if args.list:
        print("\n".join(f"{name}=={version}" for name, version in versions.items()))
        return
    check_python(args.python)
    with tempfile.TemporaryDirectory() as tmp:  # .whl/ is replaced whole: one version of each package
        fetch(versions, Path(tmp), args.python)
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(tmp, args.out)
    size = sum(w.stat().st_size for w in args.out.glob("*.whl"))
    print(f"wrote {len(list(args.out.glob('*.whl')))} wheels ({size / 2**20:.1f} MiB) to {args.out}")


if __name__ == "__main__":
    main()
