"""Cores: what the learner knows about images before the first trial.

A core maps (B, N, N, 3) uint8 images to raw feature vectors; the learner standardises them and
keeps their first principal components over the pool (:class:`Projection`), and its readouts are
linear in those. The protocol names the core in ``[model.core]`` (:class:`closedloop.config.CoreSpec`):

``scratch``  a compact CNN of the paper's architecture (``[model] channels``), randomly
             initialised, learned entirely online (the background fine-tuning trains it);
``compact``  a folder of published compact models (those whose names ``match``, the first ``limit``
             of them in natural order): their
             outputs, the responses of the neurons they model (``layer = "output"``, the default),
             or their layer-``layer`` feature maps (0-4), each averaged to about ``grid`` x ``grid``
             blocks;
``network``  any image model :func:`closedloop.model.models.load_model` reads (torch or ONNX),
             cut at the layer (torch module name) or graph value (ONNX) named ``layer``; maps
             there are averaged to ``grid`` x ``grid`` blocks (TorchScript cannot be cut);
``file``     a core file written by ``closedloop core build`` (:func:`save_core`): one shared
             compact core trained on a lab's recorded sessions.

Torch cores can be fine-tuned; ONNX cores stay as they are. Every core is identified by a digest
of what defines it (files, settings), which keys the feature cache (:func:`pool_features`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.config import CoreSpec, ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.model.compact import CompactModel, find_published, load_published
from closedloop.model.files import load_torch

CORE_FORMAT, CORE_VERSION = "closedloop-core", 1
FEATURE_BATCH = 128
MIN_INPUT_PX = 16  # pixels: the smallest input side a core file may declare
PCA_IMAGES = 2000  # pool images the projection is fitted on (a seeded sample when the pool is larger)


def cache_folder() -> Path:
    """Where pool features are cached: ``$CLOSEDLOOP_CACHE`` or ``~/.cache/closedloop``."""
    return Path(os.environ.get("CLOSEDLOOP_CACHE") or Path.home() / ".cache" / "closedloop") / "features"


class MapsCore(nn.Module):
    """Feature maps of one or more networks, each averaged over square blocks (about ``grid`` per
    side: 28 x 28 maps with grid 7 give 7 x 7) and concatenated: float pixels (B, N, N, 3), 0-255 ->
    (B, features), differentiably.

    Parameters
    ----------
    networks : list of nn.Module
        Each maps pixels at ``input_px`` (B, px, px, 3) to maps (B, C, H, W) or vectors (B, F).
    input_px : int or None
        Side the pixels are resized to first (None: as they come).
    grid : int
        About how many blocks per side the averaged maps keep.
    """

    def __init__(self, networks: list[nn.Module], input_px: int | None, grid: int):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.input_px, self.grid = input_px, grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.input_px is not None and pixels.shape[1] != self.input_px:
            pixels = F.interpolate(pixels.permute(0, 3, 1, 2), size=(self.input_px,) * 2,
                                   mode="area").permute(0, 2, 3, 1)
        parts = []
        for network in self.networks:
            maps = network(pixels)
            if maps.dim() == 4:  # blocks of about side / grid pixels (a fixed kernel: exports to ONNX)
                block = max(1, round(maps.shape[-1] / self.grid))
                maps = F.avg_pool2d(maps, block, block, ceil_mode=True)
            parts.append(maps.flatten(1))
        return torch.cat(parts, 1)


class CompactLayer(nn.Module):
    """A compact model's layer-``layer`` feature maps (B, C, H, W) from pixels (B, N, N, 3), or, with
    ``layer`` None, its output (B, 1): the response of the neuron it models."""

    def __init__(self, model: CompactModel, layer: int | None = 4):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return self.model(pixels)[:, None]
        return self.model.feature_maps(pixels, self.layer)


class NamedLayer(nn.Module):
    """A torch image model cut at a named submodule: its output there, (B, ...)."""

    def __init__(self, module: nn.Module, layer: str, path: Path):
        super().__init__()
        names = dict(module.named_modules())
        if layer not in names:
            shown = ", ".join(n for n in list(names)[1:9] if n) + (", ..." if len(names) > 9 else "")
            raise ClosedLoopError(f"{path}: no layer named {layer!r} (layers: {shown})")
        if isinstance(names[layer], torch.jit.ScriptModule):  # TorchScript runs no Python hooks
            raise ClosedLoopError(f"{path}: a TorchScript model cannot be cut at a layer ({layer!r}); export "
                                  "it to ONNX and cut at a graph value, or save it with save_model")
        self.module, self.layer, self.name, self.path = module, names[layer], layer, path

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.module(pixels)
        finally:
            handle.remove()
        if not captured or not isinstance(captured[0], torch.Tensor):
            raise ClosedLoopError(f"{self.path}: layer {self.name!r} gives no tensor when the model runs "
                                  "(never called by its forward pass?); cut at another layer")
        return captured[0]


@dataclass
class Core:
    """A core, ready to compute raw features.

    Attributes
    ----------
    name : str
        What it is, for logs and the session record.
    identity : str
        Digest of what defines it (keys the feature cache; a fine-tuned core gets a new one).
    network : nn.Module or None
        The differentiable core (None for ONNX, which is not fine-tuned).
    onnx : object or None
        An :class:`closedloop.model.models.OnnxModel` returning the cut layer.
    grid : int
        Blocks per side of averaged feature maps.
    """

    name: str
    identity: str
    network: nn.Module | None = None
    onnx: object | None = None
    grid: int = 7

    @property
    def trainable(self) -> bool:
        return self.network is not None

    def raw(self, images: np.ndarray, pause: Callable[[], None] | None = None) -> np.ndarray:
        """Raw features (B, F) float32 of (B, N, N, 3) uint8 images; ``pause`` is called between
        batches (the learner's refresh thread waits there while a choice is being made)."""
        if self.network is None:  # maps (C, H, W) are averaged over blocks, as MapsCore does
            shape = tuple(self.onnx.output_shape)
            parts = []
            for i in range(0, len(images), FEATURE_BATCH):
                if pause is not None:
                    pause()
                out = self.onnx.predict(images[i:i + FEATURE_BATCH], FEATURE_BATCH, dtype=np.float32)
                if len(shape) == 3:
                    maps = torch.from_numpy(out.reshape(len(out), *shape))
                    block = max(1, round(shape[-1] / self.grid))
                    out = F.avg_pool2d(maps, block, block, ceil_mode=True).flatten(1).numpy()
                parts.append(out.reshape(len(out), -1))
            return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        self.network.eval()
        parts = []
        with torch.inference_mode():
            for i in range(0, len(images), FEATURE_BATCH):
                if pause is not None:
                    pause()
                parts.append(self.network(torch.from_numpy(np.ascontiguousarray(images[i:i + FEATURE_BATCH])).float()))
        return torch.cat(parts).numpy()


FEATURES_VERSION = 2  # bump when the features a core computes change (it keys the feature cache)


def _digest(*parts) -> str:
    h = hashlib.sha1(f"features-v{FEATURES_VERSION}".encode())
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes())
        elif isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def load_core(model: ModelSpec, seed: int = 0) -> Core:
    """The core ``model.core`` names; a one-line :class:`ClosedLoopError` names a missing or bad file."""
    spec = model.core
    if spec.kind == "scratch":
        torch.manual_seed(seed)
        network = CompactModel(model.channels)
        return Core(f"scratch (compact CNN {'-'.join(map(str, model.channels))}, {model.input_px} px)",
                    _digest("scratch", model.channels, model.input_px, spec.grid, seed),
                    MapsCore([CompactLayer(network)], model.input_px, spec.grid), grid=spec.grid)
    if spec.kind == "compact":
        paths = [p for p in find_published(spec.path) if fnmatch.fnmatch(p.name, spec.match)][:spec.limit]
        if not paths:
            raise ClosedLoopError(f"{spec.path}: no compact models match {spec.match!r}")
        networks = [CompactLayer(load_published(p), spec.layer_index) for p in paths]
        where = "outputs" if spec.layer_index is None else f"layer {spec.layer_index}"
        return Core(f"compact: {where} of {len(paths)} models in {spec.path}",
                    _digest("compact", *paths, spec.layer_index, spec.grid),
                    MapsCore(networks, 112, spec.grid), grid=spec.grid)
    if spec.kind == "file":
        return read_core(spec.path, spec.grid)
    return _network_core(spec)


def _network_core(spec: CoreSpec) -> Core:
    """Any model load_model reads, cut at ``spec.layer``."""
    from closedloop.model.models import OnnxModel, load_model

    path = Path(spec.path)
    if not path.is_file():
        raise ClosedLoopError(f"{path}: core model file not found")
    name = f"network: {path.name} at {spec.layer!r}"
    identity = _digest("network", path, spec.layer, spec.grid)
    if path.suffix.lower() == ".onnx":
        return Core(name, identity, onnx=OnnxModel(path, output=spec.layer), grid=spec.grid)
    image_model = load_model(path)
    module = image_model.torch_module()
    if module is None:
        return Core(name, identity, onnx=OnnxModel(path, output=spec.layer), grid=spec.grid)
    return Core(name, identity, MapsCore([NamedLayer(module, spec.layer, path)], image_model.input_px, spec.grid),
                grid=spec.grid)


# ------------------------------------------------------------------- core files --
def save_core(network: CompactModel, input_px: int, path: Path, provenance: dict) -> None:
    """Write a shared compact core (``closedloop core build``) as a core file, atomically."""
    path = Path(path)
    header = {"format": CORE_FORMAT, "version": CORE_VERSION, "nums_filters": list(network.nums_filters),
              "input_px": int(input_px), "provenance": provenance,
              "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(header, partial)
    partial.replace(path)


def read_header(path: Path, what: str, form: str, version: int, hint: str) -> dict:
    """A torch file of closedloop's holding a dict with ``format`` ``form`` and ``version``; a
    one-line :class:`ClosedLoopError` names the file when it is missing, unreadable or another kind
    of file (``what`` it should be, ``hint`` where one comes from)."""
    header = load_torch(path, what)
    if not isinstance(header, dict) or header.get("format") != form:
        raise ClosedLoopError(f"{path}: not a closedloop {what} ({hint})")
    if header.get("version") != version:
        raise ClosedLoopError(f"{path}: {what} version {header.get('version')!r} is not supported "
                              f"(expected {version})")
    return header


def read_core(path: Path, grid: int = 7) -> Core:
    """A core file written by :func:`save_core`; one-line errors name the file and what is wrong."""
    return read_core_file(path, grid)[0]


def read_core_file(path: Path, grid: int = 7) -> tuple[Core, dict]:
    """A core file as a :class:`Core` and its checked header (``nums_filters``, ``input_px`` in
    pixels, ``provenance``); one-line errors name the file and the field that is wrong."""
    from closedloop.model.compact import check_state

    path = Path(path)
    header = read_header(path, "core file", CORE_FORMAT, CORE_VERSION, "make one with `closedloop core build`")
    filters, px, state = header.get("nums_filters"), header.get("input_px"), header.get("state_dict")
    provenance = header["provenance"] = header.get("provenance") or {}
    whole = [isinstance(k, int) and not isinstance(k, bool) for k in (filters if isinstance(filters, list) else [])]
    problems = {"nums_filters": not (isinstance(filters, list) and len(filters) == 5 and all(whole)
                                     and min(filters) >= 1),
                "input_px": not (isinstance(px, int) and not isinstance(px, bool) and px >= MIN_INPUT_PX),
                "state_dict": not isinstance(state, dict), "provenance": not isinstance(provenance, dict)}
    if bad := [name for name, wrong in problems.items() if wrong]:
        raise ClosedLoopError(f"{path}: corrupt core file: field {bad[0]!r} is missing or wrong (nums_filters: "
                              f"five whole numbers >= 1; input_px: pixels >= {MIN_INPUT_PX}; state_dict and "
                              "provenance: dicts)")
    network = CompactModel(filters)
    check_state(path, network, state, f"compact core {filters}")
    network.load_state_dict(state)
    what = provenance.get("summary", "a shared compact core")
    core = Core(f"file: {path.name} ({what})", _digest("file", path, grid), MapsCore([CompactLayer(network)], px, grid),
                grid=grid)
    return core, header


# ------------------------------------------------------------------- projection --
@dataclass
class Projection:
    """Standardise raw features, keep the leading principal components, scaled to unit mean variance.

    ``project(raw) = ((raw - mean) / std) @ components``; fitted on (a sample of) the pool.
    """

    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray  # (F, dims)

    @classmethod
    def fit(cls, raw: np.ndarray, dims: int, seed: int = 0) -> Projection:
        if len(raw) > PCA_IMAGES:
            raw = raw[np.sort(np.random.default_rng(seed).choice(len(raw), PCA_IMAGES, replace=False))]
        raw = raw.astype(np.float64)
        mean, std = raw.mean(0), raw.std(0) + 1e-6
        z = (raw - mean) / std
        if z.shape[1] > len(z):  # fewer images than features: the eigenvectors of the smaller Gram matrix
            values, u = np.linalg.eigh(z @ z.T)
            values, u = values[::-1], u[:, ::-1]
            keep = values > 1e-9 * values[0]
            v = (z.T @ u[:, keep]) / np.sqrt(values[keep])
            values = values[keep]
        else:
            values, v = np.linalg.eigh(z.T @ z)
            values, v = values[::-1], v[:, ::-1]
        dims = min(dims, len(values))
        scale = np.sqrt(np.maximum(values[:dims].mean() / len(z), 1e-12))
        return cls(mean.astype(np.float32), std.astype(np.float32), (v[:, :dims] / scale).astype(np.float32))

    @property
    def dims(self) -> int:
        return self.components.shape[1]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Projected features (B, dims) float32."""
        return ((raw - self.mean) / self.std) @ self.components

    def torch(self, raw: torch.Tensor) -> torch.Tensor:
        """The same, differentiably."""
        return ((raw - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)) @ torch.from_numpy(self.components)


def pool_features(core: Core, images: np.ndarray, dims: int, seed: int = 0,
                  cache: Path | None = None) -> tuple[Projection, np.ndarray]:
    """The projection fitted on the pool and the pool's projected features (K, dims), computed once
    per core and pool: read from the cache (``cache``, default :func:`cache_folder`) when there."""
    folder = cache_folder() if cache is None else Path(cache)
    path = folder / f"{core.identity}-{_digest(images, dims, seed)}.npz"
    if path.is_file():
        try:
            with np.load(path) as saved:
                return Projection(saved["mean"], saved["std"], saved["components"]), saved["features"]
        except Exception:  # noqa: BLE001 - a damaged cache entry (truncated, empty, garbage) is computed again
            pass
    raw = core.raw(images)
    projection = Projection.fit(raw, dims, seed)
    features = projection(raw).astype(np.float32)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + ".partial.npz")
        np.savez(partial, mean=projection.mean, std=projection.std, components=projection.components,
                 features=features)
        partial.replace(path)
    except OSError:
        pass  # a read-only home: features are computed each time
    return projection, features
