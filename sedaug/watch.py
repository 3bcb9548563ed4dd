"""What a researcher watches while and after training: TensorBoard scalars in the run directory (the event files sit
in RUN itself, so `tensorboard --logdir runs/` names each run `<recipe>/seed<k>`, sweep trials included) and
`train_curves.png`. `metrics.jsonl` stays the source of truth; both are drawn from it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from sedaug.files import atomic_path, writing
from sedaug.rundir import RunDir

# metrics.jsonl key -> TensorBoard tag
EPOCH_TAGS = {
    "loss_class": "loss/classification",
    "loss_const": "loss/consistency",
    "loss_total": "loss/total",
    "weight": "consistency_weight",
    "lr": "lr",
    "valid_f1": "synthetic_valid/macro_f1",
}


class Board:
    """The run's TensorBoard writer, one scalar per metric per epoch (step = epoch). Events of epochs from
    `purge_from` on (trained again: a resume, or a restart of a first epoch never saved) are dropped by TensorBoard.
    The event file is opened at the first epoch: a resume with nothing left to train adds none.

    TensorBoard writes in a thread of its own: a failed write (a full disk) is raised there, where Python would
    print its traceback, and again in the thread that writes or flushes next, which says it in one line
    (`writing`). While the writer is open, its thread's OSError is not printed."""

    def __init__(self, run: RunDir, purge_from: int = 1):
        self.root, self.purge_from, self.writer = run.root, purge_from, None
        self._excepthook = threading.excepthook

    def epoch(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            threading.excepthook = self._quiet_writer_thread
            with writing(self.root / "events.out.tfevents.*"):
                self.writer = SummaryWriter(str(self.root), purge_step=self.purge_from)
        with writing(self._events()):
            for key, tag in EPOCH_TAGS.items():
                if record.get(key) is not None:
                    self.writer.add_scalar(tag, record[key], record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        try:
            if self.writer is not None:
                with writing(self._events()):
                    self.writer.close()
        finally:
            threading.excepthook = self._excepthook

    def _events(self) -> Path:
        """The event file being written (TensorBoard names it when it opens it)."""
        return Path(getattr(self.writer.file_writer.event_writer, "_file_name", self.root))

    def _quiet_writer_thread(self, args: threading.ExceptHookArgs) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError)):
            self._excepthook(args)


def log_evaluation(run: RunDir, results: dict[str, Any]) -> None:
    """An evaluation's metrics, overall and per class, as scalars at the evaluated checkpoint's epoch."""
    from torch.utils.tensorboard import SummaryWriter

    split, epoch = results["split"], results["checkpoint"]["epoch"]
    with SummaryWriter(str(run.root)) as writer:
        for name in ("macro", "psds", "psds_ct", "psds_macro", "psds1", "psds2"):
            if results.get(name) is not None:
                writer.add_scalar(f"{split}/{name}", results[name], epoch)
        for cls, scores in (results.get("per_class") or {}).items():
            if scores.get("f1") is not None:
                writer.add_scalar(f"{split}/f1/{cls}", scores["f1"], epoch)
        for cls, value in (results.get("psds1_per_class") or {}).items():
            writer.add_scalar(f"{split}/psds1/{cls}", value, epoch)


def plot_train_curves(metrics: list[dict[str, Any]], path: Path, consistency: bool = True) -> None:
    """Losses, the consistency weight w(t) and synthetic_valid F1 over epochs, as one PNG (written atomically).

    Called while an error is on its way out (training's clean-up after a failed checkpoint write, say), a failure
    here is dropped: the figure is a by-product, and the same full disk must be reported as the checkpoint's."""
    failing = sys.exc_info()[1] is not None
    try:
        _plot_train_curves(metrics, path, consistency)
    except Exception:
        if not failing:
            raise


def _plot_train_curves(metrics: list[dict[str, Any]], path: Path, consistency: bool) -> None:
    """`consistency`: the recipe has a consistency term (`none` has none: no consistency loss, no w(t))."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in metrics]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    losses, ramps, valid = fig.subplots(1, 3)
    # The total under a wide pale line: where it equals the classification loss (no consistency), both show.
    losses.plot(epochs, [row["loss_total"] for row in metrics], color="tab:green", linewidth=5, alpha=0.35,
                marker="o", label="total")
    losses.plot(epochs, [row["loss_class"] for row in metrics], marker=".", color="tab:blue", label="classification")
    if consistency:
        losses.plot(epochs, [row["loss_const"] for row in metrics], marker=".", color="tab:orange",
                    label="consistency (unweighted)")
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    # Log where the losses span more than a decade (classification against consistency), else linear: a log axis
    # within one decade has one labelled tick, or crowded minor ones.
    plotted = [v for line in losses.get_lines() for v in line.get_ydata() if v > 0]
    wide = bool(plotted) and max(plotted) > 10 * min(plotted)
    losses.set(title="training losses (epoch means)", xlabel="epoch", yscale="log" if wide else "linear")
    losses.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # plain numbers, not "1.45×10⁰"
    losses.yaxis.set_minor_formatter(NullFormatter())
    losses.legend()
    # Both ramp up over the same kind of schedule and often coincide: lr as a wide pale line under a thin w(t).
    ramps.plot(epochs, [row["lr"] for row in metrics], color="tab:gray", linewidth=5, alpha=0.45, marker="o",
               label="lr")
    ramps.set_ylim(0, 1.1 * max(max(row["lr"] for row in metrics), 1e-12))  # from 0: a flat line stays flat
    ramps.set(title="learning rate" + (" and consistency weight w(t)" if consistency else ""), xlabel="epoch",
              ylabel="lr")
    handles = list(ramps.get_lines())
    if consistency:
        weight = ramps.twinx()
        weight.plot(epochs, [row["weight"] for row in metrics], marker=".", color="tab:purple", label="w(t)")
        weight.set_ylim(0, 1.1 * max(max(row["weight"] for row in metrics), 1e-12))
        weight.set_ylabel("w(t)")
        handles += weight.get_lines()
    ramps.legend(handles=handles, loc="lower right")
    best = max(metrics, key=lambda row: row["valid_f1"])
    # Over the axis, not under it: a short run's F1 of 0 in every epoch is a line on the x axis.
    valid.plot(epochs, [row["valid_f1"] for row in metrics], marker=".", color="tab:green", clip_on=False, zorder=3)
    valid.axvline(best["epoch"], linestyle="--", color="gray", label=f"best.pt: epoch {best['epoch']}")
    valid.set(title="synthetic_valid event-based macro F1", xlabel="epoch", ylim=(0, max(0.05, 1.1 * best["valid_f1"])))
    valid.legend()
    for ax in (losses, ramps, valid):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, len(epochs) + 0.5)  # one epoch is one point, not an axis of 0.945…1.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
