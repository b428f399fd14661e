"""load_model / save_model: one ImageModel interface over every model file kind, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from closedloop.errors import ClosedLoopError
from closedloop.model.compact import CompactModel, load_published
from closedloop.model.ensemble import CompactEnsemble
from closedloop.model.export import export_onnx
from closedloop.model.generate import random_images, randomise_batchnorm
from closedloop.model.models import (_KINDS, ImageModel, OnnxModel, PublishedPixels, as_image_model,
                                     load_model, register_kind, save_model)

pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
              pytest.mark.filterwarnings("ignore:`torch.jit.(script|save|trace|trace_method|load)` is deprecated"),
              pytest.mark.filterwarnings("ignore:The feature will be removed")]

FILTERS = (6, 5, 3, 4, 2)


def _refused(path: Path, match: str | None = None) -> str:
    """``load_model(path)`` fails with one line (matching ``match``) that names the file; the line."""
    with pytest.raises(ClosedLoopError, match=match) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message, message
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------- round trips --
def test_own_format_round_trip_compact(tmp_path):
    model = randomise_batchnorm(CompactModel(FILTERS))
    save_model(model, tmp_path / "student.pt", name="student", metadata={"teacher": "190923_n10"})
    loaded = load_model(tmp_path / "student.pt")
    assert isinstance(loaded, ImageModel)
    assert (loaded.name, loaded.outputs, loaded.output_shape, loaded.input_px) == ("student", 1, (1,), 112)
    assert loaded.source.nums_filters == FILTERS
    assert loaded.metadata == {"teacher": "190923_n10"}
    images = random_images(5, 112)
    out = loaded.predict(images)
    assert out.shape == (5, 1) and out.dtype == np.float64
    np.testing.assert_array_equal(out[:, 0], model.predict(images))
    header = torch.load(tmp_path / "student.pt", weights_only=True)  # weights_only-safe
    assert header["kind"] == "compact" and header["args"] == {"nums_filters": list(FILTERS)}
    assert header["metadata"] == {"teacher": "190923_n10"}


def test_own_format_round_trip_ensemble(tmp_path):
    ensemble = randomise_batchnorm(CompactEnsemble(7, members=3, input_px=32, channels=(8, 6, 5, 4, 3)))
    save_model(ensemble, tmp_path / "ens.pt")
    loaded = load_model(tmp_path / "ens.pt")
    assert (loaded.outputs, loaded.output_shape, loaded.input_px) == (21, (3, 7), 32)
    images = random_images(6, 64)  # resized (area) to 32
    from closedloop.model.ensemble import to_model_input

    with torch.no_grad():
        expected = ensemble(to_model_input(images, 32)).numpy().reshape(6, -1)
    np.testing.assert_allclose(loaded.predict(images, batch_size=4), expected, rtol=1e-5, atol=1e-6)


def test_published_model_via_load_model(shared_v4):
    path = shared_v4 / "compact_models" / "compact_model_190923_neuron10.pt"
    model = load_model(path)
    assert (model.name, model.outputs, model.output_shape, model.input_px) == ("190923_n10", 1, (1,), 112)
    images = random_images(3, 112)
    np.testing.assert_array_equal(model.predict(images)[:, 0], load_published(path).predict(images))


def test_torch_module_is_differentiable_and_matches_predict():
    model = as_image_model(randomise_batchnorm(CompactEnsemble(4, members=2, input_px=32,
                                                                channels=(4, 4, 4, 4, 4))))
    module = model.torch_module()
    x = torch.rand(3, 32, 32, 3, requires_grad=True) * 255
    x.retain_grad()
    y = module(x)
    assert y.shape == (3, model.outputs)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    np.testing.assert_allclose(model.predict(x.detach().numpy()), y.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_predict_resizes_like_compact_model():
    model = randomise_batchnorm(CompactModel(FILTERS))
    image_model = as_image_model(model)
    for px in (64, 160):  # enlarged (bilinear) and shrunk (area)
        images = random_images(2, px, seed=px)
        np.testing.assert_allclose(image_model.predict(images)[:, 0], model.predict(images), rtol=1e-6)


def test_torchscript_round_trip(tmp_path):
    model = randomise_batchnorm(CompactModel(FILTERS))
    scripted = torch.jit.trace(PublishedPixels(model), torch.rand(2, 112, 112, 3) * 255)
    torch.jit.save(scripted, tmp_path / "traced.pt")
    loaded = load_model(tmp_path / "traced.pt")
    assert loaded.output_shape == (1,) and loaded.outputs == 1
    images = random_images(4, 112)
    np.testing.assert_allclose(loaded.predict(images)[:, 0], model.predict(images), rtol=1e-5, atol=1e-6)


def test_onnx_channels_first_and_dynamic_size(tmp_path):
    class ChannelsFirst(nn.Module):  # (B, 3, H, W) -> (B, 2), any spatial size
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), x[:, 0].amax((1, 2))], 1)

    path = tmp_path / "cf.onnx"
    torch.onnx.export(ChannelsFirst(), (torch.rand(1, 3, 20, 20),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
    model = load_model(path)
    assert isinstance(model, OnnxModel) and not model.channels_last and model.input_px is None
    images = random_images(3, 24).astype(np.float64)
    expected = np.stack([images.mean((1, 2, 3)), images[..., 0].max((1, 2))], 1)
    np.testing.assert_allclose(model.predict(images), expected, rtol=1e-5)
    assert model.torch_module() is None


def test_onnx_fixed_size_resizes_and_matches_torch(tmp_path):
    model = randomise_batchnorm(CompactModel(FILTERS))
    path = export_onnx(model, tmp_path / "m.onnx")
    onnx_model = load_model(path)
    assert onnx_model.input_px == 112 and onnx_model.channels_last and onnx_model.output_shape == (1,)
    images = random_images(3, 150)
    reference = model.predict(images)
    assert np.abs(onnx_model.predict(images)[:, 0] - reference).max() <= 1e-4 * reference.std() + 1e-6


def test_register_kind(tmp_path):
    class Mean(nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(float(scale)))

        def forward(self, images):
            return (images.mean((1, 2)) * self.scale)  # (B, 3)

    register_kind("test-mean", Mean, lambda m: {"scale": m.scale.item()}, lambda a: Mean(a["scale"]))
    try:
        save_model(Mean(2.0), tmp_path / "mean.pt")
        loaded = load_model(tmp_path / "mean.pt")
    finally:
        _KINDS.pop("test-mean")
    images = random_images(2, 16).astype(np.float64)
    np.testing.assert_allclose(loaded.predict(images), images.mean((1, 2)) * 2, rtol=1e-6)


# ---------------------------------------------------------------------------- errors --
def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.pt", "not found")


@pytest.mark.parametrize("name, content", [("junk.pt", b"\x00garbage" * 10), ("empty.pt", b""),
                                            ("junk.onnx", b"not onnx at all"), ("empty.onnx", b"")])
def test_corrupt_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    _refused(path, "unreadable|corrupt|not an image model")


def test_onnx_not_an_image_model(tmp_path):
    flat = tmp_path / "flat.onnx"
    torch.onnx.export(nn.Linear(10, 2), (torch.rand(1, 10),), str(flat), dynamo=False)
    _refused(flat, "not an image model.*4-D")

    five = tmp_path / "five.onnx"
    torch.onnx.export(nn.Conv2d(5, 2, 3), (torch.rand(1, 5, 8, 8),), str(five), dynamo=False)
    _refused(five, "3 channels")


def test_own_format_weight_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "bad.pt"
    save_model(CompactModel(FILTERS), path)
    header = torch.load(path, weights_only=True)
    header["state_dict"]["layers.layer0_conv.weight"] = torch.zeros(7, 3, 5, 5)
    torch.save(header, path)
    message = _refused(path)
    assert "layers.layer0_conv.weight" in message and "(7, 3, 5, 5)" in message and "(6, 3, 5, 5)" in message

    del header["state_dict"]["layers.Beta.bias"]
    torch.save(header, path)
    _refused(path, "missing keys layers.Beta.bias")

    header["kind"] = "transformer"
    torch.save(header, path)
    _refused(path, "unknown model kind 'transformer'")


def test_bare_state_dict_and_other_torch_objects(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(CompactModel(FILTERS).state_dict(), bare)
    _refused(bare, "nums_filters")

    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    _refused(listed, "not an image model")


def test_published_weight_mismatch(tmp_path):
    path = tmp_path / "compact_model_x_neuron0.pt"
    torch.save(CompactModel(FILTERS).state_dict(), path)
    np.save(tmp_path / "compact_model_x_neuron0.nums_filters.npy", np.array([6, 5, 3, 4, 3]))
    _refused(path, "shape mismatch")


def test_torchscript_not_an_image_model(tmp_path):
    path = tmp_path / "vector.pt"
    torch.jit.save(torch.jit.script(nn.Linear(10, 2)), path)
    _refused(path, "not an image model")


def test_save_unknown_module(tmp_path):
    with pytest.raises(ClosedLoopError, match="cannot save a Linear"):
        save_model(nn.Linear(2, 2), tmp_path / "x.pt")


def test_a_learner_checkpoint_points_to_the_learner_package(tmp_path):
    torch.save({"format": "closedloop-learner", "version": 1}, tmp_path / "learner-final.pt")
    _refused(tmp_path / "learner-final.pt", "a learner checkpoint: open it with closedloop.learn.open_image_model")
