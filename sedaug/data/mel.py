"""The dcase20 front end: resampling to 16 kHz, the linear mel spectrogram of a clip (stored), and its log
(computed in the model, batched).

`amplitude_to_db` is sedaug's one amplitude-to-dB: the model's front end, the scaler's statistics and the tests
all go through it. The parameters live in `data/grid.py` (`FeatureParams`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from sedaug.data.grid import PARAMS
from sedaug.device import full_float32

# The linear value of a padding frame: 0 dB after the log (20·log10(1)), the log-mel dcase20 pads short clips with.
# The model's top_db floor (each clip's maximum − 80 dB) stays below it: a magnitude mel of audio within ±1 is at
# most about 76 dB.
PAD = 1.0

# resampy 0.2's `kaiser_best`, the resampler of librosa 0.7 in dcase20: a Kaiser-windowed sinc (beta 14.77) over
# 64 zero crossings, rolled off at 0.9476 of the Nyquist frequency, tabulated with 2^9 points per crossing.
KAISER_BEST = {"num_zeros": 64, "precision": 9, "rolloff": 0.9475937167399596, "beta": 14.769656459379492}


# The largest value the feature store's float16 holds.
FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def mel_problems(mels: Tensor) -> dict[int, str]:
    """Row -> why the linear mels (B, frames, n_mels) of that clip cannot be stored or fed to the model: NaN or
    infinity (samples so large that the STFT overflows float32), or values beyond float16's range (audio some
    20 dB above full scale). Real audio within +-1 gives mels below about 6,300."""
    rows = mels.flatten(1)
    finite = torch.isfinite(rows).all(dim=1)
    peak = torch.where(torch.isfinite(rows), rows.abs(), 0.0).amax(dim=1)
    problems = {}
    for i in torch.nonzero(~finite | (peak > FLOAT16_MAX)).flatten().tolist():
        problems[i] = ("its mel spectrogram holds NaN or infinite values (samples too large for the STFT)"
                       if not finite[i] else
                       f"its mel spectrogram reaches {float(peak[i]):.3g}, beyond float16's {FLOAT16_MAX:g} "
                       "(audio far above full scale)")
    return problems


def resample(wave: Tensor, rate: int) -> Tensor:
    """(..., samples) float32 at `rate` -> at 16 kHz, as dcase20 resampled (`PARAMS.resampler`)."""
    if rate == PARAMS.sample_rate:
        return wave
    return _kaiser_best(int(rate), PARAMS.sample_rate)(wave)


@functools.lru_cache(maxsize=16)
def _kaiser_best(orig: int, new: int) -> Callable[[Tensor], Tensor]:
    """resampy 0.2's kaiser_best from `orig` to `new` Hz, as torchaudio's Kaiser sinc resampler (kernel cached).

    resampy walks its filter table in whole steps of int(scale·2^precision) entries per input sample (scale =
    min(1, new/orig)), so its filter is stretched by that truncation (44.1 -> 16 kHz: 185/512 instead of
    0.36281, a cutoff 0.4 % lower); its window spans num_zeros crossings of the unrolled sinc, i.e.
    num_zeros·rolloff crossings of the rolled-off one (torchaudio's lowpass_filter_width); and its gain keeps the
    exact ratio. torchaudio's suggested (64, 0.9476, 14.77) misses by up to 2 dB in the top mel band; these
    settings agree within 0.4 dB in every band (tests/test_features.py)."""
    from sedaug.deps import import_torchaudio

    scale = min(1.0, new / orig)
    table = 2 ** KAISER_BEST["precision"]
    step = math.floor(scale * table) / table
    transform = import_torchaudio().transforms.Resample(
        orig,
        new,
        resampling_method="sinc_interp_kaiser",
        lowpass_filter_width=KAISER_BEST["num_zeros"] * KAISER_BEST["rolloff"],
        rolloff=KAISER_BEST["rolloff"] * step / scale,
        beta=KAISER_BEST["beta"],
    )
    gain = scale / step
    return lambda wave: transform(wave.float()) * gain


def clip_mels(waves: Sequence[np.ndarray | Tensor], device: torch.device | None = None) -> Tensor:
    """Linear mels (B, n_frames, n_mels), float32, of 16 kHz mono clips of any length, as dcase20 computes them:
    each clip's STFT runs over its own samples (the clips of one length are batched together), then frames past a
    short clip's end are PAD (0 dB) and frames past n_frames are dropped. A clip needs more than n_fft // 2 samples
    (the STFT's reflect padding)."""
    keep = PARAMS.kept_samples
    groups: dict[int, list[int]] = {}
    for i, wave in enumerate(waves):
        n = min(len(wave), keep)
        if n <= PARAMS.n_fft // 2:
            raise ValueError(f"clip {i} has {n} samples: a mel needs more than {PARAMS.n_fft // 2}")
        groups.setdefault(n, []).append(i)
    out = torch.full((len(waves), PARAMS.n_frames, PARAMS.n_mels), PAD, device=device)
    for n, rows in groups.items():
        batch = torch.stack([torch.as_tensor(waves[i][:n], dtype=torch.float32) for i in rows]).to(device)
        mels = mel_spectrogram(batch)[:, : PARAMS.n_frames]
        out[torch.tensor(rows, device=out.device), : mels.shape[1]] = mels
    return out


def mel_spectrogram(wave: Tensor) -> Tensor:
    """Linear (magnitude) mel spectrogram, time-major: (..., samples) -> (..., frames, n_mels), float32."""
    transform = _mel_transform(wave.device)
    with full_float32(wave.device):  # the mel matmul: a GPU's mels are a CPU's within float32 rounding
        return transform(wave.float()).transpose(-1, -2)


@functools.lru_cache(maxsize=8)
def _mel_transform(device: torch.device):
    # torchaudio is imported here, where a mel is computed: the model imports this module for the log only.
    from sedaug.deps import import_torchaudio

    torchaudio = import_torchaudio()
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=PARAMS.sample_rate,
        n_fft=PARAMS.n_fft,
        win_length=PARAMS.n_fft,
        hop_length=PARAMS.hop,
        f_min=PARAMS.f_min,
        f_max=PARAMS.f_max,
        n_mels=PARAMS.n_mels,
        window_fn=torch.hamming_window,
        wkwargs={"periodic": False},
        power=PARAMS.power,
        center=PARAMS.center,
        pad_mode=PARAMS.pad_mode,
        norm=PARAMS.norm,
        mel_scale=PARAMS.mel_scale,
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
