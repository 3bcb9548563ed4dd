"""The dcase20 front end: the linear mel spectrogram (stored) and its log (computed in the model, batched).

`amplitude_to_db` is sedaug's one amplitude-to-dB: the model's front end, the scaler's statistics and the tests
all go through it. The parameters live in `data/grid.py` (`FeatureParams`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sedaug.data.grid import PARAMS, FeatureParams


def mel_spectrogram(wave: Tensor, params: FeatureParams = PARAMS) -> Tensor:
    """Linear (magnitude) mel spectrogram, time-major: (..., samples) -> (..., frames, n_mels), float32."""
    transform = _mel_transform(params, wave.device)
    return transform(wave.float()).transpose(-1, -2)


@functools.lru_cache(maxsize=8)
def _mel_transform(params: FeatureParams, device: torch.device):
    # torchaudio is imported here, where a mel is computed: the model imports this module for the log only.
    from sedaug.deps import import_torchaudio

    torchaudio = import_torchaudio()
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=params.sample_rate,
        n_fft=params.n_fft,
        win_length=params.n_fft,
        hop_length=params.hop,
        f_min=params.f_min,
        f_max=params.f_max,
        n_mels=params.n_mels,
        window_fn=torch.hamming_window,
        wkwargs={"periodic": False},
        power=params.power,
        center=params.center,
        pad_mode=params.pad_mode,
        norm=params.norm,
        mel_scale=params.mel_scale,
    ).to(device)


def amplitude_to_db(x: Tensor, amin: float = PARAMS.amin, top_db: float = PARAMS.top_db) -> Tensor:
    """20·log10(max(x, amin)) (ref 1), floored at each clip's maximum − top_db; x is (B, ...)."""
    db = 20.0 * torch.log10(x.clamp_min(amin))
    floor = db.flatten(1).amax(dim=1) - top_db
    return torch.maximum(db, floor.view(-1, *[1] * (db.dim() - 1)))


def log_mel(mel: Tensor, amin: float = PARAMS.amin, top_db: float = PARAMS.top_db) -> Tensor:
    """The log of linear mels, (frames, n_mels) or (..., frames, n_mels) -> same shape, float32; the top_db floor
    is taken per clip (the last two dims)."""
    clips = mel.float().reshape(-1, *mel.shape[-2:])
    return amplitude_to_db(clips, amin, top_db).view(mel.shape)
