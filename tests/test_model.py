import copy

import numpy as np
import pytest
import torch
import torchaudio
from conftest import TINY_MODEL as TINY
from conftest import mels

from sedaug.data.mel import amplitude_to_db
from sedaug.model import CRNN, POINTS, Dropout, Perturbation, count_parameters
from sedaug.recipe import ModelConfig


def spread_heads(model: CRNN) -> CRNN:
    """dcase20's N(0, 0.01) head init makes every output ≈ 0.5; wider heads make the pooling visible."""
    with torch.no_grad():
        model.strong.weight.normal_(0, 3)
        model.attention.weight.normal_(0, 3)
    return model


def test_default_crnn_size_shapes_and_backward():
    torch.manual_seed(0)
    model = CRNN(ModelConfig())
    assert count_parameters(model) == 1_112_420
    strong, weak = model(mels(2))
    assert strong.shape == (2, 157, 10) and weak.shape == (2, 10)
    (strong.mean() + weak.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_tiny_crnn_shapes_dtype_and_config():
    model = CRNN(TINY)
    strong, weak = model(mels(3).half())
    assert strong.shape == (3, 157, 10) and weak.shape == (3, 10)
    assert strong.dtype == weak.dtype == torch.float32
    bn = model.cnn[0].bn
    assert bn.eps == 1e-3 and bn.momentum == 0.99
    assert CRNN(TINY.model_copy(update={"batchnorm_momentum": 0.01})).cnn[0].bn.momentum == 0.01


def test_init_dcase20_or_pytorch():
    torch.manual_seed(0)
    dcase = CRNN(ModelConfig())  # the default is dcase20's weights_init
    assert abs(dcase.cnn[3].linear.weight.std().item() - 0.01) < 1e-3 and (dcase.cnn[3].linear.bias == 0).all()
    assert (dcase.cnn[0].conv.bias == 0).all()
    # xavier_uniform with gain sqrt(2): std = sqrt(2) * sqrt(2 / (fan_in + fan_out)), fan = 64·9 and 128·9
    assert dcase.cnn[3].conv.weight.std().item() == pytest.approx(np.sqrt(2) * np.sqrt(2 / (576 + 1152)), rel=0.02)
    assert torch.allclose(dcase.rnn.weight_hh_l0.T @ dcase.rnn.weight_hh_l0, torch.eye(128), atol=1e-4)
    torch.manual_seed(0)
    torch_init = CRNN(ModelConfig(init="pytorch"))
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std = 1/sqrt(3 fan_in), fan_in 128
    assert torch_init.cnn[3].linear.weight.std().item() == pytest.approx(1 / np.sqrt(3 * 128), rel=0.02)
    assert (torch_init.cnn[0].conv.bias != 0).any()


@pytest.mark.parametrize("softmax", ["classes", "time"])
def test_weak_is_an_attention_average_of_strong(softmax):
    model = spread_heads(CRNN(TINY.model_copy(update={"attention_softmax": softmax}))).eval()
    with torch.no_grad():
        strong, weak = model(mels(2))
    assert (weak >= strong.amin(dim=1) - 1e-6).all() and (weak <= strong.amax(dim=1) + 1e-6).all()


def test_attention_softmax_axis_is_switchable():
    torch.manual_seed(0)
    a = spread_heads(CRNN(TINY)).eval()
    b = CRNN(TINY.model_copy(update={"attention_softmax": "time"})).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        strong_a, weak_a = a(mels(2))
        strong_b, weak_b = b(mels(2))
    assert torch.equal(strong_a, strong_b) and not torch.allclose(weak_a, weak_b)


def test_amplitude_to_db_per_clip_matches_torchaudio():
    x = torch.rand(3, 50, 20) ** 6
    x[1] *= 1e6  # a loud clip: a batch-wide top_db floor would clip the others differently
    x[2, :5] = 0.0
    expected = torchaudio.functional.amplitude_to_DB(x.unsqueeze(1), 20, 1e-5, 0, top_db=80).squeeze(1)
    torch.testing.assert_close(amplitude_to_db(x), expected)
    batchwide = torchaudio.functional.amplitude_to_DB(x, 20, 1e-5, 0, top_db=80)
    assert not torch.allclose(amplitude_to_db(x), batchwide)


def test_scaler_normalizes_the_log_mel():
    model = CRNN(TINY)
    mean, std = np.linspace(-50, -20, 128), np.linspace(5, 20, 128)
    model.set_scaler(mean, std)
    seen = {}

    def record(point, h):
        seen[point] = h
        return h

    x = mels(2)
    model(x, record)
    expected = (amplitude_to_db(x) - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
        std, dtype=torch.float32
    )
    torch.testing.assert_close(seen["input"], expected)
    assert "scaler.mean" in model.state_dict()


def test_the_default_crnn_is_dcase20s_and_takes_its_input_directly():
    model = CRNN().eval()
    assert count_parameters(model) == 1_112_420
    # The network's own buffers come first (order-based mapping of the baseline's weights); the scaler last.
    names = [name for name, _ in model.named_buffers()]
    assert names[0] == "cnn.0.bn.running_mean" and names[-2:] == ["scaler.mean", "scaler.std"]
    torch.manual_seed(0)
    model.set_scaler(torch.randn(128), torch.rand(128) + 0.5)
    x = mels(1)
    log_mel = model.scaler(amplitude_to_db(x))
    with torch.no_grad():
        for a, b in zip(model(x), model.forward_log_mel(log_mel), strict=True):
            torch.testing.assert_close(a, b)


def test_perturbation_points_in_order_with_shapes():
    model = CRNN(TINY)
    seen = []
    model(mels(2), lambda point, h: seen.append((point, tuple(h.shape))) or h)
    assert seen == [
        ("mel", (2, 628, 128)),
        ("input", (2, 628, 128)),
        ("cnn1", (2, 4, 157, 32)),  # (B, C, T, F) after the first block's (4, 4) pooling
        ("cnn2", (2, 8, 157, 1)),
        ("cnn", (2, 157, 8)),
        ("rnn", (2, 157, 16)),
    ]
    assert tuple(p for p, _ in seen) == tuple(p for p in POINTS if p not in ("cnn3", "cnn4", "cnn5", "cnn6", "cnn7"))


def test_the_dcase20_model_has_a_point_after_each_of_its_seven_blocks():
    seen = {}
    with torch.no_grad():
        CRNN().eval()(mels(1), lambda point, h: seen.setdefault(point, tuple(h.shape)) and h)
    assert tuple(seen) == POINTS
    assert [seen[f"cnn{i}"] for i in range(1, 8)] == [
        (1, 16, 314, 64), (1, 32, 157, 32), (1, 64, 157, 16), (1, 128, 157, 8), (1, 128, 157, 4), (1, 128, 157, 2),
        (1, 128, 157, 1),
    ]


@pytest.mark.parametrize("where", ["cnn1", "cnn2", "cnn", "rnn"])
def test_perturbing_a_point_changes_only_what_is_downstream(where):
    model = CRNN(TINY).eval()
    x = mels(2)

    def run(bump):
        seen = {}

        def perturb(point, h):
            seen[point] = h.detach().clone()
            return h + 0.5 if point == bump else h

        with torch.no_grad():
            out = model(x, perturb)
        return seen, out

    clean, (strong_c, weak_c) = run(None)
    bumped, (strong_p, weak_p) = run(where)
    upstream = POINTS[: POINTS.index(where) + 1]  # what the point itself receives is upstream too
    for point in clean:
        assert torch.equal(clean[point], bumped[point]) == (point in upstream), point
    assert not torch.equal(strong_c, strong_p) and not torch.equal(weak_c, weak_p)


@pytest.mark.parametrize("softmax, dim", [("classes", -1), ("time", 1)])
def test_heads_follow_the_dcase20_formulas(softmax, dim):
    model = spread_heads(CRNN(TINY.model_copy(update={"attention_softmax": softmax}))).eval()
    seen = {}

    def record(point, h):
        seen[point] = h
        return h

    with torch.no_grad():
        strong, weak = model(mels(2), record)
        h = seen["rnn"]
        att = torch.softmax(h @ model.attention.weight.T + model.attention.bias, dim=dim).clamp(1e-7, 1)
    torch.testing.assert_close(strong, torch.sigmoid(h @ model.strong.weight.T + model.strong.bias))
    torch.testing.assert_close(weak, (strong * att).sum(1) / att.sum(1))


def test_inference_path_equals_the_training_path_without_dropout():
    torch.manual_seed(0)
    model = CRNN(ModelConfig(cnn_filters=[4, 8], cnn_pooling=[(4, 4), (1, 32)], rnn_hidden=8)).eval()
    mel = torch.rand(2, 628, 128)
    with torch.no_grad():
        fast = model(mel)  # no graph
    slow = model(mel)  # autograd path
    assert all(torch.allclose(a, b.detach()) for a, b in zip(fast, slow, strict=True))


@pytest.mark.parametrize("dropout", [0.5, 0.3])
def test_teacher_path_equals_the_training_path_with_the_same_draws(dropout):
    """The EMA teacher runs in train mode with no graph: it must draw the same dropout masks as the student."""
    torch.manual_seed(0)
    model = CRNN(TINY.model_copy(update={"dropout": dropout})).train()
    mel = torch.rand(2, 628, 128)
    torch.manual_seed(1)
    with_graph = model(mel)
    torch.manual_seed(1)
    with torch.no_grad():
        no_graph = model(mel)
    assert all(torch.allclose(a.detach(), b) for a, b in zip(with_graph, no_graph, strict=True))


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_dropout_keeps_each_element_independently_with_probability_1_minus_p(p):
    """At p = 1/2 the mask is random bits, eight elements per byte: each element, whatever its place in its byte, is
    kept with probability 1 − p independently of its neighbour (a wrong shift would copy one bit to all eight), kept
    ones are scaled by 1/(1 − p), and so is their gradient. 105,000 elements: not a multiple of 8."""
    torch.manual_seed(0)
    x = (torch.rand(3, 5, 1000, 7) + 0.5).requires_grad_()
    out = Dropout(p).train()(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept / (1 - p))
    flat = kept.flatten().double()
    q = 1 - p
    for place in range(8):  # five standard deviations of a binomial proportion
        assert abs(flat[place::8].mean() - q) < 5 * (q * p / (flat.numel() / 8)) ** 0.5
    both = flat[:-1] * flat[1:]
    assert abs(both.mean() - q**2) < 5 * (q**2 * (1 - q**2) / both.numel()) ** 0.5
    assert Dropout(p).eval()(x) is x


@pytest.mark.parametrize("dropout", [0.5, 0.3])
def test_compiled_cnn_is_one_graph_and_drops_what_eager_drops(dropout):
    """`optim.compile` compiles the CNN as one frame. Compiled block by block, dynamo recompiles per block shape and
    falls back to eager past its limit of 8 (the full CRNN has 7 blocks, times student/teacher/eval variants).
    From one RNG state the compiled and the eager CNN drop the same elements: with inductor's own RNG they did not,
    nor with a draw per block (inductor ran this model's second block's draw first)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = ModelConfig(cnn_filters=[4, 8], cnn_pooling=[(2, 4), (2, 4)], rnn_hidden=8, rnn_layers=1, dropout=dropout)
    model = CRNN(cfg, n_mels=16).train()
    eager = copy.deepcopy(model)
    model.compile_cnn()
    x = torch.rand(2, 16, 16) ** 4 * 10
    torch.manual_seed(3)
    strong, weak = model(x)
    (strong.mean() + weak.mean()).backward()
    assert counters["frames"]["ok"] == 1, dict(counters["frames"])
    torch.manual_seed(3)
    with torch.no_grad():
        eager_strong, eager_weak = eager(x)
    torch.testing.assert_close(strong.detach(), eager_strong)
    torch.testing.assert_close(weak.detach(), eager_weak)


def test_a_compiled_cnn_runs_perturbations_at_its_blocks_without_recompiling():
    """The block points break the compiled graph instead of tracing the augmentation: a new perturbation (new
    closure, new values) each step compiles nothing new, and the result is the eager one."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = CRNN(TINY).eval()
    eager = CRNN(TINY).eval()
    eager.load_state_dict(model.state_dict())
    model.compile_cnn()
    x = mels(2)
    with torch.no_grad():
        model(x)
    for step in range(3):
        gain, where = 1.0 + step, ("cnn1", "cnn2")[step % 2]

        def perturb(point, h, gain=gain, where=where):
            return h * gain if point == where else h

        with torch.no_grad():
            torch.testing.assert_close(model(x, perturb), eager(x, perturb))
        if step == 1:
            compiled = dict(counters["frames"])
    assert dict(counters["frames"]) == compiled


def test_the_cnn_visits_its_block_points_only_for_a_perturbation_that_may_act_there():
    """A compiled CNN stays one graph unless a perturbation acts inside it (block by block, dynamo recompiles per
    block shape and falls back to eager past its limit: VAT's replayed masks would then be another graph's)."""
    model = CRNN(TINY).train()
    visits = []
    model.cnn.register_forward_pre_hook(lambda module, args: visits.append(args[1] is not None))
    x = mels(1)
    for perturb in (None, Perturbation(frozenset({"mel", "cnn", "rnn"}), lambda p, h: h + 1),
                    Perturbation(frozenset({"cnn2"}), lambda p, h: h + 1), lambda p, h: h):
        model(x, perturb)
    assert visits == [False, False, True, True]
