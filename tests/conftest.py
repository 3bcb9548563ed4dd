"""Shared test fixtures.

Model fixtures:
- `tiny_model`: the tiny CRNN's ModelConfig (two gated blocks pooling time 4x like the full model, one GRU layer).
- `tiny_model_overrides`: `--set` overrides that give a recipe the tiny CRNN (two GRU layers, the default).
- `random_mels`: `random_mels(batch, seed=0)`, a batch of linear mels (B, 628, 128) with a wide dynamic range.

Data fixtures (sedaug.data):
- `tiny_desed`: a tiny synthetic DESED (16 kHz), generated and prepared once per session (manifest inside it).
- `tiny_features`: the mel feature store of `tiny_desed`, extracted once per session.
- `real_layout`: a hand-made DESED tree with the real data's quirks (44.1 kHz stereo, a missing file, a short clip,
  a clip without events, a same-class overlap), fresh for each test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sedaug.deps import binary_mismatch

if (problem := binary_mismatch()) is not None:  # one line, before an import deep in torchaudio fails
    pytest.exit(f"error: {problem}", returncode=1)

import torch  # noqa: E402

# A developer's RAY_ADDRESS (a `ray job`'s environment) would send every local sweep test to that cluster: the tests
# that need it set it.
os.environ.pop("RAY_ADDRESS", None)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: one process per core, so one thread each (and the
    # processes a test starts): two threads each on a 2-core CPU wait on each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from sedaug.data.extract import extract_mels  # noqa: E402
from sedaug.data.synthetic import generate_synthetic  # noqa: E402
from sedaug.model import Perturbation  # noqa: E402
from sedaug.recipe import ModelConfig  # noqa: E402


def pytest_runtest_setup(item):
    """SEDAUG_TESTS_DEADLINE (a Unix time; benchmarks/gpu_check.sh's stage limit, less a margin): no test starts
    after it, and pytest ends. A SIGINT from `timeout` cannot end a test inside `train`, whose own Ctrl-C handler
    makes it that test's failure after the current step, pytest going on towards the SIGKILL."""
    deadline = os.environ.get("SEDAUG_TESTS_DEADLINE")
    if deadline and time.time() > float(deadline):
        item.session.shouldstop = "SEDAUG_TESTS_DEADLINE passed"
        pytest.skip("not run: SEDAUG_TESTS_DEADLINE passed (its stage's time limit)")


def pytest_runtest_logreport(report):
    """SEDAUG_TESTS_LOG (a file; benchmarks/gpu_check.sh's): each test's outcome, a JSON line as it ends, so that a
    pytest killed at its time limit keeps what finished (JUnit XML is written at the end, or not at all)."""
    log = os.environ.get("SEDAUG_TESTS_LOG")
    if not log or (report.when != "call" and report.passed):
        return
    if report.skipped:
        message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr or "")
    outcome = "error" if report.failed and report.when != "call" else report.outcome
    with open(log, "a") as f:
        f.write(json.dumps({"name": report.nodeid.split("::")[-1], "outcome": outcome, "message": message[:400]}) + "\n")


# The tiny CRNN: two gated blocks that pool time 4x (the output frame grid of the full model) and frequency to 1.
TINY_CRNN = {"cnn_filters": [4, 8], "cnn_pooling": [[4, 4], [1, 32]], "rnn_hidden": 8}


TINY_MODEL = ModelConfig(**TINY_CRNN, rnn_layers=1)
# Small enough to form VAT's Jacobian row by row: for 16 mel bins and 16 frames (4 output frames, time pooled 4x as
# the real grid), in PyTorch's init (dcase20's leaves every output near the base rate, where curvature is tiny).
SMALL = ModelConfig(cnn_filters=[4, 8], cnn_pooling=[(2, 4), (2, 4)], rnn_hidden=8, rnn_layers=1, init="pytorch")


def mels(batch: int, seed: int = 0) -> torch.Tensor:
    """A batch of positive, skewed linear mels (B, 628, 128), like real ones after |STFT| and the mel bank."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 628, 128, generator=g) ** 4 * 10


class Spy(torch.nn.Module):
    """Wraps a model; counts its passes and records, per point, h and the perturbation added there in its last
    perturbed pass (VAT's probe ξ·‖h‖·unit(d₀), an adversarial d). A perturbation that names its points stays one
    (model.Perturbation): a plain callable would run a compiled CNN block by block."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls, self.seen = model, 0, {}

    def forward(self, mel, perturb=None):
        self.calls += 1

        def spy(point, h):
            out = perturb(point, h)
            self.seen[point] = (h.detach(), (out - h).detach())
            return out

        if isinstance(perturb, Perturbation):
            return self.model(mel, Perturbation(perturb.points, spy))
        return self.model(mel, spy if perturb is not None else None)

    def added(self, point: str) -> torch.Tensor:
        return self.seen[point][1]


def per_clip_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One cosine per clip (unit() scales each clip's direction apart, and H is block-diagonal over clips), in
    float64 on the CPU; normalized first: H·d of a small network can be ~1e-9, below cosine_similarity's eps."""
    a, b = a.detach().cpu().double().flatten(1), b.detach().cpu().double().flatten(1)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return (a * b).sum(dim=1)


def run(*args):
    """`sedaug ARGS` in this process (a CliRunner result: stdout and stderr apart)."""
    from typer.testing import CliRunner

    from sedaug.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def checksums(*folders: Path) -> dict[str, str]:
    """sha256 of every file below the folders, hidden ones included (a leftover temporary file shows up);
    TensorBoard's event files aside (a refused command may open a writer)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.name.startswith("events.out")}


def one_line_error(result, *fragments: str, code: int = 1) -> str:
    """The single `error:` line of a refused CLI command (a CliRunner result, or a subprocess.CompletedProcess),
    alone on stderr, with exit status `code` and no traceback; each of `fragments` is in it."""
    if isinstance(result, subprocess.CompletedProcess):
        status, output = result.returncode, result.stdout + result.stderr
    else:
        status, output = result.exit_code, result.output
    assert status == code, output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def tiny_model() -> ModelConfig:
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model_overrides() -> list[str]:
    return [f"model.{key}={value}" for key, value in TINY_CRNN.items()]


@pytest.fixture(scope="session")
def random_mels():
    return mels


@pytest.fixture(scope="session")
def tiny_desed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("tiny") / "desed", size="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_features(tiny_desed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "features"
    extract_mels(tiny_desed, out, workers=2, progress=False)
    return out


@dataclass(frozen=True)
class RealLayout:
    """A small DESED tree in the real layout, and what a correct import must find in it."""

    root: Path
    counts: dict[str, int]
    missing: tuple[str, str]  # (split, filename) listed in a TSV but absent on disk
    short_clip: str  # validation, 4 s
    empty_clip: str  # validation, a TSV row with empty onset/offset/label
    overlap_clip: str  # validation, two overlapping Speech events
    weak_labels: dict[str, str]


REAL_SAMPLE_RATE = 44100


@pytest.fixture(scope="session")
def _real_layout_template(tmp_path_factory: pytest.TempPathFactory) -> RealLayout:
    return make_real_layout(tmp_path_factory.mktemp("real_layout") / "desed")


@pytest.fixture
def real_layout(_real_layout_template: RealLayout, tmp_path: Path) -> RealLayout:
    """A private copy (tests may damage it): copying is much faster than synthesizing 44.1 kHz stereo again."""
    root = shutil.copytree(_real_layout_template.root, tmp_path / "desed")
    return dataclasses.replace(_real_layout_template, root=root)


def make_real_layout(root: Path) -> RealLayout:
    weak = {"Yaaaaaaaaaaa_0.000_10.000.wav": "Dog,Speech", "Ybbbbbbbbbbb_30.000_40.000.wav": "Cat"}
    unlabeled = ["Ycccccccccc0_10.000_20.000.wav", "Ymissingmiss_0.000_10.000.wav"]
    short, empty, overlap = (
        "Yshortshort_0.000_4.000.wav",
        "Yemptyemptye_5.000_15.000.wav",
        "Yoverlapover_0.000_10.000.wav",
    )
    strong = {
        "synthetic": [
            ("0.wav", 0.5, 2.0, "Blender"),
            ("1.wav", 3.0, 9.5, "Frying"),
            ("2.wav", 0.0, 10.0, "Vacuum_cleaner"),
        ],
        "validation": [
            (short, 1.0, 3.5, "Dishes"),
            (empty, None, None, None),
            (overlap, 1.0, 4.0, "Speech"),
            (overlap, 3.0, 6.0, "Speech"),
            (overlap, 7.0, 8.0, "Dog"),
        ],
        "eval": [
            ("Yevalevaleva_0.000_10.000.wav", 2.0, 3.0, "Alarm_bell_ringing"),
            ("Yevalevalev2_0.000_10.000.wav", 4.0, 9.0, "Running_water"),
        ],
    }
    audio_dirs = {
        "weak": "audio/train/weak",
        "unlabeled": "audio/train/unlabel_in_domain",
        "synthetic": "audio/train/synthetic20/soundscapes",
        "validation": "audio/validation",
        "eval": "audio/eval/public",
    }
    metadata = {
        "weak": "metadata/train/weak.tsv",
        "unlabeled": "metadata/train/unlabel_in_domain.tsv",
        "synthetic": "metadata/train/synthetic20/soundscapes.tsv",
        "validation": "metadata/validation/validation.tsv",
        "eval": "metadata/eval/public.tsv",
    }
    for rel in [*audio_dirs.values(), *metadata.values()]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    for rel in audio_dirs.values():
        (root / rel).mkdir(parents=True, exist_ok=True)

    _write_tsv(
        root / metadata["weak"], pd.DataFrame({"filename": list(weak), "event_labels": list(weak.values())})
    )
    _write_tsv(root / metadata["unlabeled"], pd.DataFrame({"filename": unlabeled}))
    for split in ("synthetic", "validation", "eval"):
        rows = pd.DataFrame(strong[split], columns=["filename", "onset", "offset", "event_label"])
        _write_tsv(root / metadata[split], rows)

    files = {
        "weak": list(weak),
        "unlabeled": unlabeled[:1],  # the second one is the missing file
        "synthetic": [r[0] for r in strong["synthetic"]],
        "validation": list(dict.fromkeys(r[0] for r in strong["validation"])),
        "eval": [r[0] for r in strong["eval"]],
    }
    rng = np.random.default_rng(0)
    for split, names in files.items():
        for name in names:
            seconds = 4.0 if name == short else 10.0
            write_stereo_clip(root / audio_dirs[split] / name, seconds, rng)
    return RealLayout(
        root=root,
        counts={split: len(names) for split, names in files.items()},
        missing=("unlabeled", unlabeled[1]),
        short_clip=short,
        empty_clip=empty,
        overlap_clip=overlap,
        weak_labels=weak,
    )


def write_stereo_clip(path: Path, seconds: float, rng: np.random.Generator) -> None:
    """44.1 kHz stereo 16-bit noise plus a tone, different in each channel, like a real DESED clip."""
    t = np.arange(int(seconds * REAL_SAMPLE_RATE)) / REAL_SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t)
    noise = 0.05 * rng.standard_normal((2, t.size))
    audio = np.stack([tone + noise[0], 0.5 * tone + noise[1]], axis=1)
    sf.write(path, audio, REAL_SAMPLE_RATE, subtype="PCM_16")


def _write_tsv(path: Path, table: pd.DataFrame) -> None:
    table.to_csv(path, sep="\t", index=False)
