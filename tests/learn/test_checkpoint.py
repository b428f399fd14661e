"""A learner checkpoint as an image model: what export, inspect and design open."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from closedloop.config import CoreSpec, ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn import OnlineLearner
from closedloop.learn.learner import open_image_model
from closedloop.learn.readout import expected_counts
from closedloop.model.generate import random_images
from closedloop.model.inspect import inspect_model
from closedloop.stimuli import generate_pool


def test_a_learner_checkpoint_reads_as_its_posterior_mean_expected_counts(tmp_path, monkeypatch):
    """A session's checkpoints/learner-final.pt is an image model of the learner's posterior-mean
    expected counts, through its checkpointed core weights, so export and inspect read it."""
    monkeypatch.setenv("CLOSEDLOOP_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(core=CoreSpec(dims=8, grid=2), input_px=16, channels=(4, 4, 4, 4, 4), finetune_every=0)
    images = random_images(24, 16)
    learner = OnlineLearner(images, 3, spec, seed=1, background=False)
    rng = np.random.default_rng(0)
    learner.learn(np.arange(20), rng.poisson(3.0, (20, 3)))
    learner.sync()
    path = tmp_path / "learner-final.pt"
    learner.save(path)
    state = torch.load(path, weights_only=True)
    first = next(k for k, v in state["network"].items() if v.is_floating_point() and v.dim() == 4)
    state["network"][first] = state["network"][first] * 1.5  # as a fine-tuned core: weights unlike a fresh one's
    torch.save(state, path)

    loaded = open_image_model(path)
    assert (loaded.name, loaded.output_shape, loaded.input_px) == ("learner-final", (3,), 16)
    assert loaded.metadata["responses"] == 20 and loaded.metadata["units"] == 3
    resumed = OnlineLearner.from_checkpoint(path, images)  # the learner as the checkpoint left it
    mu, _ = resumed.latent()
    expected = expected_counts(mu, 0.0, resumed.posterior.noise[:, None]).T  # (B, units), no posterior variance
    out = loaded.predict(images)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    mu, _ = learner.latent()  # the saved learner's own core, before the weights were changed
    assert not np.allclose(out, expected_counts(mu, 0.0, learner.posterior.noise[:, None]).T, rtol=1e-3)
    pixels = torch.tensor(images[:2], dtype=torch.float32, requires_grad=True)
    loaded.torch_module()(pixels).sum().backward()
    assert pixels.grad.abs().sum() > 0
    inspection = inspect_model(loaded, pool=generate_pool({"dot": 6, "grating": 6}, 16, seed=0), output=2, steps=2)
    assert inspection.model_name == "learner-final" and inspection.synthesis is not None


def test_a_corrupt_learner_checkpoint_is_one_line(tmp_path):
    torch.save({"format": "closedloop-learner", "version": 1, "spec": "{}", "units": 2}, tmp_path / "bad.pt")
    with pytest.raises(ClosedLoopError, match="corrupt learner checkpoint") as error:
        open_image_model(tmp_path / "bad.pt")
    assert str(tmp_path / "bad.pt") in str(error.value) and "\n" not in str(error.value)
