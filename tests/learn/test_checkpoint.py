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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    """A valid learner checkpoint's contents (3 units, 8 dims, a compact core's network)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOSEDLOOP_CACHE", str(folder / "cache"))
        spec = ModelSpec(core=CoreSpec(dims=8, grid=2), input_px=16, channels=(4, 4, 4, 4, 4), finetune_every=0)
        learner = OnlineLearner(random_images(24, 16), 3, spec, seed=1, background=False)
        learner.learn(np.arange(10), np.random.default_rng(0).poisson(3.0, (10, 3)))
        learner.sync()
        learner.save(folder / "learner-final.pt")
    return torch.load(folder / "learner-final.pt", weights_only=True)


def _changed(state: dict, field: str, value: object) -> dict:
    """A copy of a checkpoint's contents with a dotted ``field`` set to ``value`` (removed: ``...``)."""
    state = {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}
    *parent, last = field.split(".", 1)  # a network's weight names hold dots of their own
    holder = state[parent[0]] if parent else state
    if value is ...:
        del holder[last]
    else:
        holder[last] = value
    return state


def _refused(path, match: str) -> None:
    """Every reader of a learner checkpoint refuses ``path`` in one line naming it and ``match``."""
    for read in (open_image_model, lambda p: OnlineLearner.from_checkpoint(p, random_images(24, 16))):
        with pytest.raises(ClosedLoopError) as error:
            read(path)
        message = str(error.value)
        assert str(path) in message and match in message and "\n" not in message, message


@pytest.mark.parametrize("field, value, named", [
    ("projection.mean", [], None), ("projection", 0, None), ("projection", {}, "projection.mean"),
    ("posterior.noise", "x", None), ("posterior.M", -1, None), ("posterior.ridge", [], None), ("posterior.S", -1, None),
    ("units", {}, None), ("seed", [], None), ("responses", {}, None), ("network", ..., None), ("spec", "{", None),
    ("spec", '{"members": "many"}', None), ("posterior.ridge", float("nan"), None), ("units", True, None),
    ("posterior.M", torch.zeros(10, 3), None), ("posterior.S", torch.zeros(9, 8), None),
    ("posterior.noise", torch.ones(4), None), ("projection.std", torch.ones(3), None),
    ("projection.components", torch.zeros(5, 8, dtype=torch.int64), None), ("units", 4, "posterior.M"),
    ("network", {"layers.layer0_conv.weight": 1.0}, None),
], ids=lambda value: f"tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value))
def test_a_learner_checkpoint_field_of_the_wrong_kind_is_named(field, value, named, checkpoint, tmp_path):
    """Each field is checked when the checkpoint is read: its type, and shapes that agree with the
    other fields' (``named``: the field a wrong value shows in, when not its own)."""
    path = tmp_path / "learner-final.pt"
    torch.save(_changed(checkpoint, field, value), path)
    _refused(path, f"corrupt learner checkpoint: field {named or field!r}")


@pytest.mark.parametrize("parent, name", [("projection", "mean"), ("posterior", "M"), ("posterior", "noise"),
                                          ("network", None)])
def test_a_learner_checkpoint_with_non_finite_values_is_refused(parent, name, checkpoint, tmp_path):
    """inf or NaN in any float tensor (a network weight: named as in the network's state dict)."""
    path = tmp_path / "learner-final.pt"
    name = name or next(k for k, v in checkpoint["network"].items() if v.is_floating_point())
    tensor = checkpoint[parent][name].clone()
    tensor.view(-1)[0] = float("nan")
    torch.save(_changed(checkpoint, f"{parent}.{name}", tensor), path)
    _refused(path, f"tensor {name if parent == 'network' else f'{parent}.{name}'!r} holds non-finite values")


def test_a_corrupt_learner_checkpoint_is_one_line(tmp_path):
    torch.save({"format": "closedloop-learner", "version": 1, "spec": "{}", "units": 2}, tmp_path / "bad.pt")
    with pytest.raises(ClosedLoopError, match="corrupt learner checkpoint") as error:
        open_image_model(tmp_path / "bad.pt")
    assert str(tmp_path / "bad.pt") in str(error.value) and "\n" not in str(error.value)
