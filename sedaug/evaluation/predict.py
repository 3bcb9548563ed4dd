"""A model's frame scores on a split, in batches and in eval mode."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sedaug.data.desed import CLASSES
from sedaug.device import full_float32
from sedaug.progress import progress_bar


def predict(
    model, mels: np.ndarray, batch_size: int, device, progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The model's strong output (N, T, C), in eval mode, batches and strict float32 (no TF32 on a GPU: a GPU's
    scores are a CPU's within float32 rounding, whatever training ran in); the model's mode is restored.
    `on_batch(n)` is called after each batch of n clips (a progress bar of the caller's)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(), full_float32(torch.device(device)), progress_bar("predict", len(mels), progress) as advance:
            for start in range(0, len(mels), batch_size):
                batch = torch.from_numpy(np.asarray(mels[start : start + batch_size], dtype=np.float32))
                strong, _ = model(batch.to(device))
                out.append(strong.float().cpu().numpy())
                advance(len(batch))
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0, len(CLASSES)), dtype=np.float32)
