"""The plots of an evaluation: `<split>/psd_roc.png` and `<split>/per_class.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sedaug.files import atomic_path


def plot_psd_rocs(psd_rocs: dict[str, Any], path: Path) -> None:
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
    fig.suptitle(f"{results.get('recipe', '')} seed {results.get('seed', '')} on {results.get('split', '')}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
