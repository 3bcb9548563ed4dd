"""One recording's detections as a PNG (`sedaug detect --plot`), the view of sed_vis: its log-mel spectrogram, each
detected event edged over it in its class's colour; under it each class's frame score curve (the classes that
were detected or came within half the threshold of it) with the threshold line; then one lane of events per
detected class, named on the y axis."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sedaug.data.desed import CLASSES
from sedaug.data.grid import FRAME_SECONDS, PARAMS
from sedaug.data.mel import amplitude_to_db
from sedaug.evaluation.plots import DETECT_PLOT_TITLE
from sedaug.files import atomic_path


def plot_detections(
    mel: np.ndarray,
    duration: float,
    events: pd.DataFrame,
    path: Path,
    title: str = "",
    scores: np.ndarray | None = None,
    threshold: float | None = None,
) -> None:
    """Write the PNG `path` for a recording's linear mel (frames, n_mels), its duration in seconds and its events
    (onset, offset, event_label); with `scores` (output frames, classes) and `threshold`, the score curves too.
    No pyplot state: safe in threads and under any backend."""
    from matplotlib.figure import Figure

    log_mel = amplitude_to_db(torch.from_numpy(np.asarray(mel, np.float32))[None])[0].numpy()  # one floor per recording
    classes = [c for c in CLASSES if c in set(events["event_label"])]  # in the DESED order
    colours = {c: f"C{i}" for i, c in enumerate(CLASSES)}  # tab10: one colour per class, the same in every plot
    width = float(np.clip(4 + 0.6 * duration, 10, 40))
    lanes_height = 0.32 * max(len(classes), 1) + 0.5
    heights = [3.2, 2.2, lanes_height] if scores is not None else [3.2, lanes_height]
    fig = Figure(figsize=(width, sum(heights)), layout="constrained")
    axes = fig.subplots(len(heights), 1, sharex=True, height_ratios=heights)
    spec_ax, lane_ax = axes[0], axes[-1]
    if scores is not None:
        _score_curves(axes[1], np.asarray(scores, dtype=float), duration, classes, colours, threshold)

    frame = PARAMS.hop / PARAMS.sample_rate  # input frame j is centred at j · frame seconds
    spec_ax.imshow(log_mel.T, origin="lower", aspect="auto", cmap="magma", interpolation="antialiased",
                   extent=(-frame / 2, (len(log_mel) - 0.5) * frame, 0, log_mel.shape[1]))
    spec_ax.set(ylabel=f"mel band ({PARAMS.f_min / 1000:g}–{PARAMS.f_max / 1000:g} kHz)", title=title,
                xlim=(0, duration), ylim=(0, log_mel.shape[1]))
    spec_ax.set_yticks(np.linspace(0, log_mel.shape[1], 5))

    for lane, label in enumerate(classes):
        rows = events[events["event_label"] == label]
        spans = [(on, off - on) for on, off in zip(rows["onset"], rows["offset"], strict=True)]
        # Over the spectrogram, only the events' edges: shading would hide it wherever classes overlap.
        edges = sorted({t for on, length in spans for t in (on, on + length)} - {0.0, duration})
        spec_ax.vlines(edges, 0, log_mel.shape[1], colors=colours[label], linewidth=1.0, alpha=0.8)
        lane_ax.broken_barh(spans, (lane - 0.35, 0.7), facecolors=colours[label])
    lane_ax.set_yticks(range(len(classes)), [c.replace("_", " ") for c in classes])
    lane_ax.set_ylim(len(classes) - 0.5 if classes else 0.5, -0.5)  # the first class on top
    for tick, label in zip(lane_ax.get_yticklabels(), classes, strict=True):
        tick.set_color(colours[label])
    if not classes:
        lane_ax.text(0.5, 0.5, "no event detected", transform=lane_ax.transAxes, ha="center", va="center")
    lane_ax.grid(axis="x", alpha=0.3)
    lane_ax.set(xlabel="time (s)", xlim=(0, duration))
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # A title's character the font lacks is drawn as a box; a warning per plot would bury the summary.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(tmp, format="png", dpi=100, metadata={"Title": DETECT_PLOT_TITLE})


def _score_curves(ax, scores: np.ndarray, duration: float, detected: list[str], colours: dict[str, str],
                  threshold: float | None) -> None:
    """Each shown class's frame scores as a step curve over its output frames, and the decision threshold."""
    frames = min(len(scores), max(1, int(np.ceil(duration / FRAME_SECONDS - 1e-9))))
    edges = np.minimum(np.arange(frames + 1) * FRAME_SECONDS, duration)
    near = 0.5 * threshold if threshold is not None else 0.5
    shown = [c for i, c in enumerate(CLASSES) if c in detected or scores[:frames, i].max() >= near]
    for label in shown:
        ax.stairs(scores[:frames, CLASSES.index(label)], edges, color=colours[label], lw=1.2, baseline=None,
                  label=label.replace("_", " "))  # baseline None: no drop to 0 at either end
    if threshold is not None:
        ax.axhline(threshold, color="0.2", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(ylim=(0, 1.02), ylabel="frame score", xlim=(0, duration))
    ax.grid(alpha=0.3)
    if shown or threshold is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
