"""Inspect an image model: its filters, its best and worst pool images, a synthesised preferred image.

``closedloop inspect MODEL --out FIG.png`` (and :func:`inspect_model`) writes one
figure of four panels for one output (neuron) of a model:

(a) the layer-0 filters as RGB patches, each normalised on its own (grey is
    zero, the largest absolute weight reaches black or full colour); for a
    published compact model they are the BatchNorm-folded 5x5x3 filters;
(b) the filters per layer: a bar chart of the filter counts and, for a compact
    model, the (BatchNorm-folded) pointwise weight matrices of layers 1-4;
(c) the 16 pool images with the highest and the 16 with the lowest predicted
    response, each with its value;
(d) a preferred image synthesised by gradient ascent in pixel space (see
    :func:`synthesize`), with its predicted response against the pool's
    maximum and median and the ascent's trace.

The title gives the model's name, the output and the parameter count.

What each kind of model shows
-----------------------------
- A published compact model (or closedloop's own compact or ensemble files):
  everything, the filters read from the weights.
- A generic torch model (TorchScript, other closedloop kinds): the first conv
  weight with 3 input channels is shown as layer 0 (if there is one), the
  filter counts are the output channels of each conv weight in parameter
  order, BatchNorm not folded; panel (b) says so.
- An ONNX model has neither torch weights nor gradients here: panels (a),
  (b) and (d) are replaced by a note saying so, panel (c) is drawn as usual
  and the summary says that no image was synthesised. The command does not
  refuse ONNX models.

Everything is deterministic for a given seed: the start image's noise and the
jitter come from a seeded generator, and the ascent runs on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError
from closedloop.stimuli.load import SHIPPED, load_pool

DEFAULT_POOL = SHIPPED / "demo.toml"
"""The pool used when none is given: the project's demo stimulus set."""

POOL_PX = 112
"""Side at which stimulus sets and natural images are rendered for the pool, pixels."""

SHOWN = 16
"""Top and bottom pool images shown."""

FIGURE_INCHES = (16.0, 12.0)
FIGURE_DPI = 100
FIGURE_PX = (int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))
"""Size of the written PNG, (width, height) pixels."""

MAX_LAYER0 = 96
"""At most this many layer-0 filters are drawn (the first ones)."""

GREY = 128.0
"""Start (and regularisation target) of the synthesis, pixel value."""

_COMPACT_KEYS = ("layers.layer0_conv.weight", "layers.layer0_bn.weight", "layers.layer0_bn.running_var")


# ---------------------------------------------------------------------------- pools --
def rank_pool(values: np.ndarray, count: int = SHOWN) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``count`` highest and the ``count`` lowest values.

    Parameters
    ----------
    values : np.ndarray
        (K,) predicted responses. Non-finite values are never picked.
    count : int
        How many of each (fewer when the pool has fewer finite values).

    Returns
    -------
    (top, bottom) : tuple of np.ndarray
        ``top`` from the highest value down, ``bottom`` from the lowest value
        up; ties are broken by index (the earlier first).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = np.flatnonzero(np.isfinite(values))
    top = finite[np.lexsort((finite, -values[finite]))][:count]  # last key first: value, then index
    bottom = finite[np.lexsort((finite, values[finite]))][:count]
    return top, bottom


# ------------------------------------------------------------------------ synthesis --
@dataclass
class Synthesis:
    """A gradient-synthesised preferred image.

    Attributes
    ----------
    image : np.ndarray
        (H, W, 3) uint8, the final image.
    start : np.ndarray
        (H, W, 3) uint8, the start image (grey plus low noise).
    value, start_value : float
        Predicted response (``model.predict``, no jitter) of ``image`` and of ``start``.
    trace : np.ndarray
        (steps,) the objective (the output, on the jittered image) at each step.
    steps, seed : int
    """

    image: np.ndarray
    start: np.ndarray
    value: float
    start_value: float
    trace: np.ndarray
    steps: int
    seed: int


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, H, W, 3) pixels, separable, reflect padding."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.permute(0, 3, 1, 2)
    channels = c.shape[1]
    c = F.conv2d(F.pad(c, (radius, radius, 0, 0), mode="reflect"),
                 kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    c = F.conv2d(F.pad(c, (0, 0, radius, radius), mode="reflect"),
                 kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return c.permute(0, 2, 3, 1)


def synthesize(model, output: int = 0, steps: int = 100, seed: int = 0, size: int | None = None,
               lr: float = 4.0, noise: float = 2.0, decay: float = 0.002, blur_sigma: float = 0.5,
               blur_every: int = 4, jitter: int = 2) -> Synthesis:
    """A preferred image for one output, by gradient ascent in pixel space.

    Start from grey (128) plus Gaussian noise of ``noise`` pixel values; at
    each step shift the image by a random jitter of up to ``jitter`` pixels
    (circularly), take the gradient of the output, and take an Adam step of
    ``lr`` pixel values on the image. After each step the image decays
    towards grey by ``decay`` (an L2 penalty), is blurred (Gaussian,
    ``blur_sigma`` pixels) every ``blur_every`` steps (not after the last),
    and is clipped to 0-255. The final image is rounded to uint8. Adam makes
    the step size independent of the output's arbitrary scale.

    The ascent runs on one CPU thread (restored afterwards): for one small
    image intra-op threads gain little and, on a busy machine, cost a lot
    (40 steps of a published model: ~1 s on one thread, ~30 s on two with
    the cores shared), and the result then does not depend on the thread count.

    Parameters
    ----------
    model : ImageModel
        With a torch module (:meth:`ImageModel.torch_module`).
    output : int
        Which output (neuron) to maximise.
    steps : int
        Ascent steps (0: the start image).
    seed : int
        Seed of the start noise and the jitter.
    size : int, optional
        Image side; default the model's ``input_px``, else 112.

    Returns
    -------
    Synthesis

    Raises
    ------
    ClosedLoopError
        When the model has no torch module (e.g. ONNX), or ``output`` is out of range.
    """
    _check_output(model, output)
    module = model.torch_module()
    if module is None:
        raise ClosedLoopError(f"{getattr(model, 'path', None) or model.name}: no gradients for this "
                              f"model ({type(model).__name__}); synthesis needs a torch model")
    size = int(size or getattr(model, "input_px", None) or POOL_PX)
    generator = torch.Generator().manual_seed(int(seed))
    start = (GREY + noise * torch.randn((1, size, size, 3), generator=generator)).clamp(0, 255).round()
    x = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    trace = np.empty(steps, dtype=np.float64)
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.eval()
        for step in range(steps):
            dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            y = module(torch.roll(x, (dy, dx), (1, 2))).reshape(1, -1)[0, output]
            optimiser.zero_grad()
            (-y).backward()
            optimiser.step()
            trace[step] = float(y.detach())
            with torch.no_grad():
                if decay:
                    x.sub_(GREY).mul_(1 - decay).add_(GREY)
                if blur_sigma and blur_every and (step + 1) % blur_every == 0 and step < steps - 1:
                    x.copy_(_blur(x, blur_sigma))
                x.clamp_(0, 255)
    finally:
        torch.set_num_threads(threads)
        for p in frozen:
            p.requires_grad_(True)
    image = x.detach().round().clamp(0, 255).to(torch.uint8).numpy()
    start_u8 = start.to(torch.uint8).numpy()
    values = model.predict(np.concatenate([image, start_u8]))[:, output]
    return Synthesis(image=image[0], start=start_u8[0], value=float(values[0]),
                     start_value=float(values[1]), trace=trace, steps=int(steps), seed=int(seed))


def _check_output(model, output: int) -> None:
    n = int(model.outputs)
    if not 0 <= output < n:
        valid = "0" if n == 1 else f"0 to {n - 1}"
        raise ClosedLoopError(f"--output {output}: out of range, model {model.name} has "
                              f"{n} output{'s' if n != 1 else ''} ({valid})")


# -------------------------------------------------------------------------- filters --
@dataclass
class Filters:
    """What the figure shows of a model's weights.

    Attributes
    ----------
    layer0 : np.ndarray or None
        (n, kh, kw, 3) layer-0 filters, or None when there is no 3-channel conv.
    layer0_label : str
    counts : list of (str, int)
        Filters (output channels) per layer.
    pointwise : list of (str, np.ndarray)
        Pointwise (1x1) weight matrices (out, in), compact models only.
    note : str
        What was read, and how (one line).
    """

    layer0: np.ndarray | None = None
    layer0_label: str = ""
    counts: list[tuple[str, int]] = field(default_factory=list)
    pointwise: list[tuple[str, np.ndarray]] = field(default_factory=list)
    note: str = ""


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(module.named_buffers())
    named.update(module.named_parameters())
    return {name: t.detach().float() for name, t in named.items()}


def _compact_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A published-style compact model's tensors under their state-dict keys, wherever nested."""
    for name in tensors:
        if name.endswith(_COMPACT_KEYS[0]):
            prefix = name[: -len(_COMPACT_KEYS[0])]
            found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            needed = [*_COMPACT_KEYS] + [f"layers.layer{i}_{p}" for i in range(1, 5)
                                         for p in ("conv_point.weight", "bn.weight", "bn.running_var")]
            if all(k in found for k in needed):
                return found
    return None


def layer_filters(model) -> Filters | None:
    """The filters of a model's layers, read from its weights; None without a torch module (ONNX).

    Compact models (published or closedloop's own): the BatchNorm-folded
    layer-0 filters, filters per layer, and pointwise matrices. Other torch
    models: the first conv weight with 3 input channels as layer 0 and the
    output channels of every conv weight.
    """
    module = model.torch_module()
    if module is None:
        return None
    tensors = _tensors(module)
    compact = _compact_tensors(tensors)
    if compact is not None:
        def scale(i: int) -> torch.Tensor:
            bn = f"layers.layer{i}_bn."
            eps = 1e-5
            return compact[bn + "weight"] / torch.sqrt(compact[bn + "running_var"] + eps)

        w0 = compact["layers.layer0_conv.weight"] * scale(0).view(-1, 1, 1, 1)
        pointwise = []
        for i in range(1, 5):
            w = compact[f"layers.layer{i}_conv_point.weight"][:, :, 0, 0] * scale(i)[:, None]
            pointwise.append((f"layer {i} pointwise ({w.shape[0]}x{w.shape[1]})", w.numpy()))
        counts = [("layer 0\n(5x5 conv)", int(w0.shape[0]))] + [
            (f"layer {i}\n(sep. 5x5)", int(w.shape[0])) for i, (_, w) in enumerate(pointwise, 1)]
        return Filters(layer0=w0.permute(0, 2, 3, 1).numpy(), layer0_label="5x5x3, BatchNorm folded",
                       counts=counts, pointwise=pointwise,
                       note="compact model: filters read from the weights (BatchNorm folded)")
    convs = [(name.removesuffix(".weight"), t) for name, t in tensors.items()
             if t.ndim == 4 and name.endswith("weight")]
    first = next(((name, t) for name, t in convs if t.shape[1] == 3), None)
    counts = [(_short(name), int(t.shape[0])) for name, t in convs[:12]]
    layer0 = label = None
    if first is not None:
        layer0 = first[1].permute(0, 2, 3, 1).numpy()
        label = f"{_short(first[0])}: {layer0.shape[1]}x{layer0.shape[2]}x3"
    what = "first 3-channel conv shown as layer 0" if first is not None else "no 3-channel conv found"
    return Filters(layer0=layer0, layer0_label=label or "", counts=counts,
                   note=f"generic torch model: {len(convs)} conv weights, {what}; BatchNorm not folded")


def _short(name: str) -> str:
    """A parameter path without the pixel wrappers' prefixes (``module.``, ``model.``)."""
    while name.split(".", 1)[0] in ("module", "model") and "." in name:
        name = name.split(".", 1)[1]
    return name


def parameter_count(model) -> int | None:
    """Trainable parameters of a torch model; for ONNX, the size of its initializers; else None."""
    module = model.torch_module()
    if module is not None:
        return int(sum(p.numel() for p in module.parameters()))
    path = getattr(model, "path", None)
    if path is not None and Path(path).suffix.lower() == ".onnx":
        try:
            import onnx

            graph = onnx.load(str(path), load_external_data=False).graph
            return int(sum(math.prod(t.dims) for t in graph.initializer))
        except Exception:  # noqa: BLE001 - a count is only a caption
            return None
    return None


# ------------------------------------------------------------------------ inspection --
@dataclass
class Inspection:
    """The result of :func:`inspect_model`.

    Attributes
    ----------
    model_name : str
    output : int
    parameters : int or None
    pool_name : str
    values : np.ndarray
        (K,) predicted response of each pool image for this output.
    top, bottom : np.ndarray
        Indices of the highest (descending) and lowest (ascending) predictions.
    labels : list of str
        Pool captions of the images in ``top`` and ``bottom`` (top first).
    synthesis : Synthesis or None
        None for models without gradients (ONNX).
    notes : list of str
    figure : Path or None
    seconds : float
        Wall time of the inspection.
    """

    model_name: str
    output: int
    parameters: int | None
    pool_name: str
    values: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    labels: list[str]
    synthesis: Synthesis | None
    notes: list[str]
    figure: Path | None = None
    seconds: float = 0.0

    @property
    def pool_max(self) -> float:
        return float(self.values[self.top[0]])

    @property
    def pool_median(self) -> float:
        return float(np.nanmedian(self.values))

    @property
    def ratio(self) -> float | None:
        """Synthesised response / pool maximum; None without a synthesis or for a pool maximum <= 0."""
        if self.synthesis is None or self.pool_max <= 0:
            return None
        return self.synthesis.value / self.pool_max

    def summary(self) -> str:
        """A few lines: model, pool, top and bottom values, the synthesis against the pool."""
        top, bottom = self.values[self.top], self.values[self.bottom]
        params = f"{self.parameters:,} parameters" if self.parameters is not None else "parameters unknown"
        lines = [
            f"model {self.model_name}, output {self.output} ({params}); pool {self.pool_name}",
            f"top {len(top)} predicted: {_g(top[0])} .. {_g(top[-1])}; "
            f"bottom {len(bottom)}: {_g(bottom[0])} .. {_g(bottom[-1])}; pool median {_g(self.pool_median)}",
        ]
        s = self.synthesis
        if s is None:
            lines.append("synthesised image: none (the model has no gradients here)")
        else:
            ratio = (f"{self.ratio:.2f}x the pool maximum" if self.ratio is not None
                     else f"pool maximum {_g(self.pool_max)} is not positive, no ratio")
            lines.append(f"synthesised image ({s.steps} steps, seed {s.seed}): predicted {_g(s.value)} "
                         f"(start {_g(s.start_value)}), {ratio} ({_g(self.pool_max)})")
        lines += [f"note: {n}" for n in self.notes]
        if self.figure is not None:
            lines.append(f"figure written to {self.figure}")
        return "\n".join(lines)


def _g(value: float) -> str:
    return f"{value:.3g}"


def inspect_model(model, out: str | Path | None = None, pool=None, output: int = 0, steps: int = 100,
                  seed: int = 0, progress: Callable[[str], None] | None = None) -> Inspection:
    """Inspect one output of a model and (with ``out``) write the figure.

    Parameters
    ----------
    model : str, Path or ImageModel
        A model file (anything :func:`closedloop.model.models.load_model`
        opens) or a model in memory (an ImageModel or a torch module).
    out : str or Path, optional
        PNG file to write; no figure when None.
    pool : str, Path or StimulusPool, optional
        The pool to rank: a StimulusPool, or any file
        :func:`closedloop.stimuli.load.load_pool` reads (rendered at
        :data:`POOL_PX`); default the demo set.
    output : int
        Which output (neuron) of the model.
    steps : int
        Gradient-ascent steps of the synthesis (0: none, only the start image).
    seed : int
        Seed of the synthesis.
    progress : callable, optional
        Called with a short message before each slow stage.

    Returns
    -------
    Inspection

    Raises
    ------
    ClosedLoopError
        One line naming the file or option: a missing or unreadable model or
        pool, an output out of range, a figure that cannot be written.
    """
    import time

    from closedloop.model.models import ImageModel, as_image_model, load_model
    from closedloop.stimuli import StimulusPool

    began = time.perf_counter()
    say = progress or (lambda message: None)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    elif not isinstance(model, ImageModel):
        model = as_image_model(model)
    _check_output(model, output)
    if steps < 0:
        raise ClosedLoopError(f"--steps {steps}: must be 0 or more")
    if isinstance(pool, StimulusPool):
        pool_name = f"{len(pool)} images"
    else:
        say("loading the pool")
        pool, pool_name = load_pool(DEFAULT_POOL if pool is None else pool, POOL_PX)
    say(f"predicting {len(pool)} pool images")
    values = model.predict(pool.images)[:, output]
    top, bottom = rank_pool(values)
    if len(top) == 0:
        raise ClosedLoopError(f"model {model.name}: no finite prediction for any pool image")
    notes = []
    filters = layer_filters(model)
    if filters is None:
        notes.append("ONNX model: no weights or gradients here, so no filters and no synthesised image; "
                     "parameter count = the ONNX file's stored weights (BatchNorm may be folded in)")
        synthesis = None
    else:
        notes.append(filters.note)
        say(f"synthesising a preferred image ({steps} steps)")
        synthesis = synthesize(model, output, steps=steps, seed=seed)
    inspection = Inspection(
        model_name=model.name, output=output, parameters=parameter_count(model), pool_name=pool_name,
        values=values, top=top, bottom=bottom,
        labels=[pool.label(int(i)) for i in top] + [pool.label(int(i)) for i in bottom],
        synthesis=synthesis, notes=notes)
    if out is not None:
        say("drawing the figure")
        draw_figure(inspection, filters, pool.images, out)
        inspection.figure = Path(out)
    inspection.seconds = time.perf_counter() - began
    return inspection


# ---------------------------------------------------------------------------- figure --
def _mosaic(tiles: np.ndarray, columns: int, gap: int, fill: float) -> np.ndarray:
    """(n, h, w, 3) tiles -> one image, ``columns`` a row, ``gap`` pixels between and around."""
    n, h, w = tiles.shape[:3]
    rows = max(1, math.ceil(n / columns))
    sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), fill, dtype=np.float64)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = tile
    return sheet


def normalise_filters(weights: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) weights -> RGB in [0, 1], each filter on its own: 0.5 + w / (2 max|w|)."""
    weights = np.asarray(weights, dtype=np.float64)
    peak = np.abs(weights).reshape(len(weights), -1).max(axis=1)
    peak[peak == 0] = 1.0
    return 0.5 + weights / (2 * peak[:, None, None, None])


def _note(ax, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11,
            transform=ax.transAxes, color="0.3")


def draw_figure(inspection: Inspection, filters: Filters | None, images: np.ndarray, out: str | Path) -> Path:
    """Write the four-panel figure of an inspection to ``out`` (PNG, :data:`FIGURE_PX` pixels).

    Raises
    ------
    ClosedLoopError
        When the file cannot be written.
    """
    from matplotlib.figure import Figure  # the Agg canvas; no pyplot, no display
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    params = f"{inspection.parameters:,} parameters" if inspection.parameters is not None else "parameters unknown"
    fig.suptitle(f"{inspection.model_name}: output (neuron) {inspection.output}, {params}", fontsize=15)
    grid = fig.add_gridspec(2, 1, height_ratios=[1, 1.25], left=0.03, right=0.98, top=0.92, bottom=0.04,
                            hspace=0.22)
    upper = grid[0].subgridspec(1, 3, width_ratios=[1.1, 1, 1.2], wspace=0.25)
    lower = grid[1].subgridspec(1, 3, width_ratios=[1, 1, 1.05], wspace=0.12)
    no_torch = "ONNX model: weights and gradients are not available here.\n" \
               "Load a PyTorch file (published .pt, TorchScript, closedloop's own)\nfor this panel."

    # (a) layer-0 filters
    ax = fig.add_subplot(upper[0])
    if filters is None or filters.layer0 is None:
        _note(ax, no_torch if filters is None else "no 3-channel convolution to show as layer 0\n" + filters.note)
        ax.set_title("(a) layer-0 filters", loc="left")
    else:
        shown = filters.layer0[:MAX_LAYER0]
        columns = math.ceil(math.sqrt(len(shown) * 1.3))
        ax.imshow(_mosaic(normalise_filters(shown), columns, 1, 1.0), interpolation="nearest")
        ax.set_axis_off()
        more = f", first {len(shown)} of {len(filters.layer0)}" if len(shown) < len(filters.layer0) else ""
        ax.set_title(f"(a) layer-0 filters: {len(filters.layer0)} x {filters.layer0_label}{more}\n"
                     f"(each normalised; grey = 0)", loc="left", fontsize=10)

    # (b) filters per layer
    if filters is None:
        ax = fig.add_subplot(upper[1:])
        _note(ax, no_torch)
        ax.set_title("(b) filters per layer", loc="left")
    else:
        ax = fig.add_subplot(upper[1])
        labels = [label for label, _ in filters.counts]
        counts = [count for _, count in filters.counts]
        bars = ax.bar(range(len(counts)), counts, color="tab:blue")
        ax.bar_label(bars, fontsize=9)
        longest = max((len(line) for label in labels for line in label.splitlines()), default=0)
        ax.set_xticks(range(len(counts)), labels, fontsize=8, rotation=0 if len(counts) <= 6 and longest <= 12 else 60)
        ax.set_ylabel("filters (output channels)")
        ax.set_title("(b) filters per layer", loc="left", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        if filters.pointwise:
            sub = upper[2].subgridspec(2, 2, hspace=0.45, wspace=0.3)
            for k, (label, matrix) in enumerate(filters.pointwise[:4]):
                pax = fig.add_subplot(sub[k // 2, k % 2])
                peak = float(np.abs(matrix).max()) or 1.0
                pax.imshow(matrix, cmap="RdBu_r", vmin=-peak, vmax=peak, aspect="auto", interpolation="nearest")
                pax.set_title(label, fontsize=8)
                pax.set_xlabel("input filter", fontsize=7)
                pax.set_ylabel("output filter", fontsize=7)
                pax.tick_params(labelsize=6)
                pax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
                pax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
        else:
            _note(fig.add_subplot(upper[2]), filters.note)

    # (c) top and bottom pool images
    def ranked(spec, indices: np.ndarray, title: str) -> None:
        ax = fig.add_subplot(spec)
        tiles = images[indices].astype(np.float64) / 255.0
        side = tiles.shape[1]
        gap, columns = max(2, side // 5), 4
        ax.imshow(_mosaic(tiles, columns, gap, 1.0), interpolation="antialiased")
        for i, index in enumerate(indices):
            r, c = divmod(i, columns)
            x = gap + c * (side + gap) + side / 2
            y = gap + r * (side + gap) + side + gap * 0.05
            ax.text(x, y, f"{_g(inspection.values[index])}  (#{index})", ha="center", va="top", fontsize=7)
        ax.set_axis_off()
        ax.set_title(title, loc="left", fontsize=10)

    ranked(lower[0], inspection.top, f"(c) top {len(inspection.top)} of {inspection.pool_name}, predicted")
    ranked(lower[1], inspection.bottom, f"bottom {len(inspection.bottom)}, predicted")

    # (d) synthesised preferred image
    s = inspection.synthesis
    if s is None:
        ax = fig.add_subplot(lower[2])
        _note(ax, no_torch)
        ax.set_title("(d) synthesised preferred image", loc="left", fontsize=10)
    else:
        sub = lower[2].subgridspec(2, 1, height_ratios=[2.2, 1], hspace=0.35)
        ax = fig.add_subplot(sub[0])
        ax.imshow(s.image, interpolation="antialiased")
        ax.set_axis_off()
        ratio = f" = {inspection.ratio:.2f}x pool max" if inspection.ratio is not None else ""
        ax.set_title(f"(d) synthesised preferred image ({s.steps} steps, seed {s.seed})\n"
                     f"predicted {_g(s.value)}{ratio}\n(pool max {_g(inspection.pool_max)}, "
                     f"median {_g(inspection.pool_median)}; start {_g(s.start_value)})", loc="left",
                     fontsize=10)
        tax = fig.add_subplot(sub[1])
        if len(s.trace):
            tax.plot(np.arange(1, len(s.trace) + 1), s.trace, color="tab:red", lw=1.2, label="ascent (jittered)")
        tax.axhline(inspection.pool_max, color="k", lw=0.8, ls="--", label="pool max")
        tax.axhline(inspection.pool_median, color="0.5", lw=0.8, ls=":", label="pool median")
        tax.axhline(s.value, color="tab:red", lw=0.8, ls="-.", label="final image")
        tax.set_xlabel("step", fontsize=8)
        tax.set_ylabel("predicted", fontsize=8)
        tax.tick_params(labelsize=7)
        tax.legend(fontsize=7, loc="upper left", frameon=False)
        tax.spines[["top", "right"]].set_visible(False)
    fig.text(0.03, 0.005, " | ".join(inspection.notes), fontsize=8, color="0.35", va="bottom")

    out = Path(out)
    try:
        fig.savefig(out, format="png", dpi=FIGURE_DPI)
    except OSError as exc:
        raise ClosedLoopError(f"figure {out}: cannot write ({exc.strerror or exc})") from None
    return out
