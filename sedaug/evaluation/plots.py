"""The plots of an evaluation (`<split>/psd_roc.png`, `<split>/per_class.png`) and of a table (`table --plot`)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from sedaug.files import atomic_path

# The metadata title of the figures a command may replace later (`table --plot`, `detect --plot`): it replaces its
# own only, never a figure of one's own of that name.
TABLE_PLOT_TITLE = "sedaug table"
DETECT_PLOT_TITLE = "sedaug detect"


def is_marked(path: Path, title: str) -> bool:
    """Whether the figure at `path` was saved with the metadata title `title` (PNG, PDF and SVG keep it as text; a
    PDF's sits at its end)."""
    return title.encode() in Path(path).read_bytes()


def plot_psd_rocs(psd_rocs: dict[str, Any], path: Path, title: str = "") -> None:
    """PSD-ROC curves (psds_eval), one panel per variant, written as a PNG (no pyplot state, any backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * max(len(psd_rocs), 1), 4.5), layout="constrained")
    axes = fig.subplots(1, max(len(psd_rocs), 1), squeeze=False)[0]
    if not psd_rocs:
        axes[0].text(0.5, 0.5, "no ground-truth event: no PSD-ROC", ha="center", va="center")
    for ax, (name, psd) in zip(axes, psd_rocs.items(), strict=False):
        ax.step(psd.plt.xp, psd.plt.yp, where="post", color="tab:blue", label="PSD-ROC")
        ax.fill_between(psd.plt.xp, psd.plt.yp, step="post", alpha=0.3, color="tab:blue")
        ax.axvline(psd.max_efpr, linestyle="--", color="gray")
        ax.set(xlim=(0, psd.max_efpr), ylim=(0, 1), xlabel=f"eFPR per {psd.duration_unit}", ylabel="eTPR",
               title=f"{name} = {psd.value:.3f}  (alpha_ct {psd.alpha_ct:g}, alpha_st {psd.alpha_st:g})")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_per_class(results: dict[str, Any], path: Path) -> None:
    """Event-based F1 and PSDS1 per class, side by side as horizontal bars (classes without events marked)."""
    from matplotlib.figure import Figure

    from sedaug.data.desed import CLASSES

    f1 = {c: scores.get("f1") for c, scores in (results.get("per_class") or {}).items()}
    psds1 = results.get("psds1_per_class") or {}
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    rows = range(len(CLASSES))
    for ax, values, title, color in ((axes[0], f1, f"event-based F1\n(macro {_fmt(results.get('macro'))})", "tab:blue"),
                                     (axes[1], psds1, f"PSDS1 per class\n(overall {_fmt(results.get('psds1'))}, after its class-spread penalty)", "tab:orange")):
        heights = [values.get(c) or 0.0 for c in CLASSES]
        ax.barh(rows, heights, color=color)
        for y, c in zip(rows, CLASSES, strict=True):
            ax.text(0.01 if values.get(c) is None else heights[y] + 0.01, y,
                    "no event" if values.get(c) is None else f"{heights[y]:.2f}", va="center", fontsize=8)
        ax.set(xlim=(0, 1), title=title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(rows), CLASSES)
    axes[0].invert_yaxis()
    fig.suptitle(run_title(results))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def run_title(results: dict[str, Any]) -> str:
    """What a run's evaluation figures are of: "baseline seed 0 on eval"."""
    return f"{results.get('recipe', '')} seed {results.get('seed', '')} on {results.get('split', '')}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def plot_table(table, path: Path) -> None:
    """`sedaug table --plot`: `table_figure` saved to `path` (its suffix the format; none: PNG)."""
    with atomic_path(Path(path)) as tmp:
        table_figure(table).savefig(tmp, format=Path(path).suffix.lower().lstrip(".") or "png", dpi=100,
                                    metadata={"Title": TABLE_PLOT_TITLE})  # PLOT_SUFFIXES (cli)


def table_figure(table):
    """One panel per metric, one line per row (top to bottom as in the table): the row's mean with its interval
    (--ci; else ± the seeds' std), the reference row's interval shaded across the panel, rows whose paired
    difference excludes 0 coloured (green above, red below), the paper's value as a diamond."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    rows = table.rows
    boot = table.bootstrap
    reference = boot.reference if boot is not None else None
    # A row named by many settings is wrapped at its commas; the figure is as wide as its labels need.
    labels = [textwrap.fill(f"{r.recipe} (n={r.n})", 44, break_on_hyphens=False) for r in rows]
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    label_width = 0.085 * max((len(line) for label in labels for line in label.splitlines()), default=10)
    height = 1.9 + (0.16 + 0.17 * lines) * max(len(rows), 3)
    fig = Figure(figsize=(4.2 * len(table.metrics) + label_width + 0.6, height), layout="constrained")
    axes = fig.subplots(1, len(table.metrics), sharey=True, squeeze=False)[0]
    ys = range(len(rows))
    for ax, metric in zip(axes, table.metrics, strict=True):
        ref = next((r.cells[metric] for r in rows if r.recipe == reference), None)
        if ref is not None and ref.interval is not None:
            ax.axvspan(ref.interval.low, ref.interval.high, color="tab:blue", alpha=0.12, lw=0)
            ax.axvline(ref.mean if ref.mean is not None else float("nan"), color="tab:blue", lw=0.8, ls="--")
        for y, row in zip(ys, rows, strict=True):
            cell = row.cells[metric]
            if cell.mean is not None:
                low, high = _extent(cell)
                colour = "tab:blue" if row.recipe == reference else _colour(cell)
                ax.plot([low, high], [y, y], color=colour, lw=2, solid_capstyle="butt")
                ax.plot(cell.mean, y, "o", color=colour, ms=5)
            if cell.paper is not None:
                ax.plot(cell.paper, y, "D", mfc="none", mec="tab:orange", ms=6, mew=1.5)
        ax.set(title=metric, xlabel=metric)
        lo, hi = ax.get_xlim()  # scores lie in [0, 1]: no axis far past either end (all zeros gave -0.04..0.04)
        ax.set_xlim(max(lo, -0.03 * (hi - lo)), min(hi, 1 + 0.03 * (hi - lo)))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # tiny scores' long tick labels ran together
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(list(ys), labels)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    what = (f"{boot.level * 100:g}% bootstrap interval ({boot.resamples} resamples of the clips, seeds averaged)"
            if boot is not None else "± std over seeds")
    handles = [Line2D([], [], color="0.3", marker="o", lw=2, label=f"mean, {what}")]
    if reference is not None:
        handles += [Line2D([], [], color="tab:blue", marker="o", lw=2, label=f"{reference}, the reference row"),
                    Patch(color="tab:blue", alpha=0.12, label=f"{reference}'s interval"),
                    Line2D([], [], color="tab:green", marker="o", lw=2, label=f"above {reference} (paired interval > 0)"),
                    Line2D([], [], color="tab:red", marker="o", lw=2, label=f"below {reference} (paired interval < 0)")]
    if any(r.cells[m].paper is not None for r in rows for m in table.metrics):
        handles.append(Line2D([], [], ls="", marker="D", mfc="none", mec="tab:orange", mew=1.5, label="the paper"))
    widest = 0.45 + 0.062 * max(len(h.get_label()) for h in handles)  # inches at fontsize 8, the marker's beside
    columns = max(1, min(len(handles), 3, int(fig.get_figwidth() // widest)))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    fig.suptitle(f"{table.runs_dir} on {table.split}" + (f" at {table.checkpoint}.pt" if table.checkpoint else ""))
    return fig


def _extent(cell) -> tuple[float, float]:
    if cell.interval is not None:
        return cell.interval.low, cell.interval.high
    spread = cell.std or 0.0
    return cell.mean - spread, cell.mean + spread


def _colour(cell) -> str:
    d = cell.difference
    if d is None or not d.excludes_zero:
        return "0.3"
    return "tab:green" if d.low > 0 else "tab:red"
