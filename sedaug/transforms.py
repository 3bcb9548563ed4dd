"""Audio-domain transforms (docs/audio_augmentations.md): band gains, frequency and time shifts, masks, reverb.

Pure tensor functions, batched on the device, plus the projected parameter search of their adversarial versions;
`sedaug.augment.consistency_views` turns them into perturbations at the model's points. A point's tensor is
(B, T, F) at `mel` and `input`, (B, C, T, F) at `cnn1`…`cnn7`, (B, T, features) at `cnn` and `rnn`; `Grid` says
where its time and frequency axes are and how the CNN's pooling relates its rows to input frames, mel bins and
output frames. Random draws use torch's global RNG (CPU for sizes and counts, the tensor's device otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sedaug.data.grid import PARAMS
from sedaug.model import GatedBlock, Perturb, Perturbation
from sedaug.recipe import FilterAugmentation, FrequencyShiftAugmentation, MaskAugmentation, ReverbAugmentation

INPUT_FRAME_SECONDS = PARAMS.hop / PARAMS.sample_rate  # 0.0159375 s


# ------------------------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Grid:
    """A point's axes and pooling: one of its time rows spans `time_before` input frames and one output frame spans
    `time_after` of its rows; one of its frequency rows spans `freq_before` mel bins (no frequency axis: None)."""

    time_axis: int
    freq_axis: int | None
    time_before: int
    time_after: int
    freq_before: int


def model_pooling(model: nn.Module) -> list[tuple[int, int]]:
    """The (time, freq) pooling of each gated block, in order (works through wrappers too)."""
    return [tuple(m.pool.kernel_size) for m in model.modules() if isinstance(m, GatedBlock)]


def point_grid(point: str, pooling: Sequence[tuple[int, int]]) -> Grid:
    if point in ("mel", "input"):
        blocks, axes = 0, (1, -1)
    elif point in ("cnn", "rnn"):
        blocks, axes = len(pooling), (1, None)
    else:  # cnn<k>, (B, C, T, F)
        blocks, axes = int(point.removeprefix("cnn")), (2, -1)
    before, after = pooling[:blocks], pooling[blocks:]
    return Grid(*axes, math.prod(t for t, _ in before), math.prod(t for t, _ in after), math.prod(f for _, f in before))


def on_grid(size: int, pooled: int) -> int:
    """A size in input frames or mel bins, in rows of a point pooled `pooled`-fold: at least one row."""
    return max(1, size // pooled)


def _along(x: Tensor, h: Tensor, axis: int) -> Tensor:
    """A per-clip vector x (B, n) shaped to broadcast against h along `axis`."""
    shape = [1] * h.dim()
    shape[0], shape[axis] = x.shape
    return x.view(shape)


# -------------------------------------------------------------------------------------------- filter


def band_edges(n_freq: int, n_bands: int, min_width: int) -> Tensor:
    """FilterAugment's random band edges (n_bands + 1,): 0, sorted interior edges at least `min_width` apart, n_freq."""
    n_bands = min(n_bands, n_freq)
    min_width = min(min_width, n_freq // n_bands)
    interior = torch.sort(torch.randint(0, n_freq - n_bands * min_width + 1, (n_bands - 1,)))[0]
    interior = interior + torch.arange(1, n_bands) * min_width
    return torch.cat([torch.tensor([0]), interior, torch.tensor([n_freq])])


def band_weights(edges: Tensor, n_freq: int, shape: str) -> Tensor:
    """W (n_freq, G) with gain curve = gains @ Wᵀ. step: G = bands, the band's gain on each of its bins; linear:
    G = bands + 1 gains at the edges, each band going linearly from its first bin (gain i) to its last (gain i + 1),
    as FilterAugment's linspace."""
    edges = edges.tolist()
    n_bands = len(edges) - 1
    w = torch.zeros(n_freq, n_bands + (shape == "linear"))
    for i, (start, stop) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if shape == "step":
            w[start:stop, i] = 1.0
        else:
            t = torch.linspace(0.0, 1.0, stop - start) if stop - start > 1 else torch.zeros(stop - start)
            w[start:stop, i], w[start:stop, i + 1] = 1.0 - t, t
    return w


def apply_gain(h: Tensor, curve_db: Tensor, point: str, grid: Grid, log_std: Tensor | None = None) -> Tensor:
    """A gain curve (B, F) in dB along h's frequency axis: multiplied as 10^(g/20) on the linear mel and on CNN
    blocks, added as g / σ on the normalized log-mel (`input`, σ the per-bin std of the log-mel in dB)."""
    if point == "input":
        return h + _along(curve_db / log_std, h, grid.freq_axis).to(h.dtype)
    return h * _along(10.0 ** (curve_db / 20.0), h, grid.freq_axis).to(h.dtype)


class Filter:
    """Random band gains (FilterAugment): one band split per step (per point), gains per clip and band."""

    def __init__(self, aug: FilterAugmentation, log_std: Tensor | None):
        self.aug, self.log_std = aug, log_std
        self.bounds = aug.gain_db

    def draw(self, point: str, h: Tensor, grid: Grid) -> dict[str, Tensor]:
        n_freq = h.shape[grid.freq_axis]
        n_bands = int(torch.randint(self.aug.bands[0], self.aug.bands[1] + 1, ()))
        edges = band_edges(n_freq, n_bands, on_grid(self.aug.min_bandwidth, grid.freq_before))
        weights = band_weights(edges, n_freq, self.aug.shape).to(h.device)
        lo, hi = self.bounds
        return {"weights": weights, "search": lo + (hi - lo) * torch.rand(h.shape[0], weights.shape[1], device=h.device)}

    def apply(self, point: str, h: Tensor, grid: Grid, p: dict[str, Tensor]) -> Tensor:
        return apply_gain(h, p["search"] @ p["weights"].T, point, grid, self.log_std)


# --------------------------------------------------------------------------------------------- reverb


def decay_kernel(t60: Tensor, n: int, frame_seconds: float) -> Tensor:
    """(B, n): a^j / Σ_j a^j for j < n, a = 10^(−3·frame_seconds / T60): 60 dB down after T60 seconds, unit sum
    (a stationary sound keeps its level; an onset is spread over the decay)."""
    j = torch.arange(n, device=t60.device, dtype=torch.float32)
    log_a = -3.0 * math.log(10.0) * frame_seconds / t60.float()
    kernel = torch.exp(log_a[:, None] * j)
    return kernel / kernel.sum(dim=1, keepdim=True)


def smear(h: Tensor, kernel: Tensor, axis: int) -> Tensor:
    """Causal convolution along `axis` with a per-clip kernel (B, n): y[t] = Σ_{j≤t} kernel[j]·h[t − j] (FFT)."""
    x = h.movedim(axis, -1).float()
    n = x.shape[-1]
    spectrum = torch.fft.rfft(x, 2 * n) * torch.fft.rfft(kernel, 2 * n).view(kernel.shape[0], *[1] * (x.dim() - 2), -1)
    return torch.fft.irfft(spectrum, 2 * n)[..., :n].movedim(-1, axis).to(h.dtype)


class Reverb:
    """A decay time T60 per clip (per point), uniform in `decay_s`; seconds are the same at every point."""

    def __init__(self, aug: ReverbAugmentation):
        self.aug, self.bounds = aug, aug.decay_s

    def draw(self, point: str, h: Tensor, grid: Grid) -> dict[str, Tensor]:
        lo, hi = self.bounds
        return {"search": lo + (hi - lo) * torch.rand(h.shape[0], device=h.device)}

    def apply(self, point: str, h: Tensor, grid: Grid, p: dict[str, Tensor]) -> Tensor:
        kernel = decay_kernel(p["search"], h.shape[grid.time_axis], INPUT_FRAME_SECONDS * grid.time_before)
        return smear(h, kernel, grid.time_axis)


# ------------------------------------------------------------------------------------------- shifts


def shift_along(h: Tensor, k: Tensor, axis: int, mode: str) -> Tensor:
    """out[..., i, ...] = h[..., i − k_b, ...] along `axis`, per clip b (k (B,) integers): content moves up by k.
    The rows shifted in: `roll` wraps the rows shifted out around, `shift` repeats the edge row."""
    n = h.shape[axis]
    index = torch.arange(n, device=h.device) - k[:, None]
    index = index.remainder(n) if mode == "roll" else index.clamp(0, n - 1)
    return torch.take_along_dim(h, _along(index, h, axis), dim=axis)


class FrequencyShift:
    """k rows up or down along the frequency axis, per clip, uniform in ±max_bins (in rows at a CNN block)."""

    def __init__(self, aug: FrequencyShiftAugmentation):
        self.aug = aug

    def draw(self, point: str, h: Tensor, grid: Grid) -> dict[str, Tensor]:
        most = on_grid(self.aug.max_bins, grid.freq_before)
        return {"k": torch.randint(-most, most + 1, (h.shape[0],), device=h.device)}

    def apply(self, point: str, h: Tensor, grid: Grid, p: dict[str, Tensor]) -> Tensor:
        return shift_along(h, p["k"], grid.freq_axis, self.aug.mode)


def time_shift_views(clean: tuple[Tensor, Tensor], perturbed: tuple[Tensor, Tensor], k: int) -> tuple:
    """The strong outputs aligned for a shift of k output frames (content k frames later, k < 0: earlier): frame t of
    the clean output against frame t + k of the perturbed one; the |k| frames that rolled in from the other end
    of the clip are sliced off both. The weak outputs are compared unshifted."""
    n = clean[0].shape[1]
    if k >= 0:
        return (clean[0][:, : n - k], clean[1]), (perturbed[0][:, k:], perturbed[1])
    return (clean[0][:, -k:], clean[1]), (perturbed[0][:, : n + k], perturbed[1])


# --------------------------------------------------------------------------------------------- masks


def interval_mask(starts: Tensor, widths: Tensor, n: int) -> Tensor:
    """(B, n) bool: the union of the intervals [start, start + width) per clip (starts, widths (B, m))."""
    i = torch.arange(n, device=starts.device)
    return ((i >= starts[..., None]) & (i < (starts + widths)[..., None])).any(dim=1)


def random_intervals(batch: int, count: int, max_width: int, n: int, device: torch.device) -> Tensor:
    """SpecAugment: `count` intervals per clip, width uniform in 0..max_width, start uniform where it fits."""
    widths = (torch.rand(batch, count, device=device) * (min(max_width, n) + 1)).long()
    starts = (torch.rand(batch, count, device=device) * (n - widths + 1)).long()
    return interval_mask(starts, widths, n)


def apply_masks(h: Tensor, grid: Grid, time: Tensor | None, freq: Tensor | None) -> Tensor:
    """h with the masked time rows (B, T) and frequency rows (B, F) set to 0."""
    if time is not None:
        h = h.masked_fill(_along(time, h, grid.time_axis), 0.0)
    if freq is not None:
        h = h.masked_fill(_along(freq, h, grid.freq_axis), 0.0)
    return h


class Mask:
    """SpecAugment's masks per clip: widths in input frames and mel bins, in rows at a pooled point."""

    def __init__(self, aug: MaskAugmentation):
        self.aug = aug

    def draw(self, point: str, h: Tensor, grid: Grid) -> dict[str, Tensor | None]:
        aug, batch = self.aug, h.shape[0]
        time = freq = None
        if aug.time_masks:
            n = h.shape[grid.time_axis]
            time = random_intervals(batch, aug.time_masks, on_grid(aug.time_width, grid.time_before), n, h.device)
        if aug.freq_masks:
            n = h.shape[grid.freq_axis]
            freq = random_intervals(batch, aug.freq_masks, on_grid(aug.freq_width, grid.freq_before), n, h.device)
        return {"time": time, "freq": freq}

    def apply(self, point: str, h: Tensor, grid: Grid, p: dict[str, Tensor | None]) -> Tensor:
        return apply_masks(h, grid, p["time"], p["freq"])


# ---------------------------------------------------------------------------------- adversarial search


Gradient = Callable[[Perturb, dict[str, Tensor]], dict[str, Tensor]]


def search(
    transform: Filter | Reverb,
    locations: Sequence[str],
    pooling: Sequence[tuple[int, int]],
    gradient: Gradient,
    steps: int,
    step_size: float,
) -> dict[str, dict[str, Tensor]]:
    """Projected sign-gradient ascent of the transform's parameters ("search") from a random draw: each step,
    θ ← clamp(θ + step_size·(max − min)·sign(∇_θ divergence), min, max). `gradient(perturb, leaves)` runs one
    forward pass with `perturb` (which fills `leaves`) and returns ∇ of the divergence w.r.t. each leaf.
    Returns the parameters per location, detached, ready for the loss's perturbed pass."""
    params: dict[str, dict[str, Tensor]] = {}
    leaves: dict[str, Tensor] = {}

    def search_at(point: str, h: Tensor) -> Tensor:
        grid = point_grid(point, pooling)
        if point not in params:
            params[point] = transform.draw(point, h, grid)
        leaves[point] = params[point]["search"].detach().requires_grad_()
        return transform.apply(point, h, grid, {**params[point], "search": leaves[point]})

    perturb = Perturbation(frozenset(locations), search_at)  # named points: a compiled CNN stays whole at `input`

    lo, hi = transform.bounds
    for _ in range(steps):
        leaves.clear()
        for point, g in gradient(perturb, leaves).items():
            params[point]["search"] = (leaves[point].detach() + step_size * (hi - lo) * g.sign()).clamp(lo, hi)
    return params


def fixed(
    transform: Filter | Reverb | FrequencyShift | Mask,
    locations: Sequence[str],
    pooling: Sequence[tuple[int, int]],
    params: dict[str, dict] | None = None,
) -> Perturb:
    """The transform at each location with `params` (searched) or fresh random draws (drawn at the first call)."""
    params = {} if params is None else params

    def transform_at(point: str, h: Tensor) -> Tensor:
        grid = point_grid(point, pooling)
        if point not in params:
            params[point] = transform.draw(point, h, grid)
        return transform.apply(point, h, grid, params[point])

    return Perturbation(frozenset(locations), transform_at)  # named points: a compiled CNN stays whole when it can
