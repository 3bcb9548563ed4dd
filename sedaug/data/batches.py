"""The three-stream mini-batch: unlabeled 1/2, weak 1/4, synthetic 1/4 (dcase20: 12/6/6 of 24).

Features stay where the feature store put them (an mmap, or device memory when asked); a batch is gathered by
index in one `index_select` per stream, with no per-clip Python work.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sedaug.data.labels import frame_labels
from sedaug.data.store import FeatureStore
from sedaug.errors import UserError

STREAMS = ("unlabeled", "weak", "synthetic_train")  # the feature-store splits of a batch, in its rows' order


@dataclass
class Batch:
    mels: torch.Tensor  # (B, T, F) linear mel in the store's dtype, rows = [unlabeled | weak | synthetic]
    weak_labels: torch.Tensor  # (B/4, C) for the weak slice
    strong_labels: torch.Tensor  # (B/4, T', C) for the synthetic slice
    n_unlabeled: int
    n_weak: int
    # (B,) int64 on the batch's device: each clip's input frames of real audio. Rows t >= frames[i] of mels[i] are
    # padding (linear 1.0, 0 dB): statistics of a clip (the 30 dB noise's per-bin power) belong to frames < frames[i].
    frames: torch.Tensor | None = None


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # the mmap is read-only; nothing writes through this view
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def stream_batch_sizes(batch_size: int) -> tuple[int, int, int]:
    """Each stream's clips in a batch (dcase20's 1/2 unlabeled, 1/4 weak, 1/4 synthetic), in STREAMS' order."""
    return batch_size // 2, batch_size // 4, batch_size // 4


def steps_per_epoch(counts: Sequence[int], batch_size: int) -> int:
    """Full batches in an epoch of streams holding `counts` clips (STREAMS' order): the shortest stream ends it."""
    return min(n // k for n, k in zip(counts, stream_batch_sizes(batch_size), strict=True))


class ThreeStreams:
    """Per-epoch shuffled batches over the unlabeled, weak and synthetic-train streams."""

    def __init__(self, store: FeatureStore, batch_size: int, seed: int, device: torch.device, resident: bool = False):
        unlabeled, weak, synthetic = (store.split(s) for s in STREAMS)
        # On a GPU the whole store is copied to device memory when asked (it fits for DESED); else gathered from mmap.
        place = (lambda t: t.to(device)) if resident else (lambda t: t)
        self.sources = [place(_as_tensor(s.mels)) for s in (unlabeled, weak, synthetic)]
        self.frames = [torch.as_tensor(s.frames, device=device) for s in (unlabeled, weak, synthetic)]
        self.weak_labels = torch.as_tensor(weak.weak_labels, dtype=torch.float32, device=device)
        self.strong_labels = torch.as_tensor(
            frame_labels(synthetic.events, synthetic.filenames), dtype=torch.float32, device=device
        )
        self.sizes = stream_batch_sizes(batch_size)
        self.seed = seed
        self.device = device
        self.steps_per_epoch = steps_per_epoch([len(src) for src in self.sources], batch_size)
        if self.steps_per_epoch == 0:
            counts = ", ".join(f"{name} {len(src)}" for name, src in zip(STREAMS, self.sources, strict=True))
            raise UserError(f"{store.path}: too few clips ({counts}) for data.batch_size {batch_size} (unlabeled 1/2, weak 1/4, synthetic 1/4)")

    def epoch(self, epoch: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """The batches of one epoch, steps [start, stop); the order depends only on (seed, epoch)."""
        orders = [
            torch.from_numpy(np.random.default_rng([self.seed, epoch, i]).permutation(len(src)))
            for i, src in enumerate(self.sources)
        ]
        for step in range(start, min(stop or self.steps_per_epoch, self.steps_per_epoch)):
            picks = [order[step * n : (step + 1) * n] for order, n in zip(orders, self.sizes, strict=True)]
            mels = torch.cat(
                [src.index_select(0, idx.to(src.device)) for src, idx in zip(self.sources, picks, strict=True)]
            )
            yield Batch(
                mels=mels.to(self.device, non_blocking=True),
                weak_labels=self.weak_labels[picks[1].to(self.device)],
                strong_labels=self.strong_labels[picks[2].to(self.device)],
                n_unlabeled=self.sizes[0],
                n_weak=self.sizes[1],
                frames=torch.cat([f[idx.to(self.device)] for f, idx in zip(self.frames, picks, strict=True)]),
            )
