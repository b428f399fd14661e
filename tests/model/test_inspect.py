"""Model inspection: the figure, the top/bottom ranking, gradient synthesis, CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from closedloop.cli import main
from closedloop.errors import ClosedLoopError
from closedloop.model.compact import CompactModel
from closedloop.model.inspect import FIGURE_PX, inspect_model, layer_filters, rank_pool, synthesize
from closedloop.model.models import as_image_model, load_model
from closedloop.stimuli import generate_pool
from closedloop.stimuli.load import load_pool

pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")]

FILTERS = (6, 5, 3, 4, 2)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A small random-weight compact model, saved as a published one (.pt + .nums_filters.npy)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = CompactModel(FILTERS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.2)
    path = folder / "compact_model_test_neuron0.pt"
    torch.save({k: v.double() for k, v in model.state_dict().items()}, path)
    np.save(folder / "compact_model_test_neuron0.nums_filters.npy", np.array(FILTERS, dtype=np.int64))
    return path


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.npz"
    generate_pool({"contour": 10, "dot": 10, "grating": 10, "texture": 10}, 112, seed=0).save(path)
    return path


def _one_line(message: str, *names: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert name in message, message


# -------------------------------------------------------------------------- ranking --
def test_rank_pool_picks_the_highest_and_lowest():
    values = np.random.default_rng(3).normal(size=200)
    values[[5, 17]] = values.max() + 1  # a tie at the top: the earlier index first
    values[40] = np.nan  # never picked
    top, bottom = rank_pool(values, 16)
    finite = np.where(np.isfinite(values), values, -np.inf)
    assert set(top) == set(np.argsort(finite)[-16:])
    assert list(top[:2]) == [5, 17]
    assert np.all(np.diff(values[top]) <= 0)
    assert set(bottom) == set(np.argsort(np.where(np.isfinite(values), values, np.inf))[:16])
    assert np.all(np.diff(values[bottom]) >= 0)
    assert 40 not in top and 40 not in bottom
    # Every value not picked lies between the two groups.
    rest = np.setdiff1d(np.flatnonzero(np.isfinite(values)), np.concatenate([top, bottom]))
    assert values[rest].max() <= values[top].min() and values[rest].min() >= values[bottom].max()
    small_top, small_bottom = rank_pool(np.array([2.0, 1.0, 3.0]), 16)
    assert list(small_top) == [2, 0, 1] and list(small_bottom) == [1, 0, 2]


def test_inspect_ranks_the_demo_set_by_default(model_path):
    result = inspect_model(model_path, steps=0)
    assert result.pool_name == f"demo ({len(result.values)} images, 112 px)" and len(result.values) > 32
    assert list(result.top) == list(np.argsort(-result.values, kind="stable")[:16])
    assert list(result.bottom) == list(np.argsort(result.values, kind="stable")[:16])


def test_inspect_labels_folder_images_by_file(model_path, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 30), colour).save(folder / f"im{i}.png")
    result = inspect_model(model_path, pool=folder, steps=0)
    assert result.pool_name == "images (3 images, 112 px)"
    assert sorted(result.labels[:3]) == ["0 im0.png", "1 im1.png", "2 im2.png"]


# ------------------------------------------------------------------------ synthesis --
def test_gradient_ascent_raises_the_response_deterministically(model_path, pool_path):
    model = load_model(model_path)
    pool, _ = load_pool(pool_path)
    median = float(np.median(model.predict(pool.images)[:, 0]))
    first = synthesize(model, steps=25, seed=4)
    assert first.image.shape == (112, 112, 3) and first.image.dtype == np.uint8
    assert first.value > first.start_value + 0.1 * abs(first.start_value) + 1e-6
    assert first.value > median
    assert first.trace[-5:].mean() > first.trace[:5].mean()
    again = synthesize(model, steps=25, seed=4)
    np.testing.assert_array_equal(first.image, again.image)
    assert first.value == again.value
    # The model's own weights are left as they were (no gradients, requires_grad restored).
    module = model.torch_module()
    assert all(p.grad is None and p.requires_grad for p in module.parameters())


# --------------------------------------------------------------------------- figure --
def test_inspect_writes_the_figure(model_path, pool_path, tmp_path):
    out = tmp_path / "figure.png"
    result = inspect_model(model_path, out, pool=pool_path, steps=10)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == FIGURE_PX
    assert result.figure == out
    values = load_model(model_path).predict(load_pool(pool_path)[0].images)[:, 0]
    np.testing.assert_allclose(result.values, values)
    assert list(result.top) == list(np.argsort(-values, kind="stable")[:16])
    assert list(result.bottom) == list(np.argsort(values, kind="stable")[:16])
    assert result.parameters == sum(p.numel() for p in CompactModel(FILTERS).parameters())
    summary = result.summary()
    assert f"{result.parameters:,} parameters" in summary and "synthesised image (10 steps" in summary
    assert f"{values.max():.3g}" in summary


def test_layer_filters_of_compact_and_generic_models(model_path):
    filters = layer_filters(load_model(model_path))
    assert filters.layer0.shape == (FILTERS[0], 5, 5, 3)
    assert [count for _, count in filters.counts] == list(FILTERS)
    assert [m.shape for _, m in filters.pointwise] == [(FILTERS[i], FILTERS[i - 1]) for i in range(1, 5)]

    class Generic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 7, 3)
            self.head = nn.Linear(7, 2)

        def forward(self, x):
            return self.head(self.conv(x.permute(0, 3, 1, 2) / 255).mean((2, 3)))

    generic = as_image_model(Generic(), "generic", input_px=32)
    filters = layer_filters(generic)
    assert filters.layer0.shape == (7, 3, 3, 3) and filters.counts == [("conv", 7)] and not filters.pointwise
    assert "generic" in filters.note
    synthesis = synthesize(generic, output=1, steps=15)
    assert synthesis.image.shape == (32, 32, 3) and synthesis.value > synthesis.start_value


def test_onnx_model_gets_notes_instead_of_weight_panels(model_path, pool_path, tmp_path):
    from closedloop.model.export import export_onnx

    onnx_path = export_onnx(load_model(model_path), tmp_path / "model.onnx", check=False)
    result = inspect_model(onnx_path, tmp_path / "onnx.png", pool=pool_path)
    assert result.synthesis is None and result.ratio is None
    assert "ONNX" in result.notes[0] and "synthesised image: none" in result.summary()
    assert 0 < result.parameters <= sum(p.numel() for p in CompactModel(FILTERS).parameters())  # BN folded
    with Image.open(tmp_path / "onnx.png") as image:
        assert image.size == FIGURE_PX
    with pytest.raises(ClosedLoopError, match="no gradients"):
        synthesize(load_model(onnx_path))


# ---------------------------------------------------------------------- real model --
def test_real_model_synthesis_beats_the_pool(shared_v4):
    model = load_model(shared_v4 / "compact_models" / "compact_model_190923_neuron10.pt")
    pool = generate_pool({"contour": 8, "dot": 8, "grating": 8, "texture": 8}, 112, seed=1)
    best = float(model.predict(pool.images)[:, 0].max())
    synthesis = synthesize(model, steps=30, seed=0)  # ~1 s
    assert synthesis.value > best, (synthesis.value, best)


# ------------------------------------------------------------------------------- CLI --
def _cli_error(args: list) -> str:
    result = CliRunner().invoke(main, ["inspect", *map(str, args)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("closedloop: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_writes_figure_and_summary(model_path, pool_path, tmp_path):
    out = tmp_path / "cli.png"
    result = CliRunner().invoke(main, ["inspect", str(model_path), "--out", str(out), "--pool", str(pool_path),
                                       "--steps", "5"])
    assert result.exit_code == 0, result.output
    assert "top 16 predicted" in result.stdout and f"figure written to {out}" in result.stdout
    with Image.open(out) as image:
        assert image.size == FIGURE_PX


def test_cli_missing_model(tmp_path):
    missing = tmp_path / "absent.pt"
    _one_line(_cli_error([missing, "--out", tmp_path / "f.png"]), str(missing), "not found")


def test_cli_bad_pool_is_one_line(model_path, tmp_path):  # every kind of bad pool: tests/stimuli/test_load.py
    absent = tmp_path / "absent.toml"
    _one_line(_cli_error([model_path, "--out", tmp_path / "f.png", "--pool", absent]), str(absent), "not found")
    assert not (tmp_path / "f.png").exists()


def test_cli_output_out_of_range(model_path, tmp_path):
    line = _cli_error([model_path, "--out", tmp_path / "f.png", "--output", "1"])
    _one_line(line, "--output 1", "1 output")
    _one_line(_cli_error([model_path, "--out", tmp_path / "f.png", "--steps", "-2"]), "--steps -2")
