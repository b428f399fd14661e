"""ONNX export and onnxruntime scoring: parity with torch, round trips, the cached-core scorer."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from closedloop.errors import ClosedLoopError
from closedloop.model.compact import CompactModel, load_published
from closedloop.model.ensemble import CompactEnsemble
from closedloop.model.export import (PARITY_TOLERANCE, CachedCoreScorer, OnnxScorer, export_onnx,
                                     relative_error, score_pool)
from closedloop.model.generate import random_images, randomise_batchnorm
from closedloop.model.models import OnnxModel, as_image_model, load_model, save_model, save_torchscript

pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated"),
              pytest.mark.filterwarnings("ignore:The feature will be removed")]

FILTERS = (6, 5, 3, 4, 2)


@pytest.fixture(scope="module")
def ensemble() -> CompactEnsemble:
    return randomise_batchnorm(CompactEnsemble(9, members=3, input_px=32, channels=(8, 8, 6, 6, 4), seed=3))


@pytest.fixture(scope="module")
def compact() -> CompactModel:
    return randomise_batchnorm(CompactModel(FILTERS), seed=1)


def test_relative_error():
    assert relative_error(np.array([0.0, 2.0]), np.array([0.0, 2.1])) == pytest.approx(0.1)
    assert relative_error(np.ones(3), np.ones(3)) == 0.0
    assert relative_error(np.zeros(3), np.full(3, 0.5)) == 0.5
    flat = np.array([100.0, 100.0 + 1e-6])  # nearly constant: scaled by 1% of the magnitude
    assert relative_error(flat, flat + 1e-3) == pytest.approx(1e-3)


def test_compact_model_onnx_parity(tmp_path, compact):
    path = export_onnx(compact, tmp_path / "compact.onnx")
    pool = random_images(37, 112)
    reference = compact.predict(pool)
    scorer = OnnxScorer(path, threads=1, batch_size=16)  # batches of 16, 16, 5: dynamic batch axis
    scores = scorer.score(pool)
    assert scores.shape == (37, 1) and scores.dtype == np.float64
    assert relative_error(reference, scores[:, 0]) <= PARITY_TOLERANCE
    np.testing.assert_allclose(scores[:, 0], reference, rtol=1e-4, atol=1e-4 * reference.std())


def test_ensemble_onnx_parity_and_shape(tmp_path, ensemble):
    path = export_onnx(ensemble, tmp_path / "ensemble.onnx", name="ens")
    pool = random_images(20, 64)
    reference = as_image_model(ensemble).predict(pool)  # (K, members * neurons)
    scorer = OnnxScorer(path, threads=1)
    assert scorer.output_shape == (3, 9)
    scores = scorer.score(pool)
    assert scores.shape == (20, 3, 9)
    assert relative_error(reference, scores.reshape(20, -1)) <= PARITY_TOLERANCE
    loaded = load_model(path)
    assert loaded.name == "ensemble" and loaded.outputs == 27 and loaded.input_px == 32


def test_published_model_onnx_parity(tmp_path, shared_v4):
    path = shared_v4 / "compact_models" / "compact_model_190923_neuron10.pt"
    with zipfile.ZipFile(shared_v4 / "sessions" / "images_190923.zip") as archive:
        from PIL import Image

        names = sorted(n for n in archive.namelist() if n.lower().endswith(".jpg"))[:24]
        pool = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names])
    model = load_model(path)
    onnx_path = export_onnx(model, tmp_path / "n10.onnx")
    reference = load_published(path).predict(pool)
    scores = score_pool(onnx_path, pool)
    assert relative_error(reference, scores[:, 0]) <= PARITY_TOLERANCE
    assert CachedCoreScorer(load_published(path)).cache(pool).score().shape == (24, 1, 1)


def test_round_trip_every_file_kind(tmp_path, compact, ensemble):
    """A model saved as each kind loads back to the same predictions."""
    pool = random_images(6, 112)
    for module in (compact, ensemble):
        reference = as_image_model(module).predict(pool)
        own = tmp_path / f"{type(module).__name__}.pt"
        save_model(module, own)
        from_own = load_model(own)
        np.testing.assert_allclose(from_own.predict(pool), reference, rtol=1e-6, atol=1e-7)
        onnx = export_onnx(from_own, tmp_path / f"{type(module).__name__}.onnx")  # ImageModel in
        from_onnx = load_model(onnx)
        assert isinstance(from_onnx, OnnxModel) and from_onnx.output_shape == from_own.output_shape
        assert relative_error(reference, from_onnx.predict(pool)) <= PARITY_TOLERANCE
        ts = save_torchscript(from_own, tmp_path / f"{type(module).__name__}.ts")
        from_ts = load_model(ts)
        assert (from_ts.input_px, from_ts.output_shape) == (from_own.input_px, from_own.output_shape)
        assert relative_error(reference, from_ts.predict(pool)) <= PARITY_TOLERANCE
        copied = export_onnx(from_onnx, tmp_path / "copy" / "again.onnx")  # ONNX in: copied
        assert copied.read_bytes() == onnx.read_bytes()


def test_export_generic_pixel_module(tmp_path):
    class Brightness(nn.Module):
        def forward(self, images):
            return images.mean((1, 2))  # (B, 3)

    with pytest.raises(ValueError, match="input_px"):
        export_onnx(Brightness(), tmp_path / "b.onnx")
    path = export_onnx(Brightness(), tmp_path / "b.onnx", input_px=16)
    pool = random_images(4, 32)  # shrunk to 16 by area averaging: the mean is unchanged
    np.testing.assert_allclose(load_model(path).predict(pool), pool.mean((1, 2)), rtol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_cached_core_equals_full_forward(ensemble, compact, backend):
    pool = random_images(25, 64)
    cached = CachedCoreScorer(ensemble, batch_size=8, backend=backend, threads=1).cache(pool)
    assert cached.features.shape == (3, 25, 4 * 8 * 8) and cached.features.dtype == torch.float32
    full = as_image_model(ensemble).predict(pool).reshape(25, 3, 9)
    assert relative_error(full, cached.score()) <= PARITY_TOLERANCE
    np.testing.assert_allclose(cached.score([4, 0]), cached.score()[:, :, [4, 0]], rtol=1e-6)

    pool = random_images(5, 112)
    published = CachedCoreScorer(compact, backend=backend, threads=1).cache(pool)
    assert relative_error(compact.predict(pool), published.score()[:, 0, 0]) <= PARITY_TOLERANCE


def test_cached_core_follows_a_refitted_readout():
    model = randomise_batchnorm(CompactEnsemble(5, members=2, input_px=16, channels=(4, 4, 4, 4, 4)))
    pool = random_images(8, 16)
    cached = CachedCoreScorer(model, threads=1).cache(pool)
    with torch.no_grad():
        model.weights.mul_(-2.0)
        model.bias.add_(0.5)
    assert relative_error(as_image_model(model).predict(pool), cached.score().reshape(8, -1)) <= 1e-5
    with torch.no_grad():  # a retrained core: the exported core is refreshed on request
        model.layers[-1].bn.weight.mul_(3.0)
        model.layers[-1].bn.bias.add_(0.5)
    stale = cached.cache(pool).score().reshape(8, -1)
    fresh = as_image_model(model).predict(pool)
    assert relative_error(fresh, stale) > 1e-2
    cached.refresh_core()
    assert relative_error(fresh, cached.cache(pool).score().reshape(8, -1)) <= 1e-5


def test_cached_core_errors(ensemble):
    with pytest.raises(RuntimeError, match="cache"):
        CachedCoreScorer(ensemble).score()
    with pytest.raises(TypeError):
        CachedCoreScorer(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pool"):
        CachedCoreScorer(ensemble).cache(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="backend"):
        CachedCoreScorer(ensemble, backend="tvm")


def test_scorer_bad_files(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ClosedLoopError, match="not found") as error:
        OnnxScorer(missing)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ClosedLoopError, match="unreadable or corrupt ONNX") as error:
        OnnxScorer(broken)
    assert str(broken) in str(error.value) and "\n" not in str(error.value)
