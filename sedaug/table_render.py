"""Table 1 as text: rich (terminal), markdown, LaTeX and CSV; and the per-class view (`table --per-class`).

CSV carries plain numbers only (`<metric>_mean`, `<metric>_std`; with --ci `_low`, `_high`, and against the
reference row `_diff`, `_diff_low`, `_diff_high`, `_p`; with --paper `_paper`, `_paper_diff`), empty when
undefined, and the bootstrap's settings in columns of their own; no formatting flags: they follow from the numbers.
"""

from __future__ import annotations

import csv
import io
import re

from sedaug.data.desed import CLASSES
from sedaug.errors import UserError
from sedaug.table import DASH, DECIMALS, Cell, PerClassRow, Row, Table

FORMATS = ("rich", "markdown", "latex", "csv")
FACTOR_HEADERS = ("recipe", "augmentation", "location", "regularization", "consistency data", "n")
PER_CLASS_COLUMNS = ("recipe", "class", "n", "f1", "psds1")  # --per-class --format csv, in long form
# How each rendering begins (its escape codes and blanks aside), header whole: a file that begins otherwise is none
# of `table`'s, so `table --out` keeps it (a user's "| recipe | paper F1 |" notes).
HEADS = ("| " + " | ".join(FACTOR_HEADERS) + " |", ",".join(h.replace(" ", "_") for h in FACTOR_HEADERS) + ",",
         "% sedaug table", "Table 1 — ", "**event-based F1 per class", "% event-based F1 per class",
         "event-based F1 per class", ",".join(PER_CLASS_COLUMNS) + "\n")


def is_table_text(text: str) -> bool:
    """Whether `text` (escape codes removed) is a table `render` or `render_per_class` wrote: it begins as one and
    ends as one, so that a user's notes written below a table (`table --out notes.md`) make the file theirs. (The
    terminal's rendering, whose caption wraps, is known by its beginning alone.)"""
    text = text.strip()
    if not text.startswith(HEADS):
        return False
    if text.startswith(HEADS[1]) or text.startswith(HEADS[-1]):  # CSV: each row as wide as its header
        return len({len(row) for row in csv.reader(io.StringIO(text))}) == 1
    last = text.splitlines()[-1]
    if text.startswith("|") or text.startswith("**"):  # markdown: the legend, or a per-class row
        return (last.startswith("_split ") and last.endswith("_")) or (last.startswith("| ") and last.endswith(" |"))
    if text.startswith("%"):
        return last == r"\end{tabular}"
    return True


def _f(x: float | None, sign: bool = False) -> str:
    return "" if x is None else f"{x:+.{DECIMALS}f}" if sign else f"{x:.{DECIMALS}f}"


def _number(cell: Cell, pm: str) -> str:
    if cell.mean is None:
        return ""
    text = _f(cell.mean) if cell.std is None else f"{_f(cell.mean)}{pm}{_f(cell.std)}"
    if cell.interval is not None:
        text += f" [{_f(cell.interval.low)}, {_f(cell.interval.high)}]"
    return text


def _difference(cell: Cell, resamples: int) -> str:
    d = cell.difference
    if d is None:
        return ""
    # No resample on one side of 0: the p-value is below the test's resolution, 2 / resamples.
    p = f"< {2 / resamples:.2g}" if d.p == 0 else f"{d.p:.3f}" if d.p >= 1e-3 else f"{d.p:.2g}"
    return f"{_f(d.value, True)} [{_f(d.low, True)}, {_f(d.high, True)}] p {p}"


def _paper(cell: Cell) -> str:
    if cell.paper is None:
        return ""
    return _f(cell.paper) if cell.mean is None else f"{_f(cell.paper)} ({_f(cell.mean - cell.paper, True)})"


def _columns(table: Table) -> list[tuple[str, str, object]]:
    """(header, metric, cell -> text) of each metric column, then its comparison and paper columns."""
    columns = []
    reference = table.bootstrap.reference if table.bootstrap else None
    for m in table.metrics:
        columns.append((m, m, None))
        if reference is not None:
            columns.append((f"{m} − {reference}", m, lambda c: _difference(c, table.bootstrap.resamples)))
        if table.paper and m in ("macro", "psds_ct"):
            columns.append((f"{m} paper", m, _paper))
    return columns


def _legend(table: Table) -> str:
    parts = [f"split {table.split}" + (f" at {table.checkpoint}.pt" if table.checkpoint else ""),
             "mean ± std over seeds (n)"]
    b = table.bootstrap
    if b is not None:
        parts.append(f"[{b.level * 100:g}% bootstrap interval over the clips, seeds averaged; {b.resamples} resamples, "
                     f"seed {b.seed}]")
        if b.reference is not None:
            parts.append(f"{b.reference} row: paired difference [interval] and p-value on the same resamples")
    parts.append("bold: best per column")
    if b is not None and b.reference is not None:
        parts.append(f"underlined: above the {b.reference} row, the difference's interval above 0")
    elif any(r.recipe == "baseline" for r in table.rows):
        parts.append("underlined: above the baseline row")
    if table.paper:
        parts.append("paper: the paper's Table 1 value (ours − paper)")
    return "; ".join(parts)


def _factors(r: Row) -> list[str]:
    return [r.recipe, r.augmentation, r.location, r.regularization, r.consistency, str(r.n)]


def _cells(r: Row, columns: list[tuple[str, str, object]], pm: str) -> list[tuple[str, bool, bool, bool]]:
    """A row's metric cells as (text, derived, underlined, bold): a derived column's text (difference, paper) as it
    is, a mean ± std underlined where marked and bold where best."""
    out = []
    for _, m, text_of in columns:
        c = r.cells[m]
        derived = text_of is not None
        text = text_of(c) if derived else _number(c, pm)
        styled = bool(text) and not derived
        out.append((text, derived, styled and c.marked, styled and c.best))
    return out


def _markdown(table: Table) -> str:
    columns = _columns(table)
    headers = [*FACTOR_HEADERS, *(h for h, _, _ in columns), "note"]
    align = ["---"] * 5 + ["--:"] + ["--:"] * len(columns) + ["---"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for r in table.rows:
        cells = []
        for text, _, underlined, bold in _cells(r, columns, " ± "):
            text = f"<u>{text}</u>" if underlined else text
            cells.append(f"**{text}**" if bold else text)
        lines.append("| " + " | ".join([*map(_md, _factors(r)), *cells, _md(r.note)]) + " |")
    return "\n".join(lines) + f"\n\n_{_legend(table)}_\n"


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}", DASH: "---", "−": "$-$",
        "±": r"$\pm$", "<": "$<$", ">": "$>$"}
_MARKDOWN = {"\\": "\\\\", "|": r"\|", "*": r"\*", "`": r"\`"}  # a row named by its folder may hold them


def _tex(text: str) -> str:
    return re.sub("|".join(map(re.escape, _TEX)), lambda m: _TEX[m.group()], text)  # one pass: `\` is no `{`


def _md(text: str) -> str:
    return re.sub("|".join(map(re.escape, _MARKDOWN)), lambda m: _MARKDOWN[m.group()], text)


def _latex(table: Table) -> str:
    columns = _columns(table)
    headers = [*FACTOR_HEADERS, *(h for h, _, _ in columns), "note"]
    lines = [
        f"% sedaug table {_tex(str(table.runs_dir))}: {_legend(table).replace('±', '+/-').replace('−', '-')}; "
        "needs booktabs",
        r"\begin{tabular}{lllll" + "r" * (1 + len(columns)) + "l}",
        r"\toprule",
        " & ".join(_tex(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    for r in table.rows:
        cells = []
        for text, derived, underlined, bold in _cells(r, columns, r" $\pm$ "):
            text = _tex(text) if derived else rf"\underline{{{text}}}" if underlined else text
            cells.append(rf"\textbf{{{text}}}" if bold else text)
        lines.append(" & ".join([*map(_tex, _factors(r)), *cells, _tex(r.note)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _plain(x: float | None) -> str:
    return "" if x is None else repr(round(x, 6))


def _csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    b = table.bootstrap
    suffixes = ["mean", "std"]
    if b is not None:
        suffixes += ["low", "high"] + (["diff", "diff_low", "diff_high", "p"] if b.reference else [])
    if table.paper:
        suffixes += ["paper", "paper_diff"]
    settings = ["ci_level", "resamples", "bootstrap_seed", "reference"] if b is not None else []
    writer.writerow(["recipe", "augmentation", "location", "regularization", "consistency_data", "n",
                     "not_evaluated", "diverged", *(f"{m}_{s}" for m in table.metrics for s in suffixes), *settings, "split",
                     "checkpoint", "note"])

    def numbers(c: Cell) -> list[float | None]:
        values = [c.mean, c.std]
        if b is not None:
            values += [c.interval and c.interval.low, c.interval and c.interval.high]
            if b.reference:
                d = c.difference
                # p 0: no resample on the other side of 0, below the test's resolution (as the text formats say)
                p = None if d is None else f"<{2 / b.resamples:.2g}" if d.p == 0 else d.p
                values += [None, None, None, None] if d is None else [d.value, d.low, d.high, p]
        if table.paper:
            values += [c.paper, None if c.paper is None or c.mean is None else c.mean - c.paper]
        return values

    for r in table.rows:
        factors = ["" if f == DASH else f for f in (r.location, r.consistency)]
        values = [v if isinstance(v, str) else _plain(v) for m in table.metrics for v in numbers(r.cells[m])]
        extra = [f"{b.level * 100:g}", b.resamples, b.seed, b.reference or ""] if b is not None else []
        writer.writerow([r.recipe, r.augmentation, factors[0], r.regularization, factors[1], r.n, r.not_evaluated,
                         r.diverged, *values, *extra, table.split, r.checkpoint, r.note])
    return out.getvalue()


def rich_table(table: Table, compact: bool = False):
    """The table as a rich renderable (bold and underline as text styles). `compact`, for a narrow terminal: the
    recipe and n without the other factors, each interval on a line below its value."""
    from rich.table import Table as RichTable
    from rich.text import Text

    columns = _columns(table)
    legend = _legend(table) + ("; narrow terminal: augmentation, location, regularization and consistency data left "
                               "out (--format markdown, or a wider terminal, shows them)" if compact else "")
    out = RichTable(title=Text(f"Table 1 — {table.runs_dir}"), caption=Text(legend),  # no markup: [..]
                    caption_justify="left")
    for h in ("recipe", "n") if compact else FACTOR_HEADERS:  # recipe names and numbers never wrap
        out.add_column(h, justify="right" if h == "n" else "left", no_wrap=h in ("recipe", "n"))
    for h, _, _ in columns:  # compact: wrapped at their spaces, where rich would cut them
        out.add_column(h, justify="right", no_wrap=not compact)
    out.add_column("note")
    for r in table.rows:
        cells = [Text(text.replace(" [", "\n[").replace("] p", "]\np") if compact else text,
                      style=" ".join(s for s, on in (("bold", bold), ("underline", underlined)) if on))
                 for text, _, underlined, bold in _cells(r, columns, " ± ")]
        factors = [Text(f) for f in _factors(r)]  # no markup: a row `none [optim.epochs=3]`
        out.add_row(*([factors[0], factors[-1]] if compact else factors), *cells, Text(r.note))
    return out


def print_table(table: Table, console=None) -> None:
    """The table on a terminal: whole where it fits, else compact (rich would cut every column to fit)."""
    from rich.console import Console

    console = console or Console()
    whole = rich_table(table)
    console.print(whole if _fits(whole, console) else rich_table(table, compact=True))


def _fits(renderable, console) -> bool:
    """Whether `renderable` is no wider than the console at its natural width."""
    return console.measure(renderable, options=console.options.update_width(100_000)).maximum <= console.width


def render(table: Table, fmt: str) -> str:
    """The table as text: markdown, latex, csv, or rich (with ANSI styles, as a terminal would show it)."""
    renderers = {"markdown": _markdown, "latex": _latex, "csv": _csv, "rich": _rich_text}
    if fmt not in renderers:
        raise UserError(f"unknown table format {fmt!r}: choose from {', '.join(FORMATS)}")
    return renderers[fmt](table)


def _rich_text(renderable) -> str:
    from rich.console import Console

    if isinstance(renderable, Table):
        renderable = rich_table(renderable)
    console = Console(file=io.StringIO(), force_terminal=True, width=200, color_system="standard")
    console.print(renderable)
    return console.file.getvalue()


# ---------------------------------------------------------------------------------------------- per class


def render_per_class(rows: list[PerClassRow], fmt: str, split: str = "eval") -> str:
    """Per-class F1 and PSDS1 of each row: CSV in long form (recipe, class, n, f1, psds1); the other formats as
    two tables (F1, then PSDS1) with one column per class."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(PER_CLASS_COLUMNS)
        for r in rows:
            for c in CLASSES:
                writer.writerow([r.recipe, c, r.n, _plain(r.f1[c]), _plain(r.psds1[c])])
        return out.getvalue()
    return "\n".join(_grid(title, headers, body, fmt) if fmt != "rich" else _rich_text(_grid(title, headers, body, fmt))
                     for title, headers, body in _per_class_grids(rows, split))


def print_per_class(rows: list[PerClassRow], split: str = "eval", console=None) -> None:
    from rich.console import Console

    console = console or Console()
    for title, headers, body in _per_class_grids(rows, split):
        grid = _grid(title, headers, body, "rich")
        if not _fits(grid, console):  # a row per class, a column per recipe (rich would cut every number)
            columns = list(zip(headers, *body, strict=True))
            grid = _grid(title, ["class", *columns[0][1:]], [list(c) for c in columns[1:]], "rich")
        console.print(grid)


def _per_class_grids(rows: list[PerClassRow], split: str):
    short = [c.replace("_", " ") for c in CLASSES]
    for title, key in ((f"event-based F1 per class on {split} (seeds averaged)", "f1"),
                       (f"PSDS1 per class on {split} (seeds averaged)", "psds1")):
        yield title, ["recipe", "n", *short], [[r.recipe, str(r.n), *(_f(getattr(r, key)[c]) for c in CLASSES)]
                                               for r in rows]


def _grid(title: str, headers: list[str], body: list[list[str]], fmt: str):
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |",
                 "|---|" + "--:|" * (len(headers) - 1)]
        return "\n".join(lines + ["| " + " | ".join(map(_md, row)) + " |" for row in body]) + "\n"
    if fmt == "latex":
        lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\toprule",
                 " & ".join(map(_tex, headers)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(_tex, row)) + r" \\" for row in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"
    from rich.table import Table as RichTable
    from rich.text import Text

    grid = RichTable(title=title)
    for i, h in enumerate(headers):  # as text, not markup: a recipe `none [optim.epochs=3]`
        grid.add_column(Text(h), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in body:
        grid.add_row(*map(Text, row))
    return grid
