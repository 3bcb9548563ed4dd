"""Consistency augmentations (docs/augmentations.md): noise, first-order adversarial, VAT and mixup; and the audio
transforms of sedaug/transforms.py (docs/audio_augmentations.md): filter, reverb (random or adversarial), frequency
and time shifts, masks.

Each augmentation is a `perturb(point, h) -> h'` callable that the model applies at its named points
(`sedaug.model.POINTS`); `consistency_views` is the one entry point of the training loop.

Conventions:
- `unit(v)` normalizes per clip over all non-batch dims (max-abs first, then L2: stable for tiny gradients).
- `epsilon_mode: relative` (default) scales a unit direction by ε·‖h‖₂ per clip, h the tensor perturbed at that
  location, so one ε means the same at cnn, rnn or input. VAT's ξ follows the same mode.
- The first-order adversarial direction (eq. 6-7) is computed with the model in train mode, against the clean
  prediction: it is non-zero only because the two passes draw different dropout masks (or, under Mean Teacher,
  because teacher and student differ).
- VAT's direction search (eq. 8-9) runs a deterministic network (`dropout: shared`, default): every probe pass
  replays the clean pass's dropout masks and BatchNorm batch statistics (`SameDraws`), so the divergence is 0 at
  d = 0 and the ξ-step measures curvature (JᵀJ d). `dropout: independent` draws new masks in each probe, as
  sedaug's first version did: the gradient is then the dropout residual and VAT reduces to the first-order
  direction whatever the start, ξ or iterations.
- Direction passes leave every buffer (BatchNorm running statistics) bit-identical and send no gradient to
  parameters (`torch.autograd.grad` w.r.t. the perturbation only).
- All draws (noise, mixup λ, permutation and location) use torch's global RNG; VAT's random start comes from a
  generator seeded from it, so that drawing it does not shift the replayed dropout masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sedaug import transforms
from sedaug.device import full_float32, restore_rng, rng_state, tf32_allowed
from sedaug.model import BatchNorm2d, Perturb, Perturbation, Scaler
from sedaug.recipe import (
    AdversarialAugmentation,
    FilterAugmentation,
    FrequencyShiftAugmentation,
    MaskAugmentation,
    MixupAugmentation,
    NoiseAugmentation,
    ReverbAugmentation,
    TimeShiftAugmentation,
    VATAugmentation,
)

Pair = tuple[Tensor, Tensor]
Augmentation = (
    NoiseAugmentation
    | AdversarialAugmentation
    | VATAugmentation
    | MixupAugmentation
    | FilterAugmentation  # and adversarial_filter
    | ReverbAugmentation  # and adversarial_reverb
    | FrequencyShiftAugmentation
    | TimeShiftAugmentation
    | MaskAugmentation
)


def _per_clip(x: Tensor, like: Tensor) -> Tensor:
    """A (B,) quantity shaped to broadcast against `like` (B, ...)."""
    return x.view(-1, *[1] * (like.dim() - 1))


def unit(v: Tensor) -> Tensor:
    """v / max|v| then / ‖v‖₂, per clip over all non-batch dims; zero stays zero."""
    v = v / _per_clip(v.abs().flatten(1).amax(dim=1), v).clamp_min(torch.finfo(v.dtype).tiny)
    return v / _per_clip(v.flatten(1).norm(dim=1), v).clamp_min(1e-12)


def _size(h: Tensor, mode: str) -> Tensor | float:
    """The scale of a perturbation of h: ‖h‖₂ per clip (relative), or 1 (absolute)."""
    return _per_clip(h.detach().flatten(1).norm(dim=1), h) if mode == "relative" else 1.0


def rms(h: Tensor) -> Tensor:
    return _per_clip(h.detach().flatten(1).square().mean(dim=1).sqrt(), h)


def mse(a: Pair, b: Pair) -> Tensor:
    """Consistency loss: MSE on the strong plus MSE on the weak output, each mean-reduced."""
    return F.mse_loss(a[0], b[0]) + F.mse_loss(a[1], b[1])


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Run with throwaway copies of every buffer (BatchNorm running mean/var, counters); the originals stay put.

    Swapping copies in, rather than copying saved values back, leaves the originals untouched: the clean
    forward's autograd graph still holds them, and an in-place restore would invalidate it.
    """
    saved = [(module, name, buf) for module in model.modules() for name, buf in module.named_buffers(recurse=False)]
    for module, name, buf in saved:
        setattr(module, name, buf.clone())
    try:
        yield
    finally:
        for module, name, buf in saved:
            setattr(module, name, buf)


class SameDraws:
    """Replays one reference pass's randomness in later passes of the same model: its dropout masks (the RNG is
    rewound to its state before the reference pass; the probe passes draw in the same order and shapes) and its
    BatchNorm batch statistics (recorded by sedaug.model.BatchNorm2d, then used as fixed statistics). The replayed
    network is a deterministic function of the perturbation, as VAT's power iteration needs.

    A replayed pass runs in float32 without TF32: a finite difference of a bf16 or TF32 network measures its
    rounding (bf16's residual is as large as the ξ-step's effect), not its curvature. `reduced` says whether the
    reference pass ran in lower precision (autocast, TF32), in which case its output is not the replayed network's
    output at the same input, and the reference prediction must be replayed too (`vat_directions`)."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.batchnorms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
        others = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if len(others) != len(self.batchnorms):
            raise ValueError("SameDraws replays sedaug.model.BatchNorm2d only: another BatchNorm cannot record")
        self.rng: tuple | None = None
        self.reduced = False

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Wrap the reference pass."""
        self.rng = rng_state(self.device)
        self.reduced = torch.is_autocast_enabled(self.device.type) or tf32_allowed(self.device)
        for bn in self.batchnorms:
            bn.record = True
        try:
            yield
        finally:
            for bn in self.batchnorms:
                bn.record = False

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Wrap one probe pass: same masks, same batch statistics, float32; buffers (a replaying BatchNorm2d writes
        none) and the RNG's later draws untouched."""
        after = rng_state(self.device)
        with full_float32(self.device):
            for bn in self.batchnorms:
                bn.replay = True
            restore_rng(self.rng, self.device)
            try:
                yield
            finally:
                for bn in self.batchnorms:
                    bn.replay = False
                restore_rng(after, self.device)


# ----------------------------------------------------------------------------------------------- noise


def noise(aug: NoiseAugmentation, frames: Tensor | None = None) -> Perturb:
    """Gaussian noise at each location; its std is a constant (detached), not something to differentiate.
    `frames` (B,): each clip's real input frames; at `mel`, the power is averaged over those only and only they get
    noise (dcase20 adds it before padding: a short clip's pad frames stay at exactly 0 dB)."""

    def perturb(point: str, h: Tensor) -> Tensor:
        if point not in aug.locations:
            return h
        if point == "mel":
            # dcase20: per clip and mel bin, std = sqrt(mean_t(X²)·10^(−snr/10)) on the linear mel (B, T, F).
            power = h.detach().square()
            if frames is None:
                power = power.mean(dim=1, keepdim=True)
                std = (power * 10 ** (-aug.snr_db / 10)).sqrt()
            else:
                real = (torch.arange(h.shape[1], device=h.device) < frames[:, None]).unsqueeze(-1)
                power = (power * real).sum(dim=1, keepdim=True) / frames.view(-1, 1, 1).clamp_min(1)
                std = (power * 10 ** (-aug.snr_db / 10)).sqrt() * real
        else:
            std = aug.sigma * rms(h)
        return h + std * torch.randn_like(h)

    return Perturbation(frozenset(aug.locations), perturb)  # named points: a compiled CNN stays one graph


# ------------------------------------------------------------------------------ adversarial and VAT


def _gradient(
    model: nn.Module,
    mel: Tensor,
    ref: Pair,
    locations: list[str],
    offset: Callable[[str, Tensor], Tensor],
    same_draws: SameDraws | None = None,
) -> dict[str, Tensor]:
    """∇_r MSE[ref, model(mel) with h + r at each location] at r = offset(point, h): one forward, one backward;
    with `same_draws`, the pass replays the reference pass's dropout masks and batch statistics."""
    leaves: dict[str, Tensor] = {}

    def add_leaf(point: str, h: Tensor) -> Tensor:
        leaves[point] = offset(point, h).detach().requires_grad_()
        return h + leaves[point]

    perturb = Perturbation(frozenset(locations), add_leaf)

    # enable_grad: the caller may run an EMA teacher under no_grad, with parameters that need no gradient.
    with torch.enable_grad(), frozen_buffers(model), same_draws.replaying() if same_draws else nullcontext():
        loss = mse(ref, model(mel, perturb))
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def adversarial_directions(
    aug: AdversarialAugmentation, model: nn.Module, ref: Pair, mel: Tensor
) -> dict[str, Tensor]:
    """First order (eq. 6-7): unit(∇_d MSE[ref, f(x + d)] at d = 0), per location."""
    grads = _gradient(model, mel, ref, aug.locations, lambda point, h: torch.zeros_like(h))
    return {point: unit(g) for point, g in grads.items()}


def vat_directions(
    aug: VATAugmentation, model: nn.Module, ref: Pair, mel: Tensor, same_draws: SameDraws | None
) -> dict[str, Tensor]:
    """VAT (eq. 8-9): d ~ N(0, I), then `iterations` times d ← ∇_r MSE[ref, f(x + r)] at r = ξ·unit(d)."""
    generator = torch.Generator(mel.device).manual_seed(int(torch.randint(2**62, ())))
    d: dict[str, Tensor] = {}

    def probe(point: str, h: Tensor) -> Tensor:
        if point not in d:
            d[point] = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
        return aug.xi * _size(h, aug.epsilon_mode) * unit(d[point])

    if same_draws is not None and same_draws.reduced:
        # The reference pass ran in bf16 or TF32: the replayed float32 network's own output at d = 0 is the reference.
        with torch.no_grad(), same_draws.replaying():
            ref = tuple(y.float() for y in model(mel))
    for _ in range(aug.iterations):
        d.update(_gradient(model, mel, ref, aug.locations, probe, same_draws))
    return {point: unit(g) for point, g in d.items()}


def shift(directions: dict[str, Tensor], epsilon: float, mode: str) -> Perturb:
    """h + ε·size(h)·direction at each location that has a direction."""

    def add(point: str, h: Tensor) -> Tensor:
        return h + epsilon * _size(h, mode) * directions[point]

    return Perturbation(frozenset(directions), add)


# ------------------------------------------------------------------------------------------- mixup


def mix(h: Tensor, lam: float, perm: Tensor) -> Tensor:
    return lam * h + (1.0 - lam) * h[perm]


# ---------------------------------------------------------------------------------- audio transforms


def _transform(aug: Augmentation, model: nn.Module):
    """The transform object of an audio augmentation (sedaug.transforms)."""
    if aug.type in ("filter", "adversarial_filter"):
        # At `input`, a gain in dB is a shift of the normalized log-mel by dB / σ, σ the scaler's per-bin std.
        log_std = None
        if "input" in aug.locations:
            scalers = [m for m in model.modules() if isinstance(m, Scaler)]
            if not scalers:
                raise ValueError("a filter at `input` needs the model's log-mel scaler (its per-bin std in dB)")
            log_std = scalers[0].std
        return transforms.Filter(aug, log_std)
    if aug.type in ("reverb", "adversarial_reverb"):
        return transforms.Reverb(aug)
    if aug.type == "frequency_shift":
        return transforms.FrequencyShift(aug)
    return transforms.Mask(aug)


def divergence_gradient(model: nn.Module, mel: Tensor, ref: Pair) -> transforms.Gradient:
    """∇ MSE[ref, model(mel, perturb)] w.r.t. the leaves `perturb` creates: the adversarial transforms' search
    pass, with the same rules as the direction passes (no buffer changes, no gradient to the parameters)."""

    def gradient(perturb: Perturb, leaves: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.enable_grad(), frozen_buffers(model):
            loss = mse(ref, model(mel, perturb))
            return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))

    return gradient


def time_shift(aug: TimeShiftAugmentation, pooling: list[tuple[int, int]]) -> tuple[Perturb, int]:
    """One location and one shift k (output frames, ±1…±max_frames) per step; at the location, a roll by k times
    the pooling still ahead of it (4·k input frames at mel or input with dcase20's pooling), so that the shift is
    exactly k frames on the output grid. Returns the perturbation and k."""
    where = aug.locations[int(torch.randint(len(aug.locations), ()))]
    k = int(torch.randint(-aug.max_frames, aug.max_frames, ()))
    k = k + 1 if k >= 0 else k
    grid = transforms.point_grid(where, pooling)

    def perturb(point: str, h: Tensor) -> Tensor:
        return torch.roll(h, k * grid.time_after, dims=grid.time_axis)

    return Perturbation(frozenset({where}), perturb), k


# ------------------------------------------------------------------------------------- entry point


def consistency_views(
    aug: Augmentation,
    student: nn.Module,
    teacher: nn.Module | None,
    clean: Pair,
    mel: Tensor,
    same_draws: SameDraws | None = None,
    update_batchnorm: bool = False,
    frames: Tensor | None = None,
) -> tuple[Pair, Pair]:
    """The two predictions whose MSE is the consistency loss of one training step.

    `clean` = (strong, weak) is the student's prediction on `mel` (the linear mel batch), graph attached; under
    Mean Teacher the perturbed prediction comes from `teacher`, otherwise from the student (whose BatchNorm
    running statistics it leaves alone unless `update_batchnorm`). `same_draws` recorded the clean pass, for VAT's
    deterministic direction search (None: independent dropout masks in each probe). `frames` (B,) counts each
    clip's real input frames (statistics of a clip leave its padding out).
    Returns `(clean_view, perturbed_view)`: `clean_view` is `clean` (for mixup, the same mix of clean predictions,
    graph kept) and `perturbed_view` the perturbed prediction, the perturbation itself detached; the caller's
    `sedaug.train.consistency_loss` forms their MSE.
    For `time_shift` (an equivariance) both strong views are sliced to the frames the shift keeps, so that frame t
    of the clean view meets frame t + k of the perturbed one (sedaug.transforms.time_shift_views).
    """
    model = teacher if teacher is not None else student

    def perturbed(perturb: Perturb) -> Pair:
        keep = teacher is not None or update_batchnorm
        with nullcontext() if keep else frozen_buffers(student):
            return model(mel, perturb)

    if aug.type == "noise":
        return clean, perturbed(noise(aug, frames))
    if aug.type == "adversarial":
        ref = (clean[0].detach(), clean[1].detach())
        # Under Mean Teacher the divergence of the teacher's pass from the student's reference is maximised.
        return clean, perturbed(shift(adversarial_directions(aug, model, ref, mel), aug.epsilon, aug.epsilon_mode))
    if aug.type == "vat":
        ref = (clean[0].detach(), clean[1].detach())
        # d is the student's own worst case (French eq. 11); only the loss's perturbed pass uses the teacher.
        directions = vat_directions(aug, student, ref, mel, same_draws)
        return clean, perturbed(shift(directions, aug.epsilon, aug.epsilon_mode))
    if aug.type == "mixup":
        lam = float(torch.distributions.Beta(aug.alpha, aug.alpha).sample())
        perm = torch.randperm(mel.shape[0], device=mel.device)
        # Manifold mixup: with several locations, one is drawn uniformly per step.
        where = aug.locations[int(torch.randint(len(aug.locations), ()))]
        target = (mix(clean[0], lam, perm), mix(clean[1], lam, perm))
        return target, perturbed(Perturbation(frozenset({where}), lambda point, h: mix(h, lam, perm)))
    if aug.type == "time_shift":
        # An equivariance: the strong target moves with the input; the frames rolled in are out of the loss.
        perturb, k = time_shift(aug, transforms.model_pooling(model))
        return transforms.time_shift_views(clean, perturbed(perturb), k)
    if aug.type in ("filter", "reverb", "frequency_shift", "mask"):
        pooling = transforms.model_pooling(model)
        return clean, perturbed(transforms.fixed(_transform(aug, model), aug.locations, pooling))
    if aug.type in ("adversarial_filter", "adversarial_reverb"):
        ref = (clean[0].detach(), clean[1].detach())
        pooling = transforms.model_pooling(model)
        transform = _transform(aug, model)
        # As `adversarial`: under Mean Teacher the teacher's divergence from the student's reference is maximised.
        params = transforms.search(
            transform, aug.locations, pooling, divergence_gradient(model, mel, ref), aug.steps, aug.step_size
        )
        return clean, perturbed(transforms.fixed(transform, aug.locations, pooling, params))
    raise ValueError(f"augmentation {aug.type!r} has no consistency views")
