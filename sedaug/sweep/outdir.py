"""The sweep directory before Ray starts: a new sweep needs an empty `--out`; `--resume` compares the sweep file with
the one the directory was run with (`sweep.yaml`, `recipes/<name>.yaml`) and refuses, one line each, the changes that
would make finished trials incomparable with new ones (docs/sweeps.md, "Stopping, killing and resuming").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sedaug.errors import UserError
from sedaug.files import absolute, write_text
from sedaug.rundir import sedaug_data_holding
from sedaug.strict_yaml import diff_keys, dump_yaml, get_key, set_key
from sedaug.sweep.spec import LoadedSweep

# Changes to a sweep that --resume refuses: the finished trials would no longer be comparable with new ones.
FROZEN = {"select": "the selection split and metric", "search_seed": "the search seed",
          "algorithm.type": "the search algorithm", "early_stopping": "early stopping"}


def check_out(out: Path, loaded: LoadedSweep, resume: bool) -> None:
    """A new sweep needs an empty --out. --resume accepts an edited sweep file (search values, rows, seeds,
    resources) but refuses, each named, a change of what makes trials comparable: a base recipe (epochs
    included), the selection, the search seed or algorithm, early stopping. Reads only."""

    sweep_file, recipes_dir = out / "sweep.yaml", out / "recipes"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the sweep")
    if (held := sedaug_data_holding(out)) is not None:
        raise UserError(f"--out {out} is in {held}: give the sweep a folder outside it")
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} is not empty: pass --resume to continue that sweep, or choose another --out")
        return
    if not sweep_file.exists():
        raise UserError(f"{out}: no sweep to resume (no sweep.yaml): run it without --resume")
    saved = _read_yaml(sweep_file)
    if not isinstance(saved, dict):
        raise UserError(f"{sweep_file}: not a sweep sedaug wrote: run the sweep with another --out")
    resolved = loaded.resolved()
    saved["search_seed"] = _searched_on(saved)
    problems = []
    for key, what in FROZEN.items():
        before, now = get_key(saved, key, None), get_key(resolved, key, None)
        if before != now:
            problems.append(f"{key} ({what}): {_show(before)} in {sweep_file}, {_show(now)} now")
    for name, base in loaded.bases.items():
        path = recipes_dir / f"{name}.yaml"
        if path.exists():
            saved_base = _read_yaml(path)
            if isinstance(features := get_key(saved_base, "data.features", None), str):
                set_key(saved_base, "data.features", str(absolute(features)))  # as recorded before `..` was resolved
            keys = diff_keys(saved_base, base)
            if keys:
                problems.append(f"recipe {name} (the base recipe, set included): {', '.join(keys)}")
    if problems:
        raise UserError("\n".join(f"--resume: {p}: the finished trials would not be comparable; run the changed "
                                   "sweep with another --out" for p in problems))


def keep_search_seed(out: Path, loaded: LoadedSweep) -> LoadedSweep:
    """On --resume, a sweep file without `search_seed` keeps the seed OUT's search ran on, so that an edit of
    `seeds` does not move it."""
    if loaded.sweep.search_seed is not None or not (out / "sweep.yaml").is_file():
        return loaded
    saved = _read_yaml(out / "sweep.yaml")
    seed = _searched_on(saved) if isinstance(saved, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        return loaded  # check_out says what is wrong with the file
    return dataclasses.replace(loaded, sweep=loaded.sweep.model_copy(update={"search_seed": seed}))


def _searched_on(saved: dict) -> Any:
    """The search seed of a sweep.yaml; one written before sedaug recorded it searched on the first of its seeds
    (the default then). None where the file says neither (damaged: check_out names what differs)."""
    if "search_seed" in saved:
        return saved["search_seed"]
    seeds = saved.get("seeds", [0])
    return seeds[0] if isinstance(seeds, list) and seeds else None


def _read_yaml(path: Path) -> Any:
    """A file the sweep wrote into OUT, read back; damaged, one line."""
    from sedaug.strict_yaml import parse_yaml

    try:
        return parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read back ({e}): run the sweep with another --out") from None


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value, sort_keys=True)


def write_out(out: Path, loaded: LoadedSweep) -> None:
    """The sweep as run (and each base recipe), which the next --resume compares with."""
    recipes_dir = out / "recipes"
    recipes_dir.mkdir(parents=True, exist_ok=True)
    header = f"# The sweep as run (overrides merged, defaults filled) from {loaded.path}; --resume checks it.\n"
    write_text(out / "sweep.yaml", header + dump_yaml(loaded.resolved()))
    for name, base in loaded.bases.items():
        write_text(recipes_dir / f"{name}.yaml", dump_yaml(base))
