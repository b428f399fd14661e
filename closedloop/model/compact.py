"""The published compact CNN models of real V4 neurons, runnable as simulated neurons.

Cowley, Stan, Pillow & Smith, "Compact deep neural network models of visual
cortex", Nature (2026), doi:10.1038/s41586-026-10150-1. The authors published
one compact model per recorded V4 neuron (122 in all) as a PyTorch state dict
``compact_model_<session>_neuron<i>.pt`` with its five filter counts in
``compact_model_<session>_neuron<i>.nums_filters.npy``. Each model maps a
112x112 RGB image to one number that tracks that neuron's response across
images; its mean and scale are arbitrary, so a simulated neuron built on it
must map the output to a firing rate itself.

The data are read from where they lie (e.g. ``../shared/v4``); they are never
copied into the project.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError
from closedloop.model.files import check_finite, load_array, load_torch

INPUT_PX = 112
"""Side of the models' input images, pixels."""

CHANNEL_MEANS = (116.222, 109.270, 100.381)
"""Per-channel (R, G, B) means subtracted from 0-255 pixel values before layer 0."""

READOUT_PX = 28
"""Side of the last feature map, pixels (112 / 2 / 2)."""

# Weights are stored as float64 but run as float32: over the 33 models of
# session 190923 on 1200 real images the float32 outputs differ from the
# float64 ones by at most ~2e-6 of each model's output standard deviation,
# far below anything that matters, and float32 is ~2x faster on CPU.
DTYPE = torch.float32

_NAME = re.compile(r"^compact_model_(?P<session>.+)_neuron(?P<neuron>\d+)$")


class CompactModel(nn.Module):
    """One published compact model: five conv layers and a dense readout.

    Layer 0 is a full 5x5 convolution (stride 1, 'same'); layers 1-4 are
    depthwise-separable 5x5 convolutions (depthwise without bias, then a
    pointwise 1x1 with bias), layers 1 and 2 with stride 2 and Keras-style
    'same' padding (1 pixel before, 2 after), layers 3 and 4 with stride 1.
    Every layer ends in BatchNorm (stored running statistics) and ReLU. The
    readout is one dense unit over the 28x28xn4 output flattened in (row,
    column, channel) order. Submodule names match the published state-dict
    keys, so ``load_state_dict`` accepts them as they are. Built in eval mode.

    Parameters
    ----------
    nums_filters : sequence of 5 ints
        Output channels of layers 0-4.
    """

    def __init__(self, nums_filters: Sequence[int]):
        super().__init__()
        n = [int(k) for k in nums_filters]
        if len(n) != 5 or min(n) < 1:
            raise ValueError(f"nums_filters must be five positive ints, got {list(nums_filters)}")
        self.nums_filters = tuple(n)
        layers: dict[str, nn.Module] = {
            "layer0_conv": nn.Conv2d(3, n[0], 5, stride=1, bias=True),  # padded in forward
            "layer0_bn": nn.BatchNorm2d(n[0]),
        }
        for i in range(1, 5):
            stride = 2 if i <= 2 else 1
            layers[f"layer{i}_conv_depth"] = nn.Conv2d(n[i - 1], n[i - 1], 5, stride=stride,
                                                       groups=n[i - 1], bias=False)
            layers[f"layer{i}_conv_point"] = nn.Conv2d(n[i - 1], n[i], 1, bias=True)
            layers[f"layer{i}_bn"] = nn.BatchNorm2d(n[i])
        layers["Beta"] = nn.Linear(READOUT_PX * READOUT_PX * n[4], 1)
        self.layers = nn.ModuleDict(layers)
        self.register_buffer("channel_means", torch.tensor(CHANNEL_MEANS).view(1, 3, 1, 1),
                             persistent=False)
        self.to(DTYPE)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Model outputs for a batch of images.

        Parameters
        ----------
        images : torch.Tensor
            (B, 112, 112, 3) RGB, channels last, pixel values 0-255 (not
            mean-subtracted; the channel means are subtracted here).

        Returns
        -------
        torch.Tensor
            (B,) outputs, arbitrary units.
        """
        return self.readout(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The core's output: layer 4 flattened in (row, column, channel) order.

        Parameters
        ----------
        images : torch.Tensor
            (B, 112, 112, 3) RGB pixels 0-255, as for :meth:`forward`.

        Returns
        -------
        torch.Tensor
            (B, 28 * 28 * n4) features; ``readout(features(x)) == forward(x)``.
        """
        return self.feature_maps(images).permute(0, 2, 3, 1).flatten(1)  # (row, column, channel)

    def feature_maps(self, images: torch.Tensor, layer: int = 4) -> torch.Tensor:
        """The output of layer ``layer`` (0-4) for (B, H, W, 3) pixels 0-255: (B, channels, H', W')."""
        layers = self.layers
        x = images.to(self.channel_means.dtype).permute(0, 3, 1, 2) - self.channel_means
        x = self._conv_bn_relu(x, layers["layer0_conv"], layers["layer0_bn"], padding=2)
        for i in range(1, layer + 1):
            pad = (1, 2, 1, 2) if i <= 2 else (2, 2, 2, 2)
            x = layers[f"layer{i}_conv_depth"](F.pad(x, pad))
            x = self._conv_bn_relu(x, layers[f"layer{i}_conv_point"], layers[f"layer{i}_bn"])
        return x

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        """The dense readout ``Beta`` of :meth:`features`: (B, 28 * 28 * n4) -> (B,); a readout of
        several units (a shared student, :func:`closedloop.distil.students.shared_student`) -> (B, units)."""
        out = self.layers["Beta"](features)
        return out[:, 0] if out.shape[1] == 1 else out

    def _conv_bn_relu(self, x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d,
                      padding: int = 0) -> torch.Tensor:
        """Convolution, BatchNorm, ReLU; in eval mode BatchNorm is folded into the convolution.

        Folding (weights scaled by gamma / sqrt(running_var + eps), bias shifted)
        gives the same outputs to float32 rounding and runs ~1.6x faster on CPU,
        where the separate BatchNorm pass over the 112x112 maps dominates.
        """
        if self.training:
            return F.relu(bn(conv(F.pad(x, (padding,) * 4))))
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = (conv.bias - bn.running_mean) * scale + bn.bias
        return F.conv2d(x, weight, bias, padding=padding).relu_()

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for images of any size, batch by batch.

        Parameters
        ----------
        images : np.ndarray
            (B, H, W, 3) RGB, uint8 or float, pixel values 0-255. Images that
            are not 112x112 are resized to it (area averaging when shrinking,
            bilinear when enlarging).
        batch_size : int
            Images per forward pass.

        Returns
        -------
        np.ndarray
            (B,) float64 outputs, arbitrary units.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
        out = np.empty(len(images), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
                x = x.to(DTYPE)
                if x.shape[1:3] != (INPUT_PX, INPUT_PX):
                    shrink = x.shape[1] >= INPUT_PX and x.shape[2] >= INPUT_PX
                    x = x.permute(0, 3, 1, 2)
                    if shrink:
                        x = F.interpolate(x, size=(INPUT_PX, INPUT_PX), mode="area")
                    else:
                        x = F.interpolate(x, size=(INPUT_PX, INPUT_PX), mode="bilinear",
                                          align_corners=False)
                    x = x.permute(0, 2, 3, 1)
                out[start:start + len(x)] = self(x).double().numpy()
        return out


def _sibling_nums_filters(path: Path) -> Path:
    return path.with_name(path.stem + ".nums_filters.npy")


def load_published(path: str | Path) -> CompactModel:
    """Load one published compact model.

    Parameters
    ----------
    path : str or Path
        A ``<name>.pt`` state dict; its filter counts are read from the
        sibling ``<name>.nums_filters.npy``.

    Returns
    -------
    CompactModel
        The model in eval mode, weights in float32.

    Raises
    ------
    ClosedLoopError
        One line naming the file when a file is missing or unreadable, or the
        state dict does not match the architecture (missing or unexpected
        keys, a shape mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise ClosedLoopError(f"{path}: compact model file not found")
    filters_path = _sibling_nums_filters(path)
    if not filters_path.is_file():
        raise ClosedLoopError(f"{filters_path}: nums_filters file not found (needed for {path.name})")
    nums_filters = np.ravel(load_array(filters_path, "nums_filters file"))
    if (nums_filters.size != 5 or not np.issubdtype(nums_filters.dtype, np.integer)
            or np.any(nums_filters < 1)):
        raise ClosedLoopError(f"{filters_path}: expected five positive integer filter counts, "
                              f"got {nums_filters.tolist()}")
    state = load_torch(path, "compact model file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClosedLoopError(f"{path}: not a state dict of tensors (got {type(state).__name__})")

    model = CompactModel(nums_filters.tolist())
    check_state(path, model, state, f"nums_filters {nums_filters.tolist()}")
    model.load_state_dict(state, strict=True)  # copies and casts the float64 weights to float32
    return model


def find_published(folder: str | Path, limit: int | None = None) -> list[Path]:
    """The published compact models in a folder, in natural order.

    Parameters
    ----------
    folder : str or Path
        A folder holding ``compact_model_*.pt`` files.
    limit : int, optional
        Return only the first ``limit`` files.

    Returns
    -------
    list of Path
        Sorted by session, then neuron number numerically (neuron2 before
        neuron10).

    Raises
    ------
    ClosedLoopError
        When the folder does not exist or holds no such file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClosedLoopError(f"{folder}: folder of compact models not found")
    paths = sorted(folder.glob("compact_model_*.pt"), key=_natural_key)
    if not paths:
        raise ClosedLoopError(f"{folder}: no compact_model_*.pt files in this folder")
    return paths if limit is None else paths[:limit]


def published_name(path: str | Path) -> str:
    """A short neuron name, e.g. ``190923_n10`` for ``compact_model_190923_neuron10.pt``.

    Falls back to the file's stem when the name does not follow the pattern.
    """
    stem = Path(path).stem
    match = _NAME.match(stem)
    return f"{match['session']}_n{int(match['neuron'])}" if match else stem


def check_state(path: Path, module: nn.Module, state: dict, arch: str) -> None:
    """Raise a one-line ClosedLoopError naming ``path`` unless ``state`` fits ``module``: the
    missing or unexpected keys, the first weight whose shape differs (``arch`` describes the
    architecture in the message) or that holds inf or NaN."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing keys {_few(missing)}"] if missing else []) + (
            [f"unexpected keys {_few(unexpected)}"] if unexpected else [])
        raise ClosedLoopError(f"{path}: weights do not match the {arch} architecture: {'; '.join(parts)}")
    for key, value in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise ClosedLoopError(f"{path}: weight {key} is a {type(got).__name__}, not a tensor")
        if tuple(got.shape) != tuple(value.shape):
            raise ClosedLoopError(f"{path}: shape mismatch for {key}: the file has {tuple(got.shape)}, "
                                  f"the {arch} architecture needs {tuple(value.shape)}")
    check_finite(path, state)


def _natural_key(path: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def _few(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
