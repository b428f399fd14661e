"""ONNX export, onnxruntime scoring of candidate pools, and a cached-core scorer.

- :func:`export_onnx` writes any image model (a published :class:`CompactModel`,
  a :class:`CompactEnsemble`, any module taking (B, H, W, 3) pixels, or an
  :class:`ImageModel`) as ONNX with a dynamic batch axis. The ONNX input is
  always ``images``: (batch, px, px, 3) float32 pixels 0-255, channels last.
- :class:`OnnxScorer` scores a pool of candidate images with onnxruntime.
- :class:`CachedCoreScorer` computes a pool's core features once; scoring
  every neuron is then one readout product. For a :class:`CompactEnsemble`
  (one core shared by all neurons) that makes extra neurons almost free. The
  published compact models do not share cores (one core per neuron), so for
  them the cache only speeds up re-scoring the same pool with the same core
  (e.g. after refitting the readout); scoring a new neuron still costs its
  whole core.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError, one_line
from closedloop.model.compact import CompactModel
from closedloop.model.ensemble import CompactEnsemble
from closedloop.model.models import (ImageModel, OnnxModel, default_threads, pixel_module,
                                     resize_pixels)

PARITY_TOLERANCE = 1e-4
"""Largest accepted ONNX-vs-torch difference, relative to the outputs' spread."""


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Max absolute difference relative to the reference's spread.

    ``max |reference - other| / max(std(reference), 0.01 * max |reference|)``
    (1 when the reference is all zeros). The floor keeps float32 rounding of
    nearly constant outputs (an untrained ensemble predicts softplus(0) for
    every image) from counting as a large relative error; for real models the
    standard deviation is the larger term.
    """
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {other.shape}")
    scale = max(float(reference.std()), 0.01 * float(np.abs(reference).max())) or 1.0
    return float(np.abs(reference - other).max()) / scale


def export_onnx(model: nn.Module | ImageModel, path: str | Path, input_px: int | None = None, *,
                opset: int = 17, name: str | None = None, check: bool = True) -> Path:
    """Export a model to ONNX with a dynamic batch axis.

    Parameters
    ----------
    model : torch.nn.Module or ImageModel
        A :class:`CompactModel` (output (B, 1)); a :class:`CompactEnsemble`
        (output (B, members, neurons)); any module mapping (B, H, W, 3) float
        pixels 0-255 to (B, ...); or an :class:`ImageModel` (its torch
        module; an ONNX model's file is copied).
    path : str or Path
        Destination ``.onnx`` file.
    input_px : int, optional
        Side of the input images; defaults to the model's own (112 for the
        published architecture, ``input_px`` of an ensemble). Required for a
        generic module without an ``input_px`` attribute.
    opset : int
        ONNX opset.
    name : str, optional
        Stored in the file's metadata (``closedloop.name``).
    check : bool
        Run the exported file once with onnxruntime on random pixels and raise
        when it differs from torch by more than :data:`PARITY_TOLERANCE`.

    Returns
    -------
    Path
        The written file. Input ``images`` (batch, px, px, 3) float32, output
        ``outputs`` (batch, ...) float32.

    Raises
    ------
    ClosedLoopError
        When the export fails or the exported file does not match torch.
    """
    path = Path(path)
    if isinstance(model, OnnxModel):
        path.parent.mkdir(parents=True, exist_ok=True)
        if model.path.resolve() != path.resolve():
            shutil.copyfile(model.path, path)
        return path
    module, own_px = pixel_module(model)
    input_px = input_px or own_px
    if input_px is None:
        raise ValueError("input_px is needed for a module without an input_px attribute")
    module = module.eval()
    dummy = _probe_images(input_px)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), str(path), input_names=["images"],
                              output_names=["outputs"], opset_version=opset,
                              dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
                              do_constant_folding=True, dynamo=False)
    except Exception as error:  # noqa: BLE001
        raise ClosedLoopError(f"{path}: ONNX export of {type(module).__name__} failed "
                              f"({one_line(error)})") from None
    _set_metadata(path, {"closedloop.name": name or getattr(model, "name", None) or type(model).__name__,
                         "closedloop.input_px": str(input_px)})
    if check:
        with torch.inference_mode():
            expected = module(dummy).double().numpy().reshape(len(dummy), -1)
        got = OnnxModel(path, threads=1).predict(dummy.numpy(), batch_size=3)  # also batch 3 and 2
        error = relative_error(expected, got)
        if not error <= PARITY_TOLERANCE:
            raise ClosedLoopError(f"{path}: exported model differs from torch by {error:.2e} "
                                  f"of the output spread (tolerance {PARITY_TOLERANCE:g})")
    return path


def _probe_images(px: int) -> torch.Tensor:
    """Eight varied (8, px, px, 3) float pixel images: noise, flat greys, smooth blobs, edges.

    Varied enough that the outputs' spread is a fair scale for the parity check
    (two noise images alone can give nearly equal outputs).
    """
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, px, px, 3, generator=g) * 255
    flat = torch.tensor([60.0, 190.0]).view(2, 1, 1, 1).expand(2, px, px, 3)
    blobs = F.interpolate(torch.rand(2, 3, 4, 4, generator=g), size=(px, px), mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1) * 255
    ramp = torch.linspace(0, 255, px)
    edges = torch.stack([ramp.view(1, px, 1).expand(px, px, 3), (ramp > 127).float().view(px, 1, 1)
                         .expand(px, px, 3) * 255])
    return torch.cat([noise, flat, blobs, edges]).contiguous()


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))


class OnnxScorer:
    """Score candidate pools with onnxruntime.

    Parameters
    ----------
    path : str or Path
        An ONNX image model (see :class:`closedloop.model.models.OnnxModel`).
    threads : int, optional
        onnxruntime intra-op threads; default: the cores this process may use.
    batch_size : int
        Images per onnxruntime call.
    """

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 256):
        self.model = OnnxModel(path, threads=threads)
        self.batch_size = batch_size

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-image output shape, e.g. (members, neurons) for an ensemble."""
        return self.model.output_shape

    def score(self, pool: np.ndarray) -> np.ndarray:
        """Outputs for every pool image.

        Parameters
        ----------
        pool : np.ndarray
            (K, N, N, 3) uint8 (or float) pixels 0-255; resized to the model's
            input size when it has a fixed one.

        Returns
        -------
        np.ndarray
            (K, *output_shape) float64.
        """
        out = self.model.predict(pool, self.batch_size)
        return out.reshape(len(out), *self.output_shape)


def score_pool(model: ImageModel | str | Path, pool: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(K, outputs) float64 scores of a pool with any image model or model file."""
    from closedloop.model.models import load_model

    if not isinstance(model, ImageModel):
        model = load_model(model)
    return model.predict(pool, batch_size)


class _CoreFeatures(nn.Module):
    """Pixels (B, px, px, 3) -> core features (B, members, D) of a compact model or ensemble."""

    def __init__(self, model: CompactEnsemble | CompactModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, CompactEnsemble):
            return self.model.features(images.to(torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0)
        return self.model.features(images)[:, None, :]


class CachedCoreScorer:
    """Compute a pool's core features once, then score neurons by one readout product.

    For a :class:`CompactEnsemble` the features are (K, members, C * S * S)
    and the readout of every neuron is a dense vector over them (the
    factorised mask x channel weights, multiplied out once), so scoring all
    ``n`` neurons is a batched matrix product of cost K * members * D * n
    followed by softplus: adding neurons costs almost nothing next to the
    core. For a published :class:`CompactModel` the features are the 28x28xn4
    layer-4 maps and the readout is ``Beta``; since every published neuron has
    its own core, the cache helps only when the same model re-scores the
    same pool.

    Parameters
    ----------
    model : CompactEnsemble or CompactModel
        Used in eval mode. Its readout weights are read at every
        :meth:`score` (a refitted readout needs no new features); its core is
        read at :meth:`cache` (torch backend) or frozen into an ONNX graph at
        the first :meth:`cache` (onnxruntime backend; call
        :meth:`refresh_core` after the core's weights change).
    batch_size : int
        Images per core pass when caching.
    backend : {"onnxruntime", "torch"}
        What computes the features. onnxruntime runs the grouped and depthwise
        convolutions of these cores several times faster than torch on CPU;
        the first :meth:`cache` then exports the core (about a second).
    threads : int, optional
        onnxruntime intra-op threads (default: the cores this process may use).
    """

    def __init__(self, model: CompactEnsemble | CompactModel, batch_size: int = 256,
                 backend: str = "onnxruntime", threads: int | None = None):
        if not isinstance(model, (CompactEnsemble, CompactModel)):
            raise TypeError(f"CachedCoreScorer needs a CompactEnsemble or CompactModel, "
                            f"got {type(model).__name__}")
        if backend not in ("onnxruntime", "torch"):
            raise ValueError(f"backend must be 'onnxruntime' or 'torch', got {backend!r}")
        self.model = model.eval()
        self.batch_size = batch_size
        self.backend = backend
        self.threads = threads
        self.features: torch.Tensor | None = None  # (members, K, D) float32
        self._core: OnnxModel | None = None

    @property
    def input_px(self) -> int:
        return int(self.model.input_px) if isinstance(self.model, CompactEnsemble) else 112

    def refresh_core(self) -> None:
        """Forget the exported core (onnxruntime backend), e.g. after retraining it."""
        self._core = None

    def _onnx_core(self) -> OnnxModel:
        if self._core is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:  # the session keeps the graph in memory
                path = export_onnx(_CoreFeatures(self.model).eval(), Path(tmp) / "core.onnx",
                                   self.input_px)
                self._core = OnnxModel(path, threads=self.threads)
        return self._core

    def cache(self, pool: np.ndarray) -> CachedCoreScorer:
        """Compute and keep the core features of a pool.

        Parameters
        ----------
        pool : np.ndarray
            (K, N, N, 3) uint8 (or float) pixels 0-255; resized to the model's
            input as :meth:`ImageModel.predict` does.

        Returns
        -------
        CachedCoreScorer
            ``self``, for chaining.
        """
        pool = np.asarray(pool)
        if pool.ndim != 4 or pool.shape[-1] != 3:
            raise ValueError(f"pool must be (K, H, W, 3), got shape {pool.shape}")
        if self.backend == "onnxruntime":
            core = self._onnx_core()
            flat = core.predict(pool, self.batch_size, dtype=np.float32)  # (K, members * D)
            features = torch.from_numpy(flat).view(len(pool), *core.output_shape)
            self.features = features.transpose(0, 1).contiguous()
            return self
        chunks = []
        px = self.input_px
        module = _CoreFeatures(self.model)
        with torch.inference_mode():
            for start in range(0, len(pool), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(pool[start:start + self.batch_size]))
                chunks.append(module(resize_pixels(x.to(torch.float32), (px, px))))
            self.features = torch.cat(chunks).transpose(0, 1).contiguous()
        return self

    def readout_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense readout weights (members, neurons, D) and biases (members, neurons)."""
        with torch.no_grad():
            if isinstance(self.model, CompactEnsemble):
                m = self.model
                w = (m.weights[..., :, None] * m.mask[..., None, :]).reshape(m.members, m.neurons, -1)
                return w.detach(), m.bias.detach()
            beta = self.model.layers["Beta"]
            return beta.weight.detach()[None], beta.bias.detach()[None]

    def score(self, neurons: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Outputs of the cached pool for all (or some) neurons.

        Parameters
        ----------
        neurons : array of int, optional
            Neuron indices to score (all when None).

        Returns
        -------
        np.ndarray
            (K, members, n) float64 (softplus applied for an ensemble);
            (K, 1, 1) for a published model. ``reshape(K, -1)`` of the full
            result equals the model's ``ImageModel.predict`` output.
        """
        if self.features is None:
            raise RuntimeError("call cache(pool) first")
        w, b = self.readout_weights()
        if neurons is not None:
            index = torch.as_tensor(np.asarray(neurons, dtype=np.int64))
            w, b = w[:, index], b[:, index]
        with torch.inference_mode():
            out = torch.baddbmm(b[:, None, :], self.features, w.transpose(1, 2))  # (M, K, n)
            if isinstance(self.model, CompactEnsemble):
                out = F.softplus(out)
            return out.permute(1, 0, 2).double().numpy()


__all__ = ["PARITY_TOLERANCE", "CachedCoreScorer", "OnnxScorer", "default_threads", "export_onnx",
           "relative_error", "score_pool"]
