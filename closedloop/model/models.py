"""One interface for every image model: published, ONNX, TorchScript, closedloop's own.

Every model maps a batch of RGB images, (B, H, W, 3) with pixel values 0-255,
to (B, outputs) numbers. :func:`load_model` opens any supported file as an
:class:`ImageModel`; :func:`as_image_model` wraps a module already in memory;
:func:`save_model` writes closedloop's own format.

File kinds :func:`load_model` accepts
-------------------------------------
- a published compact model ``<name>.pt`` with its sibling
  ``<name>.nums_filters.npy`` (Cowley et al. 2026): one output per image;
- an ``.onnx`` file (onnxruntime, CPU): one 4-D float input with 3 channels,
  channels last (B, H, W, 3) or channels first (B, 3, H, W); a fixed spatial
  size means images are resized to it; outputs are flattened to (B, k);
- a TorchScript file (``torch.jit.save``) whose module maps (B, H, W, 3)
  float pixels to (B, ...); its input side comes from the ``closedloop.json``
  extra file that :func:`save_torchscript` writes, else an ``input_px``
  attribute of the module, else any size is run as given;
- closedloop's own files written by :func:`save_model`: a torch file holding a
  small header (format, kind, constructor arguments) and the state dict,
  loaded with ``weights_only=True``;
- (a learner checkpoint, a session's ``checkpoints/learner-*.pt``, is opened by
  :func:`closedloop.learn.open_image_model`, which builds on this module).

Output order
------------
Outputs are always flattened per image in C order. A model's
``output_shape`` gives the unflattened per-image shape: ``(1,)`` for a
published model, ``(members, neurons)`` for a :class:`CompactEnsemble` (so
output ``m * neurons + n`` is member ``m``'s prediction for neuron ``n``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError, one_line
from closedloop.model.compact import CompactModel, check_state, load_published, published_name
from closedloop.model.ensemble import CompactEnsemble
from closedloop.model.teacher import Teacher, build_teacher, teacher_args
from closedloop.model.files import check_finite

if TYPE_CHECKING:
    import onnx

FORMAT = "closedloop-model"
"""The ``format`` field of the header :func:`save_model` writes."""

FORMAT_VERSION = 1

TORCHSCRIPT_META = "closedloop.json"
"""Extra file in a TorchScript archive written by :func:`save_torchscript`: name, input_px."""


# --------------------------------------------------------------------------- interface --
class ImageModel:
    """An image model: (B, H, W, 3) RGB pixels 0-255 in, (B, outputs) float64 out.

    Attributes
    ----------
    name : str
        A short name (e.g. ``190923_n10`` or the file's stem).
    outputs : int
        Number of outputs per image (neurons, or members x neurons).
    output_shape : tuple of int
        Per-image output shape before flattening; ``prod(output_shape) == outputs``.
    input_px : int or None
        Side of the images the model runs on; other sizes are resized to it by
        :meth:`predict` (area averaging when shrinking, bilinear when
        enlarging). None: any size is run as it is.
    path : Path or None
        The file the model was loaded from, if any.
    metadata : dict
        What the file carried besides weights (the ``metadata`` given to
        :func:`save_model`; empty otherwise).
    """

    name: str
    outputs: int
    output_shape: tuple[int, ...]
    input_px: int | None
    path: Path | None = None
    metadata: Mapping[str, Any] = MappingProxyType({})

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for a batch of images.

        Parameters
        ----------
        images : np.ndarray
            (B, H, W, 3) RGB, uint8 or float, pixel values 0-255.
        batch_size : int
            Images per forward pass.

        Returns
        -------
        np.ndarray
            (B, outputs) float64.
        """
        raise NotImplementedError

    def torch_module(self) -> nn.Module | None:
        """A differentiable module for this model, or None (e.g. ONNX).

        Returns
        -------
        torch.nn.Module or None
            Maps (B, input_px, input_px, 3) float pixels 0-255 (any size when
            ``input_px`` is None) to (B, outputs), float32. It does not resize.
        """
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, outputs={self.outputs}, "
                f"output_shape={self.output_shape}, input_px={self.input_px})")


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    return images


def _rows(model: ImageModel, y: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """A model's output for a ``batch`` (its shape) as (images, ``model.outputs``); a one-line error
    naming the model when it gives another number of outputs than it did when opened."""
    if y.size != batch[0] * model.outputs:
        raise ClosedLoopError(f"{model.path or model.name}: gives {y.size // max(batch[0], 1)} outputs per "
                              f"{batch[1]}x{batch[2]} px image, not the {model.outputs} it gave when opened")
    return y.reshape(batch[0], model.outputs)


def resize_pixels(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, H, W, 3) float pixels to ``size`` (area when shrinking, else bilinear).

    The same rule as :meth:`CompactModel.predict`. Returns the input itself
    when it already has that size.
    """
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    x = x.permute(0, 3, 1, 2)
    if x.shape[2] >= size[0] and x.shape[3] >= size[1]:
        x = F.interpolate(x, size=size, mode="area")
    else:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


# ------------------------------------------------------------ pixel-input torch modules --
class PublishedPixels(nn.Module):
    """A :class:`CompactModel` as an image module: (B, 112, 112, 3) pixels -> (B, 1)."""

    def __init__(self, model: CompactModel):
        super().__init__()
        self.model = model
        self.input_px = 112

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[:, None]


class EnsemblePixels(nn.Module):
    """A :class:`CompactEnsemble` as an image module.

    (B, input_px, input_px, 3) pixels 0-255 -> (B, members, neurons), or
    (B, members * neurons) with ``flatten=True``. Pixels are scaled to [-1, 1]
    as :func:`closedloop.model.ensemble.to_model_input` does.
    """

    def __init__(self, model: CompactEnsemble, flatten: bool = False):
        super().__init__()
        self.model = model
        self.flatten = flatten
        self.input_px = int(model.input_px)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0
        out = self.model(x)
        return out.flatten(1) if self.flatten else out


class _Flatten(nn.Module):
    """Wrap a pixel module so its output is (B, k)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images).flatten(1)


# ------------------------------------------------------------------ torch-backed models --
class TorchImageModel(ImageModel):
    """An :class:`ImageModel` backed by a torch module taking (B, H, W, 3) pixels.

    Parameters
    ----------
    module : torch.nn.Module
        Maps (B, input_px, input_px, 3) float pixels 0-255 to (B, ...); put in
        eval mode here.
    name : str
        Short name.
    input_px : int or None
        Side the module expects (None: any size).
    output_shape : tuple of int, optional
        Per-image output shape; found by one forward pass when omitted.
    source : torch.nn.Module, optional
        The underlying model (e.g. the :class:`CompactModel`), kept as
        ``self.source`` for callers that need its parts.
    path : Path, optional
        The file it came from.
    """

    def __init__(self, module: nn.Module, name: str, input_px: int | None,
                 output_shape: tuple[int, ...] | None = None, source: nn.Module | None = None,
                 path: Path | None = None):
        self.module = module.eval()
        self.name = name
        self.input_px = input_px
        self.source = source if source is not None else module
        self.path = path
        self.metadata = {}
        if output_shape is None:
            side = input_px or 112
            with torch.inference_mode():
                out = module(torch.zeros(1, side, side, 3))
            output_shape = tuple(out.shape[1:]) or (1,)
        self.output_shape = tuple(int(k) for k in output_shape)
        self.outputs = math.prod(self.output_shape)

    def torch_module(self) -> nn.Module:
        return _Flatten(self.module).eval()

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = _check_images(images)
        out = np.empty((len(images), self.outputs), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
                x = x.to(torch.float32)
                if self.input_px is not None:
                    x = resize_pixels(x, (self.input_px, self.input_px))
                out[start:start + len(x)] = _rows(self, self.module(x).double().numpy(), x.shape)
        return out


def as_image_model(module: nn.Module | ImageModel, name: str | None = None,
                   input_px: int | None = None) -> ImageModel:
    """Wrap a model in memory as an :class:`ImageModel`.

    Parameters
    ----------
    module : torch.nn.Module or ImageModel
        A :class:`CompactModel` (output (B, 1)), a :class:`CompactEnsemble`
        (output (B, members * neurons)), any module mapping (B, H, W, 3) float
        pixels 0-255 to (B, ...), or an ImageModel (returned as it is).
    name : str, optional
        Short name; defaults to the class name.
    input_px : int, optional
        Input side for a generic module (the compact models know theirs).

    Returns
    -------
    ImageModel
    """
    if isinstance(module, ImageModel):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module or ImageModel, got {type(module).__name__}")
    name = name or type(module).__name__
    if isinstance(module, CompactModel):
        return TorchImageModel(PublishedPixels(module), name, 112, (1,), source=module)
    if isinstance(module, CompactEnsemble):
        return TorchImageModel(EnsemblePixels(module), name, int(module.input_px),
                               (module.members, module.neurons), source=module)
    if input_px is None:
        px = getattr(module, "input_px", None)
        input_px = int(px) if isinstance(px, int) else None
    return TorchImageModel(module, name, input_px)


def pixel_module(model: nn.Module | ImageModel) -> tuple[nn.Module, int | None]:
    """The pixel-input torch module behind a model, and its input side.

    A :class:`CompactEnsemble` gives (B, members, neurons) outputs (not
    flattened); a :class:`CompactModel` gives (B, 1).

    Raises
    ------
    ClosedLoopError
        For an ImageModel without a torch module (e.g. ONNX).
    """
    if isinstance(model, CompactModel):
        return PublishedPixels(model).eval(), 112
    if isinstance(model, CompactEnsemble):
        return EnsemblePixels(model).eval(), int(model.input_px)
    if isinstance(model, TorchImageModel):
        return model.module, model.input_px
    if isinstance(model, ImageModel):
        module = model.torch_module()
        if module is None:
            where = model.path or model.name
            raise ClosedLoopError(f"{where}: this model has no torch module ({type(model).__name__})")
        return module, model.input_px
    if isinstance(model, nn.Module):
        px = getattr(model, "input_px", None)
        return model.eval(), int(px) if isinstance(px, int) else None
    raise TypeError(f"expected a torch.nn.Module or ImageModel, got {type(model).__name__}")


# ------------------------------------------------------------------------- ONNX models --
def default_threads() -> int:
    """CPU cores this process may use (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path`` as a ``ModelProto``, its initializers checked to be finite.

    Raises
    ------
    ClosedLoopError
        One line naming the file when it is unreadable or an initializer holds inf or NaN.
    """
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path))
        for initializer in proto.graph.initializer:
            check_finite(path, {initializer.name: numpy_helper.to_array(initializer)})
    except ClosedLoopError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read is the user's file
        raise ClosedLoopError(f"{path}: unreadable or corrupt ONNX file ({one_line(error)})") from None
    return proto


def _exposing(path: Path, proto: onnx.ModelProto, output: str) -> bytes:
    """The ONNX model ``proto`` read from ``path`` with the graph value ``output`` made a graph
    output (serialised)."""
    import onnx

    graph = proto.graph
    values = [v for node in graph.node for v in node.output]
    if output not in values:
        shown = ", ".join(values[:8]) + (", ..." if len(values) > 8 else "")
        raise ClosedLoopError(f"{path}: no value named {output!r} in the graph (values: {shown})")
    if output not in [o.name for o in graph.output]:
        graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    return proto.SerializeToString()


class OnnxModel(ImageModel):
    """An ONNX image model run with onnxruntime on the CPU.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file. Its single input must be 4-D float with 3 channels,
        channels last (B, H, W, 3) or channels first (B, 3, H, W); a fixed
        spatial size makes :meth:`predict` resize images to it.
    threads : int, optional
        onnxruntime intra-op threads; default: the cores this process may use.
    name : str, optional
        Short name; default the file's stem.
    output : str, optional
        The value to return, by its name in the graph (e.g. an intermediate layer's output, to use
        the model as a feature core); default the model's first output.

    Raises
    ------
    ClosedLoopError
        One line naming the file when it is missing, unreadable, or not an
        image model, or naming ``output`` when the graph has no such value.
    """

    def __init__(self, path: str | Path, threads: int | None = None, name: str | None = None,
                 output: str | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ClosedLoopError(f"{path}: ONNX model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            proto = _read_onnx(path)
            source = str(path) if output is None else _exposing(path, proto, output)
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except ClosedLoopError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to read is the user's file
            raise ClosedLoopError(f"{path}: unreadable or corrupt ONNX file ({one_line(error)})") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ClosedLoopError(f"{path}: not an image model: expects {len(inputs)} inputs "
                                  f"({', '.join(i.name for i in inputs)}), an image model takes one")
        spec = inputs[0]
        shape = list(spec.shape)
        if spec.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            raise ClosedLoopError(f"{path}: not an image model: input {spec.name!r} is {spec.type}, "
                                  f"expected a float tensor")
        if len(shape) != 4:
            raise ClosedLoopError(f"{path}: not an image model: input {spec.name!r} has shape {shape}, "
                                  f"expected 4-D (B, H, W, 3) or (B, 3, H, W)")
        if shape[3] == 3:
            self.channels_last, spatial = True, shape[1:3]
        elif shape[1] == 3:
            self.channels_last, spatial = False, shape[2:4]
        else:
            raise ClosedLoopError(f"{path}: not an image model: input {spec.name!r} has shape {shape}, "
                                  f"no axis of 3 channels at position 1 or 3")
        fixed = [isinstance(s, int) and s > 0 for s in spatial]
        if all(fixed):
            if spatial[0] != spatial[1]:
                raise ClosedLoopError(f"{path}: not an image model: input {spec.name!r} is "
                                      f"{spatial[0]}x{spatial[1]}, closedloop models take square images")
            self.input_px = int(spatial[0])
        else:
            self.input_px = None
        self.session = session
        self.path = path
        try:
            self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        except Exception:  # noqa: BLE001 - metadata is optional
            self.metadata = {}
        self.name = name or path.stem
        self._input_name = spec.name
        self._dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                       "tensor(float16)": np.float16}[spec.type]
        self._batch_fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self._output_name = output or session.get_outputs()[0].name
        side = self.input_px or 112
        try:
            probe = self._run(np.zeros((1, side, side, 3), np.float32))
        except Exception as error:  # noqa: BLE001
            raise ClosedLoopError(f"{path}: not an image model: a ({1}, {side}, {side}, 3) batch "
                                  f"fails ({one_line(error)})") from None
        self.output_shape = tuple(int(k) for k in probe.shape[1:]) or (1,)
        self.outputs = math.prod(self.output_shape)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """One onnxruntime call on (B, H, W, 3) float32 pixels already at the input size."""
        x = pixels if self.channels_last else pixels.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self._dtype)
        return self.session.run([self._output_name], {self._input_name: x})[0]

    def predict(self, images: np.ndarray, batch_size: int = 256, dtype: type = np.float64) -> np.ndarray:
        """As :meth:`ImageModel.predict`; ``dtype`` of the result (float64 unless asked)."""
        images = _check_images(images)
        if self._batch_fixed is not None:
            batch_size = self._batch_fixed
        out = np.empty((len(images), self.outputs), dtype=dtype)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            n = len(chunk)
            if self.input_px is not None and tuple(chunk.shape[1:3]) != (self.input_px, self.input_px):
                x = resize_pixels(torch.from_numpy(np.ascontiguousarray(chunk)).to(torch.float32),
                                  (self.input_px, self.input_px)).numpy()
            else:
                x = np.asarray(chunk, dtype=np.float32)
            if self._batch_fixed is not None and n < self._batch_fixed:
                x = np.concatenate([x, np.zeros((self._batch_fixed - n, *x.shape[1:]), x.dtype)])
            out[start:start + n] = _rows(self, self._run(x)[:n], (n, *x.shape[1:]))
        return out


# ------------------------------------------------------------------ closedloop's format --
@dataclass(frozen=True)
class _Kind:
    cls: type[nn.Module]
    args: Callable[[nn.Module], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]


_KINDS: dict[str, _Kind] = {
    "compact": _Kind(
        CompactModel,
        lambda m: {"nums_filters": list(m.nums_filters)},
        lambda a: CompactModel(a["nums_filters"]),
    ),
    "ensemble": _Kind(
        CompactEnsemble,
        lambda m: {"neurons": int(m.neurons), "members": int(m.members), "input_px": int(m.input_px),
                   "channels": [int(m.conv0.out_channels // m.members)]
                   + [int(layer.point.out_channels // m.members) for layer in m.layers]},
        lambda a: CompactEnsemble(a["neurons"], a["members"], a["input_px"], tuple(a["channels"])),
    ),
    "teacher": _Kind(Teacher, teacher_args, build_teacher),
}


def register_kind(kind: str, cls: type[nn.Module], args: Callable[[nn.Module], dict[str, Any]],
                  build: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Teach :func:`save_model` / :func:`load_model` another architecture.

    Parameters
    ----------
    kind : str
        Name stored in the header.
    cls : type
        The module class (``save_model`` picks the kind by ``type(module) is cls``).
    args : callable
        Module -> constructor arguments (str, int, float, bool, lists of them).
    build : callable
        Constructor arguments -> a fresh module of the same architecture. It
        must take (B, H, W, 3) pixels, or be a CompactModel / CompactEnsemble.
    """
    _KINDS[kind] = _Kind(cls, args, build)


def save_model(module: nn.Module, path: str | Path, name: str | None = None,
               metadata: dict[str, Any] | None = None) -> None:
    """Save a model in closedloop's own format.

    A torch file with a dict ``{"format": "closedloop-model", "version": 1,
    "kind": ..., "args": {...}, "name": ..., "metadata": {...},
    "state_dict": {...}}``; :func:`load_model` rebuilds the module from
    ``kind`` and ``args`` and loads the state dict (``weights_only=True``).

    Parameters
    ----------
    module : torch.nn.Module
        A :class:`CompactModel`, a :class:`CompactEnsemble`, or a module of a
        kind added with :func:`register_kind`.
    path : str or Path
        Destination file (``.pt`` by convention; not beside a
        ``.nums_filters.npy`` of the same stem, which would make it read as a
        published model).
    name : str, optional
        Short name kept in the file.
    metadata : dict, optional
        Small plain values (str, numbers, lists) kept in the file.

    Raises
    ------
    ClosedLoopError
        For a module of an unknown kind, or when the file cannot be written.
    """
    path = Path(path)
    for kind, spec in _KINDS.items():
        if type(module) is spec.cls:
            break
    else:
        raise ClosedLoopError(f"{path}: cannot save a {type(module).__name__}: known kinds are "
                              f"{', '.join(_KINDS)} (see register_kind)")
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "args": spec.args(module),
        "name": name or path.stem,
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(header, path)
    except OSError as error:
        raise ClosedLoopError(f"{path}: cannot write model file ({one_line(error)})") from None


def _load_own(path: Path, header: dict) -> ImageModel:
    kind = header.get("kind")
    if header.get("version") != FORMAT_VERSION:
        raise ClosedLoopError(f"{path}: closedloop model format version {header.get('version')!r} "
                              f"is not supported (expected {FORMAT_VERSION})")
    if kind not in _KINDS:
        raise ClosedLoopError(f"{path}: unknown model kind {kind!r} (known: {', '.join(_KINDS)})")
    args, state = header.get("args"), header.get("state_dict")
    if not isinstance(args, dict) or not isinstance(state, dict):
        raise ClosedLoopError(f"{path}: corrupt closedloop model file (no args or state_dict)")
    try:
        module = _KINDS[kind].build(args)
    except Exception as error:  # noqa: BLE001
        raise ClosedLoopError(f"{path}: cannot build a {kind} model from {args} "
                              f"({one_line(error)})") from None
    _load_state_checked(path, module, state, f"{kind} {args}")
    name = str(header.get("name") or path.stem)
    model = as_image_model(module, name)
    model.path = path
    metadata = header.get("metadata")
    model.metadata = dict(metadata) if isinstance(metadata, dict) else {}
    return model


def _load_state_checked(path: Path, module: nn.Module, state: dict, arch: str) -> None:
    """load_state_dict with one-line errors naming the key and the shapes."""
    check_state(path, module, state, arch)
    module.load_state_dict(state, strict=True)
    module.eval()


# ------------------------------------------------------------------------ TorchScript --
def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    except UnicodeDecodeError as error:  # a zip whose member names were damaged
        raise ClosedLoopError(f"{path}: unreadable or corrupt model file ({one_line(error)})") from None
    return any(n.split("/", 1)[-1].startswith("code/") for n in names) and any(
        n.endswith("constants.pkl") for n in names)


def _load_torchscript(path: Path) -> ImageModel:
    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # noqa: BLE001
        raise ClosedLoopError(f"{path}: unreadable TorchScript file ({one_line(error)})") from None
    check_finite(path, module.state_dict())
    meta: dict[str, Any] = {}
    if extra[TORCHSCRIPT_META]:
        try:
            meta = dict(json.loads(extra[TORCHSCRIPT_META]))
        except (ValueError, TypeError):
            raise ClosedLoopError(f"{path}: corrupt {TORCHSCRIPT_META} in the TorchScript file") from None
    px = meta.get("input_px", getattr(module, "input_px", None))
    input_px = int(px) if isinstance(px, int) and not isinstance(px, bool) else None
    side = input_px or 112
    try:
        with torch.inference_mode():
            out = module.eval()(torch.zeros(1, side, side, 3))
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != 1:
            raise TypeError(f"output is {type(out).__name__} "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, "
                            f"expected a (1, ...) tensor")
    except Exception as error:  # noqa: BLE001
        raise ClosedLoopError(f"{path}: not an image model: a (1, {side}, {side}, 3) pixel batch "
                              f"fails ({_last_line(error)})") from None
    shape = tuple(int(k) for k in out.shape[1:]) or (1,)
    stored = meta.get("output_shape")
    if (isinstance(stored, list) and all(isinstance(k, int) for k in stored)
            and math.prod(stored) == math.prod(shape)):
        shape = tuple(stored) or (1,)  # e.g. (members, neurons) of a flattened ensemble
    model = TorchImageModel(module, str(meta.get("name") or path.stem), input_px, shape)
    model.path = path
    return model


def save_torchscript(model: nn.Module | ImageModel, path: str | Path, input_px: int | None = None) -> Path:
    """Trace a model's pixel module and save it as TorchScript that :func:`load_model` reads.

    The input side and name travel in the archive (``closedloop.json``), so the
    loaded model resizes images as the original did. Output: (B, outputs).

    Parameters
    ----------
    model : torch.nn.Module or ImageModel
        Anything :func:`as_image_model` accepts with a torch module.
    path : str or Path
        Destination file.
    input_px : int, optional
        Input side for a generic module without its own.
    """
    path = Path(path)
    image_model = as_image_model(model, input_px=input_px)
    module = image_model.torch_module()
    if module is None:
        raise ClosedLoopError(f"{path}: {image_model.name} has no torch module to save as TorchScript")
    side = image_model.input_px or input_px or 112
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, torch.rand(2, side, side, 3) * 255)
    meta = {"name": image_model.name, "input_px": image_model.input_px,
            "output_shape": list(image_model.output_shape)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    return path


def _last_line(error: BaseException) -> str:
    """The last line of an error (TorchScript errors carry a whole traceback in their text)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    text = text if ":" in text else f"{type(error).__name__}: {text}"
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------- load_model --
def load_model(path: str | Path) -> ImageModel:
    """Open any supported model file as an :class:`ImageModel`.

    Parameters
    ----------
    path : str or Path
        A published compact model ``.pt`` (with its sibling
        ``.nums_filters.npy``), an ``.onnx`` file, a TorchScript file, or a
        file written by :func:`save_model`.

    Returns
    -------
    ImageModel
        Published models give (B, 1) outputs; ensembles (B, members * neurons).

    Raises
    ------
    ClosedLoopError
        One line naming the file: not found, unreadable or corrupt, not an
        image model, or weights that do not match the architecture.
    """
    path = Path(path)
    if not path.exists():
        raise ClosedLoopError(f"{path}: model file not found")
    if not path.is_file():
        raise ClosedLoopError(f"{path}: not a file")
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path)
    if path.with_name(path.stem + ".nums_filters.npy").is_file():
        module = load_published(path)
        model = as_image_model(module, published_name(path))
        model.path = path
        return model
    if _is_torchscript(path):
        return _load_torchscript(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        if _looks_like_onnx(path):
            return OnnxModel(path)
        raise ClosedLoopError(f"{path}: unreadable or corrupt model file ({one_line(error)})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _load_own(path, obj)
    if isinstance(obj, dict) and obj.get("format") == "closedloop-learner":  # the learner builds on this toolbox
        raise ClosedLoopError(f"{path}: a learner checkpoint: open it with closedloop.learn.open_image_model")
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ClosedLoopError(f"{path}: a bare state dict; a published compact model needs its sibling "
                              f"{path.stem}.nums_filters.npy, otherwise save with closedloop's save_model")
    raise ClosedLoopError(f"{path}: not an image model (a torch file holding a {type(obj).__name__}, "
                          f"not a closedloop model, published model or TorchScript module)")


def _looks_like_onnx(path: Path) -> bool:
    """Cheap check for an ONNX protobuf without the .onnx suffix."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return bool(proto.graph.node) and bool(proto.graph.input)
    except Exception:  # noqa: BLE001
        return False
