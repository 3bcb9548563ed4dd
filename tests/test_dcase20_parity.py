"""The last deviations from dcase20 (issue #21), each against a hand computation: Mean Teacher's first EMA step and
its independently initialised teacher; the 30 dB noise left off a short clip's padding."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mels

from sedaug.augment import noise
from sedaug.data.batches import Batch
from sedaug.data.mel import amplitude_to_db
from sedaug.recipe import NoiseAugmentation, load_recipe
from sedaug.train import build_training, training_step

REPO = Path(__file__).parents[1]
SCALER = (np.zeros(128, dtype=np.float32), np.ones(128, dtype=np.float32))


def tiny_batch() -> Batch:
    """4 clips (2 unlabeled, 1 weak, 1 synthetic); the weak clip is 300 frames long, then dcase20's 0 dB padding."""
    x = mels(4)
    x[2, 300:] = 1.0
    g = torch.Generator().manual_seed(1)
    return Batch(x, (torch.rand(1, 10, generator=g) < 0.5).float(), (torch.rand(1, 157, 10, generator=g) < 0.5).float(),
                 n_unlabeled=2, n_weak=1, frames=torch.tensor([628, 628, 300, 628]))


def test_the_teacher_starts_from_its_own_init_and_takes_half_the_student_at_the_first_step(tiny_model_overrides):
    """dcase20 builds the teacher as a second CRNN with its own weights_init, and increments global_step before
    update_ema_variables: α = min(1 − 1/(global_step + 1), 0.999) is 1/2 after step 1, 2/3 after step 2."""
    recipe = load_recipe(REPO / "recipes" / "baseline.yaml", tiny_model_overrides)
    torch.manual_seed(0)
    training = build_training(recipe, SCALER, torch.device("cpu"))
    student, teacher = training.model, training.teacher
    assert all(not torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
               if t.dim() > 1)  # every weight matrix drawn apart (biases start at zero in both)
    batch = tiny_batch()
    expected = [p.clone() for p in teacher.parameters()]
    for step, alpha in enumerate([1 / 2, 2 / 3]):
        training_step(recipe, training, batch, step, 1e-3, 2.0)
        expected = [alpha * t + (1 - alpha) * s for t, s in zip(expected, student.parameters(), strict=True)]
        for got, want in zip(teacher.parameters(), expected, strict=True):
            torch.testing.assert_close(got, want)
    assert torch.equal(teacher.scaler.std, student.scaler.std)


def test_the_30db_noise_leaves_a_short_clips_padding_at_exactly_0db():
    """dcase20 adds the noise before padding: the pad frames of a short clip come out of the log at exactly 0 dB."""
    torch.manual_seed(0)
    batch = tiny_batch()
    out = noise(NoiseAugmentation(type="noise", locations=["mel"]), batch.frames)("mel", batch.mels)
    db = amplitude_to_db(out.abs())
    assert torch.equal(db[2, 300:], torch.zeros_like(db[2, 300:]))
    assert (out[2, :300] != batch.mels[2, :300]).float().mean() > 0.99  # the real frames are noised
    assert (out[0] != batch.mels[0]).float().mean() > 0.99  # and a full clip everywhere


def _bce(p: torch.Tensor, y: torch.Tensor) -> float:
    p, y = p.detach().double(), y.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def test_a_step_minimises_strong_and_weak_bce_plus_w_times_the_consistency_at_the_given_lr(tiny_model_overrides):
    """dcase20's loss, by hand: BCE of the strong output on the synthetic rows + BCE of the weak output on the weak
    rows (the unlabeled rows carry no label) + w(t)·L_const; Adam's first step moves each weight by about lr."""
    import copy

    recipe = load_recipe(REPO / "recipes" / "baseline.yaml", tiny_model_overrides)
    torch.manual_seed(0)
    start = build_training(recipe, SCALER, torch.device("cpu"))
    batch = tiny_batch()
    torch.manual_seed(5)
    strong, weak = copy.deepcopy(start.model)(batch.mels)  # the step's clean pass: the same dropout draws
    expected = _bce(strong[3:], batch.strong_labels) + _bce(weak[2:3], batch.weak_labels)
    for weight, lr in ((0.0, 1e-3), (3.0, 4e-3)):
        training = copy.deepcopy(start)
        torch.manual_seed(5)
        losses = training_step(recipe, training, batch, 0, lr, weight)
        assert float(losses.classification) == pytest.approx(expected, rel=1e-5)
        assert float(losses.consistency) > 0
        assert float(losses.total) == pytest.approx(expected + weight * float(losses.consistency), rel=1e-6)
        moved = torch.cat([(a - b).detach().abs().flatten() for a, b in
                           zip(training.model.parameters(), start.model.parameters(), strict=True)])
        assert float(moved.max()) == pytest.approx(lr, rel=1e-3)  # Adam's first step: lr · g / (|g| + eps)
