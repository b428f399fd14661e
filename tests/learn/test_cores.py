"""Cores: every kind builds and gives features of the right shape; bad files and layers are one-line
errors naming them; the feature cache is used and survives damage; ``[model.core]`` validates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from closedloop.config import CoreSpec, ModelSpec, load_protocol
from closedloop.errors import ClosedLoopError
from closedloop.learn.cores import Core, Projection, load_core, pool_features, read_core, save_core
from closedloop.model.compact import CompactModel, find_published

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = (4, 5, 4, 3, 6)


def _images(count: int, px: int, seed: int = 0) -> np.ndarray:
    """Smooth random images (blobs on noise): varied enough that features vary."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 4, 4, 3)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(px, px),
                                             mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _blocks(side: int, grid: int) -> int:
    """Blocks per side of ``side`` x ``side`` maps averaged for ``grid`` (blocks of about side / grid)."""
    return -(-side // max(1, round(side / grid)))


def _one_line(info: pytest.ExceptionInfo, *names) -> str:
    text = str(info.value)
    assert "\n" not in text, text
    for name in names:
        assert str(name) in text, text
    return text


def _tiny_model(seed: int = 0) -> CompactModel:
    """A small compact CNN with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = CompactModel(TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


# ------------------------------------------------------------------ each kind --
def test_scratch_core_gives_grid_pooled_features():
    spec = ModelSpec(input_px=16, channels=TINY, core=CoreSpec(grid=3))
    core = load_core(spec, seed=1)
    assert core.trainable and "scratch" in core.name
    assert core.raw(_images(5, 24)).shape == (5, TINY[4] * _blocks(4, 3) ** 2)  # 16 px in: 4 x 4 maps
    assert load_core(spec, seed=1).identity == core.identity != load_core(spec, seed=2).identity


def test_compact_core_from_the_shared_models(shared_v4):
    folder = shared_v4 / "compact_models"
    core = load_core(ModelSpec(core=CoreSpec(kind="compact", path=folder, limit=2, layer="2", grid=3)))
    filters = [np.load(p.with_name(p.stem + ".nums_filters.npy")) for p in find_published(folder, 2)]
    assert core.trainable and "layer 2 of 2 models" in core.name
    assert core.raw(_images(3, 112)).shape == (3, sum(int(f[2]) for f in filters) * _blocks(28, 3) ** 2)
    layer4 = load_core(ModelSpec(core=CoreSpec(kind="compact", path=folder, limit=1, layer="4", grid=2)))
    assert layer4.raw(_images(2, 64)).shape == (2, int(filters[0][4]) * 4)  # 28 x 28 maps in 2 x 2 blocks
    outputs = load_core(ModelSpec(core=CoreSpec(kind="compact", path=folder, limit=3)))  # the default
    responses = outputs.raw(_images(2, 112))
    assert responses.shape == (2, 3)
    model = CompactModel(filters[0].tolist())
    model.load_state_dict(torch.load(find_published(folder, 1)[0], weights_only=True))
    np.testing.assert_allclose(responses[:, 0], model.predict(_images(2, 112)), rtol=1e-4, atol=1e-4)
    other = load_core(ModelSpec(core=CoreSpec(kind="compact", path=folder, match="compact_model_201025_*", limit=1)))
    assert other.identity != outputs.identity and "of 1 models" in other.name
    with pytest.raises(ClosedLoopError, match="no compact models match 'nothing_\\*'"):
        load_core(ModelSpec(core=CoreSpec(kind="compact", path=folder, match="nothing_*")))


def test_missing_compact_folder_is_one_line(tmp_path):
    with pytest.raises(ClosedLoopError) as info:
        load_core(ModelSpec(core=CoreSpec(kind="compact", path=tmp_path / "nowhere")))
    _one_line(info, tmp_path / "nowhere")


def _onnx_value(path, containing: str) -> str:
    import onnx

    values = [v for node in onnx.load(str(path)).graph.node for v in node.output]
    return next(v for v in values if containing in v)


def test_network_cores_from_torch_and_onnx_agree(tmp_path):
    """The same model saved with save_model (cut at a module) and exported to ONNX (cut at that
    module's graph value) gives the same grid-pooled features."""
    from closedloop.model.export import export_onnx
    from closedloop.model.models import save_model

    model = _tiny_model()
    save_model(model, tmp_path / "tiny.pt")
    export_onnx(model, tmp_path / "tiny.onnx")
    images = _images(4, 112)
    torch_core = load_core(ModelSpec(core=CoreSpec(kind="network", path=tmp_path / "tiny.pt",
                                                   layer="module.model.layers.layer2_conv_depth", grid=4)))
    value = _onnx_value(tmp_path / "tiny.onnx", "layer2_conv_depth")
    onnx_core = load_core(ModelSpec(core=CoreSpec(kind="network", path=tmp_path / "tiny.onnx", layer=value, grid=4)))
    assert torch_core.trainable and not onnx_core.trainable
    assert "tiny.pt" in torch_core.name and "tiny.onnx" in onnx_core.name
    a, b = torch_core.raw(images), onnx_core.raw(images)
    assert a.shape == b.shape == (4, TINY[1] * 16)  # layer 1's channels, 28 x 28 in 7 x 7 blocks
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_network_core_on_a_vector_output(tmp_path):
    """A layer that gives vectors, not maps, is used as it is."""
    from closedloop.model.models import save_model

    save_model(_tiny_model(), tmp_path / "tiny.pt")
    core = load_core(ModelSpec(core=CoreSpec(kind="network", path=tmp_path / "tiny.pt",
                                             layer="module.model.layers.Beta", grid=3)))
    assert core.raw(_images(2, 112)).shape == (2, 1)


def test_bad_layers_are_one_line_naming_file_and_layer(tmp_path):
    from closedloop.model.export import export_onnx
    from closedloop.model.models import save_model, save_torchscript

    model = _tiny_model()
    save_model(model, tmp_path / "tiny.pt")
    export_onnx(model, tmp_path / "tiny.onnx")

    def core(path, layer):
        return load_core(ModelSpec(core=CoreSpec(kind="network", path=path, layer=layer)))

    with pytest.raises(ClosedLoopError) as info:
        core(tmp_path / "tiny.pt", "module.model.layers.layer9")
    _one_line(info, tmp_path / "tiny.pt", "'module.model.layers.layer9'", "no layer named")
    with pytest.raises(ClosedLoopError) as info:
        core(tmp_path / "tiny.onnx", "/no/such/value")
    _one_line(info, tmp_path / "tiny.onnx", "'/no/such/value'")
    with pytest.raises(ClosedLoopError) as info:
        core(tmp_path / "absent.pt", "x")
    _one_line(info, tmp_path / "absent.pt", "not found")
    # a module the forward pass never calls (BatchNorm is folded into the convolution): at first use
    folded = core(tmp_path / "tiny.pt", "module.model.layers.layer3_bn")
    with pytest.raises(ClosedLoopError) as info:
        folded.raw(_images(2, 112))
    _one_line(info, tmp_path / "tiny.pt", "'module.model.layers.layer3_bn'")

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3)

        def forward(self, pixels):
            return torch.relu(self.conv(pixels.permute(0, 3, 1, 2) / 255)).mean((2, 3))

    save_torchscript(Small(), tmp_path / "small.ts", input_px=16)
    with pytest.raises(ClosedLoopError) as info:  # TorchScript runs no forward hooks
        core(tmp_path / "small.ts", "module.module.conv")
    _one_line(info, tmp_path / "small.ts", "TorchScript")


# ------------------------------------------------------------------ core files --
def _core_file(tmp_path, name="core.pt", px=24):
    path = tmp_path / name
    save_core(_tiny_model(3), px, path, {"summary": "a test core", "sessions": []})
    return path


def test_core_file_round_trip(tmp_path):
    path = _core_file(tmp_path)
    core = read_core(path, grid=2)
    assert core.trainable and "a test core" in core.name and path.name in core.name
    assert core.raw(_images(3, 40)).shape == (3, TINY[4] * 4)
    via_spec = load_core(ModelSpec(core=CoreSpec(kind="file", path=path, grid=2)))
    np.testing.assert_array_equal(via_spec.raw(_images(3, 40)), core.raw(_images(3, 40)))
    assert via_spec.identity == core.identity
    # its network is the saved one (input resized to the file's 24 px)
    model = _tiny_model(3)
    pixels = torch.nn.functional.interpolate(torch.from_numpy(_images(3, 40)).float().permute(0, 3, 1, 2),
                                             size=(24, 24), mode="area").permute(0, 2, 3, 1)
    with torch.no_grad():
        expected = torch.nn.functional.avg_pool2d(model.feature_maps(pixels), 3).flatten(1).numpy()  # 6 x 6 maps
    np.testing.assert_allclose(core.raw(_images(3, 40)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    ("missing", "core file not found"),
    ("truncated", "unreadable or corrupt core file"),
    ("empty", "unreadable or corrupt core file"),
    ("garbage", "unreadable or corrupt core file"),
    ("other format", "not a closedloop core file"),
    ("state dict", "not a closedloop core file"),
    ("version", "version 99 is not supported"),
    ("no filters", "corrupt core file"),
    ("wrong shapes", "core.pt"),
])
def test_bad_core_files_are_one_line_naming_the_file(tmp_path, damage, message):
    path = _core_file(tmp_path)
    data = path.read_bytes()
    header = torch.load(path, weights_only=True)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all" * 10)
    elif damage == "other format":
        torch.save({"format": "closedloop-model", "version": 1}, path)
    elif damage == "state dict":
        torch.save(header["state_dict"], path)
    elif damage == "version":
        torch.save({**header, "version": 99}, path)
    elif damage == "no filters":
        torch.save({k: v for k, v in header.items() if k != "nums_filters"}, path)
    elif damage == "wrong shapes":
        torch.save({**header, "nums_filters": [4, 5, 4, 3, 7]}, path)
    with pytest.raises(ClosedLoopError, match=message) as info:
        load_core(ModelSpec(core=CoreSpec(kind="file", path=path)))
    _one_line(info, path)


# ------------------------------------------------------------------ feature cache --
def test_pool_features_are_cached_and_damage_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_CACHE", str(tmp_path / "cache"))
    images = _images(30, 16)
    core = load_core(ModelSpec(input_px=16, channels=TINY, core=CoreSpec(grid=2)))
    projection, features = pool_features(core, images, dims=5)
    entries = list((tmp_path / "cache" / "features").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith(core.identity)
    assert features.shape == (30, 5) and features.dtype == np.float32

    def fails(_images):
        raise AssertionError("raw() called although the features are cached")

    cached = Core(core.name, core.identity, core.network, grid=core.grid)
    monkeypatch.setattr(cached, "raw", fails)
    again_projection, again = pool_features(cached, images, dims=5)
    np.testing.assert_array_equal(again, features)
    np.testing.assert_array_equal(again_projection.components, projection.components)
    # another pool, other dims or another seed are other entries
    pool_features(core, images[:20], dims=5)
    pool_features(core, images, dims=4)
    assert len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 3

    data = entries[0].read_bytes()
    for damaged in (data[:len(data) // 2], b"", b"garbage" * 50, data[:-30]):
        entries[0].write_bytes(damaged)
        _, recomputed = pool_features(core, images, dims=5)
        np.testing.assert_array_equal(recomputed, features)
        _, read_back = pool_features(cached, images, dims=5)  # and written again, whole
        np.testing.assert_array_equal(read_back, features)
    assert not list((tmp_path / "cache" / "features").glob("*partial*"))


def test_an_explicit_cache_folder_and_an_unwritable_one(tmp_path):
    images = _images(12, 16)
    core = load_core(ModelSpec(input_px=16, channels=TINY, core=CoreSpec(grid=2)))
    _, features = pool_features(core, images, dims=3, cache=tmp_path / "here")
    assert len(list((tmp_path / "here").glob("*.npz"))) == 1
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    _, again = pool_features(core, images, dims=3, cache=blocked)  # computed, not cached
    np.testing.assert_array_equal(again, features)


def test_projection_standardises_and_scales():
    rng = np.random.default_rng(0)
    for count, width in ((200, 30), (20, 60)):  # more images than features, and fewer
        raw = (rng.standard_normal((count, width)) @ rng.standard_normal((width, width))).astype(np.float32) + 5
        projection = Projection.fit(raw, 6)
        z = projection(raw)
        assert projection.dims == 6 and z.shape == (count, 6)
        np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
        assert z.var(0).mean() == pytest.approx(1.0, rel=1e-3)
        cov = np.cov(z.T, bias=True)
        np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3)  # uncorrelated components
        assert np.all(np.diff(np.diag(cov)) <= 1e-4)  # leading first
        np.testing.assert_allclose(projection.torch(torch.from_numpy(raw)).numpy(), z, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ configuration --
def test_model_core_table_validates_and_resolves(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.toml").write_text("[protocol]\nname = 'x'\n[model.core]\nkind = 'network'\n"
                                           "path = '../models/m.onnx'\nlayer = 'features.3'\ngrid = 5\ndims = 40\n")
    core = load_protocol(tmp_path / "p" / "x.toml").model.core
    assert core.kind == "network" and core.path == (tmp_path / "models" / "m.onnx").resolve()
    assert (core.layer, core.grid, core.dims) == ("features.3", 5, 40)
    (tmp_path / "p" / "y.toml").write_text("[protocol]\nname = 'y'\n")
    default = load_protocol(tmp_path / "p" / "y.toml").model.core
    assert default.kind == "scratch" and default.path is None and default.layer_index is None
    assert CoreSpec(kind="compact", path=tmp_path, layer="2").layer_index == 2
    assert CoreSpec(kind="compact", path=tmp_path, layer="output").layer_index is None


@pytest.mark.parametrize("body, message", [
    ("kind = 'bogus'", "field 'model.core.kind'"),
    ("kind = 'network'\npath = 'm.onnx'", "field 'model.core': a 'network' core needs the 'layer'"),
    ("kind = 'compact'", "field 'model.core': a 'compact' core needs a 'path'"),
    ("kind = 'file'", "field 'model.core': a 'file' core needs a 'path'"),
    ("kind = 'compact'\npath = 'x'\nlayer = '7'", "field 'model.core': a compact core's layer is 'output' or 0-4"),
    ("grid = 0", "field 'model.core.grid'"),
    ("dims = 1", "field 'model.core.dims'"),
    ("limit = 0", "field 'model.core.limit'"),
    ("kind = 'file'\npath = 'c.pt'\nlayers = 3", "field 'model.core.layers'"),
])
def test_bad_model_core_tables_name_the_field(tmp_path, body, message):
    path = tmp_path / "p.toml"
    path.write_text(f"[protocol]\nname = 'x'\n[model.core]\n{body}\n")
    with pytest.raises(ClosedLoopError, match=message) as info:
        load_protocol(path)
    _one_line(info, path)
