"""Distil any image model into a compact CNN, then prune it (Cowley et al. 2026).

The recipe of *Compact deep neural network models of visual cortex*: a large
teacher network (any torch or ONNX model that maps images to responses) is
distilled into a small student of the published compact architecture
(:class:`~closedloop.model.compact.CompactModel`: a full 5x5 convolution, four
depthwise-separable 5x5 convolutions with strides 1, 2, 2, 1, 1, BatchNorm and
ReLU after each, one dense readout over the 28x28 last feature map; 112x112
RGB input), which is then pruned filter by filter and retrained.

Steps of :func:`compress`
-------------------------
1. **Images.** The pool (a stimulus set, a stimulus ``.npz`` or a folder/zip
   of natural images, optionally with generated images added) is split at
   random into held-out images (``heldout``, default 15 %, at least 2) and
   training images. The held-out images, and anything made from them, are
   never trained on. The training images are augmented up to ``images_n``
   images: random crops of 60-100 % of the side resized back to 112 px,
   horizontal and vertical flips, per-channel gain and offset jitter, and a
   blend with a second training image in a quarter of them.
2. **Teacher responses.** The teacher is run once on every training and
   held-out image; one output (``output``, default 0) is the target. The
   student learns the target z-scored over the training images; the scale and
   offset are folded into its readout at the end, so the saved student answers
   in the teacher's units.
3. **Distillation.** A student with ``filters`` (default 100) filters in every
   layer is trained with Adam on the mean squared error (``steps`` minibatches
   of ``batch`` images, the learning rate decaying on a cosine to 5 % of
   ``lr``; the dense readout's rate is ``lr * 10 / sqrt(its fan-in)``, since
   it sums 28 x 28 x C weights that Adam all moves at once), with BatchNorm
   on batch statistics; afterwards the BatchNorm running statistics are
   recomputed over training images.
4. **Pruning**, one layer at a time from the last (layer 4) back to the first
   (layer 0), each followed by ``prune_steps`` of retraining, then
   ``final_steps`` of retraining at the end.

The pruning criterion
---------------------
For layer ``l``, ``A`` is the layer's output after ReLU (the trained student
in eval mode) on up to ``prune_images`` training images; each (image, row,
column) is one sample and each filter one variable, and ``S`` is the
covariance of the filters over the samples. A kept set ``K`` of filters
*explains* the part of the layer's output variance that the best affine
reconstruction of every filter from the filters in ``K`` (least squares over
the samples) recovers::

    explained(K) = 1 - trace(S - S[:, K] S[K, K]^-1 S[K, :]) / trace(S)

Kept filters are chosen greedily: starting from none, add the filter whose
inclusion raises ``explained`` most (the largest ``|R[:, j]|^2 / R[j, j]``
of the residual covariance ``R``, which is then updated by one step of
pivoted Cholesky elimination), and stop at the first set that explains at
least ``threshold`` (default 0.9) of the variance; the rest are removed. This
is the greedy approximation of the smallest such set. Filters whose output
does not vary (dead filters) are never kept; at least one filter always
stays.

Removing filter ``c`` of layer ``l`` deletes its convolution weights, bias and
BatchNorm entries, and the input channel ``c`` of the next layer (its
depthwise filter and its column of pointwise weights) or, for layer 4, the
readout weights that read it. What the removed filters contributed on average
is kept: for layers 0-3 their mean output times the sum of the next layer's
depthwise filter times its pointwise weights is added to the next layer's
pointwise bias (exact for constant outputs away from the image border); for
layer 4 the removed filters' affine reconstruction from the kept ones is
folded into the readout weights and bias (exact for the linear readout).

The parameter budget
--------------------
With ``budget`` set, a student still larger than ``budget`` parameters after the threshold
pass loses one filter at a time until it fits: for every layer, the best set of one filter
fewer (greedy, as above) and the fraction of the layer's variance it leaves unexplained; the
filter removed is the one with the least variance lost per parameter saved (a layer-4 filter
saves its 784 readout weights, so the readout is usually cut first). The moments are measured
again after each removal, the same compensation is applied, and the student is retrained
(``final_steps``) afterwards.

Parameters are counted as trainable tensors (``nn.Module.parameters()``;
BatchNorm's running statistics excluded) for torch models, and as the
elements of the float initializers (and Constant tensors) of an ONNX graph. Accuracy relative to
the teacher is Pearson's r and R^2 (``1 - SSE / SST``, in the teacher's units)
between the student's and the teacher's outputs on the held-out images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError, one_line
from closedloop.model.compact import INPUT_PX, READOUT_PX, CompactModel

LAYERS = 5
READOUT_SCALE = 10.0
"""The readout's Adam step size is ``lr * READOUT_SCALE / sqrt(fan-in)`` (see :func:`train`)."""
MIN_POOL = 10
"""Fewest pool images :func:`compress` accepts (some are held out)."""

FAMILIES = ("contour", "dot", "grating", "texture")
"""Stimulus families that :func:`generated_images` draws from, in equal numbers."""


# ------------------------------------------------------------------------ configuration --
@dataclass(frozen=True)
class CompressConfig:
    """Settings of :func:`compress` (see the module docstring for what each step does).

    Attributes
    ----------
    filters : int
        Filters per layer of the student before pruning.
    threshold : float
        Fraction of each layer's output variance the kept filters must explain.
    output : int
        Which of the teacher's outputs the student learns.
    images_n : int
        Training images after augmentation (at least the training part of the pool).
    heldout : float
        Fraction of the pool held out for the accuracy figures.
    steps, prune_steps, final_steps : int
        Minibatches of distillation, of retraining after each layer is
        pruned, and of the final retraining.
    batch : int
        Images per minibatch.
    lr : float
        Adam step size.
    prune_images : int
        Training images whose activations rank a layer's filters.
    calibration_images : int
        Training images that set the BatchNorm statistics after training.
    budget : int, optional
        Most parameters the pruned student may have (see "The parameter budget").
    seed : int
        Seed of the split, the augmentation, the initialisation and the minibatches.
    """

    filters: int = 100
    threshold: float = 0.9
    output: int = 0
    images_n: int = 1500
    heldout: float = 0.15
    steps: int = 80
    prune_steps: int = 15
    final_steps: int = 40
    batch: int = 16
    lr: float = 2e-3
    prune_images: int = 128
    calibration_images: int = 256
    budget: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("filters", self.filters >= 1), ("threshold", 0 < self.threshold <= 1),
            ("output", self.output >= 0), ("images_n", self.images_n >= 1),
            ("heldout", 0 < self.heldout < 1), ("steps", self.steps >= 0),
            ("prune_steps", self.prune_steps >= 0), ("final_steps", self.final_steps >= 0),
            ("batch", self.batch >= 2), ("lr", self.lr > 0), ("prune_images", self.prune_images >= 1),
            ("calibration_images", self.calibration_images >= 2),
            ("budget", self.budget is None or self.budget >= compact_parameters((1,) * LAYERS)),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            values = ", ".join(f"{b}={getattr(self, b)!r}" for b in bad)
            raise ClosedLoopError(f"compress settings: invalid {values}")


@dataclass
class LayerPruning:
    """What pruning did to one layer."""

    layer: int
    before: int
    kept: list[int]
    explained: float
    """Fraction of the layer's output variance the kept filters explain."""

    @property
    def after(self) -> int:
        return len(self.kept)


@dataclass
class CompressResult:
    """The student and the figures of one :func:`compress` run."""

    student: CompactModel
    teacher_name: str
    output: int
    teacher_parameters: int | None
    parameters_before: int
    parameters_after: int
    filters_before: tuple[int, ...]
    filters_after: tuple[int, ...]
    r_before: float
    r2_before: float
    r_after: float
    r2_after: float
    train_images: int
    heldout_images: int
    pool_images: int
    seconds: float
    layers: list[LayerPruning] = field(default_factory=list)
    heldout_before: np.ndarray | None = field(default=None, repr=False)
    """The unpruned student's predictions on the held-out images (teacher's units)."""
    heldout_after: np.ndarray | None = field(default=None, repr=False)
    """The pruned student's predictions on the held-out images (teacher's units)."""

    @property
    def ratio(self) -> float | None:
        """Teacher parameters over final student parameters."""
        if not self.teacher_parameters:
            return None
        return self.teacher_parameters / self.parameters_after

    def metadata(self) -> dict:
        """Plain values to keep in the saved student file."""
        return {
            "teacher": self.teacher_name, "teacher_output": self.output,
            "teacher_parameters": self.teacher_parameters,
            "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
            "filters_before": list(self.filters_before), "filters_after": list(self.filters_after),
            "heldout_r_before": self.r_before, "heldout_r2_before": self.r2_before,
            "heldout_r": self.r_after, "heldout_r2": self.r2_after,
            "train_images": self.train_images, "heldout_images": self.heldout_images,
        }

    def report(self) -> str:
        """The figures as a small plain-text table."""
        ratio = "-" if self.ratio is None else f"{self.ratio:.1f}x"
        teacher = "unknown" if self.teacher_parameters is None else f"{self.teacher_parameters:,}"
        rows = [
            ("teacher", f"{self.teacher_name} (output {self.output})"),
            ("teacher parameters", teacher),
            ("student parameters, before pruning", f"{self.parameters_before:,}"),
            ("student parameters, after pruning", f"{self.parameters_after:,}"),
            ("compression ratio (teacher / student)", ratio),
            ("student / pruned student params", f"{self.parameters_before / self.parameters_after:.1f}x"),
            ("filters per layer, before", " ".join(map(str, self.filters_before))),
            ("filters per layer, after", " ".join(map(str, self.filters_after))),
            ("variance explained by kept filters",
             " ".join(f"L{p.layer}:{p.explained:.3f}" for p in sorted(self.layers, key=lambda p: p.layer))),
            ("held-out r vs teacher, before pruning", f"{self.r_before:.3f} (R2 {self.r2_before:.3f})"),
            ("held-out r vs teacher, after pruning", f"{self.r_after:.3f} (R2 {self.r2_after:.3f})"),
            ("images: pool / trained on / held out",
             f"{self.pool_images} / {self.train_images} / {self.heldout_images}"),
            ("wall time", f"{self.seconds:.0f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# ------------------------------------------------------------------------------- images --
def resize_images(images: np.ndarray, size_px: int = INPUT_PX) -> np.ndarray:
    """(K, H, W, 3) uint8 images at (K, size_px, size_px, 3) uint8: area when shrinking, else bilinear.

    Images already of that size are returned as they are; used for pools saved
    at another size (:func:`closedloop.stimuli.load.load_pool` keeps their size).
    """
    if images.shape[1:3] == (size_px, size_px):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    return _resize(x, size_px).round().clamp(0, 255).to(torch.uint8).numpy()


def generated_images(count: int, seed: int, size_px: int = INPUT_PX) -> np.ndarray:
    """``count`` random stimuli (contours, dots, gratings, textures in equal numbers), uint8."""
    from closedloop.stimuli import generate_pool

    per = [count // len(FAMILIES) + (i < count % len(FAMILIES)) for i in range(len(FAMILIES))]
    return generate_pool(dict(zip(FAMILIES, per)), size_px, seed).images


def _resize(x: torch.Tensor, size_px: int) -> torch.Tensor:
    """(B, H, W, 3) float -> (B, size_px, size_px, 3): area when shrinking, else bilinear."""
    x = x.permute(0, 3, 1, 2)
    if x.shape[2] >= size_px and x.shape[3] >= size_px:
        x = F.interpolate(x, size=(size_px, size_px), mode="area")
    else:
        x = F.interpolate(x, size=(size_px, size_px), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


def augment(images: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` new images made from ``images`` (random crop, flips, colour jitter, blends).

    Parameters
    ----------
    images : np.ndarray
        (K, N, N, 3) uint8 source images.
    count : int
        Images to make.
    rng : np.random.Generator
        Randomness.

    Returns
    -------
    np.ndarray
        (count, N, N, 3) uint8.
    """
    n, side = len(images), images.shape[1]
    out = np.empty((count, side, side, 3), dtype=np.uint8)
    for i in range(count):
        x = images[rng.integers(n)].astype(np.float32)
        if rng.random() < 0.25:
            w = rng.uniform(0.3, 0.7)
            x = w * x + (1 - w) * images[rng.integers(n)].astype(np.float32)
        crop = int(round(side * rng.uniform(0.6, 1.0)))
        top, left = rng.integers(0, side - crop + 1, size=2)
        x = x[top:top + crop, left:left + crop]
        if crop != side:
            x = _resize(torch.from_numpy(np.ascontiguousarray(x))[None], side)[0].numpy()
        if rng.random() < 0.5:
            x = x[:, ::-1]
        if rng.random() < 0.2:
            x = x[::-1]
        gain = rng.uniform(0.7, 1.3) * rng.uniform(0.85, 1.15, size=3)
        offset = rng.uniform(-25, 25) + rng.uniform(-10, 10, size=3)
        mean = x.mean(axis=(0, 1))
        out[i] = np.clip(np.rint((x - mean) * gain + mean + offset), 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- teachers --
def count_parameters(model) -> int | None:
    """Parameters of a model: a torch module, or an ImageModel (torch-backed or ONNX).

    Torch: the elements of ``parameters()``. ONNX: the elements of the graph's
    float initializers. None when neither is available.
    """
    if isinstance(model, nn.Module):
        return int(sum(p.numel() for p in model.parameters()))
    module = model.torch_module() if hasattr(model, "torch_module") else None
    if module is not None:
        return int(sum(p.numel() for p in module.parameters()))
    path = getattr(model, "path", None)
    if path is not None and Path(path).suffix.lower() == ".onnx":
        return _onnx_parameters(Path(path))
    return None


def _onnx_parameters(path: Path) -> int | None:
    try:
        import onnx
        from onnx import TensorProto

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a count is a nicety; the model itself already loaded
        return None
    floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    tensors = list(graph.initializer)
    for node in graph.node:  # weights stored as Constant nodes
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    return int(sum(math.prod(t.dims) for t in tensors if t.data_type in floats))


def teacher_targets(teacher, images: np.ndarray, output: int, where: str, batch_size: int = 64) -> np.ndarray:
    """One output of the teacher on images, float64 (N,); errors name ``where``."""
    outputs = int(getattr(teacher, "outputs", 1))
    if output >= outputs:
        raise ClosedLoopError(f"{where}: output {output} asked for, but the teacher has {outputs} "
                              f"output{'s' if outputs != 1 else ''} (0-{outputs - 1})")
    try:
        y = np.asarray(teacher.predict(images, batch_size=batch_size), dtype=np.float64)
    except ClosedLoopError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's model
        raise ClosedLoopError(f"{where}: the teacher fails on ({len(images)}, {images.shape[1]}, "
                              f"{images.shape[2]}, 3) pixel images ({one_line(error)})") from None
    y = y.reshape(len(images), -1)
    if y.shape[1] <= output:
        raise ClosedLoopError(f"{where}: the teacher gave {y.shape[1]} outputs per image, "
                              f"output {output} asked for")
    y = y[:, output]
    if not np.all(np.isfinite(y)):
        raise ClosedLoopError(f"{where}: the teacher's output {output} is not finite on "
                              f"{int(np.sum(~np.isfinite(y)))} of {len(y)} images")
    return y


# ------------------------------------------------------------------------ the student --
def new_student(filters: int | Sequence[int] = 100, seed: int = 0) -> CompactModel:
    """A freshly initialised compact model (``filters`` in every layer, or five counts)."""
    nums = (int(filters),) * LAYERS if np.ndim(filters) == 0 else tuple(int(k) for k in filters)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CompactModel(nums)


def layer_output(model: CompactModel, images: torch.Tensor, layer: int) -> torch.Tensor:
    """Output of ``layer`` (0-4) after ReLU, (B, C, H, W), for (B, 112, 112, 3) float pixels.

    Uses the model's current mode (eval: running BatchNorm statistics).
    """
    layers = model.layers
    x = images.to(model.channel_means.dtype).permute(0, 3, 1, 2) - model.channel_means
    x = model._conv_bn_relu(x, layers["layer0_conv"], layers["layer0_bn"], padding=2)
    for i in range(1, layer + 1):
        pad = (1, 2, 1, 2) if i <= 2 else (2, 2, 2, 2)
        x = layers[f"layer{i}_conv_depth"](F.pad(x, pad))
        x = model._conv_bn_relu(x, layers[f"layer{i}_conv_point"], layers[f"layer{i}_bn"])
    return x


def layer_moments(model: CompactModel, images: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (C,) and covariance (C, C) of a layer's filters over (image, row, column) samples."""
    model.eval()
    side = {0: INPUT_PX, 1: INPUT_PX // 2}.get(layer, READOUT_PX)
    batch_size = max(1, 50_000 // side ** 2)  # keeps each (C, samples) float64 block small
    total, sums, outer = 0, None, None
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).float()
            a = layer_output(model, x, layer)
            a = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).double()
            s, o = a.sum(1), a @ a.T
            sums, outer = (s, o) if sums is None else (sums + s, outer + o)
            total += a.shape[1]
    mean = sums / total
    cov = outer / total - torch.outer(mean, mean)
    return mean.numpy(), ((cov + cov.T) / 2).numpy()


def select_filters(cov: np.ndarray, threshold: float = 0.9, most: int | None = None) -> tuple[list[int], float]:
    """The greedy smallest set of filters that explains ``threshold`` of the variance.

    Parameters
    ----------
    cov : np.ndarray
        (C, C) covariance of the layer's filters.
    threshold : float
        Fraction of ``trace(cov)`` to explain.
    most : int, optional
        Keep at most this many filters, even if they explain less.

    Returns
    -------
    kept : list of int
        Kept filters, in increasing order.
    explained : float
        Fraction of the variance they explain (see the module docstring).
    """
    cov = np.asarray(cov, dtype=np.float64)
    total = float(np.trace(cov))
    if not total > 0:  # nothing varies: keep one filter so the layer still exists
        return [0], 1.0
    residual = cov.copy()
    kept: list[int] = []
    explained = 0.0
    tiny = 1e-12 * total
    most = len(cov) if most is None else max(1, min(int(most), len(cov)))
    while explained < threshold * total * (1 - 1e-12) and len(kept) < most:
        diag = np.diag(residual).copy()
        gains = np.where(diag > tiny, (residual ** 2).sum(axis=0) / np.maximum(diag, tiny), -np.inf)
        gains[kept] = -np.inf
        j = int(np.argmax(gains))
        if not np.isfinite(gains[j]):
            break  # what is left does not vary
        kept.append(j)
        residual = residual - np.outer(residual[:, j], residual[j, :]) / residual[j, j]
        explained = total - float(np.trace(residual))
    return sorted(kept), min(1.0, explained / total)


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum).to(bn.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(bn.weight[keep])
        new.bias.copy_(bn.bias[keep])
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _sliced_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None = None,
                 in_keep: torch.Tensor | None = None, depthwise: bool = False) -> nn.Conv2d:
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None and not depthwise:
        weight = weight[:, in_keep]
    out_c = weight.shape[0]
    in_c = out_c if depthwise else weight.shape[1]
    new = nn.Conv2d(in_c, out_c, conv.kernel_size, stride=conv.stride, groups=out_c if depthwise else 1,
                    bias=conv.bias is not None).to(weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach() if out_keep is None else conv.bias.detach()[out_keep])
    return new


def prune_layer(model: CompactModel, layer: int, kept: Sequence[int], mean: np.ndarray | None = None,
                cov: np.ndarray | None = None) -> CompactModel:
    """Remove every filter of ``layer`` not in ``kept``, in place; returns the model.

    Parameters
    ----------
    model : CompactModel
        The model; its ``nums_filters`` is updated.
    layer : int
        0-4.
    kept : sequence of int
        Filters to keep.
    mean, cov : np.ndarray, optional
        The layer's filter means (C,) and covariance (C, C) (see
        :func:`layer_moments`); with them the removed filters' contribution is
        compensated as the module docstring describes.
    """
    n = list(model.nums_filters)
    kept = sorted(set(int(k) for k in kept))
    if not kept or kept[0] < 0 or kept[-1] >= n[layer]:
        raise ValueError(f"kept filters {kept} do not fit layer {layer} of {n[layer]} filters")
    keep = torch.tensor(kept, dtype=torch.long)
    dropped = [c for c in range(n[layer]) if c not in set(kept)]
    layers = model.layers
    conv = "layer0_conv" if layer == 0 else f"layer{layer}_conv_point"
    with torch.no_grad():
        if layer < LAYERS - 1:
            depth, point = layers[f"layer{layer + 1}_conv_depth"], layers[f"layer{layer + 1}_conv_point"]
            if mean is not None and dropped:
                drop = torch.tensor(dropped, dtype=torch.long)
                sums = depth.weight[drop].sum(dim=(1, 2, 3))  # (D,)
                shift = point.weight[:, drop, 0, 0] @ (sums * torch.as_tensor(mean[dropped], dtype=sums.dtype))
                point.bias += shift
            layers[f"layer{layer + 1}_conv_depth"] = _sliced_conv(depth, out_keep=keep, depthwise=True)
            layers[f"layer{layer + 1}_conv_point"] = _sliced_conv(point, in_keep=keep)
        else:
            beta = layers["Beta"]
            w = beta.weight.detach().view(beta.out_features, READOUT_PX * READOUT_PX, n[layer])
            bias = beta.bias.detach().clone()
            if mean is not None and cov is not None and dropped:
                coef, offset = _affine_reconstruction(mean, cov, kept, dropped)
                w_d = w[:, :, dropped]
                w = w[:, :, kept] + w_d @ torch.as_tensor(coef, dtype=w.dtype)
                bias = bias + (w_d.sum(dim=1) @ torch.as_tensor(offset, dtype=w.dtype))
            else:
                w = w[:, :, kept]
            new = nn.Linear(READOUT_PX * READOUT_PX * len(kept), beta.out_features).to(w.dtype)
            new.weight.copy_(w.reshape(beta.out_features, -1))
            new.bias.copy_(bias)
            layers["Beta"] = new
        layers[conv] = _sliced_conv(layers[conv], out_keep=keep)
        layers[f"layer{layer}_bn"] = _slice_bn(layers[f"layer{layer}_bn"], keep)
    n[layer] = len(kept)
    model.nums_filters = tuple(n)
    return model


def _affine_reconstruction(mean: np.ndarray, cov: np.ndarray, kept: list[int],
                           dropped: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``a_D ~ coef @ a_K + offset`` from the moments: coef (D, K), offset (D,)."""
    s_kk = cov[np.ix_(kept, kept)]
    s_dk = cov[np.ix_(dropped, kept)]
    ridge = 1e-9 * max(float(np.trace(s_kk)) / len(kept), 1e-12)
    coef = np.linalg.solve(s_kk + ridge * np.eye(len(kept)), s_dk.T).T
    offset = mean[dropped] - coef @ mean[kept]
    return coef, offset


def compact_parameters(nums_filters: Sequence[int]) -> int:
    """Trainable parameters of a compact model with these five filter counts (as ``count_parameters``)."""
    n = [int(k) for k in nums_filters]
    total = 3 * 25 * n[0] + 3 * n[0]  # full 5x5 convolution with bias, BatchNorm weight and bias
    for i in range(1, LAYERS):
        total += 25 * n[i - 1] + n[i - 1] * n[i] + 3 * n[i]  # depthwise, pointwise with bias, BatchNorm
    return total + READOUT_PX * READOUT_PX * n[-1] + 1


def prune_to_budget(model: CompactModel, images: np.ndarray, budget: int) -> int:
    """Remove filters one at a time, the least variance lost per parameter saved first, until the
    model has at most ``budget`` parameters (see "The parameter budget"); returns how many went."""
    removed = 0
    while compact_parameters(model.nums_filters) > budget:
        best = None
        for layer in range(LAYERS):
            n = list(model.nums_filters)
            if n[layer] <= 1:
                continue
            mean, cov = layer_moments(model, images, layer)
            kept, explained = select_filters(cov, 1.0, most=n[layer] - 1)
            saved = compact_parameters(n) - compact_parameters(n[:layer] + [n[layer] - 1] + n[layer + 1:])
            cost = (1 - explained) / saved
            if best is None or cost < best[0]:
                best = (cost, layer, kept, mean, cov)
        if best is None:
            break  # one filter per layer: nothing left to remove
        _, layer, kept, mean, cov = best
        prune_layer(model, layer, kept, mean, cov)
        removed += 1
    return removed


# ----------------------------------------------------------------------------- training --
def train(model: CompactModel, images: np.ndarray, targets: np.ndarray, steps: int, batch: int,
          lr: float, rng: np.random.Generator, log: Callable[[str], None] | None = None,
          label: str = "train") -> float:
    """Fit ``model`` to ``targets`` (N,) on ``images`` (N, 112, 112, 3) uint8 with Adam and MSE.

    The step size decays on a cosine from ``lr`` to 5 % of it. Returns the
    mean loss over the last tenth of the steps (NaN for 0 steps). Leaves the
    model in eval mode.
    """
    if steps <= 0:
        return float("nan")
    model.train()
    readout = list(model.layers["Beta"].parameters())
    core = [p for p in model.parameters() if all(p is not q for q in readout)]
    # Adam moves every weight by about the step size, and the readout sums 28 x 28 x C of them:
    # its step shrinks with the square root of its fan-in so the output moves like the core's.
    readout_lr = lr * READOUT_SCALE / math.sqrt(model.layers["Beta"].in_features)
    optimiser = torch.optim.Adam([{"params": core, "lr": lr, "base": lr},
                                  {"params": readout, "lr": readout_lr, "base": readout_lr}])
    y = torch.as_tensor(targets, dtype=torch.float32)
    losses = []
    started = time.monotonic()
    batch = min(batch, len(images))
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = group["base"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = np.sort(rng.choice(len(images), size=batch, replace=False))
        x = torch.from_numpy(images[idx]).float()
        loss = F.mse_loss(model(x), y[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"{label}: step {step + 1}/{steps}, loss {np.mean(losses[-max(1, steps // 5):]):.3f}, "
                f"{time.monotonic() - started:.0f} s")
    model.eval()
    return float(np.mean(losses[-max(1, steps // 10):]))


def recalibrate_batchnorm(model: CompactModel, images: np.ndarray, batch: int = 32) -> None:
    """Recompute every BatchNorm's running statistics over ``images`` (a cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            if len(chunk) >= 2:
                model(torch.from_numpy(np.ascontiguousarray(chunk)).float())
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def predict(model: CompactModel, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's outputs (N,) float64 on (N, 112, 112, 3) images, in eval mode."""
    model.eval()
    return model.predict(images, batch_size=batch_size)


def fold_scale(model: CompactModel, scale: float, offset: float) -> None:
    """Make the model output ``scale * output + offset`` (folded into the readout)."""
    beta = model.layers["Beta"]
    with torch.no_grad():
        beta.weight *= scale
        beta.bias.mul_(scale).add_(offset)


def accuracy(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Pearson r and R^2 (``1 - SSE / SST``) of ``predicted`` against ``target``."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    sst = float(np.sum((target - target.mean()) ** 2))
    r2 = 1 - float(np.sum((predicted - target) ** 2)) / sst if sst > 0 else float("nan")
    if predicted.std() == 0 or target.std() == 0:
        return float("nan"), r2
    return float(np.corrcoef(predicted, target)[0, 1]), r2


# ----------------------------------------------------------------------------- compress --
def compress(teacher, images: np.ndarray, config: CompressConfig | None = None,
             log: Callable[[str], None] | None = None, where: str | None = None,
             pool_name: str = "image pool") -> CompressResult:
    """Distil one output of ``teacher`` into a compact student, prune it and retrain it.

    Parameters
    ----------
    teacher : ImageModel
        Any image model (:func:`closedloop.model.models.load_model`); a torch
        module mapping (B, H, W, 3) pixels to (B, ...) is wrapped.
    images : np.ndarray
        (K, 112, 112, 3) uint8 pool; part is held out.
    config : CompressConfig, optional
        Settings (defaults: :class:`CompressConfig`).
    log : callable, optional
        Receives one line per step of progress.
    where : str, optional
        How errors name the teacher (default its path or name).
    pool_name : str
        How errors name the pool (e.g. ``image pool stimuli/demo.toml``).

    Returns
    -------
    CompressResult
        The pruned student (eval mode, outputs in the teacher's units) and the figures.

    Raises
    ------
    ClosedLoopError
        An empty or too small pool, images of the wrong shape, a teacher that
        fails on images, has no such output or is constant on the pool.
    """
    from closedloop.model.models import as_image_model

    started = time.monotonic()
    config = config or CompressConfig()
    say = log or (lambda _: None)
    if isinstance(teacher, nn.Module):
        teacher = as_image_model(teacher)
    where = where or f"teacher {getattr(teacher, 'path', None) or getattr(teacher, 'name', 'model')}"
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (INPUT_PX, INPUT_PX, 3):
        raise ClosedLoopError(f"{pool_name}: images have shape {images.shape}, expected "
                              f"(K, {INPUT_PX}, {INPUT_PX}, 3)")
    if len(images) < MIN_POOL:
        raise ClosedLoopError(f"{pool_name}: {len(images)} images; compress needs at least {MIN_POOL} "
                              f"(a part is held out)")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    teacher_targets(teacher, images[:2], config.output, where)  # fails fast: the output, image input
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(images))
    n_held = min(len(images) - 2, max(2, int(round(config.heldout * len(images)))))
    held, pool_train = images[order[:n_held]], images[order[n_held:]]
    extra = max(0, config.images_n - len(pool_train))
    say(f"images: {len(images)} in the pool, {n_held} held out; augmenting {len(pool_train)} "
        f"training images with {extra} more")
    train_images = np.concatenate([pool_train, augment(pool_train, extra, rng)]) if extra else pool_train
    say(f"teacher {getattr(teacher, 'name', '')}: responses to {len(train_images) + n_held} images")
    y_train = teacher_targets(teacher, train_images, config.output, where)
    y_held = teacher_targets(teacher, held, config.output, where)
    result = distil(train_images, y_train, held, y_held, config, say, f"{where}: output {config.output}", rng)
    return replace(result, teacher_name=getattr(teacher, "name", "teacher"),
                   teacher_parameters=count_parameters(teacher), pool_images=len(images),
                   seconds=time.monotonic() - started)


def distil(train_images: np.ndarray, y_train: np.ndarray, held: np.ndarray, y_held: np.ndarray,
           config: CompressConfig, log: Callable[[str], None] | None = None, where: str = "target",
           rng: np.random.Generator | None = None, start: CompactModel | None = None) -> CompressResult:
    """Distil targets into a compact student and prune it (steps 3 and 4 of :func:`compress`).

    Parameters
    ----------
    train_images, held : np.ndarray
        (N, 112, 112, 3) and (H, 112, 112, 3) uint8: images to train on and to judge on.
    y_train, y_held : np.ndarray
        (N,) and (H,) the teacher's responses to them.
    config : CompressConfig
        Settings (``output``, ``images_n`` and ``heldout`` are the caller's business).
    log : callable, optional
        One line per step of progress.
    where : str
        How an error names the targets.
    rng : np.random.Generator, optional
        Randomness (default: seeded from ``config.seed``).
    start : CompactModel, optional
        The student to start from (already trained on the z-scored targets, e.g. cut from a shared
        student, :func:`closedloop.distil.students.shared_student`), instead of a fresh one with
        ``config.filters`` filters; ``config.steps`` then fine-tune it. It is changed in place.

    Returns
    -------
    CompressResult
        With ``teacher_name`` "teacher" and no teacher parameter count (the caller knows them).
    """
    started = time.monotonic()
    say = log or (lambda _: None)
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    y_train, y_held = np.asarray(y_train, np.float64), np.asarray(y_held, np.float64)
    mu, sd = float(y_train.mean()), float(y_train.std())
    if not sd > 1e-12 * max(1.0, abs(mu)):
        raise ClosedLoopError(f"{where} is constant ({mu:.6g}) over the {len(y_train)} training images; "
                              f"there is nothing to learn")
    z_train = (y_train - mu) / sd
    calibration = train_images[np.sort(rng.permutation(len(train_images))[:config.calibration_images])]
    ranking = train_images[np.sort(rng.permutation(len(train_images))[:config.prune_images])]

    def retrain(student: CompactModel, steps: int, lr: float, label: str) -> None:
        train(student, train_images, z_train, steps, config.batch, lr, rng, say, label)
        recalibrate_batchnorm(student, calibration, config.batch)

    student = new_student(config.filters, config.seed) if start is None else start
    filters_before = student.nums_filters
    params_before = count_parameters(student)
    say(f"student {filters_before}: {params_before:,} parameters")
    retrain(student, config.steps, config.lr, "distil")
    before = predict(student, held) * sd + mu
    r_before, r2_before = accuracy(before, y_held)
    say(f"distilled: held-out r {r_before:.3f}, R2 {r2_before:.3f}")

    prunings = []
    for layer in reversed(range(LAYERS)):
        mean, cov = layer_moments(student, ranking, layer)
        kept, explained = select_filters(cov, config.threshold)
        count = student.nums_filters[layer]
        prune_layer(student, layer, kept, mean, cov)
        prunings.append(LayerPruning(layer, count, kept, explained))
        say(f"layer {layer}: {count} -> {len(kept)} filters ({explained:.3f} of the variance)")
        retrain(student, config.prune_steps, config.lr / 2, f"retrain after layer {layer}")
    if config.budget is not None and count_parameters(student) > config.budget:
        removed = prune_to_budget(student, ranking, config.budget)
        say(f"budget {config.budget:,}: removed {removed} more filters, now {student.nums_filters}, "
            f"{count_parameters(student):,} parameters")
    retrain(student, config.final_steps, config.lr / 2, "final retrain")
    fold_scale(student, sd, mu)
    after = predict(student, held)
    r_after, r2_after = accuracy(after, y_held)
    say(f"pruned {student.nums_filters}: held-out r {r_after:.3f}, R2 {r2_after:.3f}")
    return CompressResult(
        student=student.eval(), teacher_name="teacher", output=config.output, teacher_parameters=None,
        parameters_before=params_before, parameters_after=count_parameters(student), filters_before=filters_before,
        filters_after=student.nums_filters, r_before=r_before, r2_before=r2_before, r_after=r_after,
        r2_after=r2_after, train_images=len(train_images), heldout_images=len(held),
        pool_images=len(train_images) + len(held), seconds=time.monotonic() - started, layers=prunings,
        heldout_before=before, heldout_after=after)


def compress_file(teacher_path: str | Path, pool: np.ndarray, out: str | Path,
                  config: CompressConfig | None = None, log: Callable[[str], None] | None = None,
                  pool_name: str = "image pool") -> CompressResult:
    """Load a teacher file, :func:`compress` it on ``pool`` and save the student to ``out``.

    The student is written with :func:`closedloop.model.models.save_model`
    (kind ``compact``), with the figures as metadata; ``load_model(out)``
    reads it back as a one-output image model.

    Raises
    ------
    ClosedLoopError
        As :func:`compress` and :func:`~closedloop.model.models.load_model`,
        naming the teacher file or the pool.
    """
    from closedloop.model.models import load_model, save_model

    teacher_path = Path(teacher_path)
    try:
        teacher = load_model(teacher_path)
    except ClosedLoopError as error:
        raise ClosedLoopError(f"teacher {error}") from None
    if len(pool) == 0:
        raise ClosedLoopError(f"{pool_name}: empty pool (0 images)")
    result = compress(teacher, pool, config, log, where=f"teacher {teacher_path}", pool_name=pool_name)
    save_model(result.student, out, name=f"{teacher.name}-student",
               metadata={**result.metadata(), "teacher": str(teacher_path)})
    return result
