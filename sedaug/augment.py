"""Consistency augmentations (DESIGN §5): noise, first-order adversarial, VAT and mixup; tensors in, tensors out.

Each augmentation is a `perturb(point, h) -> h'` callable that the model applies at its named points
(`sedaug.model.POINTS`); `consistency_views` is the one entry point of the training loop.

Conventions:
- `unit(v)` normalizes per clip over all non-batch dims (max-abs first, then L2: stable for tiny gradients).
- `epsilon_mode: relative` (default) scales a unit direction by ε·‖h‖₂ per clip, h the tensor perturbed at that
  location, so one ε means the same at cnn, rnn or input. VAT's ξ follows the same mode (ξ·‖h‖₂ per clip when
  relative, ξ otherwise), so its finite-difference step is also the same fraction of h at every location;
  ξ = 1e-6 on a unit direction is the VAT authors' practice.
- Directions are computed with the model in train mode (dropout on, as the paper's eq. 6-9), against the clean
  prediction detached; those passes leave every buffer (BatchNorm running statistics) bit-identical and send no
  gradient to parameters (`torch.autograd.grad` w.r.t. the perturbation only).
- All draws (noise, VAT start, mixup λ, permutation and location) use torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sedaug.model import Perturb
from sedaug.recipe import AdversarialAugmentation, MixupAugmentation, NoiseAugmentation, VATAugmentation

Pair = tuple[Tensor, Tensor]
Augmentation = NoiseAugmentation | AdversarialAugmentation | VATAugmentation | MixupAugmentation


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


# ----------------------------------------------------------------------------------------------- noise


def noise(aug: NoiseAugmentation) -> Perturb:
    """Gaussian noise at each location; its std is a constant (detached), not something to differentiate."""

    def perturb(point: str, h: Tensor) -> Tensor:
        if point not in aug.locations:
            return h
        if point == "mel":
            # dcase20: per clip and mel bin, std = sqrt(mean_t(X²)·10^(−snr/10)) on the linear mel (B, T, F).
            std = (h.detach().square().mean(dim=1, keepdim=True) * 10 ** (-aug.snr_db / 10)).sqrt()
        else:
            std = aug.sigma * rms(h)
        return h + std * torch.randn_like(h)

    return perturb


# ------------------------------------------------------------------------------ adversarial and VAT


def _gradient(
    model: nn.Module, mel: Tensor, ref: Pair, locations: list[str], offset: Callable[[str, Tensor], Tensor]
) -> dict[str, Tensor]:
    """∇_r MSE[ref, model(mel) with h + r at each location] at r = offset(point, h): one forward, one backward."""
    leaves: dict[str, Tensor] = {}

    def perturb(point: str, h: Tensor) -> Tensor:
        if point not in locations:
            return h
        leaves[point] = offset(point, h).detach().requires_grad_()
        return h + leaves[point]

    # enable_grad: the caller may run an EMA teacher under no_grad, with parameters that need no gradient.
    with torch.enable_grad(), frozen_buffers(model):
        loss = mse(ref, model(mel, perturb))
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def adversarial_directions(
    aug: AdversarialAugmentation, model: nn.Module, ref: Pair, mel: Tensor
) -> dict[str, Tensor]:
    """First order (eq. 6-7): unit(∇_d MSE[ref, f(x + d)] at d = 0), per location."""
    grads = _gradient(model, mel, ref, aug.locations, lambda point, h: torch.zeros_like(h))
    return {point: unit(g) for point, g in grads.items()}


def vat_directions(aug: VATAugmentation, model: nn.Module, ref: Pair, mel: Tensor) -> dict[str, Tensor]:
    """VAT (eq. 8-9): d ~ N(0, I), then `iterations` times d ← ∇_r MSE[ref, f(x + r)] at r = ξ·unit(d)."""
    d: dict[str, Tensor] = {}

    def probe(point: str, h: Tensor) -> Tensor:
        if point not in d:
            d[point] = torch.randn_like(h)
        return aug.xi * _size(h, aug.epsilon_mode) * unit(d[point])

    for _ in range(aug.iterations):
        d.update(_gradient(model, mel, ref, aug.locations, probe))
    return {point: unit(g) for point, g in d.items()}


def shift(directions: dict[str, Tensor], epsilon: float, mode: str) -> Perturb:
    """h + ε·size(h)·direction at each location that has a direction."""

    def perturb(point: str, h: Tensor) -> Tensor:
        if point not in directions:
            return h
        return h + epsilon * _size(h, mode) * directions[point]

    return perturb


# ------------------------------------------------------------------------------------------- mixup


def mix(h: Tensor, lam: float, perm: Tensor) -> Tensor:
    return lam * h + (1.0 - lam) * h[perm]


# ------------------------------------------------------------------------------------- entry point


def consistency_views(aug: Augmentation, model: nn.Module, clean: Pair, mel: Tensor) -> tuple[Pair, Pair]:
    """The two predictions whose MSE is the consistency loss of one training step.

    `model` makes the perturbed prediction (the student for l2/none, the EMA teacher for mean_teacher), in train
    mode; `clean` = (strong, weak) is the student's prediction on `mel` (the linear mel batch), graph attached.
    Returns `(clean_view, perturbed_view)`: `clean_view` is `clean` (for mixup, the same mix of clean predictions,
    graph kept) and `perturbed_view = model(mel, perturb)` with the final perturbation detached. The caller forms
    `mse(clean_view, tuple(p.detach() for p in perturbed_view))` for mean_teacher and
    `mse(tuple(c.detach() for c in clean_view), perturbed_view)` for l2/none.
    """
    if aug.type == "noise":
        return clean, model(mel, noise(aug))
    if aug.type in ("adversarial", "vat"):
        ref = (clean[0].detach(), clean[1].detach())
        find = adversarial_directions if aug.type == "adversarial" else vat_directions
        return clean, model(mel, shift(find(aug, model, ref, mel), aug.epsilon, aug.epsilon_mode))
    if aug.type == "mixup":
        lam = float(torch.distributions.Beta(aug.alpha, aug.alpha).sample())
        perm = torch.randperm(mel.shape[0], device=mel.device)
        # Manifold mixup: with several locations, one is drawn uniformly per step.
        where = aug.locations[int(torch.randint(len(aug.locations), ()))]
        target = (mix(clean[0], lam, perm), mix(clean[1], lam, perm))
        return target, model(mel, lambda point, h: mix(h, lam, perm) if point == where else h)
    raise ValueError(f"augmentation {aug.type!r} has no consistency views")
