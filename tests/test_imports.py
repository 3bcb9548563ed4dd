"""Every module imports, the package has no import cycle, and a torchaudio that does not match torch is one line."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sedaug

PACKAGE = Path(sedaug.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="sedaug.") if m.name != "sedaug.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def _imports(path: Path, name: str) -> set[str]:
    """The sedaug modules that a module imports anywhere in its body (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycle():
    graph = {name: _imports(PACKAGE.parent / (name.replace(".", "/") + ".py"), name)
             if (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists()
             else _imports(PACKAGE.parent / name.replace(".", "/") / "__init__.py", name)
             for name in MODULES}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])


def test_mismatched_torchaudio_is_one_line(tmp_path):
    """torchaudio 2.11.1 declares torch>=2.11 yet does not load beside torch 2.11.0: sedaug's own pins decide."""
    fake = tmp_path / "torchaudio-2.11.1.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\nRequires-Dist: torch>=2.11\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "sedaug", "--help"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torchaudio 2.11.1 is installed"), proc.stderr
    assert "torchaudio==2.11.0" in lines[0] and "make install" in lines[0]
    assert proc.stdout == ""


def test_matching_install_runs_help():
    proc = subprocess.run([sys.executable, "-m", "sedaug", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and proc.stderr == ""


def test_runs_from_any_working_directory(tmp_path):
    """Run from the parent of a clone (a `sedaug/` folder there) with a stray `yaml.py`: neither is imported."""
    (tmp_path / "sedaug").mkdir()
    (tmp_path / "yaml.py").write_text("raise SystemExit('the working directory was imported')\n")
    (tmp_path / "runs").mkdir()
    sedaug_script = str(Path(sys.executable).parent / "sedaug")
    proc = subprocess.run([sedaug_script, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout, proc.stderr
    proc = subprocess.run([sedaug_script, "table", "runs"], cwd=tmp_path, capture_output=True, text=True)
    assert "working directory was imported" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
