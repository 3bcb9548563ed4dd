"""The audio transforms (sedaug/transforms.py) on small hand-computed tensors, and their consistency views."""

import math

import pytest
import torch
from conftest import TINY_MODEL as TINY
from conftest import mels

from sedaug.augment import consistency_views, divergence_gradient, mse
from sedaug.model import CRNN, amplitude_to_db
from sedaug.recipe import (
    AdversarialFilterAugmentation,
    AdversarialReverbAugmentation,
    FilterAugmentation,
    FrequencyShiftAugmentation,
    MaskAugmentation,
    ModelConfig,
    ReverbAugmentation,
    TimeShiftAugmentation,
)
from sedaug.transforms import (
    INPUT_FRAME_SECONDS,
    Filter,
    FrequencyShift,
    Mask,
    Reverb,
    apply_gain,
    apply_masks,
    band_edges,
    band_weights,
    decay_kernel,
    fixed,
    interval_mask,
    model_pooling,
    on_grid,
    point_grid,
    search,
    shift_along,
    smear,
    time_shift_views,
)

# Four blocks, so that cnn2 has 16 frequency rows (of 8 mel bins) and time at the output rate.
FOUR = ModelConfig(cnn_filters=[4, 4, 4, 4], cnn_pooling=[(4, 4), (1, 2), (1, 2), (1, 2)], rnn_hidden=8, rnn_layers=1)
DCASE20 = ModelConfig().cnn_pooling


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


class Recorder(torch.nn.Module):
    """Wraps a model; records, per point, the tensor it received and what the perturbation returned (last pass)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, {}

    def forward(self, mel, perturb=None):
        def record(point, h):
            out = perturb(point, h)
            self.seen[point] = (h.detach(), out.detach())
            return out

        return self.model(mel, record if perturb is not None else None)


# ------------------------------------------------------------------------------------------- points


def test_point_grids_of_the_dcase20_model():
    mel, cnn1, cnn2, cnn6, rnn = (point_grid(p, DCASE20) for p in ("mel", "cnn1", "cnn2", "cnn6", "rnn"))
    assert (mel.time_axis, mel.freq_axis, mel.time_before, mel.time_after, mel.freq_before) == (1, -1, 1, 4, 1)
    assert (cnn1.time_axis, cnn1.freq_axis, cnn1.time_before, cnn1.time_after, cnn1.freq_before) == (2, -1, 2, 2, 2)
    assert (cnn2.time_before, cnn2.time_after, cnn2.freq_before) == (4, 1, 4)
    assert cnn6.freq_before == 64 and 128 // cnn6.freq_before == 2
    assert (rnn.time_axis, rnn.freq_axis, rnn.time_before, rnn.time_after) == (1, None, 4, 1)
    assert model_pooling(CRNN(TINY)) == [(4, 4), (1, 32)]
    assert on_grid(6, 4) == 1 and on_grid(16, 4) == 4 and on_grid(3, 8) == 1


# -------------------------------------------------------------------------------------------- filter


def test_band_weights_give_the_step_and_linear_gain_curves():
    edges = torch.tensor([0, 2, 6])
    step = torch.tensor([[-6.0, 3.0]]) @ band_weights(edges, 6, "step").T
    torch.testing.assert_close(step, torch.tensor([[-6.0, -6.0, 3.0, 3.0, 3.0, 3.0]]))
    # Linear: FilterAugment's linspace from the band's first bin (gain i) to its last (gain i + 1).
    linear = torch.tensor([[0.0, 6.0, 12.0]]) @ band_weights(edges, 6, "linear").T
    torch.testing.assert_close(linear, torch.tensor([[0.0, 6.0, 6.0, 8.0, 10.0, 12.0]]))


def test_band_edges_cover_the_axis_with_the_minimum_width():
    torch.manual_seed(0)
    for _ in range(50):
        edges = band_edges(32, 4, 6)
        assert edges[0] == 0 and edges[-1] == 32 and len(edges) == 5
        assert (edges.diff() >= 6).all()
    # More bands than rows, or bands that cannot all be that wide: the band count and width shrink to fit.
    assert band_edges(2, 5, 6).tolist() == [0, 1, 2]
    assert (band_edges(8, 3, 6).diff() >= 2).all()


def test_gain_multiplies_the_linear_mel_and_cnn_blocks_and_shifts_the_normalized_log_mel():
    curve = torch.tensor([[20.0, 0.0, -20.0], [6.0, 6.0, 6.0]])  # dB per bin, per clip
    mel = torch.ones(2, 4, 3)
    out = apply_gain(mel, curve, "mel", point_grid("mel", DCASE20))
    torch.testing.assert_close(out[0], torch.tensor([10.0, 1.0, 0.1]).expand(4, 3))
    torch.testing.assert_close(out[1], torch.full((4, 3), 10 ** (6 / 20)))
    block = torch.ones(2, 5, 4, 3)  # (B, C, T, F): the gain runs along F
    out = apply_gain(block, curve, "cnn1", point_grid("cnn1", DCASE20))
    torch.testing.assert_close(out[0], torch.tensor([10.0, 1.0, 0.1]).expand(5, 4, 3))
    std = torch.tensor([10.0, 20.0, 5.0])
    out = apply_gain(torch.zeros(2, 4, 3), curve, "input", point_grid("input", DCASE20), std)
    torch.testing.assert_close(out[0], torch.tensor([2.0, 0.0, -4.0]).expand(4, 3))


def test_the_same_gains_at_mel_and_at_input_give_the_same_network_input():
    # Within 80 dB of the clip's maximum (no floor), g dB on the linear mel is g / σ on the normalized log-mel.
    torch.manual_seed(0)
    model = CRNN(TINY).eval()
    model.set_scaler(torch.full((128,), -10.0), torch.linspace(5.0, 20.0, 128))
    x = 1.0 + 9.0 * torch.rand(2, 628, 128)
    aug = FilterAugmentation(type="filter", locations=["mel"])
    seen = {}
    for where in ("mel", "input"):
        transform = Filter(aug, model.scaler.std)
        torch.manual_seed(1)  # the same band split and gains
        perturb = fixed(transform, [where], model_pooling(model))
        recorder = Recorder(model)
        with torch.no_grad():
            recorder(x, perturb)
        seen[where] = recorder.seen["input"][1]
    torch.testing.assert_close(seen["mel"], seen["input"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(seen["mel"], model.scaler(amplitude_to_db(x)))


def test_random_filter_gains_stay_in_their_range():
    torch.manual_seed(0)
    aug = FilterAugmentation(type="filter", locations=["cnn1"], gain_db=(-3.0, 2.0), shape="step")
    h = torch.rand(8, 4, 157, 32)
    params = Filter(aug, None).draw("cnn1", h, point_grid("cnn1", TINY.cnn_pooling))
    assert params["search"].shape[0] == 8 and 3 <= params["search"].shape[1] <= 5
    assert params["search"].min() >= -3.0 and params["search"].max() <= 2.0
    assert params["weights"].sum(dim=1).eq(1).all()  # step: every row in exactly one band


# --------------------------------------------------------------------------------------------- reverb


def test_decay_kernel_by_hand():
    # T60 such that a = 0.5 per frame: 10^(-3 dt / T60) = 0.5.
    t60 = torch.tensor([3 * INPUT_FRAME_SECONDS / math.log10(2)])
    torch.testing.assert_close(decay_kernel(t60, 3, INPUT_FRAME_SECONDS), torch.tensor([[1.0, 0.5, 0.25]]) / 1.75)


def test_smear_is_a_causal_convolution_along_time():
    kernel = torch.tensor([[1.0, 0.5, 0.25], [1.0, 0.0, 0.0]]) / torch.tensor([[1.75], [1.0]])
    x = torch.tensor([[[1.0], [0.0], [0.0]], [[0.0], [2.0], [0.0]]])  # (B, T, F = 1)
    out = smear(x, kernel, axis=1)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([1.0, 0.5, 0.25]) / 1.75)
    torch.testing.assert_close(out[1, :, 0], torch.tensor([0.0, 2.0, 0.0]))  # a unit kernel changes nothing
    block = torch.zeros(2, 3, 3, 2)  # (B, C, T, F): time is axis 2
    block[0, 1, 0, 1] = 1.75
    out = smear(block, kernel, axis=2)
    torch.testing.assert_close(out[0, 1, :, 1], torch.tensor([1.0, 0.5, 0.25]))
    assert out[0, 0].abs().max() < 1e-6 and out[0, 1, :, 0].abs().max() < 1e-6


def test_reverb_keeps_a_stationary_level_and_decays_in_seconds_at_every_point():
    torch.manual_seed(0)
    reverb = Reverb(ReverbAugmentation(type="reverb", locations=["mel"], decay_s=(0.5, 0.5)))
    mel_grid, cnn_grid = point_grid("mel", DCASE20), point_grid("cnn", DCASE20)
    steady = reverb.apply("mel", torch.ones(1, 628, 3), mel_grid, reverb.draw("mel", torch.ones(1, 628, 3), mel_grid))
    torch.testing.assert_close(steady[0, -100:], torch.ones(100, 3))
    # An impulse is 60 dB down after T60 = 0.5 s, in input frames at `mel` and in output frames at `cnn`.
    for point, grid, n in (("mel", mel_grid, 628), ("cnn", cnn_grid, 157)):
        impulse = torch.zeros(1, n, 1)
        impulse[0, 0] = 1.0
        out = reverb.apply(point, impulse, grid, {"search": torch.tensor([0.5])})[0, :, 0]
        frame_seconds = INPUT_FRAME_SECONDS * grid.time_before
        n = round(0.5 / frame_seconds)  # 31 frames at mel, 8 at cnn
        assert (out[n] / out[0]).item() == pytest.approx(10 ** (-3 * n * frame_seconds / 0.5), rel=1e-4)
        assert 10 ** -3.5 < (out[n] / out[0]).item() < 10 ** -2.5


# ------------------------------------------------------------------------------------------- shifts


def test_frequency_shift_by_hand():
    h = torch.arange(5.0).expand(2, 1, 5)  # (B, T = 1, F = 5)
    k = torch.tensor([2, -1])
    torch.testing.assert_close(shift_along(h, k, -1, "shift")[:, 0], torch.tensor([[0.0, 0, 0, 1, 2], [1, 2, 3, 4, 4]]))
    torch.testing.assert_close(shift_along(h, k, -1, "roll")[:, 0], torch.tensor([[3.0, 4, 0, 1, 2], [1, 2, 3, 4, 0]]))
    block = torch.arange(5.0).expand(2, 3, 4, 5)  # (B, C, T, F)
    out = shift_along(block, k, -1, "shift")
    assert torch.equal(out[0, 2, 3], torch.tensor([0.0, 0, 0, 1, 2])) and torch.equal(out[1, 0, 0], torch.tensor([1.0, 2, 3, 4, 4]))


def test_frequency_shift_rows_scale_with_the_pooling():
    torch.manual_seed(0)
    transform = FrequencyShift(FrequencyShiftAugmentation(type="frequency_shift", locations=["cnn2"], max_bins=8))
    ks = torch.cat([transform.draw("cnn2", torch.zeros(64, 1, 1, 32), point_grid("cnn2", DCASE20))["k"] for _ in range(20)])
    assert set(ks.tolist()) == {-2, -1, 0, 1, 2}  # 8 mel bins = 2 rows of 4 bins at cnn2
    ks = transform.draw("cnn6", torch.zeros(512, 1, 1, 2), point_grid("cnn6", DCASE20))["k"]
    assert set(ks.tolist()) == {-1, 0, 1}  # at least one row


def test_time_shift_views_shift_the_strong_target_and_drop_the_rolled_in_frames():
    clean = (torch.arange(6.0).view(1, 6, 1), torch.tensor([[7.0]]))
    perturbed = (torch.roll(clean[0], 2, dims=1), torch.tensor([[7.0]]))  # content 2 frames later
    (c, cw), (p, pw) = time_shift_views(clean, perturbed, 2)
    assert c.flatten().tolist() == [0, 1, 2, 3] and p.flatten().tolist() == [0, 1, 2, 3]
    assert cw.item() == pw.item() == 7.0  # the weak output unshifted
    (c, _), (p, _) = time_shift_views(clean, (torch.roll(clean[0], -1, dims=1), perturbed[1]), -1)
    assert c.flatten().tolist() == p.flatten().tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("where, rows_per_frame", [("input", 4), ("cnn1", 1), ("rnn", 1)])
def test_time_shift_rolls_by_k_output_frames_and_the_heads_are_equivariant(where, rows_per_frame):
    torch.manual_seed(0)
    recorder = Recorder(CRNN(TINY).eval())
    x = mels(2)
    with torch.no_grad():
        clean = recorder.model(x)
        aug = TimeShiftAugmentation(type="time_shift", locations=[where], max_frames=5)
        clean_view, perturbed_view = consistency_views(aug, recorder, None, clean, x)
    h, out = recorder.seen[where]
    axis = point_grid(where, TINY.cnn_pooling).time_axis
    k = next(k for k in [*range(-5, 0), *range(1, 6)] if torch.equal(out, torch.roll(h, k * rows_per_frame, axis)))
    assert clean_view[0].shape == perturbed_view[0].shape == (2, 157 - abs(k), 10)
    assert torch.equal(clean_view[1], clean[1])
    if where == "rnn":  # past the GRU the network is per frame (strong) and order-free (weak): exactly equivariant
        torch.testing.assert_close(clean_view, perturbed_view)


# --------------------------------------------------------------------------------------------- masks


def test_masks_of_known_extent():
    mask = interval_mask(torch.tensor([[1, 6], [0, 0]]), torch.tensor([[2, 1], [0, 3]]), 8)
    assert mask.int().tolist() == [[0, 1, 1, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    h = torch.ones(2, 8, 4)
    freq = torch.tensor([[False, True, False, False], [False, False, False, False]])
    out = apply_masks(h, point_grid("input", DCASE20), mask, freq)
    assert out[0].sum() == 5 * 3 and out[1].sum() == 5 * 4 and out[0, 0].tolist() == [1, 0, 1, 1]
    block = torch.ones(2, 3, 8, 4)  # (B, C, T, F)
    out = apply_masks(block, point_grid("cnn2", DCASE20), mask, freq)
    assert out[0, :, 1:3].abs().sum() == 0 and out[0, :, :, 1].abs().sum() == 0 and out[0].sum() == 3 * 5 * 3


def test_random_masks_respect_their_widths_on_each_grid():
    torch.manual_seed(0)
    transform = Mask(MaskAugmentation(type="mask", locations=["cnn2"], time_masks=1, time_width=40, freq_masks=1, freq_width=16))
    p = transform.draw("cnn2", torch.zeros(256, 1, 157, 32), point_grid("cnn2", DCASE20))
    time, freq = p["time"].sum(dim=1), p["freq"].sum(dim=1)
    assert time.max() == 10 and time.min() == 0  # 40 input frames = 10 rows of 4 frames at cnn2
    assert freq.max() == 4 and freq.min() == 0  # 16 mel bins = 4 rows of 4 bins


# ---------------------------------------------------------------------------------- adversarial search


@pytest.mark.parametrize("kind", ["filter", "reverb"])
def test_adversarial_parameters_increase_the_divergence_and_stay_in_bounds(kind):
    torch.manual_seed(0)
    model = CRNN(FOUR.model_copy(update={"init": "pytorch"})).eval()  # deterministic: the divergence is a function
    with torch.no_grad():  # wider heads than dcase20's N(0, 0.01): outputs away from 0.5 that the transform moves
        model.strong.weight.normal_(0, 3)
        model.attention.weight.normal_(0, 3)
    x = mels(2)
    with torch.no_grad():
        ref = model(x)
    if kind == "filter":
        aug = AdversarialFilterAugmentation(type="adversarial_filter", locations=["mel", "cnn2"], steps=3, step_size=0.25)
        transform = Filter(aug, None)
    else:
        # At cnn2: this model's divergence hardly depends on T60 at mel (within 0.5 % over the range).
        aug = AdversarialReverbAugmentation(type="adversarial_reverb", locations=["cnn2"], steps=3, step_size=0.25)
        transform = Reverb(aug)
    pooling = model_pooling(model)

    def divergence(params):
        with torch.no_grad():
            return mse(ref, model(x, fixed(transform, aug.locations, pooling, params))).item()

    random = []
    for seed in range(4):
        torch.manual_seed(seed)
        random.append(divergence({}))
    torch.manual_seed(0)  # the search starts from seed 0's random draw
    params = search(transform, aug.locations, pooling, divergence_gradient(model, x, ref), aug.steps, aug.step_size)
    lo, hi = transform.bounds
    for p in params.values():
        assert p["search"].min() >= lo and p["search"].max() <= hi and not p["search"].requires_grad
    # Above its own start (seed 0) and three other random draws.
    assert divergence(params) > (2 if kind == "filter" else 1.2) * max(random)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["adversarial_filter", "adversarial_reverb"])
def test_the_search_passes_leave_batchnorm_statistics_alone(kind):
    torch.manual_seed(0)
    model = CRNN(FOUR).train()
    x = mels(2)
    clean = model(x)
    before = bn_state(model)
    cls = AdversarialFilterAugmentation if kind == "adversarial_filter" else AdversarialReverbAugmentation
    aug = cls(type=kind, locations=["input", "cnn2"], steps=2)
    clean_view, perturbed = consistency_views(aug, model, None, clean, x)
    assert all(torch.equal(before[k], v) for k, v in bn_state(model).items())
    assert all(p.grad is None for p in model.parameters())
    assert clean_view is clean and perturbed[0].requires_grad
    model(x)  # a plain training pass does move them: the check above can fail
    assert not all(torch.equal(before[k], v) for k, v in bn_state(model).items())


@pytest.mark.parametrize("aug", [
    FilterAugmentation(type="filter", locations=["mel", "input", "cnn1", "cnn2"]),
    AdversarialFilterAugmentation(type="adversarial_filter", locations=["input", "cnn3"]),
    ReverbAugmentation(type="reverb", locations=["mel", "cnn2", "rnn"]),
    FrequencyShiftAugmentation(type="frequency_shift", locations=["input", "cnn2"], mode="roll"),
    TimeShiftAugmentation(type="time_shift", locations=["mel", "cnn2", "cnn"]),
    MaskAugmentation(type="mask", locations=["mel", "cnn4"]),
], ids=lambda a: a.type)
def test_views_on_the_crnn_are_finite_equal_in_shape_and_reproducible(aug):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = CRNN(FOUR)
        x = mels(2)
        clean = model(x)
        clean_view, perturbed = consistency_views(aug, model, None, clean, x)
        assert clean_view[0].shape == perturbed[0].shape and clean_view[1].shape == perturbed[1].shape
        assert torch.isfinite(perturbed[0]).all() and perturbed[0].requires_grad
        outs.append(perturbed[0].detach())
    assert torch.equal(outs[0], outs[1])
