"""VAT measures curvature whatever the training passes run in (issue #21): eager or compiled, float32, bf16
autocast, or TF32 convolutions (emulated on CPU by rounding convolution inputs and weights to 10 mantissa bits).

The reference is exact: H·d₀ with H = 2/N_s J_sᵀJ_s + 2/N_w J_wᵀJ_w, the Hessian at r = 0 of MSE[f(x), f(x + r)]
for the network the clean pass ran (its dropout masks and batch statistics), J formed row by row in float32.
Before the fix, the same checks gave cosines of −0.5…0.3 under bf16 and 0.1…0.4 under emulated TF32, and the
compiled step raised KeyError: BatchNorm2d.
"""

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL, Spy, per_clip_cosine

from sedaug import augment
from sedaug.augment import SameDraws, vat_directions
from sedaug.data.batches import Batch
from sedaug.device import COMPILE_AFTER_STEPS, CONFIGS, CUDA_AUTO, StepConfig, resolve_step_config
from sedaug.errors import UserError
from sedaug.model import CRNN, Perturbation
from sedaug.recipe import Recipe, VATAugmentation
from sedaug.train import Training, training_step

VAT = VATAugmentation(type="vat", locations=["input"])  # the defaults: ξ = 1e-3 relative, one iteration
VAT_AT_A_BLOCK = VATAugmentation(type="vat", locations=["cnn1"])


def small_batch(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 16, 16, generator=g) ** 4 * 10


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """t rounded to TF32 (10 mantissa bits, to nearest), the gradient passed straight through."""
    bits = t.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32).view_as(t)
    return t + (rounded - t).detach()


@pytest.fixture
def emulated_tf32(monkeypatch):
    """Convolutions round their float32 inputs and weights to TF32 while cuDNN's allow_tf32 is on (its default),
    as cuDNN does on a GPU; sedaug is told that TF32 is in use."""
    conv2d = F.conv2d

    def rounding_conv2d(x, weight, *args, **kwargs):
        if torch.backends.cudnn.allow_tf32 and x.dtype == torch.float32:
            x, weight = tf32_round(x), tf32_round(weight)
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(F, "conv2d", rounding_conv2d)
    monkeypatch.setattr(augment, "tf32_allowed", lambda device: torch.backends.cudnn.allow_tf32)


def exact_curvature(model: CRNN, mel: torch.Tensor, same: SameDraws, d: torch.Tensor, point: str = "input"):
    """H·d for the replayed network, d at `point`, J row by row (one pass each: a compiled backward is not called
    twice)."""

    def outputs(r):
        with same.replaying():
            strong, weak = model(mel, Perturbation(frozenset({point}), lambda point, h: h + r))
        return strong.flatten(), weak.flatten()

    strong, weak = outputs(torch.zeros_like(d))
    rows = []
    for i in range(len(strong) + len(weak)):
        r = torch.zeros_like(d, requires_grad=True)
        rows.append(torch.autograd.grad(torch.cat(outputs(r))[i], r)[0].flatten().double())
    j_strong, j_weak = torch.stack(rows[: len(strong)]), torch.stack(rows[len(strong) :])
    hessian = 2 / len(strong) * j_strong.T @ j_strong + 2 / len(weak) * j_weak.T @ j_weak
    return (hessian @ d.flatten().double()).view(d.shape)


def vat_against_exact(model: CRNN, mel: torch.Tensor, bf16: bool, aug: VATAugmentation = VAT) -> list[float]:
    (point,) = aug.locations
    same = SameDraws(model, mel.device)
    spy = Spy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        with same.recording():
            clean = model(mel)
        d = vat_directions(aug, spy, tuple(y.detach() for y in clean), mel, same)[point]
    return per_clip_cosine(d, exact_curvature(model, mel, same, spy.added(point), point)).tolist()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "tf32"])
def test_vat_direction_is_the_exact_curvature_in_every_precision(precision, request):
    if precision == "tf32":
        request.getfixturevalue("emulated_tf32")
    torch.manual_seed(0)
    model = CRNN(SMALL, n_mels=16).train()
    cosines = vat_against_exact(model, small_batch(), bf16=precision == "bf16")
    assert min(cosines) >= 0.99, cosines


def test_a_replay_after_a_bf16_pass_runs_in_float32_and_leaves_the_precision_settings_alone(emulated_tf32):
    torch.manual_seed(0)
    model = CRNN(SMALL, n_mels=16).train()
    same = SameDraws(model, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with same.recording():
            clean = model(small_batch())
        assert clean[0].dtype == torch.bfloat16 and same.reduced
        with same.replaying():
            again = model(small_batch())
            assert not torch.is_autocast_enabled("cpu") and not torch.backends.cudnn.allow_tf32
        assert torch.is_autocast_enabled("cpu") and torch.backends.cudnn.allow_tf32
    assert again[0].dtype == torch.float32
    torch.testing.assert_close(again[0], clean[0].float(), rtol=0, atol=0.02)  # the same network, in bf16 rounding


@pytest.mark.parametrize("aug", [VAT, VAT_AT_A_BLOCK], ids=["input", "cnn1"])
@torch._dynamo.config.patch(recompile_limit=64)  # raised as build_training raises it
def test_compiled_vat_steps_run_and_find_the_exact_curvature(aug):
    """The compiled tests (compile time is what it is): a few compiled VAT training steps, then the direction on
    the compiled network's own masks against the exact H·d₀, in float32 and under bf16 autocast. At a block, the
    probes run the compiled CNN broken at each block point, the clean pass runs it whole: the masks match because
    the CNN draws them all in one call (sedaug.model.CNN.dropout_draws)."""
    torch._dynamo.reset()  # the graphs other tests compiled count against dynamo's recompile limit
    torch.manual_seed(0)
    recipe = Recipe(name="vat", model=SMALL, augmentation=aug, regularization={"type": "l2"})
    model = CRNN(SMALL, n_mels=16).train()
    model.compile_cnn()
    optimizer = torch.optim.Adam(model.parameters())
    g = torch.Generator().manual_seed(1)
    batch = Batch(small_batch(4), (torch.rand(1, 10, generator=g) < 0.5).float(),
                  (torch.rand(1, 4, 10, generator=g) < 0.5).float(), n_unlabeled=2, n_weak=1)
    for step in range(2):  # raised KeyError: BatchNorm2d at the first step before the fix
        training = Training(model, None, optimizer, StepConfig(compile="default", precision="fp32"))
        losses = training_step(recipe, training, batch, step, 1e-3, 2.0)
        assert all(torch.isfinite(loss) for loss in losses)
    for bf16 in (False, True):
        cosines = vat_against_exact(model, small_batch(seed=2), bf16, aug)
        assert min(cosines) >= 0.99, (bf16, cosines)


# ------------------------------------------------------------------------------ the step configuration


def test_auto_compiles_long_cpu_runs_only():
    cpu = torch.device("cpu")
    latent = Recipe(name="r", augmentation={"type": "vat", "locations": ["cnn", "rnn"]})
    assert resolve_step_config(latent, cpu, COMPILE_AFTER_STEPS) == StepConfig(compile="default", precision="fp32")
    assert not resolve_step_config(latent, cpu, COMPILE_AFTER_STEPS - 1).compile
    assert not resolve_step_config(latent, cpu, None).compile  # a run of unknown length is taken as short
    at_block = Recipe(name="r", augmentation={"type": "vat", "locations": ["cnn1"]})
    assert resolve_step_config(at_block, cpu, 10**6).compile  # its probes replay the masks compiled too (above)
    explicit = Recipe(name="r", optim={"compile": False, "precision": "bf16"})
    assert resolve_step_config(explicit, cpu, 10**6) == StepConfig(compile=None, precision="bf16")


def test_auto_on_cuda_is_cuda_auto_and_every_cuda_configuration_is_a_recipe_setting():
    """What gpu_check measures is what `sedaug train` runs: each of CONFIGS is reachable from optim.compile and
    optim.precision, and `auto` is CUDA_AUTO whatever the run's length (resolving needs no GPU)."""
    cuda = torch.device("cuda")
    assert resolve_step_config(Recipe(name="r"), cuda, 10**6) == CUDA_AUTO
    assert resolve_step_config(Recipe(name="r"), cuda, None) == CUDA_AUTO
    compile_value = {None: False, "default": True, "reduce-overhead": "reduce-overhead"}
    for name, config in CONFIGS.items():
        recipe = Recipe(name="r", optim={"compile": compile_value[config.compile], "precision": config.precision})
        assert resolve_step_config(recipe, cuda, None) == config, name
    assert CONFIGS["eager"].tf32 is False and CONFIGS["bf16"].tf32 and CONFIGS["compile"].tf32
    assert [str(c) for c in CONFIGS.values()] == [
        "eager, fp32", "eager, tf32", "eager, bf16", "compiled CNN, tf32", "compiled CNN, bf16",
        "compiled CNN (reduce-overhead), tf32"]


@pytest.mark.parametrize("optim", [{"precision": "tf32"}, {"compile": "reduce-overhead"}])
def test_cuda_only_settings_are_refused_on_a_cpu_in_one_line(optim):
    with pytest.raises(UserError, match=r"^r: optim\.\w+ [\w-]+ .*runs on CUDA only; on cpu use") as refused:
        resolve_step_config(Recipe(name="r", optim=optim), torch.device("cpu"), 10**6)
    assert "\n" not in str(refused.value)


def test_both_cuda_only_settings_are_named_at_once():
    recipe = Recipe(name="r", optim={"precision": "tf32", "compile": "reduce-overhead"})
    with pytest.raises(UserError) as refused:
        resolve_step_config(recipe, torch.device("cpu"), None)
    assert str(refused.value) == ("r: optim.precision tf32 (a GPU's number format) runs on CUDA only; on cpu use fp32 "
                                  "or bf16; r: optim.compile reduce-overhead (CUDA graphs) runs on CUDA only; on cpu "
                                  "use true, false or auto")
    assert resolve_step_config(recipe, torch.device("cuda"), None) == StepConfig("reduce-overhead", "tf32")


@pytest.mark.parametrize("name", ["eager", "tf32", "bf16"])
def test_a_training_step_runs_forward_and_backward_in_its_configuration_and_restores_the_flags(name):
    """TF32 is read as each kernel runs, so the backward pass must see the configuration's flags too (flags set on a
    CPU are only read; what a GPU does with them is test_cuda's)."""
    config = CONFIGS[name]
    torch.manual_seed(0)
    model = CRNN(SMALL, n_mels=16).train()
    seen = {}

    def flags(when: str, autocast: bool = False) -> None:  # the first pass's or gradient's
        now = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        seen.setdefault(when, (*now, torch.is_autocast_enabled("cpu")) if autocast else now)

    model.cnn.register_forward_hook(lambda *_: flags("forward", autocast=True))
    next(model.parameters()).register_hook(lambda grad: flags("backward"))
    g = torch.Generator().manual_seed(1)
    batch = Batch(small_batch(4), (torch.rand(1, 10, generator=g) < 0.5).float(),
                  (torch.rand(1, 4, 10, generator=g) < 0.5).float(), n_unlabeled=2, n_weak=1)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    recipe = Recipe(name="r", model=SMALL, regularization={"type": "l2"})
    training_step(recipe, Training(model, None, torch.optim.Adam(model.parameters()), config), batch, 0, 1e-3, 2.0)
    assert seen == {"forward": (config.tf32, config.tf32, config.bf16), "backward": (config.tf32, config.tf32)}
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_prediction_detection_and_features_run_in_strict_float32_whatever_the_caller_allows(monkeypatch):
    """Evaluation, detect and extract-mels give a GPU's numbers within float32 rounding of a CPU's: TF32 and autocast
    are off inside, whatever is on around them (a training step's flags, a user's)."""
    import numpy as np
    from conftest import TINY_MODEL

    import sedaug.data.mel
    from sedaug.detect import score_recordings
    from sedaug.device import allow_tf32
    from sedaug.evaluation.predict import predict

    def flags() -> tuple:
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.is_autocast_enabled("cpu")

    seen = []
    model = CRNN(TINY_MODEL)
    model.cnn.register_forward_hook(lambda *_: seen.append(("model", *flags())))
    real_transform = sedaug.data.mel._mel_transform

    def transform(device):
        mel = real_transform(device)
        return lambda wave: seen.append(("mel", *flags())) or mel(wave)

    monkeypatch.setattr(sedaug.data.mel, "_mel_transform", transform)
    with allow_tf32(True), torch.autocast("cpu", dtype=torch.bfloat16):
        predict(model, np.random.default_rng(0).random((3, 628, 128), dtype=np.float32), 2, "cpu")
        score_recordings(model, [np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32)], 4,
                         torch.device("cpu"))
        assert flags() == (True, True, True)  # restored
    assert seen == [("model", False, False, False)] * 2 + [("mel", False, False, False), ("model", False, False, False)]
