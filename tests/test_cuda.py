"""`pytest -m cuda`: what a GPU must show before sedaug's GPU path is trusted (docs/speed.md).

The tests marked `cuda` run only where CUDA is present and are skipped, and counted as skipped, elsewhere. The
unmarked tests run the harness the CUDA tests stand on (the float64 fixed-mask reference, the resume script) on the
CPU in `make test`, so that the CUDA tests run the first time a GPU is at hand.

On CUDA, in each step configuration of sedaug.device's `CONFIGS` (the ones benchmarks/gpu_speed.py times: the fastest
that passes here is the one to make CUDA's default):
- VAT's direction with `SameDraws` is H·d0 of the network with the clean pass's dropout masks written in and its
  batch statistics held fixed, computed in float64 on the CPU: cosine >= 0.99 per clip, the fidelity issue's bound;
  and a replayed pass is that network's output.
- `--resume` continues bitwise with torch.use_deterministic_algorithms(True); with PyTorch's defaults (cuDNN may
  pick algorithms that sum in a varying order) within a stated tolerance.
- A bf16 step of every recipe is finite and its losses are within a stated tolerance of the float32 step's.
- `detect --device cuda` equals `--device cpu` within 1e-4 on frame scores; `extract-mels --device cuda` equals the
  CPU's store within float16 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, TINY_CRNN, Spy, per_clip_cosine
from torch import nn
from typer.testing import CliRunner

from sedaug.augment import SameDraws, vat_directions
from sedaug.cli import app
from sedaug.data.batches import ThreeStreams
from sedaug.data.store import FeatureStore
from sedaug.device import CONFIGS, StepConfig, allow_tf32
from sedaug.model import CRNN
from sedaug.recipe import ModelConfig, VATAugmentation, load_recipe
from sedaug.train import build_training, training_step

REPO = Path(__file__).parents[1]
# Table 1's recipes first: a stage cut short by its time limit has them.
RECIPES = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "recipes").glob("*/*.yaml"))
# SEDAUG_CUDA_TESTS_ON=cpu runs the CUDA tests' code on the CPU (slowly): a check of the tests themselves.
CUDA_DEVICE = torch.device(os.environ.get("SEDAUG_CUDA_TESTS_ON", "cuda"))
HAS_CUDA = CUDA_DEVICE.type == "cpu" or torch.cuda.is_available()


def cuda_only(test):
    """Selected by `pytest -m cuda`; skipped, with the reason, where there is no GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available on this machine")(test))


# The compiled combinations of optim.compile and optim.precision that the schema accepts on CUDA and CONFIGS leaves
# out (no candidate for the default): the last test proves them too, with what time the second stage has left.
OTHER_COMPILED = {"compile-fp32": StepConfig("default", "fp32"),
                  "compile-reduce-overhead-fp32": StepConfig("reduce-overhead", "fp32"),
                  "compile-reduce-overhead-bf16": StepConfig("reduce-overhead", "bf16")}


@contextmanager
def configured(name: str, nets: list[CRNN], device: torch.device):
    """Run in configuration `name` as a training step does: each net's CNN compiled in place, its precision."""
    config = {**CONFIGS, **OTHER_COMPILED}[name]
    if config.compile:
        torch._dynamo.reset()  # a fresh compile per test: no cache limit reached across tests, no eager fallback
    for net in nets if config.compile else ():
        net.compile_cnn(config.compile)
    with allow_tf32(config.tf32), torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
        yield


# ------------------------------------------------------------------------- VAT: the fixed-mask reference


class DropoutMasks:
    """The kept elements of each nn.Dropout in one pass, by module name, read by forward hooks. Registered before
    any compile, so that a compiled CNN runs them too (a compiled graph ignores hooks added after it was traced)."""

    def __init__(self, model: nn.Module):
        self.masks: dict[str, torch.Tensor] = {}
        self.active = False
        self.names = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
        for name in self.names:
            model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, out):
            if self.active:
                self.masks[name] = out != 0
        return hook

    @contextmanager
    def recording(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False
        # Copied at once: under CUDA graphs the next replay of the graph overwrites its outputs.
        self.masks = {name: mask.clone() for name, mask in self.masks.items()}
        missing = set(self.names) - set(self.masks)
        assert not missing, f"no dropout mask recorded for {sorted(missing)}: the compiled graph skipped the hooks"


def fixed_mask_curvature(model: CRNN, cfg: ModelConfig, mel: torch.Tensor, masks: dict, probes: dict):
    """H·r of MSE[f(x), f(x + r)] at r = 0, with r = `probes` (point -> tensor), and f(x): f is `model` in float64 (on
    its device) with the clean pass's dropout `masks` written in and BatchNorm normalizing with f's own batch
    statistics at r = 0, held fixed. There the MSE's residual is 0, so its Hessian is (2/N)·JᵀJ, the curvature VAT
    measures: J·r by a central difference (float64, steps of 1e-6 relative: exact to ~1e-10), then Jᵀ by one
    backward pass (no double backward, which cuDNN's GRU does not have)."""
    device = mel.device
    ref = CRNN(cfg, n_mels=mel.shape[-1]).to(device, torch.float64)
    ref.load_state_dict({k: v.detach().double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    ref.train()
    for name, mask in masks.items():
        dropout = ref.get_submodule(name)
        scale = mask.double() / (1 - dropout.p)
        dropout.forward = lambda x, draws=None, scale=scale: x * scale
    stats = {}
    batchnorms = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [bn.register_forward_pre_hook(
        lambda m, args: stats.__setitem__(m, torch.var_mean(args[0], dim=(0, 2, 3), correction=0)))
        for bn in batchnorms]
    mel = mel.detach().double()
    with torch.no_grad():
        ref(mel)
    for hook in hooks:
        hook.remove()
    for bn in batchnorms:
        bn.eval()
        bn.running_var, bn.running_mean = stats[bn]
    probes = {point: p.detach().double() for point, p in probes.items()}

    def f(r: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return ref(mel, lambda point, h: h + r[point] if point in r else h)

    t = 1e-3  # the probes are 1e-3 of their tensors' norms (VAT's relative ξ): steps of 1e-6
    with torch.no_grad():
        clean = f({})
        ahead, behind = f({p: t * v for p, v in probes.items()}), f({p: -t * v for p, v in probes.items()})
    jr = [(a - b) / (2 * t) for a, b in zip(ahead, behind, strict=True)]
    leaves = {point: torch.zeros_like(v, requires_grad=True) for point, v in probes.items()}
    # (2/N)·Jᵀ(J·r): the gradient at 0 of Σ (2/N)·⟨J·r, f(r)⟩ over the strong and weak outputs (MSE's mean over N).
    pull = sum((2 / o.numel()) * (j * o).sum() for j, o in zip(jr, f(leaves), strict=True))
    return dict(zip(leaves, torch.autograd.grad(pull, list(leaves.values())), strict=True)), clean


def vat_against_reference(config: str, locations: list[str], device: torch.device, cfg: ModelConfig, mel_shape,
                          dropout: str = "shared"):
    """VAT's directions in configuration `config`, the fixed-mask reference's H·d0 at the same probe, the replayed
    pass at d = 0 and the reference's clean output."""
    torch.manual_seed(0)
    model = CRNN(cfg, n_mels=mel_shape[-1]).to(device).train()
    masks = DropoutMasks(model)
    mel = (torch.rand(mel_shape, generator=torch.Generator().manual_seed(0)) ** 4 * 10).to(device)
    aug = VATAugmentation(type="vat", locations=locations, dropout=dropout)
    with configured(config, [model], device):
        torch.compiler.cudagraph_mark_step_begin()  # as training_step does (a no-op without CUDA graphs)
        same = SameDraws(model, device)
        with same.recording(), masks.recording():
            clean = model(mel)
        spy = Spy(model)
        directions = vat_directions(aug, spy, tuple(y.detach() for y in clean), mel,
                                    same if dropout == "shared" else None)
        with torch.no_grad(), same.replaying():
            replayed = tuple(y.float().clone() for y in model(mel))  # not memory a graph's next replay reuses
    exact, reference = fixed_mask_curvature(model, cfg, mel, masks.masks, {p: spy.added(p) for p in locations})
    return directions, exact, replayed, reference


# The full-size CRNN in PyTorch's init: dcase20's init leaves every output near the base rate, where a wrong mask
# moves the outputs too little to be seen.
FULL = ModelConfig(init="pytorch")


def check_vat(config, locations, device, cfg, mel_shape) -> None:
    directions, exact, replayed, reference = vat_against_reference(config, locations, device, cfg, mel_shape)
    # The replayed pass is the fixed-mask network (float32, or rounding of a reduced-precision clean pass's statistics).
    gap = max(float((r.double() - c).abs().max()) for r, c in zip(replayed, reference, strict=True))
    assert gap < (1e-4 if config == "eager" else 1e-2), f"{config}: the replayed pass is {gap:.2e} from the network " \
        "with the clean pass's masks and batch statistics"
    for point in locations:
        cos = per_clip_cosine(directions[point], exact[point])
        assert cos.min() >= 0.99, f"{config}, {point}: cos(VAT, H·d0) per clip {cos.tolist()}"


@pytest.mark.parametrize("locations", [["input"], ["cnn", "rnn"]], ids=["input", "latent"])
def test_the_fixed_mask_reference_on_cpu(locations):
    """The harness of the CUDA test, on the CPU: VAT agrees with the reference, and the check can fail (independent
    masks in each probe give the first-order direction instead)."""
    check_vat("eager", locations, torch.device("cpu"), SMALL, (2, 16, 16))
    directions, exact, _, _ = vat_against_reference("eager", locations, torch.device("cpu"), SMALL, (2, 16, 16),
                                                    dropout="independent")
    assert min(float(per_clip_cosine(directions[p], exact[p]).min()) for p in locations) < 0.9


@pytest.mark.parametrize("locations", [["input"], ["cnn", "rnn"]], ids=["input", "latent"])
def test_vat_at_the_training_batch_and_clip_length_on_cpu(locations):
    """A training batch (24 clips of 628 frames), the tiny CRNN. The replay normalized with statistics summed apart
    from the clean pass's BatchNorm kernel (var_mean), a rounding gap that grows with the batch, and VAT's finite
    difference measured it: cos 0.26 with H·d0 here, 0.86 on the full CRNN (at batch 2, 0.9999: what the tests had
    checked). The recorded statistics are now the kernel's own."""
    check_vat("eager", locations, torch.device("cpu"), ModelConfig(**TINY_CRNN, rnn_layers=1, init="pytorch"),
              (24, 628, 128))


@pytest.mark.parametrize("locations", [["input"], ["cnn", "rnn"]], ids=["input", "latent"])
@pytest.mark.parametrize("config", list(CONFIGS))
@cuda_only
def test_vat_direction_on_cuda_is_the_fixed_mask_curvature(config, locations):
    """A training batch: its compiled CNN is the one gpu_speed.py then times (inductor's cache serves it)."""
    check_vat(config, locations, CUDA_DEVICE, FULL, (24, 628, 128))


# ---------------------------------------------------------------------------------------------------- bf16
# This file's order is gpu_check.sh's: what decides the CUDA default first (after the VAT tests, a stage of their
# own), the proofs that decide nothing after.


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
@cuda_only
def test_a_bf16_step_is_finite_and_close_to_the_float32_step(recipe, tiny_features):
    """One step of the full-size CRNN (PyTorch's init, where the consistency loss is ~1e-3 rather than dcase20's
    base-rate plateau) from the same weights on the same batch. Measured on the CPU (bf16 autocast): bf16 moved
    L_class by <= 9e-4 and L_const by <= 5.2 % relative; the bounds leave room for CUDA's bf16 kernels and TF32
    beside them (the dropout masks are the same bits in either precision): L_class within 1 %, L_const within
    20 % + 2e-5 (the rounding of bf16 outputs near 0.5)."""
    store = FeatureStore(tiny_features)
    losses = {}
    for precision in ("fp32", "bf16"):
        r = load_recipe(recipe, [f"data.features={tiny_features}", f"optim.precision={precision}", "model.init=pytorch"])
        torch.manual_seed(0)
        training = build_training(r, store.scaler(), CUDA_DEVICE)  # fp32: strict float32; bf16: TF32 beside it
        batch = next(ThreeStreams(store, r.data.batch_size, r.seed, CUDA_DEVICE, resident=True).epoch(0))
        torch.manual_seed(1)
        losses[precision] = [float(x) for x in training_step(r, training, batch, 0, 1e-3, 2.0)]
        assert training.config.precision == precision
        assert all(torch.isfinite(p).all() for p in training.model.parameters()), f"{precision}: non-finite weights"
    (cls32, const32, _), (cls16, const16, _) = losses["fp32"], losses["bf16"]
    assert all(np.isfinite(losses["bf16"])), losses
    assert cls16 == pytest.approx(cls32, rel=1e-2), losses
    assert abs(const16 - const32) <= 0.2 * const32 + 2e-5, losses


# ------------------------------------------------------------ compiled: VAT at CNN blocks, CUDA graphs through train


@pytest.mark.parametrize("config", [name for name, c in CONFIGS.items() if c.compile])
@cuda_only
def test_compiled_vat_at_cnn_blocks_on_cuda_is_the_fixed_mask_curvature(config):
    """VAT probing blocks: the probes run the compiled CNN broken at each block point, the clean pass runs it whole.
    A small CRNN keeps the compile short. gpu_check runs it after the bf16 steps in its second test stage (this file's
    order: what decides the CUDA default first)."""
    check_vat(config, ["cnn1", "cnn2"], CUDA_DEVICE, SMALL, (2, 16, 16))


@cuda_only
def test_a_short_run_with_cuda_graphs_trains_and_validates(tmp_path, tiny_features):
    """`optim.compile: reduce-overhead` through `train`, as a user runs it: VAT's probes, Mean Teacher's no-grad
    teacher pass and validation's eval-mode passes (a smaller last batch) between CUDA-graphed steps, two epochs at
    full learning rate and consistency weight (no ramp-up: a wrong probe, teacher or update shows in the losses);
    each epoch's L_class within 1 % and L_const within 5 % of the eager TF32 run's, and no graph skipped (gpu_report
    requires this test for that configuration). On the CPU (SEDAUG_CUDA_TESTS_ON=cpu) the plain compiled CNN stands
    in for it."""
    from torch._dynamo.utils import counters

    from sedaug.train import train

    compiled = "reduce-overhead" if CUDA_DEVICE.type == "cuda" else "true"
    precision = "tf32" if CUDA_DEVICE.type == "cuda" else "fp32"
    rows = {}
    for name, compile_ in (("eager", "false"), ("graphs", compiled)):
        recipe = load_recipe(REPO / "recipes" / "vat_input_mt.yaml", [
            *(f"model.{k}={v}" for k, v in TINY_CRNN.items()), f"data.features={tiny_features}", "data.batch_size=4",
            "optim.max_steps_per_epoch=3", "optim.epochs=2", f"optim.compile={compile_}",
            f"optim.precision={precision}", "optim.rampup_epochs=0", "consistency.rampup_epochs=0",
            "model.init=pytorch"])
        torch._dynamo.reset()
        counters.clear()
        train(recipe, tmp_path / name, device=CUDA_DEVICE.type, progress=False)
        rows[name] = metrics(tmp_path / name)
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])  # graphs ran, none fell back
    for eager, graphs in zip(rows["eager"], rows["graphs"], strict=True):
        assert np.isfinite([graphs["loss_class"], graphs["loss_const"]]).all(), rows
        assert graphs["loss_class"] == pytest.approx(eager["loss_class"], rel=1e-2), rows
        assert graphs["loss_const"] == pytest.approx(eager["loss_const"], rel=5e-2, abs=1e-6), rows
    assert json.loads((tmp_path / "graphs" / "env.json").read_text())["step"]["compile"] == (
        "reduce-overhead" if CUDA_DEVICE.type == "cuda" else "default")


# ------------------------------------------------------------------------------------------------- resume

# Run in a fresh process: CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts, and deterministic algorithms
# are a process-wide switch. Prints the deterministic-algorithm warnings seen (ops without a deterministic kernel).
RESUME_SCRIPT = """
import json, sys, warnings
from pathlib import Path
import torch
from sedaug.recipe import load_recipe
from sedaug.train import train

recipe, device, deterministic, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3] == "1", Path(sys.argv[4]), json.loads(sys.argv[5])
if deterministic:
    torch.use_deterministic_algorithms(True, warn_only=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    load = lambda epochs: load_recipe(Path(recipe), [*overrides, f"optim.epochs={epochs}"])
    train(load(2), out / "straight", device=device, progress=False)
    train(load(1), out / "resumed", device=device, progress=False)
    train(load(2), out / "resumed", resume=True, device=device, progress=False)
print(json.dumps(sorted({str(w.message) for w in caught if "determinis" in str(w.message)})))
"""


def resume_twice(recipe: str, device: str, deterministic: bool, out: Path, features: Path) -> tuple[dict, dict, list]:
    overrides = [*(f"model.{k}={v}" for k, v in TINY_CRNN.items()), f"data.features={features}", "data.batch_size=4",
                 "optim.max_steps_per_epoch=2"]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    if device == "cpu":  # one thread: beside pytest's, two OpenMP threads on a loaded 2-core CPU wait on each other
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(REPO / "recipes" / f"{recipe}.yaml"), device,
                           "1" if deterministic else "0", str(out), json.dumps(overrides)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    warned = json.loads(done.stdout.strip().splitlines()[-1])

    def weights(run: str) -> dict:
        return torch.load(out / run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]

    return weights("straight"), weights("resumed"), warned


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_resume_script_on_cpu(tmp_path, tiny_features):
    straight, resumed, _ = resume_twice("vat_latent", "cpu", True, tmp_path, tiny_features)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "resumed")


@pytest.mark.parametrize("recipe", ["baseline", "vat_latent"])
@cuda_only
def test_resume_on_cuda_is_bitwise_with_deterministic_algorithms(recipe, tmp_path, tiny_features):
    straight, resumed, warned = resume_twice(recipe, CUDA_DEVICE.type, True, tmp_path, tiny_features)
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differ, f"resumed weights differ at {differ}; ops without a deterministic CUDA kernel: {warned}"
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "resumed")


@cuda_only
def test_resume_on_cuda_with_pytorch_defaults_is_within_tolerance(tmp_path, tiny_features):
    """Without deterministic algorithms cuDNN may sum a gradient in another order (~1e-7 relative). Adam's first
    steps are ±lr whatever a gradient's size, so an entry whose gradient is at that noise level can move by up to
    lr per step the other way: all weights within 2·lr·steps, and all but 1 % within 1e-5."""
    straight, resumed, _ = resume_twice("vat_latent", CUDA_DEVICE.type, False, tmp_path, tiny_features)
    diff = torch.cat([(straight[k].double() - resumed[k].double()).abs().flatten() for k in straight
                      if straight[k].is_floating_point()])
    assert float(diff.max()) <= 2 * 1e-3 * 4
    assert float((diff > 1e-5).double().mean()) <= 0.01
    for a, b in zip(metrics(tmp_path / "straight"), metrics(tmp_path / "resumed"), strict=True):
        assert a["loss_total"] == pytest.approx(b["loss_total"], rel=1e-3)


# ------------------------------------------------------------------------------------------ detect, extract


@cuda_only
def test_detect_on_cuda_equals_the_cpu(tiny_desed, tiny_features, tmp_path):
    recipe = load_recipe(REPO / "recipes" / "none.yaml", [
        f"data.features={tiny_features}", "data.batch_size=4", "optim.max_steps_per_epoch=1", "optim.epochs=1",
        "model.init=pytorch"])
    from sedaug.train import train

    train(recipe, tmp_path / "run", device="cpu", progress=False)
    audio = tiny_desed / "audio" / "eval" / "public"
    for folder, device in (("cpu", "cpu"), ("cuda", CUDA_DEVICE.type)):
        result = CliRunner().invoke(app, ["detect", str(tmp_path / "run"), str(audio), "--out",
                                          str(tmp_path / folder / "detections.tsv"), "--scores",
                                          str(tmp_path / folder / "scores"), "--device", device])
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "cpu" / "scores").iterdir())
    assert names and names == sorted(p.name for p in (tmp_path / "cuda" / "scores").iterdir())
    for name in names:
        cpu, cuda = (pd.read_csv(tmp_path / d / "scores" / name, sep="\t") for d in ("cpu", "cuda"))
        gap = np.abs(cpu.to_numpy(float) - cuda.to_numpy(float)).max()
        assert gap <= 1e-4, f"{name}: frame scores differ by {gap:.2e}"


@pytest.mark.parametrize("source", ["synthetic16k", "stereo44k"])
@cuda_only
def test_extract_mels_on_cuda_equals_the_cpu(source, request, tmp_path):
    """Also through the resampler (a convolution, which cuDNN may run in TF32) on 44.1 kHz stereo clips."""
    if source == "synthetic16k":
        data, cpu_store = request.getfixturevalue("tiny_desed"), request.getfixturevalue("tiny_features")
    else:
        from sedaug.data.desed import prepare_desed

        data, cpu_store = tmp_path / "prepared", tmp_path / "cpu"
        prepare_desed(request.getfixturevalue("real_layout").root, data, progress=False)
        result = CliRunner().invoke(app, ["extract-mels", "--data", str(data), "--out", str(cpu_store), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["extract-mels", "--data", str(data), "--out", str(tmp_path / "cuda"),
                                      "--device", CUDA_DEVICE.type])
    assert result.exit_code == 0, result.output
    stores = sorted(cpu_store.glob("*/mels.npy"))
    assert stores
    for mels in stores:
        cpu = np.load(mels).astype(np.float32)
        cuda = np.load(tmp_path / "cuda" / mels.parent.name / "mels.npy").astype(np.float32)
        # Within float16 rounding: one float16 step at the larger of the two values.
        step = np.spacing(np.maximum(np.abs(cpu), np.abs(cuda)).astype(np.float16)).astype(np.float32)
        excess = np.abs(cpu - cuda) - step
        assert excess.max() <= 0, f"{mels.parent.name}: {int((excess > 0).sum())} values beyond float16 rounding"
    cpu, cuda = np.load(cpu_store / "scaler.npz"), np.load(tmp_path / "cuda" / "scaler.npz")
    for key in cpu.files:
        np.testing.assert_allclose(cuda[key], cpu[key], rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("config", list(OTHER_COMPILED))
@cuda_only
def test_every_other_compiled_combination_is_the_fixed_mask_curvature_too(config):
    """Last in the file: no default is chosen from these, but the schema accepts them (compile: true with fp32; CUDA
    graphs in fp32 or bf16)."""
    check_vat(config, ["cnn1", "cnn2"], CUDA_DEVICE, SMALL, (2, 16, 16))
