"""The PSD-ROC plot, `<split>/psd_roc.png`."""

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
