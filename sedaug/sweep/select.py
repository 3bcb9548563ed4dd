"""Model selection over the search trials, read from their run directories (metrics.jsonl, <split>/results.json,
recipe.yaml), and `selection.tsv`: every trial's setting and score, the winner of each recipe marked.

The run directories are the record (a diverged trial's `diverged.json` too); `trials.jsonl` (written by the driver)
only adds what a run directory cannot say: that Ray stopped a trial early (ASHA) or gave up on it after its retries.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sedaug.files import write_text
from sedaug.rundir import RunDir, best_epoch, read_diverged
from sedaug.strict_yaml import get_key
from sedaug.sweep.plan import plan_search
from sedaug.sweep.spec import LoadedSweep
from sedaug.sweep.trial import checkpointed_metrics, split_results

SELECTION = "selection.tsv"
JOURNAL = "trials.jsonl"
WINNER = "*"
SETTLED = ("done", "stopped", "diverged")  # a trial's result is known: no --resume changes it


@dataclass(frozen=True)
class TrialRecord:
    recipe: str
    setting: str
    seed: int
    params: dict[str, Any]
    run_dir: Path
    epochs_done: int
    epochs: int
    score: float | None
    best_epoch: int | None
    status: str  # done | stopped (early stopping) | diverged (a non-finite loss) | failed (retries exhausted) | incomplete
    diverged: dict | None = None  # {epoch, step, message} of a diverged trial

    @property
    def complete(self) -> bool:
        return self.status == "done"


def _journal(out: Path) -> list[dict]:
    """The driver's journal rows, in order; a line cut short by a killed driver is skipped."""
    path, rows = Path(out) / JOURNAL, []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def journal_statuses(out: Path) -> dict[tuple, str]:
    """(stage, recipe, setting, seed) -> the last status the driver recorded."""
    statuses = {}
    for row in _journal(out):
        with contextlib.suppress(KeyError, TypeError):
            statuses[(row["stage"], row["recipe"], row["setting"], row["seed"])] = row["status"]
    return statuses


def journal_errors(out: Path) -> list[str]:
    """The distinct errors of trials that failed for good, first seen first."""
    failed = (row["error"] for row in _journal(out) if row.get("status") == "failed" and row.get("error"))
    return list(dict.fromkeys(failed))


class RunState(NamedTuple):
    done: int  # epochs
    score: float | None
    best_epoch: int | None
    complete: bool


def run_state(run_dir: Path, epochs: int, split: str | None, metric: str) -> RunState:
    """One run directory's state. `split` None: the paper's selection, the best synthetic_valid macro F1 over
    epochs (what best.pt keeps); else `metric` of `<split>/results.json`."""
    rows = checkpointed_metrics(run_dir)
    best = best_epoch(rows) or {}
    done = len(rows)
    if split is None:
        return RunState(done, best.get("valid_f1"), best.get("epoch"), done >= epochs)
    results = split_results(run_dir, split)
    value = None if results is None else results.get(metric)
    score = float(value) if isinstance(value, int | float) else None
    return RunState(done, score, best.get("epoch"), done >= epochs and results is not None)


def search_records(loaded: LoadedSweep, out: Path) -> list[TrialRecord]:
    """The search trials of the sweep found on disk, per recipe in the sweep's order, settings in the grid's order;
    folders of settings no longer in the sweep (`plan.ignored`) are not read."""
    from sedaug.strict_yaml import read_yaml

    sweep = loaded.sweep
    plan = plan_search(loaded, out)
    split = sweep.select.evaluated_split
    statuses = journal_statuses(out)
    records = []
    for recipe, space in loaded.spaces.items():
        order = {t["setting"]: i for i, t in enumerate(t for t in plan.trials if t["recipe"] == recipe)}
        found = []
        for run_dir in plan.on_disk.get(recipe, []):
            raw = read_yaml(RunDir(run_dir).recipe, "trial recipe")
            params = {key: get_key(raw, key) for key in space}
            done, score, best_at, complete = run_state(run_dir, loaded.epochs[recipe], split, sweep.select.metric)
            setting = run_dir.parent.name
            diverged = read_diverged(run_dir)
            status = "done" if complete else statuses.get(("search", recipe, setting, sweep.trial_seed), "incomplete")
            if diverged is not None:
                status = "diverged"
            elif status in ("done", "diverged") and not complete:
                status = "incomplete"
            found.append(TrialRecord(recipe, setting, sweep.trial_seed, params, run_dir, done, loaded.epochs[recipe],
                                     score, best_at, status, diverged))
        # Trials without a folder: planned and not run yet, or failed before training wrote one (a missing store,
        # a batch larger than a split): listed, never skipped, so that the row waits for them.
        # (An Optuna row's trials are not planned: a failed one leaves its budget short, which sedaug.sweep.run counts.)
        missing = {t["setting"]: t["params"] for t in plan.trials if t["recipe"] == recipe}
        for setting in missing.keys() - {r.setting for r in found}:
            status = "failed" if statuses.get(("search", recipe, setting, sweep.trial_seed)) == "failed" else "incomplete"
            found.append(TrialRecord(recipe, setting, sweep.trial_seed, missing[setting],
                                     Path(out) / "search" / recipe / setting / f"seed{sweep.trial_seed}", 0,
                                     loaded.epochs[recipe], None, None, status))
        # Optuna's trials, not planned, in the order they first ran (a tie goes to the first, as in a grid).
        first = {key[2]: i for i, key in enumerate(k for k in statuses if k[:2] == ("search", recipe))}  # dict order
        found.sort(key=lambda r: (order.get(r.setting, len(order)), first.get(r.setting, len(first)),
                                  json.dumps(r.params, sort_keys=True)))
        records += found
    return records


def optuna_settled(out: Path, records: list[TrialRecord], recipe: str) -> int:
    """How many of an Optuna row's trials have settled: its settled folders, or more where Optuna suggested a setting
    again (the repeat's trial shares the folder and counts against the budget; the journal records each trial)."""
    settled = {r.setting for r in records if r.recipe == recipe and r.status in SETTLED}
    journaled = sum(row.get("stage") == "search" and row.get("recipe") == recipe and row.get("setting") in settled
                    and row.get("status") in SETTLED for row in _journal(out))
    return max(len(settled), journaled)


def budget_short(loaded: LoadedSweep, out: Path, records: list[TrialRecord]) -> dict[str, int]:
    """{recipe: trials missing} of each Optuna row with fewer settled trials than its budget: its trials are not
    planned, so one that failed before it wrote its folder has no record and leaves the budget short (the row is not
    finished; --resume samples that many more). Empty for a grid: its trials all have records."""
    if loaded.sweep.algorithm.type != "optuna":
        return {}
    budget = loaded.sweep.algorithm.trials
    settled = {name: optuna_settled(out, records, name) for name in loaded.bases if loaded.spaces[name]}
    return {name: budget - n for name, n in settled.items() if n < budget}


def winners(records: list[TrialRecord]) -> dict[str, TrialRecord]:
    """Per recipe, the best score among complete trials (among early-stopped ones when none is complete); a tie
    goes to the first in the grid's order."""
    best: dict[str, TrialRecord] = {}
    for r in records:
        if r.score is None or r.status not in ("done", "stopped"):
            continue
        current = best.get(r.recipe)
        if current is None or (r.complete, r.score) > (current.complete, current.score):
            best[r.recipe] = r
    return best


def without_winner(records: list[TrialRecord], chosen: dict[str, TrialRecord], planned: dict[str, int]) -> dict[str, str]:
    """{recipe: one line naming it} for each row whose `planned` trials all ended without one to select: every one
    diverged (its settings named), or the rest were stopped early by ASHA before the last epoch, where a selection
    split other than synthetic_valid is scored. No final runs for such a row; the other rows go on."""
    rows: dict[str, list[TrialRecord]] = {}
    for r in records:
        rows.setdefault(r.recipe, []).append(r)
    out = {}
    for name, mine in rows.items():
        if name in chosen or len(mine) < planned.get(name, 0) or not all(r.status in ("diverged", "stopped")
                                                                          for r in mine):
            continue
        diverged = [r for r in mine if r.status == "diverged"]
        if len(diverged) == len(mine):
            settings = "; ".join(
                f"{', '.join(f'{k}={short_value(v)}' for k, v in r.params.items()) or 'defaults'} in epoch "
                f"{(r.diverged or {}).get('epoch', '?')}" for r in mine)
            out[name] = f"{name}: every setting diverged ({settings}): no final runs for this row"
        else:
            out[name] = (f"{name}: no setting to select: {len(diverged)} diverged, {len(mine) - len(diverged)} stopped "
                         "early, before the last epoch, where the selection split is scored: no final runs for this "
                         "row")
    return out


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def short_value(value: Any) -> str:
    """A value as the summary and the table show it: floats to 4 significant digits (selection.tsv has them all)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def write_selection(out: Path, records: list[TrialRecord], chosen: dict[str, TrialRecord]) -> Path:
    keys = list(dict.fromkeys(k for r in records for k in r.params))
    header = ["recipe", "setting", "seed", *keys, "epochs", "status", "score", "best_epoch", "diverged_epoch",
              "diverged_step", "winner"]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    for r in records:
        writer.writerow([
            r.recipe, r.setting, r.seed, *(_cell(r.params[k]) if k in r.params else "" for k in keys),
            f"{r.epochs_done}/{r.epochs}", r.status, "" if r.score is None else f"{r.score:.6f}",
            "" if r.best_epoch is None else r.best_epoch, *((r.diverged or {}).get(k, "") for k in ("epoch", "step")),
            WINNER if chosen.get(r.recipe) is r else "",
        ])
    path = Path(out) / SELECTION
    write_text(path, buf.getvalue())
    return path


def read_selection(path: Path) -> list[dict[str, str]]:
    """selection.tsv's rows; `path` is the TSV, the sweep directory or its `final/` folder."""
    path = Path(path)
    for candidate in (path, path / SELECTION, path.parent / SELECTION):
        if candidate.is_file() and candidate.name == SELECTION:
            with candidate.open(newline="") as f:
                return list(csv.DictReader(f, delimiter="\t"))
    return []


def selected_settings(path: Path) -> dict[str, str]:
    """{recipe: "key=value, ..."} of each recipe's winner (short key names: the last part, unless two collide);
    "defaults" for a recipe searched over nothing. Empty when `path` holds no selection.tsv (not a sweep)."""
    rows = read_selection(path)
    if not rows:
        return {}
    fixed = {"recipe", "setting", "seed", "epochs", "status", "score", "best_epoch", "diverged_epoch", "diverged_step",
             "winner"}
    out = {}
    for row in rows:
        if row.get("winner") != WINNER:
            continue
        params = {k: v for k, v in row.items() if k not in fixed and v != ""}
        short = [k.rsplit(".", 1)[-1] for k in params]
        names = short if len(set(short)) == len(short) else list(params)
        out[row["recipe"]] = ", ".join(f"{n}={short_value(v)}" for n, v in zip(names, params.values(), strict=True))
        out[row["recipe"]] = out[row["recipe"]] or "defaults"
    return out


def is_sweep(folder: Path) -> bool:
    """Whether `folder` is a sweep's --out (its sweep.yaml or selection.tsv)."""
    return (Path(folder) / "sweep.yaml").is_file() or (Path(folder) / SELECTION).is_file()


def in_search(run_dir: Path) -> bool:
    """Whether a run directory is a search trial of a sweep, or a final run an edited sweep replaced
    (`<sweep>/search/...`, `<sweep>/replaced/...` beside a selection.tsv or a sweep.yaml): `sedaug table` of a folder
    holding sweeps should read their `final/` runs only."""
    run_dir = Path(run_dir).resolve()
    for parent in run_dir.parents:
        if parent.name in ("search", "replaced") and is_sweep(parent.parent):
            return True
    return False
