"""The two time grids, each stated once: the mel front end's frames and the model's output frames.

Input frames: `FeatureParams` holds every parameter of the stored features (docs/architecture.md, "Features"):
16 kHz, a 2048-point Hamming STFT with hop 255, 128 Slaney mel bands, 628 frames per 10 s clip; a shorter clip has
`real_frames` of its own, then padding frames.

Output frames: the CRNN pools time by the product of `model.cnn_pooling`'s time factors (dcase20: 2·2 = 4), so a
clip has 628 // 4 = 157 output frames of 255·4/16000 = 0.06375 s. Frame labels (`data/labels.py`) and
post-processing (`evaluation/postprocess.py`) use this grid, derived here from the default model configuration;
the recipe schema refuses a `cnn_pooling` that pools time by another factor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sedaug.recipe import MEL_BANDS, ModelConfig

RESAMPLERS = ("kaiser_best",)
PADDINGS = ("0dB",)


@dataclass(frozen=True)
class FeatureParams:
    """Everything that determines the stored features; a feature store with other parameters is refused."""

    sample_rate: int = 16000
    n_fft: int = 2048
    hop: int = 255
    n_mels: int = MEL_BANDS
    n_frames: int = 628
    clip_seconds: float = 10.0
    f_min: float = 0.0
    f_max: float = 8000.0
    power: float = 1.0
    mel_scale: str = "slaney"
    norm: str | None = None
    window: str = "hamming"  # symmetric, like np.hamming and the dcase20 baseline
    center: bool = True
    pad_mode: str = "reflect"
    amin: float = 1e-5
    top_db: float = 80.0
    # Audio at another rate: dcase20's resampler, librosa 0.7 + resampy 0.2's `kaiser_best` (data/mel.py).
    resampler: str = "kaiser_best"
    # A clip shorter than clip_seconds (dcase20): the mel of its own samples, then frames of linear 1.0 (0 dB, the
    # log-mel dcase20 pads with) up to n_frames.
    padding: str = "0dB"

    def __post_init__(self) -> None:
        if self.window != "hamming":
            raise ValueError(f"only the (symmetric) hamming window is supported, not {self.window!r}")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"resampler {self.resampler!r}: one of {', '.join(RESAMPLERS)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r}: one of {', '.join(PADDINGS)}")
        expected = self.clip_samples // self.hop + 1 if self.center else None
        if expected is not None and self.n_frames != expected:
            raise ValueError(f"n_frames {self.n_frames} != {expected} frames in a {self.clip_seconds} s clip")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def kept_samples(self) -> int:
        """The samples of a clip its n_frames frames see: the last one's window ends at (n_frames - 1)·hop + n_fft/2,
        so a longer clip cut there keeps its frames as they are in the STFT of the whole clip."""
        return (self.n_frames - 1) * self.hop + self.n_fft // 2

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


PARAMS = FeatureParams()


def real_frames(durations: np.ndarray | float) -> np.ndarray:
    """The input frames of real audio in clips of `durations` seconds (the rest of the n_frames are padding):
    1 + samples // hop, as the centered STFT of the clip's own samples gives, at most n_frames (628 for 10 s)."""
    samples = np.round(np.asarray(durations, dtype=np.float64) * PARAMS.sample_rate).astype(np.int64)
    return np.minimum(PARAMS.n_frames, 1 + samples // PARAMS.hop)


def time_pooling(model: ModelConfig) -> int:
    """How many input frames the CRNN pools into one output frame: the product of its time pooling factors."""
    return math.prod(time for time, _ in model.cnn_pooling)


TIME_POOLING = time_pooling(ModelConfig())
N_OUTPUT_FRAMES = PARAMS.n_frames // TIME_POOLING
FRAME_SECONDS = PARAMS.hop * TIME_POOLING / PARAMS.sample_rate  # 0.06375 s


# The sample rates a recording may have: 8 kHz (telephone audio) up to 768 kHz. Below, the file cannot hold most of
# the 0-8 kHz mel bands (a 1 Hz file's ten samples would pass for ten seconds of silence); above, resampling alone
# would need a filter of millions of taps.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 768000


def check_sample_rate(rate: int) -> None:
    """A ValueError for a sample rate outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"a sample rate of {rate} Hz (sedaug reads {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz audio)")
