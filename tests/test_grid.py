"""The output frame grid is one fact: derived from the model's configuration, used by labels and post-processing,
and a recipe that pools time otherwise is refused."""

import numpy as np
import pandas as pd
import pytest
import torch

from sedaug.data.grid import FRAME_SECONDS, N_OUTPUT_FRAMES, PARAMS, TIME_POOLING, time_pooling
from sedaug.data.labels import frame_labels
from sedaug.errors import UserError
from sedaug.evaluation.postprocess import decode
from sedaug.model import CRNN
from sedaug.recipe import ModelConfig, validate_recipe


def test_the_grid_is_the_default_models():
    assert TIME_POOLING == time_pooling(ModelConfig()) == 4
    assert N_OUTPUT_FRAMES == 157 and FRAME_SECONDS == 0.06375 == PARAMS.hop * 4 / PARAMS.sample_rate


def test_models_output_the_grid(tiny_model, random_mels):
    for cfg in (ModelConfig(), tiny_model):
        with torch.no_grad():
            strong, _ = CRNN(cfg).eval()(random_mels(1))
        assert strong.shape[1] == N_OUTPUT_FRAMES


def test_labels_and_decoding_agree_on_the_grid():
    # An event on frames 20..39 becomes labels on those frames, and those labels decode back to the same seconds.
    onset, offset = 20 * FRAME_SECONDS, 40 * FRAME_SECONDS
    events = pd.DataFrame([("a.wav", onset, offset, "Dog")], columns=["filename", "onset", "offset", "event_label"])
    labels = frame_labels(events, ["a.wav"])
    assert np.flatnonzero(labels[0].any(axis=1)).tolist() == list(range(20, 40))
    decoded = decode(labels, ["a.wav"], median_window=1)
    assert decoded[["onset", "offset"]].values.tolist() == [[round(onset, 6), round(offset, 6)]]


@pytest.mark.parametrize("pooling", [[[2, 4], [4, 32]], [[1, 4], [2, 32]]])
def test_a_recipe_pooling_time_otherwise_is_refused(pooling):
    with pytest.raises(UserError) as error:
        validate_recipe({"name": "x", "model": {"cnn_filters": [4, 8], "cnn_pooling": pooling}}, "r.yaml")
    lines = str(error.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("r.yaml: model.cnn_pooling: "), lines
    validate_recipe({"name": "x", "model": {"cnn_filters": [4, 8], "cnn_pooling": [[2, 4], [2, 32]]}}, "r.yaml")
