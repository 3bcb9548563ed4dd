"""Runs -> the paper's Table 1 (docs/architecture.md, "Table 1"; docs/reporting.md): one row per recipe name, seeds
averaged (a name's runs of other settings are rows of their own: `_split_by_settings`). The text formats are `table_render.py`'s.

Every metric is "higher is better". A cell is the mean over the evaluated seeds ± their sample standard deviation
(n - 1; no ± for one seed). Bold: the best mean of its column (as printed, so a reader never sees 0.545 bold and
another 0.545 not). Underlined: without `--ci`, a mean above the `baseline` row's; with `--ci`, a row whose paired
difference to the reference row has an interval that excludes 0 (`table_ci.py`). Runs without
`<split>/results.json` are counted in a `note` column ("not evaluated"), never dropped. `--paper` adds Table 1's
values of the paper (`paper.py`) for the rows whose recipe says `paper_row`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sedaug.data.desed import CLASSES
from sedaug.errors import UserError
from sedaug.evaluation.results import METRICS, read_results
from sedaug.paper import paper_value
from sedaug.recipe import Recipe, load_recipe, seed_settings
from sedaug.rundir import RunDir, best_epoch, enclosing_run, read_diverged, trained_on
from sedaug.sweep import SELECTION, in_search, is_sweep, selected_settings
from sedaug.table_ci import (
    BootstrapSettings,
    Difference,
    EvaluatedRun,
    Interval,
    bootstrap_rows,
    check_metrics,
)

# The paper's Table 1, top to bottom (docs/architecture.md); other recipe names follow, alphabetically.
TABLE1_ORDER = (
    "none",
    "baseline",
    "noise_input",
    "noise_latent",
    "adversarial_latent",
    "vat_input_mt",
    "vat_input",
    "vat_latent",
    "mixup_latent",
    "vat_input_unlabeled",
)
DASH = "—"
NO_COMPARISON = ""  # build_table's compare: no paired test (`--no-compare`; `none` is a row, Table 1's first)
DECIMALS = 3


@dataclass(frozen=True)
class Cell:
    mean: float | None  # None: no evaluated seed has this metric
    std: float | None  # None when fewer than 2 values
    best: bool = False
    above_baseline: bool = False  # a mean above the baseline row's (as printed)
    interval: Interval | None = None  # with --ci
    difference: Difference | None = None  # with --ci and a reference row: this row minus the reference
    paper: float | None = None  # with --paper: the paper's value of this row, where it has one

    @property
    def marked(self) -> bool:
        """Underlined: above the baseline row, or with --ci and a reference row, above that row by a difference whose
        interval lies above 0 (the reference row itself and rows below it are not)."""
        return self.difference.low > 0 if self.difference is not None else self.above_baseline


@dataclass(frozen=True)
class Row:
    recipe: str
    augmentation: str
    location: str
    regularization: str
    consistency: str
    n: int  # evaluated runs (seeds)
    not_evaluated: int  # runs without <split>/results.json (diverged ones included)
    cells: dict[str, Cell]
    note: str
    paper_row: int | None = None
    checkpoint: str = ""  # what its seeds were evaluated at: best, last, "best, last" ("": not recorded)
    to_evaluate: int = 0  # runs `sedaug evaluate` would score that are not evaluated yet
    diverged: int = 0  # of not_evaluated, the runs that diverged (a result: never scored)


@dataclass(frozen=True)
class Table:
    runs_dir: Path
    split: str
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    bootstrap: BootstrapSettings | None = None
    paper: bool = False
    checkpoint: str | None = None  # the one checkpoint (best, last) every run was evaluated at; None: not one


# ---------------------------------------------------------------------------------------------- collecting


@dataclass(frozen=True)
class _Run:
    path: Path
    recipe: Recipe
    results: dict | None
    diverged: bool  # a run whose loss became non-finite (diverged.json): no score, counted as such
    stale: bool = False  # evaluated at a checkpoint that training has replaced since (a --resume)
    unfinished: bool = False  # evaluated before training all its recipe's epochs (interrupted)
    training: bool = False  # another process is training it now
    trained_on: str | None = None  # the identity of the feature store it trained on (None: not recorded)
    row: str = ""  # the row it is averaged into: its recipe's name, a sweep trial's with its setting
    differs: tuple[str, ...] = ()  # a row named by its folder: the settings keys in which it differs from its namesakes

    @property
    def copy_key(self) -> tuple:
        """Equal for two copies of one run: a row's runs train one setting (`_split_by_settings`), a seed once."""
        return self.row, self.recipe.seed


def _files_named(root: Path, name: str) -> list[Path]:
    """Every file `name` below `root`, sorted, through linked folders too (a study's folder of links to runs kept
    elsewhere), each real folder once, by the first path that reaches it (at each level the real folders first, then
    the links, each in name order). Hidden folders (a copy being made, a folder hidden on purpose) are not walked."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        if (real := os.path.realpath(folder)) in seen:  # a link to a folder already walked, or to one above it
            subfolders.clear()
            continue
        seen.add(real)
        # Real folders before links (each walked fully before the next), each kind in name order.
        subfolders[:] = sorted((d for d in subfolders if not d.startswith(".")),
                               key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        if name in files:
            found.append(Path(folder) / name)
    return sorted(found)


def _find_runs(runs_dir: Path, split: str, metrics: tuple[str, ...] = ()) -> list[_Run]:
    """Every run below `runs_dir` with its checked results.json on `split` (None: not evaluated), which must hold
    `metrics`."""
    if not runs_dir.exists():
        if runs_dir.name == "final" and is_sweep(runs_dir.parent):
            raise UserError(f"{runs_dir}: no such folder: the sweep {runs_dir.parent} has no final run yet (see its "
                            f"{SELECTION}; `sedaug table {runs_dir.parent / 'search'}` shows its search trials)")
        raise UserError(f"{runs_dir}: no such folder")
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is a file: give the folder of the runs (e.g. runs/)")
    runs = []
    among_trials = in_search(runs_dir / "_")  # a folder inside a sweep's search/ given on purpose: its trials count
    for recipe_path in _files_named(runs_dir, "recipe.yaml"):
        run_dir = recipe_path.parent
        if in_search(run_dir) and not among_trials:  # a sweep's search trials: its final/ runs are the table
            continue
        if any(part.startswith(".") for part in run_dir.relative_to(runs_dir).parts):
            continue  # a copy being made (a sweep's `.seed<k>.copy`), or a folder hidden on purpose
        results_path = RunDir(run_dir).results(split)
        results = read_results(results_path, metrics) if results_path.is_file() else None
        recipe, diverged = load_recipe(recipe_path), read_diverged(run_dir) is not None
        row = _trial_row(run_dir, recipe.name) if among_trials and in_search(run_dir) else recipe.name
        epochs = _epoch_rows(run_dir) if results is not None else []  # read once, for both checks
        runs.append(_Run(run_dir, recipe, results, diverged, results is not None and _stale(run_dir, results, epochs),
                         results is not None and not diverged and _unfinished(run_dir, recipe, epochs),
                         RunDir(run_dir).in_training(), trained_on(run_dir), row))
    if not runs:
        if (run := enclosing_run(runs_dir)) is not None:  # RUN/eval, say
            raise UserError(f"{runs_dir} is inside the run {run}: give the folder that holds the runs (e.g. "
                            f"{run.parent.parent})")
        if is_sweep(runs_dir):
            raise UserError(f"{runs_dir}: a sweep with no final run yet (see its {SELECTION}; `sedaug table "
                            f"{runs_dir / 'search'}` shows its search trials)")
        raise UserError(f"{runs_dir}: no runs found (no recipe.yaml below it): train one with `sedaug train`")
    _check_one_set(runs, split)
    runs = _split_by_settings(runs, runs_dir)
    _check_seeds_once(runs)
    return runs


LABEL_WIDTH = 48  # a row named by more values than this is named by its folder (`none [demo]`) where that tells


def _split_by_settings(runs: list[_Run], runs_dir: Path) -> list[_Run]:
    """Runs of one name that train other settings (a short demo's `none` and one's own, both below runs/) are other
    models: a row for each setting, named by what differs (`none [optim.epochs=3]`), or where that is long and their
    folders tell them apart, by their folder (`none [demo]`, the note saying what differs), never one mean of both."""
    groups: dict[str, list[_Run]] = {}
    for run in runs:
        groups.setdefault(run.row, []).append(run)
    named, differs = {}, {}
    for name, group in groups.items():
        settings = {r.path: _flat(seed_settings(r.recipe)) for r in group}
        every = dict.fromkeys(k for s in settings.values() for k in s)
        keys = [k for k in every if len({json.dumps(s.get(k)) for s in settings.values()}) > 1]
        if not keys:
            continue
        by_setting: dict[str, list[_Run]] = {}
        for run in group:
            by_setting.setdefault(json.dumps([settings[run.path].get(k) for k in keys]), []).append(run)
        labels = {key: ", ".join(f"{k}={_said(v)}" for k, v in zip(keys, json.loads(key), strict=True))
                  for key in by_setting}
        folders = {key: _folder(members, runs_dir) for key, members in by_setting.items()}
        by_folder = max(map(len, labels.values())) > LABEL_WIDTH and all(folders.values()) and len(
            set(folders.values())) == len(folders)
        for key, members in by_setting.items():
            for run in members:
                named[run.path] = f"{name} [{folders[key] if by_folder else labels[key]}]"
                differs[run.path] = keys if by_folder else []
    return [dataclasses.replace(r, row=named.get(r.path, r.row), differs=tuple(differs.get(r.path, ())))
            for r in runs]


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"optim.lr": 0.001, ...}: a section present in one run only (consistency) is its keys, not one mapping."""
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _folder(runs: list[_Run], runs_dir: Path) -> str:
    """The folder that holds these runs' <name>/seed<k> folders, from `runs_dir`'s name on (`runs/demo`, `runs`)."""
    # As reached from `runs_dir`, links not resolved: a study's folder of links names its rows by the links.
    common = Path(os.path.commonpath([os.path.abspath(r.path.parent.parent) for r in runs]))
    top = Path(os.path.abspath(runs_dir))
    return (Path(top.name) / common.relative_to(top)).as_posix() if common.is_relative_to(top) else ""


def _said(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_said, value)) + "]"
    if isinstance(value, float):  # 1 and 1e-05, not 1.0 and 1e-05; all digits where 6 would merge two lrs
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, bool) or value is None:  # as a recipe and --set spell them
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _trial_row(run_dir: Path, name: str) -> str:
    """The row of a sweep's run in a table of its search/ or replaced/ (asked for): the seeds an edit set aside at
    one time are a row (replaced/<recipe>/seed<k>-<time>); search trials are rows by their settings
    (`_split_by_settings`)."""
    return f"{name} [{run_dir.name.partition('-')[2]}]" if run_dir.parent.parent.name == "replaced" else name


def _epoch_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's epoch rows: no checkpoint is read for a table (checkpointed_metrics would load torch)."""
    return RunDir(run_dir).metric_rows()


def _unfinished(run_dir: Path, recipe: Recipe, epochs: list[dict]) -> bool:
    """Whether a run (not an ensemble: it has no epochs of its own) has trained fewer epochs than its recipe's."""
    if not RunDir(run_dir).checkpoints.is_dir():
        return False
    return max((r["epoch"] for r in epochs), default=0) < recipe.optim.epochs


def _check_seeds_once(runs: list[_Run]) -> None:
    """A row averages distinct runs: a copy of one (the same recipe and seed: copied, trained into two --runs
    folders, two ensembles of one recipe) would count twice."""
    seen: dict[tuple, Path] = {}
    for run in runs:
        if run.copy_key in seen:
            what = (f"two ensembles of {run.recipe.name.removesuffix('_ensemble')}" if run.recipe.name.endswith("_ensemble")
                    else f"{run.row} seed {run.recipe.seed} twice")
            raise UserError(f"{what}, {seen[run.copy_key]} and {run.path}: a row would count one run twice; give a "
                            "folder that holds one of them")
        seen[run.copy_key] = run.path


def _stale(run_dir: Path, results: dict, epochs: list[dict]) -> bool:
    """Whether the checkpoint an evaluation scored is no longer the run's: `last` is older than the last epoch
    trained, `best` is not the epoch of the best synthetic_valid F1 (the first, as train keeps it). `epochs`: the
    run's `_epoch_rows`."""
    checkpoint = results.get("checkpoint") if isinstance(results.get("checkpoint"), dict) else {}
    epoch, name = checkpoint.get("epoch"), checkpoint.get("name")
    if isinstance(results.get("members"), list):  # an ensemble: stale when a member is, or is gone (set aside)
        return any(_member_stale(m, name, run_dir) for m in results["members"] if isinstance(m, dict))
    if not isinstance(epoch, int):
        return False
    if name == "last":
        # torch, imported only for an evaluation of last: `sedaug table` starts quick
        from sedaug.checkpoint import epochs_held

        held = epochs_held(RunDir(run_dir).checkpoint("last"))
        return held is not None and epoch < held
    best = best_epoch(epochs)
    return name == "best" and best is not None and epoch != best["epoch"]


def _member_stale(member: dict, checkpoint: str | None, ensemble: Path) -> bool:
    path = Path(str(member.get("run")))
    if not path.is_dir() and path.is_absolute() and (ensemble.parent / path.name).is_dir():
        path = ensemble.parent / path.name  # the runs' folder moved (or renamed) with the ensemble beside its seeds
    if not path.is_dir():
        return path.is_absolute()  # gone; a relative path of an older ensemble is the cwd's of its evaluation
    if RunDir(path).recipe.is_file() and seed_settings(load_recipe(RunDir(path).recipe)) != \
            seed_settings(load_recipe(RunDir(ensemble).recipe)):
        return True  # another run trained there since (a sweep's new winner, say)
    return _stale(path, {"checkpoint": {"name": checkpoint, "epoch": member.get("epoch")}}, _epoch_rows(path))


def _check_one_set(runs: list[_Run], split: str) -> None:
    """Every evaluated run scored on the same clips (results.json's hash of their names; in older ones, their count,
    events and hours): a table of scores on different sets compares nothing."""
    evaluated = [r for r in runs if r.results is not None]

    def clips(r: _Run) -> tuple:
        hours = r.results.get("duration_hours")
        return r.results.get("n_clips"), r.results.get("n_events"), round(hours, 6) if isinstance(hours, float) else hours

    def other(a: _Run, b: _Run) -> bool:
        ids = a.results.get("clips_sha256"), b.results.get("clips_sha256")  # the clips' names (sedaug 0.2 on)
        return (None not in ids and ids[0] != ids[1]) or (None not in clips(a) + clips(b) and clips(a) != clips(b))

    def said(r: _Run) -> str:
        n, e, h = clips(r)
        return f"{n} clips, {e} events, " + (f"{h:.4f} h" if isinstance(h, float) else f"{h} h")

    for run in evaluated[1:]:
        if other(run, evaluated[0]):
            same = said(run) == said(evaluated[0])
            raise UserError(f"{run.path}: scored on another {split} set than {evaluated[0].path} ("
                            + ("other clips of the same counts" if same else f"{said(run)} against {said(evaluated[0])}")
                            + "): a table compares scores on one set; evaluate both on one feature store, or table "
                            "them apart")


def left_out(runs_dir: Path, split: str) -> list[Path]:
    """Folders below `runs_dir` with `<split>/results.json` but no recipe.yaml (which names their row): the table
    cannot place them, and says so."""
    found = []
    among_trials = in_search(Path(runs_dir) / "_")
    for results in _files_named(Path(runs_dir), "results.json"):
        if results.parent.name != split or results.parent == Path(runs_dir):  # RUN/eval given: the table says so
            continue
        run_dir = results.parent.parent
        hidden = any(part.startswith(".") for part in run_dir.relative_to(runs_dir).parts)
        if not RunDir(run_dir).recipe.is_file() and not hidden and (among_trials or not in_search(run_dir)):
            found.append(run_dir)
    return found


def _order(row: str) -> tuple[int, tuple]:
    """Table 1's order, by the row's recipe name (`none [optim.epochs=3]` is a `none` row)."""
    name = row.split(" [")[0]
    # by value: epochs=3 before epochs=200, sigma=0.05 before 0.2, -0.5 before 0.1 (parts alternate text, number)
    number = r"((?:(?<=[=\[ ,])-)?\d+(?:\.\d+)?(?:e[+-]?\d+)?)"  # a minus after =, [, space or comma: a sign
    natural = tuple(float(p) if i % 2 else p for i, p in enumerate(re.split(number, row)))
    return (TABLE1_ORDER.index(name) if name in TABLE1_ORDER else len(TABLE1_ORDER), natural)


def _value(results: dict, metric: str) -> float | None:
    v = results.get(metric)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _row(name: str, runs: list[_Run], metrics: tuple[str, ...]) -> Row:
    recipe = runs[0].recipe
    aug = recipe.augmentation.type
    evaluated = [r.results for r in runs if r.results is not None]
    pending = len(runs) - len(evaluated)
    diverged = sum(r.results is None and r.diverged for r in runs)
    notes = []
    if diverged:
        notes.append(f"{diverged} of {len(runs)} runs diverged")
    training = sum(r.results is None and r.training for r in runs)
    now = f" ({training} training now)" if training else ""
    if pending - diverged == len(runs):
        trials = all(map(_search_trial, runs))
        notes.append("not evaluated" + (" (search trials: their selection scores are in selection.tsv)" if trials
                                        else now))
    elif pending - diverged:
        notes.append(f"{pending - diverged} of {len(runs)} runs not evaluated{now}")
    if members := [r.results["members"] for r in runs if isinstance((r.results or {}).get("members"), list)]:
        k = len(members[0])  # one per row (_check_seeds_once); n is 1: one model, its seeds' scores averaged
        notes.append(f"one ensemble of {k} seed{'s' if k != 1 else ''}")
    if runs[0].differs:
        notes.append(f"settings differ from the other {recipe.name} rows at {', '.join(runs[0].differs)}")
    if stale := sum(r.stale for r in runs):
        notes.append(f"{stale} of {len(evaluated)} evaluations out of date (a run trained since, or an ensemble's "
                     "member gone): evaluate again")
    if unfinished := sum(r.unfinished for r in runs):
        notes.append(f"{unfinished} of {len(evaluated)} evaluated runs trained fewer epochs than their recipe's "
                     "(interrupted, or still training): train --resume, then evaluate")
    # paper_row is no setting (it does not split a row), but --paper must not pick one of two; a run without it
    # (trained before recipes had the field) names none.
    paper_rows = sorted({r.recipe.paper_row for r in runs} - {None})
    if len(paper_rows) > 1:
        notes.append(f"seeds name paper rows {' and '.join(map(str, paper_rows))}: no paper value")
    if len({r.trained_on for r in runs if r.trained_on is not None}) > 1:
        notes.append("seeds trained on different feature stores")
    if len(_checkpoints(runs)) > 1:
        notes.append("seeds evaluated at different checkpoints (best, last)")
    cells = {}
    for m in metrics:
        values = [v for res in evaluated if (v := _value(res, m)) is not None]
        if evaluated and len(values) < len(evaluated):  # results.json holds null there (the metric was undefined)
            notes.append(f"{m} of {len(values)} of {len(evaluated)} runs")
        cells[m] = Cell(*_mean_std(values))
    return Row(
        recipe=name,
        augmentation=aug,
        location=", ".join(recipe.augmentation.locations) if aug != "none" else DASH,
        regularization=recipe.regularization.type,
        consistency=recipe.consistency.data if aug != "none" else DASH,
        n=len(evaluated),
        not_evaluated=pending,
        diverged=diverged,
        cells=cells,
        note="; ".join(notes),
        # The paper's rows average seeds: an ensemble is none of them.
        paper_row=None if recipe.name.endswith("_ensemble") or len(paper_rows) != 1 else paper_rows[0],
        checkpoint=", ".join(sorted(_checkpoints(runs))),
        to_evaluate=_to_evaluate(runs),
    )


def _search_trial(run: _Run) -> bool:
    return in_search(run.path) and run.path.parent.parent.parent.name == "search"  # search/<recipe>/<setting>/seed<k>


def _to_evaluate(runs: list[_Run]) -> int:
    """The runs `sedaug evaluate` would score that have no results yet: not diverged, no search trial (scored on
    synthetic_valid while it trained)."""
    return sum(r.results is None and not r.diverged and not _search_trial(r) for r in runs)


def _checkpoints(runs: list[_Run]) -> set[str]:
    """The checkpoints (best, last) the runs were evaluated at, as their results.json say."""
    return {r.results["checkpoint"]["name"] for r in runs if r.results is not None
            and isinstance(r.results.get("checkpoint"), dict) and isinstance(r.results["checkpoint"].get("name"), str)}


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, DECIMALS)


def _flag(rows: list[Row], metrics: tuple[str, ...]) -> list[Row]:
    """Mark the best mean of each column and the means above the baseline row's (as printed)."""
    baseline = next((r for r in rows if r.recipe == "baseline"), None)
    flagged = [dict(r.cells) for r in rows]
    for m in metrics:
        means = [_rounded(r.cells[m].mean) for r in rows]
        best = max((v for v in means if v is not None), default=None)
        base = None if baseline is None else _rounded(baseline.cells[m].mean)
        for i, (row, v) in enumerate(zip(rows, means, strict=True)):
            if v is None:
                continue
            above = base is not None and row is not baseline and v > base
            flagged[i][m] = dataclasses.replace(row.cells[m], best=v == best, above_baseline=above)
    return [dataclasses.replace(r, cells=c) for r, c in zip(rows, flagged, strict=True)]


def _add_note(row: Row, *notes: str | None) -> Row:
    return dataclasses.replace(row, note="; ".join(filter(None, [row.note, *notes])))


def build_table(
    runs_dir: Path,
    split: str = "eval",
    metrics: tuple[str, ...] = ("macro", "psds_ct"),
    *,
    ci: float | None = None,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
    compare: str | None = None,
    paper: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> Table:
    """Read every run below `runs_dir` (each folder holding a recipe.yaml) into Table 1's rows.

    `ci` (a level in percent, e.g. 95) adds each cell's bootstrap interval over the split's clips (`resamples`
    draws from `bootstrap_seed`) and each row's paired difference to the row `compare` (default: `baseline`, if
    there is one; NO_COMPARISON: none), scoring the runs in `workers` processes (default: one per CPU for a large
    table). `paper` adds the paper's values.
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        what = f"unknown metric {', '.join(map(repr, unknown))}" if unknown else "no metric given"
        raise UserError(f"{what}: choose from {', '.join(METRICS)}")
    if ci is None and compare not in (None, NO_COMPARISON):
        raise UserError("--compare needs --ci LEVEL (the paired test is a bootstrap)")
    settings = None
    if ci is not None:
        settings = BootstrapSettings(ci / 100, resamples, bootstrap_seed)
        settings.check()
        check_metrics(metrics)
    runs_dir = Path(runs_dir)
    groups: dict[str, list[_Run]] = {}
    for run in _find_runs(runs_dir, split, metrics):
        groups.setdefault(run.row, []).append(run)
    rows = [_row(name, groups[name], metrics) for name in sorted(groups, key=_order)]
    checkpoints = _checkpoints([run for group in groups.values() for run in group])
    if len(checkpoints) > 1:  # rows at other checkpoints compare other things: each row says its own
        rows = [_add_note(r, r.checkpoint in ("best", "last") and f"at {r.checkpoint}.pt") for r in rows]
    selected = selected_settings(runs_dir)  # a sweep directory or its final/: each row's selected values
    chosen = {r.recipe: selected.get(r.recipe.removesuffix("_ensemble")) for r in rows}  # an ensemble: its seeds'
    rows = [_add_note(r, chosen[r.recipe] and f"selected {chosen[r.recipe]}") for r in rows]
    rows = _flag(rows, metrics)
    if settings is not None:
        settings = dataclasses.replace(settings, reference=_reference(compare, rows))
        evaluated = {r.recipe: [EvaluatedRun(run.path, run.results, _features(run))
                                for run in groups[r.recipe] if run.results] for r in rows if r.n}
        boot, notes = bootstrap_rows(evaluated, split, metrics, settings, progress=progress, workers=workers)
        rows = [_with_bootstrap(r, boot.get(r.recipe), notes.get(r.recipe, []), settings.reference) for r in rows]
    if paper:
        rows = [dataclasses.replace(r, cells={m: dataclasses.replace(c, paper=paper_value(r.paper_row, m))
                                              for m, c in r.cells.items()}) for r in rows]
    return Table(runs_dir=runs_dir, split=split, metrics=metrics, rows=tuple(rows), bootstrap=settings, paper=paper,
                 checkpoint=checkpoints.pop() if len(checkpoints) == 1 else None)


def _features(run: _Run) -> Path:
    """The feature store a run was scored on: results.json's `features`, else its recipe's `data.features`."""
    recorded = run.results.get("features")
    return Path(recorded if isinstance(recorded, str) and recorded else run.recipe.data.features)


def _reference(compare: str | None, rows: list[Row]) -> str | None:
    names = [r.recipe for r in rows if r.n]
    if compare is None:
        split = [n for n in names if n.startswith("baseline [")]  # _split_by_settings: the evaluated ones
        if len(split) > 1:  # which one is not ours to say
            raise UserError(f"the baseline runs train {len(split)} settings ({', '.join(split)}): name the reference "
                            "row with --compare ROW, or --no-compare")
        return "baseline" if "baseline" in names else split[0] if split else None
    if compare == NO_COMPARISON:
        return None
    if compare in names:
        return compare
    # A row split by its settings (`none [optim.epochs=3]`) may be named by any part of its name that only it has.
    matching = [n for n in names if " [" in n and compare.strip() and compare in n]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise UserError(f"--compare {compare}: {len(matching)} rows have that in their name ({', '.join(matching)}): "
                        "give a part of the name that only one of them has")
    raise UserError(f"--compare {compare}: no evaluated row of that name ("
                    + (f"evaluated rows: {', '.join(names)})" if names else "no row is evaluated)"))


def _with_bootstrap(row: Row, boot, notes: list[str], reference: str | None) -> Row:
    """`boot`'s intervals and differences into the row's cells; with a reference row, a cell is marked by its
    difference alone (`Cell.marked`), not by being above the baseline row."""
    intervals, differences = (boot.intervals, boot.differences) if boot is not None else ({}, {})
    cells = {m: dataclasses.replace(c, interval=intervals.get(m), difference=differences.get(m),
                                    above_baseline=c.above_baseline and reference is None)
             for m, c in row.cells.items()}
    return _add_note(dataclasses.replace(row, cells=cells), *notes)


# ---------------------------------------------------------------------------------------------- per class


@dataclass(frozen=True)
class PerClassRow:
    recipe: str
    n: int
    f1: dict[str, float | None]  # class -> event-based F1, seeds averaged (None: no reference event)
    psds1: dict[str, float | None]  # class -> PSDS1 of the class (sed_scores_eval)
    to_evaluate: int = 0  # as Row's


def per_class_rows(runs_dir: Path, split: str = "eval") -> list[PerClassRow]:
    """Each row's per-class event-based F1 and PSDS1 (results.json's `per_class` and `psds1_per_class`), averaged
    over its evaluated seeds: the numbers behind each run's per_class.png."""
    groups: dict[str, list[_Run]] = {}
    for run in _find_runs(Path(runs_dir), split):
        groups.setdefault(run.row, []).append(run)
    out = []
    for name in sorted(groups, key=_order):
        evaluated = [run.results for run in groups[name] if run.results is not None]
        f1 = {c: _mean_std([v for r in evaluated if (v := _value((r.get("per_class") or {}).get(c) or {}, "f1"))
                            is not None])[0] for c in CLASSES}
        psds1 = {c: _mean_std([v for r in evaluated if (v := _value(r.get("psds1_per_class") or {}, c)) is not None])[0]
                 for c in CLASSES}
        out.append(PerClassRow(name, len(evaluated), f1, psds1, _to_evaluate(groups[name])))
    return out
