"""The compiled gated-block kernel against the eager PyTorch path it replaces: same draws, same numbers."""

import copy

import pytest
import torch

from sedaug import kernels
from sedaug.model import GatedBlock
from sedaug.recipe import ModelConfig


def test_the_kernel_builds_on_this_machine(monkeypatch, tmp_path):
    """Built from source into an empty cache, as on a fresh machine. Every machine sedaug targets has a C compiler;
    without the kernel the other tests here would compare the eager path with itself."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernels.library.cache_clear()
    try:
        assert kernels.library() is not None
        assert len(list((tmp_path / "sedaug").glob("kernels-*.so"))) == 1
    finally:
        kernels.library.cache_clear()  # the next caller loads the one in the real cache
    assert kernels.library() is not None


def run_block(block: GatedBlock, x: torch.Tensor, upstream: torch.Tensor | None, fused: bool, monkeypatch):
    """Output, input gradient, parameter gradients and BN buffers of a copy of `block`, fused or eager."""
    block = copy.deepcopy(block)
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(kernels, "library", lambda: None)
        x = x.clone().requires_grad_(upstream is not None)
        torch.manual_seed(7)
        out = block(x)
        assert block._fused(block.conv(x)) == fused
        if upstream is None:
            return [out], []
        out.backward(upstream)
    grads = [x.grad] + [p.grad for p in block.parameters()]
    return [out.detach(), *grads], [block.bn.running_mean, block.bn.running_var, block.bn.num_batches_tracked]


@pytest.mark.parametrize(
    "channels, size, pool, dropout, mode",
    [
        (16, (20, 16), (2, 2), 0.5, "train"),  # a specialized channel count, as in dcase20's first block
        (12, (9, 14), (2, 3), 0.5, "train"),  # generic channels (not a multiple of 8); pooling drops rows and columns
        (8, (10, 12), (1, 4), 0.0, "train"),  # no dropout
        (16, (20, 16), (2, 2), 0.5, "eval"),  # running statistics, no dropout
        (12, (9, 14), (2, 3), 0.5, "teacher"),  # train mode without a graph, as the EMA teacher runs
    ],
)
def test_fused_block_equals_the_eager_block(channels, size, pool, dropout, mode, monkeypatch):
    torch.manual_seed(0)
    block = GatedBlock(3, channels, 3, pool, ModelConfig(dropout=dropout, batchnorm_momentum=0.3))
    block.to(memory_format=torch.channels_last).train(mode != "eval")
    with torch.no_grad():  # a BN scale that drives the gate into both tails of the sigmoid (|x| up to ~50)
        block.bn.weight.uniform_(0.5, 20)
        block.bn.bias.uniform_(-3, 3)
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        block.linear.weight.normal_(0, 0.5)
    x = torch.randn(4, 3, *size).contiguous(memory_format=torch.channels_last)
    out_shape = (4, channels, size[0] // pool[0], size[1] // pool[1])
    upstream = None if mode == "teacher" else torch.randn(out_shape)
    if mode == "teacher":
        with torch.no_grad():
            fused, eager = (run_block(block, x, None, f, monkeypatch) for f in (True, False))
    else:
        fused, eager = (run_block(block, x, upstream, f, monkeypatch) for f in (True, False))
    assert fused[0][0].shape == out_shape and fused[0][0].is_contiguous(memory_format=torch.channels_last)
    # Float32 sums in another order: relative to the run's largest value (conv.bias's gradient is 0 up to rounding).
    scale = max(t.abs().max().item() for t in eager[0])
    for got, expected in zip(fused[0] + fused[1], eager[0] + eager[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * scale)


def test_fused_crnn_step_equals_the_eager_step(monkeypatch):
    """The full-size CRNN: one forward and backward with and without the kernel (all seven blocks use it)."""
    from sedaug.model import CRNN

    torch.manual_seed(0)
    model = CRNN(ModelConfig(init="pytorch")).train()  # dcase20's N(0, 0.01) heads leave gradients at rounding level
    mel = torch.rand(2, 628, 128) ** 4 * 10
    assert [block._fused(torch.empty(1, block.conv.out_channels, 2, 2).contiguous(memory_format=torch.channels_last))
            for block in model.cnn] == [True] * 7

    def step(fused: bool):
        net = copy.deepcopy(model)
        with monkeypatch.context() as m:
            if not fused:
                m.setattr(kernels, "library", lambda: None)
            torch.manual_seed(1)
            strong, weak = net(mel)
            (strong.square().mean() + weak.mean()).backward()
        # conv.bias gradients are 0 up to rounding (BatchNorm's batch statistics remove a per-channel constant)
        grads = [p.grad for name, p in net.named_parameters() if not name.endswith("conv.bias")]
        return [strong.detach(), weak.detach(), *grads]

    fused, eager = step(True), step(False)
    scale = max(t.abs().max().item() for t in eager[2:])  # small gradients (the attention bias's) cancel in float32
    for got, expected in zip(fused, eager, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5 * scale)


def test_a_failed_build_warns_and_leaves_the_eager_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    kernels.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="did not build"):
            assert kernels.library() is None
        block = GatedBlock(1, 8, 3, (2, 2), ModelConfig()).to(memory_format=torch.channels_last)
        x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
        assert not block._fused(block.conv(x))
        assert block(x).shape == (2, 8, 4, 4)
        assert not list(tmp_path.rglob("*.so"))
    finally:
        kernels.library.cache_clear()  # the next caller builds or loads the real one again


@pytest.mark.parametrize("batch, steps, inputs, hidden, layers", [(5, 9, 4, 32, 2), (3, 11, 6, 8, 1)])
def test_kernel_gru_matches_nn_gru_forward_and_gradients(batch, steps, inputs, hidden, layers):
    """The C recurrences (hidden 32: the blocked products; 8: the generic ones) against PyTorch's GRU, in float32."""
    from sedaug.gru import _KernelLayer, bidirectional_gru

    torch.manual_seed(0)
    gru = torch.nn.GRU(inputs, hidden, layers, batch_first=True, bidirectional=True)
    x = torch.randn(batch, steps, inputs, requires_grad=True)
    upstream = torch.randn(batch, steps, 2 * hidden)
    params = [x, *gru.parameters()]
    calls = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_KernelLayer, "apply", lambda *a, apply=_KernelLayer.apply: calls.append(1) or apply(*a))
        got = bidirectional_gru(x, gru)
    assert len(calls) == layers
    expected = gru(x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(torch.autograd.grad(got, params, upstream), torch.autograd.grad(expected, params, upstream),
                    strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
