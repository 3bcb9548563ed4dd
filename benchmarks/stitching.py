"""How `sedaug detect` should stitch its overlapping windows: `python -m benchmarks.stitching RUN_DIR DESED`.

Long recordings are made by joining a prepared DESED's eval clips end to end (`--clips` per recording, in the
order of the eval table), their events shifted likewise; the windows of `sedaug detect` then fall anywhere in a
clip. Each recording goes through detect's own code (`score_recordings`: windows, mels, the model), and its windows'
frame scores are stitched in each of these ways, then decoded with the run's post-processing and scored with the
event-based F1 of `sedaug evaluate`:

- `mean`: each frame the mean of the windows that cover it (detect's stitching);
- `triangle`: a weighted mean, each window's frames weighted by their distance to its nearer edge, plus one;
- `centre`: each frame from the window in which it lies farthest from an edge (a window's middle half).

Beside them, `clips`: each clip scored alone (one window each, what `sedaug evaluate` scores), the reference that
stitching cannot beat by context. Also reported: the number of detected events (a stitch that cuts events at
window edges detects more), and, per stitching, the mean absolute difference between the two windows' scores on
the frames they share, by position (how much a window's edge frames disagree with the other window's middle).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sedaug.checkpoint import load_model
from sedaug.data.grid import PARAMS
from sedaug.detect import HOP_OUTPUT_FRAMES, load_recording, score_recordings
from sedaug.evaluation.f1 import event_based_f1
from sedaug.evaluation.postprocess import decode
from sedaug.files import read_tsv

STITCHINGS = ("mean", "triangle", "centre")


def stitch(window_scores: np.ndarray, how: str, hop: int = HOP_OUTPUT_FRAMES) -> np.ndarray:
    """(W, T, C) -> (T + (W − 1)·hop, C): the frames of overlapping windows joined `how` (module docstring)."""
    n, t, c = window_scores.shape
    edge = np.minimum(np.arange(t), t - 1 - np.arange(t))[:, None]  # distance to the window's nearer edge
    sums, weights = np.zeros(((n - 1) * hop + t, c)), np.zeros(((n - 1) * hop + t, 1))
    best = np.full_like(weights, -1.0)
    for k, scores in enumerate(window_scores):
        covered = slice(k * hop, k * hop + t)
        if how == "centre":  # the window farthest from its edge wins (on a tie, the earlier one)
            better = edge > best[covered]
            sums[covered] = np.where(better, scores, sums[covered])
            best[covered] = np.maximum(best[covered], edge)
            continue
        weight = 1.0 if how == "mean" else edge + 1.0
        sums[covered] += scores * weight
        weights[covered] += weight
    return sums if how == "centre" else sums / weights


def joined_recordings(desed: Path, clips: int) -> tuple[list[np.ndarray], pd.DataFrame, list[tuple[str, list[float]]]]:
    """The eval clips of a prepared DESED joined `clips` at a time: waves, their events, (name, clip durations)."""
    folder = desed / "audio" / "eval" / "public"
    events = read_tsv(desed / "metadata" / "eval" / "public.tsv")
    names = sorted(p.name for p in folder.glob("*.wav"))
    waves, truth, parts = [], [], []
    for first in range(0, len(names) - clips + 1, clips):
        name = f"joined{first // clips:03d}.wav"
        pieces, durations, offset = [], [], 0.0
        for clip in names[first : first + clips]:
            pieces.append(load_recording(folder / clip))  # detect's decoding: mono, 16 kHz
            for row in events[events.filename == clip].itertuples():
                if row.event_label:
                    truth.append((name, offset + float(row.onset), offset + float(row.offset), row.event_label))
            durations.append(len(pieces[-1]) / PARAMS.sample_rate)
            offset += durations[-1]
        waves.append(np.concatenate(pieces))
        parts.append((name, durations))
    return waves, pd.DataFrame(truth, columns=["filename", "onset", "offset", "event_label"]), parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("desed", type=Path, help="a prepared DESED (prepare-desed's --out)")
    parser.add_argument("--clips", type=int, default=10, help="eval clips per joined recording")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--json", type=Path, help="write the figures there too")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    model, recipe, state = load_model(args.run_dir, args.checkpoint, device)
    waves, truth, parts = joined_recordings(args.desed, args.clips)
    names = [name for name, _ in parts]
    post = dict(threshold=recipe.eval.threshold, median_window=recipe.eval.median_window)

    # Keep each recording's windows (score_recordings stitches them with detect's own stitch).
    import sedaug.detect as detect_module

    windows: list[np.ndarray] = []
    real_stitch = detect_module.stitch
    detect_module.stitch = lambda scores: (windows.append(scores), real_stitch(scores))[1]
    try:
        score_recordings(model, waves, recipe.eval.batch_size, device)
    finally:
        detect_module.stitch = real_stitch

    figures: dict[str, dict] = {}
    for how in STITCHINGS:
        found = []
        for name, wave, scores in zip(names, waves, windows, strict=True):
            stitched = stitch(scores, how)
            found.append(decode(stitched[None], [name], durations=np.array([len(wave) / PARAMS.sample_rate]), **post))
        found = pd.concat(found, ignore_index=True)
        figures[how] = {"macro_f1": event_based_f1(found, truth, names)["macro"], "events": len(found)}

    # Each clip alone: one window each, cut at the clip's end, the events shifted onto the joined recording.
    alone = []
    for (name, durations), wave in zip(parts, waves, strict=True):
        bounds = np.concatenate([[0], np.cumsum(np.round(np.array(durations) * PARAMS.sample_rate).astype(int))])
        clip_waves = [wave[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        for (scores, _), start, duration in zip(score_recordings(model, clip_waves, recipe.eval.batch_size, device),
                                                bounds[:-1] / PARAMS.sample_rate, durations, strict=True):
            events = decode(scores[None], [name], durations=np.array([duration]), **post)
            alone.append(events.assign(onset=events.onset + start, offset=events.offset + start))
    alone = pd.concat(alone, ignore_index=True)
    figures["clips"] = {"macro_f1": event_based_f1(alone, truth, names)["macro"], "events": len(alone)}

    # How the two windows that share a frame disagree, by the frame's position in the later window.
    t = windows[0].shape[1]
    shared = t - HOP_OUTPUT_FRAMES
    gaps = np.concatenate([np.abs(w[:-1, HOP_OUTPUT_FRAMES:] - w[1:, :shared]) for w in windows if len(w) > 1])
    by_position = gaps.mean(axis=(0, 2))  # (shared,)
    disagreement = {f"{a}-{b}": float(by_position[a:b].mean()) for a, b in ((0, 10), (10, 39), (39, shared))}

    print(f"{args.run_dir} ({args.checkpoint}.pt, epoch {state.epoch}); {len(names)} recordings of {args.clips} "
          f"eval clips, {len(truth)} events, threshold {post['threshold']:g}, median {post['median_window']}")
    print(f"{'stitching':10} {'macro F1':>9} {'events':>7}")
    for how, row in figures.items():
        print(f"{how:10} {row['macro_f1']:9.4f} {row['events']:7d}")
    print("mean |score difference| of the two windows on a shared frame, by its frame in the later window: "
          + ", ".join(f"frames {k}: {v:.4f}" for k, v in disagreement.items()))
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run_dir), "epoch": state.epoch, "clips": args.clips,
                                         "figures": figures, "disagreement": disagreement}, indent=2) + "\n")


if __name__ == "__main__":
    main()
