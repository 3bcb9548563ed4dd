import numpy as np
import pytest
import torch
from conftest import TINY_MODEL as TINY
from conftest import Spy, mels
from torch import nn

from sedaug.augment import (
    SameDraws,
    adversarial_directions,
    consistency_views,
    mix,
    noise,
    unit,
    vat_directions,
)
from sedaug.model import CRNN
from sedaug.recipe import (
    AdversarialAugmentation,
    MixupAugmentation,
    ModelConfig,
    NoiseAugmentation,
    VATAugmentation,
)


class Linear(nn.Module):
    """f(x) = A x + b with the model's perturbation interface (one point, `input`)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)
        self.b = nn.Parameter(torch.ones(a.shape[0], dtype=a.dtype))

    def forward(self, x, perturb=None):
        if perturb is not None:
            x = perturb("input", x)
        y = x @ self.a.T + self.b
        return y.unsqueeze(1), y


def per_clip_norm(v):
    return v.flatten(1).norm(dim=1)


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# ------------------------------------------------------------------------------------ hand-computed


def test_unit_by_hand():
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-3e-30, 4e-30]])
    torch.testing.assert_close(unit(v), torch.tensor([[0.6, 0.8], [0.0, 0.0], [-0.6, 0.8]]))
    torch.testing.assert_close(per_clip_norm(unit(torch.randn(3, 5, 7))), torch.ones(3))


def test_mix_by_hand():
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = mix(h, 0.25, torch.tensor([2, 0, 1]))
    expected = torch.tensor([[0.25 + 3.75, 0.5 + 4.5], [0.75 + 0.75, 1.0 + 1.5], [1.25 + 2.25, 1.5 + 3.0]])
    torch.testing.assert_close(out, expected)


def test_mixup_views_agree_exactly_on_a_linear_model():
    # f(λx + (1−λ)x') = λf(x) + (1−λ)f(x') for an affine f: the target must pair each clip with the same partner.
    torch.manual_seed(0)
    model = Linear(torch.randn(4, 6))
    x = torch.randn(8, 6)
    clean = model(x)
    target, perturbed = consistency_views(
        MixupAugmentation(type="mixup", locations=["input"]), model, None, clean, x
    )
    torch.testing.assert_close(target[0], perturbed[0])
    torch.testing.assert_close(target[1], perturbed[1])
    assert not torch.allclose(target[1], clean[1])
    assert target[1].requires_grad


# ------------------------------------------------------------------------------------------- noise


def test_noise_at_mel_follows_the_dcase20_snr_formula():
    torch.manual_seed(0)
    x = torch.rand(2, 20000, 3) * torch.tensor([1.0, 10.0, 100.0])
    out = noise(NoiseAugmentation(type="noise", locations=["mel"], snr_db=20))("mel", x)
    expected = (x.square().mean(dim=1) * 10 ** (-20 / 10)).sqrt()
    torch.testing.assert_close((out - x).std(dim=1), expected, rtol=0.03, atol=0)


def test_noise_elsewhere_is_sigma_times_rms_and_only_where_asked():
    torch.manual_seed(0)
    h = torch.randn(3, 200, 50) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1) + 2.0
    perturb = noise(NoiseAugmentation(type="noise", locations=["cnn"], sigma=0.2))
    out = perturb("cnn", h)
    expected = 0.2 * h.square().mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close((out - h).flatten(1).std(dim=1), expected, rtol=0.03, atol=0)
    assert perturb("rnn", h) is h


def test_noise_views_on_the_crnn():
    torch.manual_seed(0)
    model = CRNN(TINY)
    x = mels(2)
    clean = model(x)
    aug = NoiseAugmentation(type="noise", locations=["mel"])
    clean_view, perturbed = consistency_views(aug, model, None, clean, x)
    assert clean_view is clean
    assert perturbed[0].shape == (2, 157, 10) and torch.isfinite(perturbed[0]).all()


# ------------------------------------------------------------------------------- adversarial and VAT


def test_vat_power_iteration_finds_the_top_right_singular_vector():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    a = u @ torch.diag(torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.1], dtype=torch.float64)) @ v[:, :6].T
    model = Linear(a)
    x = torch.randn(5, 12, dtype=torch.float64)
    ref = tuple(y.detach() for y in model(x))
    aug = VATAugmentation(type="vat", locations=["input"], iterations=10)
    rng = torch.get_rng_state()
    d = vat_directions(aug, model, ref, x, None)["input"]
    top = np.linalg.svd(a.detach().numpy())[2][0]
    cosine = np.abs(d.numpy() @ top) / np.linalg.norm(d.numpy(), axis=1)
    assert (cosine > 0.99).all(), cosine
    assert all(p.grad is None for p in model.parameters())
    # The same from an EMA teacher: parameters without gradient, called under no_grad.
    model.requires_grad_(False)
    torch.set_rng_state(rng)
    with torch.no_grad():
        assert torch.equal(vat_directions(aug, model, ref, x, None)["input"], d)


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_adversarial_perturbation_norm_per_clip(mode):
    torch.manual_seed(0)
    spy = Spy(CRNN(TINY).train())
    x = mels(3)
    clean = spy.model(x)
    aug = AdversarialAugmentation(
        type="adversarial", locations=["cnn", "rnn"], epsilon=0.3, epsilon_mode=mode
    )
    clean_view, perturbed = consistency_views(aug, spy, None, clean, x)
    assert spy.calls == 2  # one pass for the joint gradient at both locations, one perturbed pass
    assert clean_view is clean and perturbed[1].requires_grad
    for point in ("cnn", "rnn"):
        h, d = spy.seen[point]
        expected = 0.3 * per_clip_norm(h) if mode == "relative" else torch.full((3,), 0.3)
        torch.testing.assert_close(per_clip_norm(d), expected)
    assert "input" not in spy.seen  # the perturbation acts at cnn and rnn only


def test_adversarial_direction_needs_dropout_noise_and_stays_finite():
    torch.manual_seed(0)
    model = CRNN(TINY)
    x = mels(2)
    aug = AdversarialAugmentation(type="adversarial", locations=["input", "rnn"])
    model.train()
    d = adversarial_directions(aug, model, tuple(y.detach() for y in model(x)), x)
    torch.testing.assert_close(per_clip_norm(d["input"]), torch.ones(2))
    # Without dropout and with the same input, the gradient at d = 0 of MSE[f(x), f(x + d)] is exactly zero.
    model.eval()
    ref = tuple(y.detach() for y in model(x))  # as in training: the clean forward that records a graph
    d = adversarial_directions(aug, model, ref, x)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in d.values())


def test_vat_views_count_passes_and_are_reproducible():
    aug = VATAugmentation(type="vat", locations=["cnn", "rnn"], iterations=2)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        spy = Spy(CRNN(TINY))
        x = mels(2)
        clean = spy.model(x)
        _, perturbed = consistency_views(aug, spy, None, clean, x)
        assert spy.calls == 3
        torch.testing.assert_close(per_clip_norm(spy.seen["rnn"][1]), 0.1 * per_clip_norm(spy.seen["rnn"][0]))
        outs.append(perturbed[0].detach())
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("find", [adversarial_directions, vat_directions])
def test_computing_d_leaves_batchnorm_statistics_and_grads_untouched(find):
    torch.manual_seed(0)
    model = CRNN(TINY).train()
    x = mels(2)
    clean = model(x)
    before = bn_state(model)
    if find is adversarial_directions:
        aug = AdversarialAugmentation(type="adversarial", locations=["input", "cnn", "rnn"])
    else:
        aug = VATAugmentation(type="vat", locations=["input", "cnn", "rnn"], iterations=2)
    args = () if find is adversarial_directions else (None,)
    find(aug, model, tuple(y.detach() for y in clean), x, *args)
    after = bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    model(x)  # a plain training pass does move them: the check above can fail
    assert not all(torch.equal(before[k], v) for k, v in bn_state(model).items())


# ------------------------------------------------------------------------ VAT measures curvature


def _small_crnn_and_hessian(seed: int = 1):
    """A CRNN small enough to form the MSE's Hessian at d = 0 exactly: H = 2/N_s J_sᵀJ_s + 2/N_w J_wᵀJ_w, J the
    Jacobian of the replayed (same masks, same batch statistics) network w.r.t. a perturbation at `input`."""
    torch.manual_seed(seed)
    cfg = ModelConfig(cnn_filters=[4, 8], cnn_pooling=[(2, 4), (2, 4)], rnn_hidden=8, rnn_layers=1, init="pytorch")
    model = CRNN(cfg, n_mels=16).train()
    mel = torch.rand(1, 16, 16) ** 4 * 10
    same = SameDraws(model, torch.device("cpu"))
    with same.recording():
        clean = model(mel)

    def outputs(r):
        with same.replaying():
            strong, weak = model(mel, lambda point, h: h + r if point == "input" else h)
        return strong.flatten(), weak.flatten()

    j_strong, j_weak = (j.flatten(1).double() for j in torch.autograd.functional.jacobian(outputs, torch.zeros(1, 16, 16)))
    hessian = 2 / len(j_strong) * j_strong.T @ j_strong + 2 / len(j_weak) * j_weak.T @ j_weak
    return model, mel, tuple(y.detach() for y in clean), same, hessian


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def test_vat_power_iteration_on_the_crnn_finds_the_top_curvature_direction():
    model, mel, ref, same, hessian = _small_crnn_and_hessian(seed=2)  # seed 1's masks leave a gap of 0.63 only
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    assert eigenvalues[-2] < 0.5 * eigenvalues[-1]  # this network's gap: a few iterations converge
    top = eigenvectors[:, -1]
    aug = VATAugmentation(type="vat", locations=["input"], iterations=4)
    directions = []
    for start in (1, 2):
        torch.manual_seed(start)  # another random start
        directions.append(vat_directions(aug, model, ref, mel, same)["input"])
    assert abs(_cos(*directions)) > 0.9
    assert all(abs(_cos(d, top)) > 0.9 for d in directions), [_cos(d, top) for d in directions]
    first_order = adversarial_directions(AdversarialAugmentation(type="adversarial", locations=["input"]), model, ref, mel)
    assert abs(_cos(directions[0], first_order["input"])) < 0.5


@pytest.mark.parametrize("dropout", ["shared", "independent"])
def test_one_vat_iteration_follows_the_curvature_only_with_shared_masks(dropout):
    model, mel, ref, same, hessian = _small_crnn_and_hessian()
    spy = Spy(model)
    aug = VATAugmentation(type="vat", locations=["input"], dropout=dropout)  # the default single iteration
    torch.manual_seed(3)
    d = vat_directions(aug, spy, ref, mel, same if dropout == "shared" else None)["input"]
    start = spy.seen["input"][1]  # ξ·‖h‖·unit(d0), the probe of the one iteration
    curvature = (hessian @ start.flatten().double()).view_as(d)
    if dropout == "shared":
        assert _cos(d, curvature) > 0.9
    else:  # sedaug 0.1's reading: the dropout residual Jᵀ(f_B(x) − f_A(x)) dominates the curvature term
        assert abs(_cos(d, curvature)) < 0.5


def test_same_draws_replays_masks_and_batch_statistics_exactly():
    torch.manual_seed(0)
    model = CRNN(TINY).train()
    x = mels(2)
    same = SameDraws(model, torch.device("cpu"))
    with same.recording():
        clean = model(x)
    after = torch.get_rng_state()
    before = bn_state(model)
    with same.replaying():
        again = model(x)
    torch.testing.assert_close(again, clean, rtol=1e-5, atol=1e-6)  # the replayed pass is the clean pass
    assert torch.equal(torch.get_rng_state(), after)  # later draws are not shifted
    assert all(torch.equal(before[k], v) for k, v in bn_state(model).items())
    assert all(m.training for m in model.modules())
    assert not torch.allclose(model(x)[0], clean[0])  # an ordinary pass draws new masks: the check can fail


def test_a_recording_batchnorm_is_torchs_batchnorm():
    """Recording takes the statistics from the op that normalizes: the pass is nn.BatchNorm2d's, to the bit (its
    output, gradients, running statistics and count), and a replay is it to float32 rounding."""
    from sedaug.model import BatchNorm2d

    torch.manual_seed(0)
    x = (torch.randn(24, 8, 157, 32) * 0.5 + 3.0).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours, torchs = BatchNorm2d(8, eps=1e-3, momentum=0.99), torch.nn.BatchNorm2d(8, eps=1e-3, momentum=0.99)
    torch.nn.init.uniform_(ours.weight, 0.5, 1.5)
    torchs.load_state_dict(ours.state_dict())
    ours.record = True
    out, expected = ours(x), torchs(x)
    assert torch.equal(out, expected)
    grads = [torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [x, bn.weight, bn.bias])
             for y, bn in ((out, ours), (expected, torchs))]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), torchs.state_dict().values(), strict=True))
    ours.record, ours.replay = False, True
    torch.testing.assert_close(ours(x), out, rtol=0, atol=2e-6)


def test_vat_under_mean_teacher_probes_the_student_and_perturbs_the_teacher():
    torch.manual_seed(0)
    student, teacher = Spy(CRNN(TINY).train()), Spy(CRNN(TINY).train().requires_grad_(False))
    x = mels(2)
    clean = student.model(x)
    aug = VATAugmentation(type="vat", locations=["input"], iterations=2)
    consistency_views(aug, student, teacher, clean, x)
    assert (student.calls, teacher.calls) == (2, 1)  # eq. 11: d = argmax MSE[f(x), f(x+d)] on the student


@pytest.mark.parametrize("update", [False, True])
def test_the_students_perturbed_pass_leaves_batchnorm_statistics_to_the_clean_pass(update):
    torch.manual_seed(0)
    model = CRNN(TINY).train()
    x = mels(2)
    clean = model(x)
    after_clean = bn_state(model)
    aug = NoiseAugmentation(type="noise", locations=["input"], sigma=0.5)
    consistency_views(aug, model, None, clean, x, update_batchnorm=update)
    unchanged = all(torch.equal(after_clean[k], v) for k, v in bn_state(model).items())
    assert unchanged is not update


# ------------------------------------------------------------------------ at a CNN block (B, C, T, F)


@pytest.mark.parametrize("aug", [
    NoiseAugmentation(type="noise", locations=["cnn1"], sigma=0.2),
    AdversarialAugmentation(type="adversarial", locations=["cnn1", "rnn"], epsilon=0.3),
    VATAugmentation(type="vat", locations=["cnn1"], epsilon=0.3),
    MixupAugmentation(type="mixup", locations=["cnn1"]),
], ids=lambda a: a.type)
def test_the_table1_augmentations_act_at_a_cnn_block_per_clip(aug):
    """unit(), ε·‖h‖ and σ·RMS normalize over all non-batch dims, so they mean the same on a 4-D block output."""
    torch.manual_seed(0)
    spy = Spy(CRNN(TINY).train())
    x = mels(3)
    same = SameDraws(spy.model, x.device)
    with same.recording():
        clean = spy.model(x)
    clean_view, perturbed = consistency_views(aug, spy, None, clean, x, same)
    h, d = spy.seen["cnn1"]
    assert h.shape == (3, 4, 157, 32) and perturbed[0].shape == clean_view[0].shape == (3, 157, 10)
    if aug.type == "noise":
        torch.testing.assert_close(d.flatten(1).std(dim=1), 0.2 * h.flatten(1).square().mean(dim=1).sqrt(), rtol=0.05, atol=0)
    elif aug.type == "mixup":  # a convex combination of two clips' block outputs, elementwise between the extremes
        mixed = h + d
        assert (mixed >= h.amin(dim=0) - 1e-6).all() and (mixed <= h.amax(dim=0) + 1e-6).all()
    else:
        torch.testing.assert_close(per_clip_norm(d), 0.3 * per_clip_norm(h))


def test_noise_at_mel_takes_the_power_of_the_real_frames_only():
    """dcase20 pads a short clip with 0 dB frames (linear 1.0): the 30 dB noise's per-bin power leaves them out."""
    torch.manual_seed(0)
    x = torch.rand(2, 628, 4) * 10
    x[0, 300:] = 1.0  # clip 0: 300 real frames, then padding
    frames = torch.tensor([300, 628])
    out = noise(NoiseAugmentation(type="noise", locations=["mel"], snr_db=0), frames)("mel", x)
    # snr 0 dB: std = sqrt(mean_t(X²)) over the real frames; estimate it from the noise itself, per bin
    expected = torch.stack([x[0, :300].square().mean(dim=0).sqrt(), x[1].square().mean(dim=0).sqrt()])
    noise_std = torch.stack([(out - x)[0, :300].std(dim=0), (out - x)[1].std(dim=0)])
    # 300 draws a bin: a std estimate within 15 % (the padding's share would move it by ~30 %)
    torch.testing.assert_close(noise_std, expected, rtol=0.15, atol=0)
    padded_power = x[0].square().mean(dim=0).sqrt()
    assert (noise_std[0] - padded_power).abs().min() > 0.1 * padded_power.min()
    assert torch.equal(out[0, 300:], x[0, 300:])  # and the padding gets none (dcase20 noises before padding)
