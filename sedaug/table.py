"""Runs -> the paper's Table 1 (docs/architecture.md, "Table 1"): one row per recipe name, seeds averaged.

Every metric is "higher is better". A cell is the mean over the evaluated seeds ± their sample standard deviation
(n - 1; no ± for one seed), printed with 3 decimals. Bold: the best mean of its column; underlined: a mean above
the `baseline` row's. Both compare the printed (rounded) values, so a reader never sees 0.545 bold and another
0.545 not. Runs without `<split>/results.json` are counted in a `note` column ("not evaluated"), never dropped.
CSV carries plain numbers only (`<metric>_mean`, `<metric>_std`, empty when undefined) and no formatting flags:
best and above-baseline follow from the numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from sedaug.errors import UserError
from sedaug.evaluation.results import METRICS
from sedaug.recipe import Recipe, load_recipe
from sedaug.sweep import in_search, selected_settings

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
FORMATS = ("rich", "markdown", "latex", "csv")
DASH = "—"
DECIMALS = 3
FACTOR_HEADERS = ("recipe", "augmentation", "location", "regularization", "consistency data", "n")


@dataclass(frozen=True)
class Cell:
    mean: float | None  # None: no evaluated seed has this metric
    std: float | None  # None when fewer than 2 values
    best: bool = False
    above_baseline: bool = False


@dataclass(frozen=True)
class Row:
    recipe: str
    augmentation: str
    location: str
    regularization: str
    consistency: str
    n: int  # evaluated runs (seeds)
    not_evaluated: int  # runs without <split>/results.json
    cells: dict[str, Cell]
    note: str


@dataclass(frozen=True)
class Table:
    runs_dir: Path
    split: str
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]


# ---------------------------------------------------------------------------------------------- collecting


@dataclass(frozen=True)
class _Run:
    path: Path
    recipe: Recipe
    results: dict | None


def _find_runs(runs_dir: Path, split: str) -> list[_Run]:
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: no such folder")
    runs = []
    for recipe_path in sorted(runs_dir.glob("**/recipe.yaml")):
        if in_search(recipe_path.parent):  # a sweep's search trials: its final/ runs are the table
            continue
        results_path = recipe_path.parent / split / "results.json"
        results = None
        if results_path.is_file():
            try:
                results = json.loads(results_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{results_path}: unreadable results ({e}): run `sedaug evaluate` again") from None
            if not isinstance(results, dict):
                raise UserError(f"{results_path}: not the results of `sedaug evaluate` (a JSON "
                                f"{type(results).__name__}): run `sedaug evaluate` again")
        runs.append(_Run(recipe_path.parent, load_recipe(recipe_path), results))
    if not runs:
        raise UserError(f"{runs_dir}: no runs found (no recipe.yaml below it): train one with `sedaug train`")
    return runs


def _order(name: str) -> tuple[int, str]:
    return (TABLE1_ORDER.index(name), "") if name in TABLE1_ORDER else (len(TABLE1_ORDER), name)


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


def _settings(recipe: Recipe) -> dict:
    """What must agree between the seeds of one row (paths, seed and eval batch size may differ)."""
    return recipe.model_dump(mode="json", include={"augmentation", "regularization", "consistency", "model", "optim"})


def _row(name: str, runs: list[_Run], metrics: tuple[str, ...]) -> Row:
    recipe = runs[0].recipe
    aug = recipe.augmentation.type
    evaluated = [r.results for r in runs if r.results is not None]
    pending = len(runs) - len(evaluated)
    notes = []
    if not evaluated:
        notes.append("not evaluated")
    elif pending:
        notes.append(f"{pending} of {len(runs)} runs not evaluated")
    if any(_settings(r.recipe) != _settings(recipe) for r in runs[1:]):
        notes.append("settings differ between seeds")
    cells = {}
    for m in metrics:
        mean, std = _mean_std([v for res in evaluated if (v := _value(res, m)) is not None])
        cells[m] = Cell(mean, std)
    return Row(
        recipe=name,
        augmentation=aug,
        location=", ".join(recipe.augmentation.locations) if aug != "none" else DASH,
        regularization=recipe.regularization.type,
        consistency=recipe.consistency.data if aug != "none" else DASH,
        n=len(evaluated),
        not_evaluated=pending,
        cells=cells,
        note="; ".join(notes),
    )


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
            flagged[i][m] = Cell(row.cells[m].mean, row.cells[m].std, best=v == best, above_baseline=above)
    return [Row(**{**r.__dict__, "cells": c}) for r, c in zip(rows, flagged, strict=True)]


def build_table(runs_dir: Path, split: str = "eval", metrics: tuple[str, ...] = ("macro", "psds_ct")) -> Table:
    """Read every run below `runs_dir` (each folder holding a recipe.yaml) into Table 1's rows."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        what = f"unknown metric {', '.join(map(repr, unknown))}" if unknown else "no metric given"
        raise UserError(f"{what}: choose from {', '.join(METRICS)}")
    runs_dir = Path(runs_dir)
    groups: dict[str, list[_Run]] = {}
    for run in _find_runs(runs_dir, split):
        groups.setdefault(run.recipe.name, []).append(run)
    rows = [_row(name, groups[name], metrics) for name in sorted(groups, key=_order)]
    selected = selected_settings(runs_dir)  # a sweep directory or its final/: each row's selected values
    rows = [dataclasses.replace(r, note="; ".join(filter(None, [r.note, selected.get(r.recipe) and f"selected {selected[r.recipe]}"])))
            for r in rows]
    return Table(runs_dir=runs_dir, split=split, metrics=metrics, rows=tuple(_flag(rows, metrics)))


# ---------------------------------------------------------------------------------------------- rendering


def _number(cell: Cell, pm: str) -> str:
    if cell.mean is None:
        return ""
    text = f"{cell.mean:.{DECIMALS}f}"
    return text if cell.std is None else f"{text}{pm}{cell.std:.{DECIMALS}f}"


def _legend(table: Table) -> str:
    return (
        f"split {table.split}; mean ± std over seeds (n); bold: best per column; "
        f"underlined: above the baseline row"
    )


def _markdown(table: Table) -> str:
    headers = [*FACTOR_HEADERS, *table.metrics, "note"]
    align = ["---"] * 5 + ["--:"] + ["--:"] * len(table.metrics) + ["---"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for r in table.rows:
        cells = []
        for m in table.metrics:
            c, text = r.cells[m], _number(r.cells[m], " ± ")
            if text and c.above_baseline:
                text = f"<u>{text}</u>"
            if text and c.best:
                text = f"**{text}**"
            cells.append(text)
        values = [r.recipe, r.augmentation, r.location, r.regularization, r.consistency, str(r.n), *cells, r.note]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + f"\n\n_{_legend(table)}_\n"


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%") \
        .replace("#", r"\#").replace(DASH, "---")


def _latex(table: Table) -> str:
    headers = [*FACTOR_HEADERS, *table.metrics, "note"]
    lines = [
        f"% sedaug table {_tex(str(table.runs_dir))}: {_legend(table).replace('±', '+/-')}; needs booktabs",
        r"\begin{tabular}{lllll" + "r" * (1 + len(table.metrics)) + "l}",
        r"\toprule",
        " & ".join(_tex(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    for r in table.rows:
        cells = []
        for m in table.metrics:
            c, text = r.cells[m], _number(r.cells[m], r" $\pm$ ")
            if text and c.above_baseline:
                text = rf"\underline{{{text}}}"
            if text and c.best:
                text = rf"\textbf{{{text}}}"
            cells.append(text)
        factors = [r.recipe, r.augmentation, r.location, r.regularization, r.consistency, str(r.n)]
        lines.append(" & ".join([*map(_tex, factors), *cells, _tex(r.note)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    metric_columns = [f"{m}_{s}" for m in table.metrics for s in ("mean", "std")]
    writer.writerow(["recipe", "augmentation", "location", "regularization", "consistency_data", "n",
                     "not_evaluated", *metric_columns])

    def plain(x: float | None) -> str:
        return "" if x is None else repr(round(x, 6))

    for r in table.rows:
        numbers = [plain(v) for m in table.metrics for v in (r.cells[m].mean, r.cells[m].std)]
        factors = ["" if f == DASH else f for f in (r.location, r.consistency)]
        writer.writerow([r.recipe, r.augmentation, factors[0], r.regularization, factors[1], r.n, r.not_evaluated,
                         *numbers])
    return out.getvalue()


def rich_table(table: Table):
    """The table as a rich renderable (bold and underline as text styles)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=f"Table 1 — {table.runs_dir}", caption=_legend(table))
    for h in FACTOR_HEADERS:  # in a narrow terminal the factors wrap; recipe names and numbers never do
        out.add_column(h, justify="right" if h == "n" else "left", no_wrap=h in ("recipe", "n"))
    for m in table.metrics:
        out.add_column(m, justify="right", no_wrap=True)
    out.add_column("note")
    for r in table.rows:
        cells = []
        for m in table.metrics:
            c = r.cells[m]
            style = " ".join(s for s, on in (("bold", c.best), ("underline", c.above_baseline)) if on)
            cells.append(Text(_number(c, " ± "), style=style))
        out.add_row(r.recipe, r.augmentation, r.location, r.regularization, r.consistency, str(r.n), *cells, r.note)
    return out


def print_table(table: Table, console=None) -> None:
    from rich.console import Console

    (console or Console()).print(rich_table(table))


def render(table: Table, fmt: str) -> str:
    """The table as text: markdown, latex, csv, or rich (with ANSI styles, as a terminal would show it)."""
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "latex":
        return _latex(table)
    if fmt == "csv":
        return _csv(table)
    if fmt == "rich":
        from rich.console import Console

        console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system="standard")
        console.print(rich_table(table))
        return console.file.getvalue()
    raise UserError(f"unknown table format {fmt!r}: choose from {', '.join(FORMATS)}")
