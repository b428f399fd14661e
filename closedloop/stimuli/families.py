"""Parametric stimulus families (dots, gratings, textures) and the gaudy transform.

A family validates parameters (``check``, against its pydantic ``Params``),
draws random ones (``sample``, a complete JSON-able dict) and renders them
(``render``) as an N x N x 3 uint8 image on a grey background, so a stimulus
is fully described by its family name and parameters and renders the same
pixels every time. Sizes and positions are fractions of the image side
(positions from the image centre, y up); orientations and phases are in
degrees. The curved contours live in :mod:`closedloop.stimuli.contours`;
the registry of all families is :mod:`closedloop.stimuli.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, Field, model_validator

from closedloop.config import Settings

SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down, for smooth edges


def grey(background: float) -> int:
    """The 0-255 grey level of a background given as a fraction of full scale (0-1)."""
    return int(round(255 * background))


class Family(ABC):
    """A parametric family of stimuli."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]  # the parameters, validated (extra keys forbidden)

    def check(self, params: dict) -> dict:
        """Validated, complete parameters; ``pydantic.ValidationError`` names what is wrong."""
        return self.Params.model_validate(params).model_dump(mode="json")

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> dict:
        """Random parameters of one member (JSON-able, valid under ``Params``)."""

    @abstractmethod
    def render(self, params: dict, size_px: int, background: float = 0.5) -> np.ndarray:
        """The member's (size_px, size_px, 3) uint8 image on a ``background`` grey (0-1)."""


class _Params(Settings):
    """A family's parameters: unknown keys refused, every float finite."""


Fraction = Annotated[float, Field(ge=0, le=1)]
Colour = Annotated[
    tuple[Fraction, Fraction, Fraction],
    Field(description="RGB, each 0-1; black, white or grey mean a luminance pattern, a hue its chromatic axis"),
]
Coordinate = Annotated[float, Field(ge=-0.5, le=0.5)]


def _colour(rng: np.random.Generator) -> list[float]:
    """A figure colour (RGB, 0-1): black, white or a saturated hue, never background grey."""
    choice = rng.integers(4)
    if choice == 0:
        return [0.0, 0.0, 0.0]
    if choice == 1:
        return [1.0, 1.0, 1.0]
    hue = rng.uniform(0, 2 * np.pi)
    rgb = 0.5 + 0.5 * np.cos(hue - np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]))
    return [round(float(c), 3) for c in rgb]


def draw(size_px: int, paint, background: float = 0.5) -> np.ndarray:
    """Draw shapes with ``paint(draw, side)`` at SUPERSAMPLE x and average down to uint8 RGB."""
    big = size_px * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (grey(background),) * 3)
    paint(ImageDraw.Draw(canvas), big)
    # The mean of each SUPERSAMPLE x SUPERSAMPLE block, rounded half to even; summed in integers
    # (exact), rows first while they are contiguous, which is several times faster than a float mean.
    rows = np.asarray(canvas).astype(np.uint16).reshape(size_px, SUPERSAMPLE, big * 3).sum(axis=1)
    blocks = rows.reshape(size_px, size_px, SUPERSAMPLE, 3).sum(axis=2)
    return np.rint(blocks / SUPERSAMPLE**2).astype(np.uint8)


# -------------------------------------------------------------------- dots --
RING = 0.25  # dots placed by count alone sit evenly on a circle of this radius (fraction of the side)


class DotParams(_Params):
    """Dots: discs of one size and one luminance on the background."""

    count: int | None = Field(None, ge=1, le=16, description="number of dots; default: len(positions), else 1")
    diameter: float = Field(0.1, gt=0, le=1, description="disc diameter, fraction of the image side")
    positions: list[tuple[Coordinate, Coordinate]] | None = Field(
        None, min_length=1, max_length=16,
        description="disc centres [x, y], fractions of the side from the image centre, y up; default: "
                    "one dot at the centre, or count dots evenly on a circle of radius 0.25 starting at the top",
    )
    polarity: Literal["light", "dark"] = Field("light", description="lighter or darker than the background")
    contrast: float = Field(1.0, gt=0, le=1, description="fraction of the way from the background grey to "
                                                         "white (light) or black (dark)")

    @model_validator(mode="after")
    def _count_and_positions(self) -> DotParams:
        if self.positions is None:
            count = self.count or 1
            if count == 1:
                self.positions = [(0.0, 0.0)]
            else:
                angles = np.pi / 2 - 2 * np.pi * np.arange(count) / count
                self.positions = [(round(float(RING * np.cos(a)), 6), round(float(RING * np.sin(a)), 6))
                                  for a in angles]
        elif self.count is not None and self.count != len(self.positions):
            raise ValueError(f"count ({self.count}) differs from the number of positions ({len(self.positions)})")
        self.count = len(self.positions)
        return self


class Dot(Family):
    """Dots of one diameter and luminance (``DotParams``)."""

    name = "dot"
    Params = DotParams

    def sample(self, rng: np.random.Generator) -> dict:
        count = int(rng.choice([1, 1, 2, 3]))
        positions = [[round(float(rng.uniform(-0.3, 0.3)), 3), round(float(rng.uniform(-0.3, 0.3)), 3)]
                     for _ in range(count)]
        return self.check({
            "count": count,
            "diameter": round(float(rng.uniform(0.06, 0.3)), 3),
            "positions": positions,
            "polarity": "light" if rng.random() < 0.5 else "dark",
            "contrast": round(float(rng.uniform(0.5, 1.0)), 3),
        })

    def render(self, params: dict, size_px: int, background: float = 0.5) -> np.ndarray:
        p = DotParams.model_validate(params)
        target = 1.0 if p.polarity == "light" else 0.0
        level = grey(background + p.contrast * (target - background))

        def paint(canvas: ImageDraw.ImageDraw, side: int) -> None:
            r = p.diameter / 2 * side
            for x, y in p.positions:
                cx, cy = side * (0.5 + x), side * (0.5 - y)
                canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(level,) * 3)

        return draw(size_px, paint, background)


# ------------------------------------------------------ gratings, textures --
def _aperture(size_px: int, radius: float) -> np.ndarray:
    """A soft circular window (size_px, size_px): 1 inside ``radius`` (fraction of the side)."""
    centre = (np.arange(size_px) + 0.5) / size_px - 0.5
    distance = np.hypot(*np.meshgrid(centre, centre))
    edge = 1.5 / size_px
    return np.clip((radius - distance) / edge + 0.5, 0, 1)


def _compose(pattern: np.ndarray, contrast: float, colour, window: np.ndarray, background: float) -> np.ndarray:
    """Modulate ``pattern`` (values in [-1, 1]) around the background along ``colour``'s axis, in a window.

    The amplitude is ``contrast`` times the distance from the background to the nearer of black
    and white, so contrast 1 just reaches it (at background 0.5: black and white) and nothing clips.
    """
    axis = 2 * np.asarray(colour, dtype=np.float64) - 1  # black/white -> luminance axis, a hue -> its chromatic axis
    if not np.any(axis):
        axis = np.ones(3)
    amplitude = 255 * contrast * min(background, 1 - background)
    image = grey(background) + amplitude * (pattern * window)[..., None] * axis / np.abs(axis).max()
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


Degrees = Annotated[float, Field(ge=0, lt=360)]
APERTURE = "aperture radius, fraction of the image side (0.5 touches the edges, 0.71 fills the image)"


class GratingParams(_Params):
    """A sinusoidal grating in a circular aperture."""

    orientation: Degrees = Field(0.0, description="degrees anticlockwise; 0: bars vertical, luminance varies along x")
    frequency: float = Field(4.0, gt=0, le=128, description="cycles per image side")
    phase: Degrees = Field(0.0, description="degrees; 0: a peak (cosine) at the image centre")
    radius: float = Field(0.45, gt=0, le=0.75, description=APERTURE)
    contrast: float = Field(1.0, ge=0, le=1, description="amplitude, fraction of the distance from the background "
                                                          "to the nearer of black and white")
    colour: Colour = (1.0, 1.0, 1.0)


class Grating(Family):
    """A sinusoidal grating in a circular aperture (``GratingParams``)."""

    name = "grating"
    Params = GratingParams

    def sample(self, rng: np.random.Generator) -> dict:
        return self.check({
            "orientation": float(15 * rng.integers(12)),
            "frequency": round(float(rng.choice([2, 3, 4, 6, 8])), 3),
            "phase": float(90 * rng.integers(4)),
            "contrast": round(float(rng.uniform(0.5, 1.0)), 3),
            "radius": round(float(rng.uniform(0.2, 0.45)), 3),
            "colour": _colour(rng),
        })

    def render(self, params: dict, size_px: int, background: float = 0.5) -> np.ndarray:
        p = GratingParams.model_validate(params)
        centre = (np.arange(size_px) + 0.5) / size_px - 0.5
        x, y = np.meshgrid(centre, -centre)
        theta = np.deg2rad(p.orientation)
        across = x * np.cos(theta) + y * np.sin(theta)
        pattern = np.cos(2 * np.pi * p.frequency * across + np.deg2rad(p.phase))
        return _compose(pattern, p.contrast, p.colour, _aperture(size_px, p.radius), background)


class TextureParams(_Params):
    """Band-pass noise: white noise filtered around a spatial frequency, in a circular aperture."""

    seed: int = Field(0, ge=0, lt=2**32, description="seed of the white noise")
    frequency: float = Field(8.0, gt=0, le=128, description="centre of the pass band, cycles per image side")
    bandwidth: float = Field(1.0, gt=0, le=8, description="pass band, octaves (full width at half height)")
    orientation: Degrees = Field(0.0, description="degrees; the preferred orientation when anisotropic")
    anisotropy: float = Field(0.0, ge=0, le=1, description="0 isotropic, up to 1 strongly oriented")
    radius: float = Field(0.45, gt=0, le=0.75, description=APERTURE)
    contrast: float = Field(1.0, ge=0, le=1, description="peak amplitude, as for gratings")
    colour: Colour = (1.0, 1.0, 1.0)


class Texture(Family):
    """Band-pass noise in a circular aperture (``TextureParams``)."""

    name = "texture"
    Params = TextureParams

    def sample(self, rng: np.random.Generator) -> dict:
        return self.check({
            "seed": int(rng.integers(2**31)),
            "frequency": round(float(2 ** rng.uniform(1, 4)), 3),
            "bandwidth": round(float(rng.uniform(0.5, 1.5)), 3),
            "orientation": float(15 * rng.integers(12)),
            "anisotropy": round(float(rng.choice([0.0, 0.5, 0.9])), 3),
            "contrast": round(float(rng.uniform(0.5, 1.0)), 3),
            "radius": round(float(rng.uniform(0.3, 0.5)), 3),
            "colour": _colour(rng),
        })

    def render(self, params: dict, size_px: int, background: float = 0.5) -> np.ndarray:
        p = TextureParams.model_validate(params)
        noise = np.random.default_rng(p.seed).standard_normal((size_px, size_px))
        fy, fx = np.meshgrid(np.fft.fftfreq(size_px) * size_px, np.fft.rfftfreq(size_px) * size_px,
                             indexing="ij")
        f = np.hypot(fx, fy)
        octaves = np.log2(np.maximum(f, 1e-9) / p.frequency)
        sigma = p.bandwidth / 2.355
        gain = np.exp(-0.5 * (octaves / sigma) ** 2) * (f > 0)
        theta = np.deg2rad(p.orientation)
        along = np.abs(fx * np.cos(theta) + fy * np.sin(theta)) / np.maximum(f, 1e-9)
        gain *= (1 - p.anisotropy) + p.anisotropy * along**4
        pattern = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=noise.shape)
        pattern /= max(np.abs(pattern).max(), 1e-12)
        return _compose(pattern, p.contrast, p.colour, _aperture(size_px, p.radius), background)


# ------------------------------------------------------------------ gaudy --
def gaudy(image: np.ndarray) -> np.ndarray:
    """The gaudy transform (Cowley & Pillow 2020) of a uint8 image (H, W, C).

    Per colour channel, pixels below the channel's mean go to 0 and the rest
    to 255, which exaggerates edges and colours. A constant channel has no
    pixel below its mean and would all go to 255; it is left as it is instead
    (a blank grey image stays blank grey).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"gaudy takes an (H, W, C) uint8 image, got {image.shape} {image.dtype}")
    out = image.copy()
    for c in range(image.shape[2]):
        channel = image[..., c]
        if channel.min() != channel.max():
            out[..., c] = np.where(channel < channel.mean(dtype=np.float64), 0, 255)
    return out
