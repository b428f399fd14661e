"""Digital-twin neurons: images in, firing rates out.

A neuron model maps a batch of (B, N, N, 3) uint8 images to a *drive* per
output (arbitrary units). :class:`Population` turns drives into firing rates
the same way for every model, as documented on ``SimulationSpec``:

1. z-score each output over the calibration images (up to
   ``calibration_images`` of the session's stimulus pool, drawn with the
   rig's ``seed``): ``z = (y - mean) / std``;
2. rate = ``mean_rate * exp(gain * z) / mean_cal(exp(gain * z))`` spikes/s,
   so the mean driven rate over the calibration images is ``mean_rate``;
3. cap at ``max_rate`` spikes/s.

Only the variation of a model's output across images matters (the published
compact models' mean and scale are not meaningful, and some outputs are
negative), which is why outputs are z-scored before the rectifying
exponential. An ONNX model may instead declare ``output = "rate"``: its
outputs are then used as spikes/s directly (clipped to 0..``max_rate``).

Built-in units (positions and sizes are fractions of the image side, y up,
orientations in degrees) work on the image resampled to 64 x 64 pixels:

- ``curvature`` — a detector of sharply curved, finger-like protrusions
  (tip radius ``radius``) along ``orientation``, on the figure map (where the
  image departs from grey, saturating), maximised over the receptive field;
- ``dot`` — a centre-surround (difference of Gaussians) blob detector on
  the figure map, tuned to discs of radius ``radius``;
- ``orientation`` — Gabor energy at ``orientation`` and ``frequency``
  (cycles per image) divided by the energy over all orientations.
All take ``x``, ``y`` (receptive-field centre, -0.5 to 0.5) and ``rf`` (its
radius, at least a pixel of the grid); the bounds of every parameter are in
the units' ``Params`` models, and :func:`check_params` applies them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationError

from closedloop.config import NeuronSpec, Settings, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.model.ensemble import to_model_input

GRID = 64  # px: resolution at which the built-in units see an image
BATCH = 256  # images per pass
SATURATION = 0.15  # contrast (pixel units of [-1, 1]) at which the figure map saturates


class Neuron(ABC):
    """A model of one or more neurons; ``names`` has one entry per output."""

    names: list[str]
    output: str = "drive"  # or "rate": outputs are already spikes/s

    @abstractmethod
    def drive(self, images: np.ndarray) -> np.ndarray:
        """Outputs (B, len(names)) for (B, N, N, 3) uint8 images."""


# ------------------------------------------------------------ built-in units --
def _offsets() -> tuple[np.ndarray, np.ndarray]:
    """Kernel coordinates (fractions of the image side, y up) on the wrapped 2*GRID FFT grid."""
    d = ((np.arange(2 * GRID) + GRID) % (2 * GRID) - GRID) / GRID
    u, v = np.meshgrid(d, -d)
    return u, v


def _match(maps: np.ndarray, *kernels: np.ndarray) -> list[np.ndarray]:
    """Template matches (cross-correlations) of (B, GRID, GRID) maps with kernels.

    A kernel lies on the wrapped 2*GRID grid of :func:`_offsets`; the result
    at pixel p is the sum over offsets q of ``map[p + q] * kernel[q]``.
    """
    spectrum = np.fft.rfft2(maps, s=(2 * GRID, 2 * GRID))
    return [np.fft.irfft2(spectrum * np.conj(np.fft.rfft2(k)), s=(2 * GRID, 2 * GRID))[:, :GRID, :GRID]
            for k in kernels]


PIXEL = 1 / GRID  # the side of a grid pixel, a fraction of the image side


def _orientation(default: float):
    return Field(default, ge=-360, le=360, description="degrees anticlockwise from rightward, -360 to 360")


class UnitParams(Settings):
    """Where a built-in unit looks: its receptive field, a disc on the image (fractions of its side)."""

    x: float = Field(0.0, ge=-0.5, le=0.5, description="centre right of the image centre, -0.5 to 0.5")
    y: float = Field(0.0, ge=-0.5, le=0.5, description="centre up of the image centre, -0.5 to 0.5")
    rf: float = Field(0.3, ge=PIXEL, le=1, description="radius, one grid pixel (1/64) to 1: a field always "
                      "holds a pixel")


class _BuiltinUnit(Neuron):
    """A hand-built V4-like unit; subclasses set ``Params`` and ``response``."""

    Params: type[UnitParams] = UnitParams

    def __init__(self, name: str, **params):
        self.names = [name]
        self.params = self.Params(**params).model_dump()
        centre = (np.arange(GRID) + 0.5) / GRID - 0.5
        x, y = np.meshgrid(centre, -centre)
        self.field = np.hypot(x - self.params["x"], y - self.params["y"]) <= self.params["rf"]

    @classmethod
    def known(cls) -> list[str]:
        return list(cls.Params.model_fields)

    def drive(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), BATCH):
            pixels = to_model_input(images[start:start + BATCH], GRID).numpy().astype(np.float64)
            pixels -= 128 / 127.5 - 1  # background grey -> 0
            out.append(self.response(pixels))
        return np.concatenate(out)[:, None]

    @abstractmethod
    def response(self, pixels: np.ndarray) -> np.ndarray:
        """(B,) drive for (B, 3, GRID, GRID) images, grey background at 0."""


def _figure(pixels: np.ndarray) -> np.ndarray:
    """Where the image departs from the grey background, saturating: (B, GRID, GRID) in 0..1."""
    return np.clip(np.sqrt((pixels**2).sum(axis=1)) / SATURATION, 0, 1)


class CurvatureUnit(_BuiltinUnit):
    """Prefers sharply curved, finger-like protrusions along ``orientation``.

    Its receptive-field template is a finger: excitatory over a rounded tip
    of radius ``radius`` and a shaft ``length`` tip radii long behind it,
    inhibitory in a band around them. A dot fills only the tip and a straight
    edge also fills the inhibitory flanks, so the unit is tuned to high
    boundary curvature on a narrow part aligned with its axis (measured: a
    thin spindle along the axis drives it about 5x more than across it). The
    template points to ``orientation``, but a spindle's two ends look alike,
    so the preference for one direction over its opposite is weak.
    """

    class Params(UnitParams):
        radius: float = Field(0.04, ge=PIXEL, le=0.25, description="tip radius, one grid pixel (1/64) to 0.25")
        orientation: float = _orientation(90.0)
        length: float = Field(5.0, ge=0, le=10, description="shaft length in tip radii, 0-10")

    def __init__(self, name: str, **params):
        super().__init__(name, **params)
        r, length = self.params["radius"], self.params["length"]
        u, v = _offsets()
        theta = np.deg2rad(self.params["orientation"])
        along = u * np.cos(theta) + v * np.sin(theta)  # towards the tip, which is at the origin
        across = np.abs(v * np.cos(theta) - u * np.sin(theta))
        to_tip = np.hypot(along + r, across)
        shaft = (along <= -r) & (along >= -(1 + length) * r)
        excite = (to_tip <= r) | (shaft & (across <= r))
        inhibit = ((to_tip > r) & (to_tip <= 2 * r) & (along > -r)) | (shaft & (across > r) & (across <= 2 * r))
        self.kernel = excite / excite.sum() - inhibit / inhibit.sum()

    def response(self, pixels: np.ndarray) -> np.ndarray:
        (match,) = _match(_figure(pixels), self.kernel)
        return np.maximum(match[:, self.field], 0).max(axis=1)


class DotUnit(_BuiltinUnit):
    """Prefers a small disc of radius ``radius`` (any colour) inside its receptive field."""

    class Params(UnitParams):
        radius: float = Field(0.05, ge=PIXEL, le=0.5, description="preferred disc radius, one grid pixel "
                              "(1/64) to 0.5")

    def __init__(self, name: str, **params):
        super().__init__(name, **params)
        u, v = _offsets()
        r2 = u**2 + v**2
        centre, surround = (np.exp(-0.5 * r2 / s**2) for s in (self.params["radius"] / 1.5,
                                                                self.params["radius"] * 2.5))
        self.kernel = centre / centre.sum() - surround / surround.sum()

    def response(self, pixels: np.ndarray) -> np.ndarray:
        (blobs,) = _match(_figure(pixels), self.kernel)
        return np.maximum(blobs[:, self.field], 0).max(axis=1)


class OrientationUnit(_BuiltinUnit):
    """Prefers gratings and edges at ``orientation`` degrees and ``frequency`` cycles per image.

    An energy model: the power spectrum of the image seen through the
    receptive field, weighted by a band around the preferred orientation and
    frequency (a quadrature Gabor pair of about one octave), divided by the
    same at 8 orientations spanning 180 degrees.
    """

    class Params(UnitParams):
        orientation: float = _orientation(45.0)
        frequency: float = Field(4.0, ge=0.5, le=GRID / 2, description="cycles per image, 0.5 to 32 (the "
                                 "grid's Nyquist frequency)")

    ORIENTATIONS = 8

    def __init__(self, name: str, **params):
        super().__init__(name, **params)
        f0 = self.params["frequency"]
        fy, fx = np.meshgrid(np.fft.fftfreq(GRID) * GRID, np.fft.fftfreq(GRID) * GRID, indexing="ij")
        fy = -fy  # y up
        bands = []
        for k in range(self.ORIENTATIONS):  # [0] is the preferred orientation
            theta = np.deg2rad(self.params["orientation"] + 180.0 * k / self.ORIENTATIONS)
            cu, cv = f0 * np.cos(theta), f0 * np.sin(theta)
            bands.append(sum(np.exp(-0.5 * ((fx - s * cu) ** 2 + (fy - s * cv) ** 2) / (0.35 * f0) ** 2)
                             for s in (1, -1)))
        self.bands = np.array(bands)  # (orientations, GRID, GRID)

    def response(self, pixels: np.ndarray) -> np.ndarray:
        power = (np.abs(np.fft.fft2(pixels * self.field)) ** 2).sum(axis=1)  # (B, GRID, GRID)
        energy = np.einsum("kyx,byx->kb", self.bands, power) / self.field.sum()
        return energy[0] / (energy.mean(axis=0) + 1e-3)


BUILTIN: dict[str, type[_BuiltinUnit]] = {
    "curvature": CurvatureUnit, "dot": DotUnit, "orientation": OrientationUnit,
}


# -------------------------------------------------------------- model files --
class CompactNeuron(Neuron):
    """A published compact model of a real V4 neuron (Cowley et al. 2026) as a digital twin."""

    def __init__(self, path: Path, name: str | None = None):
        from closedloop.model.compact import load_published, published_name

        self.model = load_published(path)
        self.names = [name or published_name(path)]

    def drive(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(images)[:, None]


ONNX_OUTPUTS = ("rate", "drive")  # what an ONNX model's outputs are: spikes/s, or a drive to calibrate


class OnnxNeuron(Neuron):
    """An ONNX model mapping images to one output per neuron.

    Its single input takes float32 pixel values 0-255, either channels last
    (B, H, W, 3) or channels first (B, 3, H, W); a fixed H, W is honoured by
    resampling. The output is (B,) or (B, K): K neurons.
    """

    def __init__(self, path: Path, name: str | None = None, output: str = "rate"):
        import onnxruntime as ort

        if output not in ONNX_OUTPUTS:
            raise ClosedLoopError(f"onnx model {path}: output must be 'rate' or 'drive', got {output!r}")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ClosedLoopError(f"onnx model {path}: unreadable ({reason})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or 3 not in (inputs[0].shape[1], inputs[0].shape[3]):
            raise ClosedLoopError(f"onnx model {path}: needs one image input (B, H, W, 3) or (B, 3, H, W), "
                                  f"got {[i.shape for i in inputs]}")
        self.input = inputs[0]
        self.channels_first = self.input.shape[1] == 3
        side = self.input.shape[2] if self.channels_first else self.input.shape[1]
        self.side = side if isinstance(side, int) else None
        shape = outputs[0].shape
        k = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else 1
        base = name or Path(path).stem
        self.names = [base] if k == 1 else [f"{base}_{i}" for i in range(k)]
        self.output, self.path = output, path

    def drive(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH]
            side = self.side or batch.shape[1]
            x = (to_model_input(batch, side).numpy() + 1.0) * 127.5  # (B, 3, H, W), 0-255
            if not self.channels_first:
                x = x.transpose(0, 2, 3, 1)
            y = np.asarray(self.session.run(None, {self.input.name: np.ascontiguousarray(x, np.float32)})[0])
            out.append(y.reshape(len(batch), -1).astype(np.float64))
        y = np.concatenate(out)
        if y.shape[1] != len(self.names):
            raise ClosedLoopError(f"onnx model {self.path}: gave {y.shape[1]} outputs per image, "
                                  f"expected {len(self.names)}")
        return y


# ------------------------------------------------------------------ building --
def _build_one(spec: NeuronSpec) -> list[Neuron]:
    extras = dict(spec.model_extra or {})
    if spec.kind in BUILTIN:
        return [BUILTIN[spec.kind](spec.name or spec.kind, **extras)]
    if spec.kind == "onnx":
        return [OnnxNeuron(spec.path, spec.name, **extras)]
    from closedloop.model.compact import find_published

    paths = find_published(spec.path, spec.limit) if spec.path.is_dir() else [spec.path]
    named = spec.name if len(paths) == 1 else None
    return [CompactNeuron(path, named) for path in paths]


def check_params(spec: NeuronSpec) -> None:
    """Refuse parameters a neuron kind does not take or that are out of range (one-line ``ValueError``)."""
    extras = dict(spec.model_extra or {})
    allowed = BUILTIN[spec.kind].known() if spec.kind in BUILTIN else ["output"] if spec.kind == "onnx" else []
    unknown = sorted(set(extras) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ValueError(f"a {spec.kind!r} neuron has no parameter {unknown[0]!r} (known: {known})")
    if spec.kind != "compact" and spec.limit is not None:
        raise ValueError(f"'limit' applies to a folder of compact models, not a {spec.kind!r} neuron")
    if spec.kind == "onnx" and extras.get("output", "rate") not in ONNX_OUTPUTS:
        raise ValueError(f"an 'onnx' neuron's output must be 'rate' or 'drive', got {extras['output']!r}")
    if spec.kind in BUILTIN:
        try:
            BUILTIN[spec.kind].Params(**extras)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"])
            raise ValueError(f"a {spec.kind!r} neuron's {field}: {error['msg']}") from None


def build_neurons(sim: SimulationSpec) -> list[Neuron]:
    """The rig's neuron models, in rig order (a folder of models expands in name order).

    Duplicate output names get a numeric suffix so every unit's name is unique.
    """
    neurons = [n for spec in sim.neurons for n in _build_one(spec)]
    seen: dict[str, int] = {}
    for neuron in neurons:
        for k, name in enumerate(neuron.names):
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                neuron.names[k] = f"{name}_{seen[name]}"
    return neurons


def neuron_names(sim: SimulationSpec) -> list[str]:
    """One name per simulated unit, in channel order."""
    return [name for neuron in build_neurons(sim) for name in neuron.names]


class Population:
    """Simulated neurons with their drive-to-rate calibration.

    Parameters
    ----------
    neurons : list of Neuron
        From :func:`build_neurons`.
    sim : SimulationSpec
        Rates, gain, cap, seed and the number of calibration images.
    calibration_images : np.ndarray
        (K, N, N, 3) uint8, normally the session's stimulus pool; at most
        ``sim.calibration_images`` of them, drawn with ``sim.seed``, are used.
    """

    def __init__(self, neurons: list[Neuron], sim: SimulationSpec, calibration_images: np.ndarray):
        self.neurons, self.sim = neurons, sim
        self.names = [name for n in neurons for name in n.names]
        rng = np.random.default_rng(sim.seed)
        count = min(sim.calibration_images, len(calibration_images))
        chosen = np.sort(rng.choice(len(calibration_images), count, replace=False))
        drive = self.drive(calibration_images[chosen])
        self.mean = drive.mean(axis=0)
        self.std = np.where(drive.std(axis=0) > 0, drive.std(axis=0), 1.0)
        self.norm = np.exp(sim.gain * (drive - self.mean) / self.std).mean(axis=0)
        self.direct = np.concatenate([[n.output == "rate"] * len(n.names) for n in neurons])

    def rates(self, images: np.ndarray) -> np.ndarray:
        """Driven rates (B, neurons) in spikes/s for (B, N, N, 3) uint8 images."""
        return self.rates_from_drive(self.drive(images))

    def drive(self, images: np.ndarray) -> np.ndarray:
        """The models' outputs (B, neurons) for (B, N, N, 3) uint8 images, arbitrary units."""
        return np.column_stack([n.drive(images) for n in self.neurons])

    def rates_from_drive(self, drive: np.ndarray) -> np.ndarray:
        """Driven rates (B, neurons) in spikes/s from the outputs :meth:`drive` gives."""
        z = (drive - self.mean) / self.std
        rates = self.sim.mean_rate * np.exp(self.sim.gain * z) / self.norm
        rates = np.where(self.direct, np.maximum(drive, 0.0), rates)
        return np.minimum(rates, self.sim.max_rate)
