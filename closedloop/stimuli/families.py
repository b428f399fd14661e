"""Parametric stimulus families: curved contours, dots, gratings and textures.

A family draws random parameters (``sample``, a JSON-able dict) and renders
them (``render``) as an N x N x 3 uint8 image on a mid-grey background, so a
stimulus is fully described by its family name and parameters. Sizes and
positions are fractions of the image side; orientations are in degrees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = 128  # grey level of every family's background, 0-255
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down, for smooth edges


class Family(ABC):
    """A parametric family of stimuli."""

    name: str

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> dict:
        """Random parameters of one member (JSON-able)."""

    @abstractmethod
    def render(self, params: dict, size_px: int) -> np.ndarray:
        """The member's (size_px, size_px, 3) uint8 image."""


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


def _draw(size_px: int, paint) -> np.ndarray:
    """Draw shapes with ``paint(draw, scale)`` at SUPERSAMPLE x and average down to uint8 RGB."""
    big = size_px * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (BACKGROUND,) * 3)
    paint(ImageDraw.Draw(canvas), big)
    image = np.asarray(canvas, dtype=np.float64)
    image = image.reshape(size_px, SUPERSAMPLE, size_px, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.rint(image).astype(np.uint8)


def _rgb255(colour: list[float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colour)


def closed_bspline(radii: list[float], rotation_deg: float, samples: int = 64) -> np.ndarray:
    """Points (K, 2) of a closed, periodic cubic B-spline around the origin.

    Control point ``i`` lies at angle ``360 i / n + rotation`` degrees and
    distance ``radii[i]``; the curve is smooth (C2) everywhere, and its
    curvature is set by how the radii vary from point to point.
    """
    n = len(radii)
    angles = np.deg2rad(rotation_deg) + 2 * np.pi * np.arange(n) / n
    control = np.column_stack([np.cos(angles), np.sin(angles)]) * np.asarray(radii)[:, None]
    t = np.linspace(0, 1, samples, endpoint=False)[:, None]
    basis = [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]
    segments = [
        sum(b * control[(i + k - 1) % n] for k, b in enumerate(basis)) / 6 for i in range(n)
    ]
    return np.concatenate(segments)


class Contour(Family):
    """Closed curved shapes (Pasupathy & Connor style): a B-spline through radial points.

    Parameters: ``radii`` (4-8 control-point distances, fraction of ``size``),
    ``rotation`` (degrees, a multiple of 45), ``size`` (shape radius, fraction
    of the image side), ``x``/``y`` (centre offset, fraction of the side),
    ``fill`` (filled shape or outline), ``colour`` (RGB, 0-1).
    """

    name = "contour"

    def sample(self, rng: np.random.Generator) -> dict:
        n = int(rng.integers(4, 9))
        return {
            "radii": [round(float(r), 3) for r in rng.choice([0.1, 0.4, 0.7, 1.0], n)],
            "rotation": float(45 * rng.integers(8)),
            "size": round(float(rng.uniform(0.25, 0.45)), 3),
            "x": round(float(rng.uniform(-0.1, 0.1)), 3),
            "y": round(float(rng.uniform(-0.1, 0.1)), 3),
            "fill": bool(rng.random() < 0.7),
            "colour": _colour(rng),
        }

    def render(self, params: dict, size_px: int) -> np.ndarray:
        def paint(draw: ImageDraw.ImageDraw, side: int) -> None:
            points = closed_bspline(params["radii"], params["rotation"]) * params["size"] * side
            points[:, 1] *= -1  # y up
            points += side * (0.5 + np.array([params["x"], -params["y"]]))
            xy = [tuple(p) for p in points]
            colour = _rgb255(params["colour"])
            if params["fill"]:
                draw.polygon(xy, fill=colour)
            else:
                draw.line(xy + xy[:1], fill=colour, width=max(1, int(0.03 * side)), joint="curve")

        return _draw(size_px, paint)


class Dot(Family):
    """One to three discs of one colour.

    Parameters: ``dots`` (list of ``[x, y, radius]``, fractions of the image
    side, x and y from the centre), ``colour`` (RGB, 0-1).
    """

    name = "dot"

    def sample(self, rng: np.random.Generator) -> dict:
        count = int(rng.choice([1, 1, 2, 3]))
        dots = [[round(float(rng.uniform(-0.3, 0.3)), 3), round(float(rng.uniform(-0.3, 0.3)), 3),
                 round(float(rng.uniform(0.03, 0.15)), 3)] for _ in range(count)]
        return {"dots": dots, "colour": _colour(rng)}

    def render(self, params: dict, size_px: int) -> np.ndarray:
        def paint(draw: ImageDraw.ImageDraw, side: int) -> None:
            for x, y, r in params["dots"]:
                cx, cy = side * (0.5 + x), side * (0.5 - y)
                draw.ellipse([cx - r * side, cy - r * side, cx + r * side, cy + r * side],
                             fill=_rgb255(params["colour"]))

        return _draw(size_px, paint)


def _aperture(size_px: int, radius: float) -> np.ndarray:
    """A soft circular window (size_px, size_px): 1 inside ``radius`` (fraction of the side)."""
    centre = (np.arange(size_px) + 0.5) / size_px - 0.5
    distance = np.hypot(*np.meshgrid(centre, centre))
    edge = 1.5 / size_px
    return np.clip((radius - distance) / edge + 0.5, 0, 1)


def _compose(pattern: np.ndarray, contrast: float, colour: list[float], window: np.ndarray) -> np.ndarray:
    """Modulate ``pattern`` (values in [-1, 1]) around grey along ``colour``'s axis, in a window."""
    axis = 2 * np.asarray(colour) - 1  # black/white -> luminance axis, a hue -> its chromatic axis
    if not np.any(axis):
        axis = np.ones(3)
    image = BACKGROUND + 127 * contrast * (pattern * window)[..., None] * axis / np.abs(axis).max()
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class Grating(Family):
    """A sinusoidal grating in a circular aperture.

    Parameters: ``orientation`` (degrees, multiple of 15), ``frequency``
    (cycles per image side), ``phase`` (degrees), ``contrast`` (0-1),
    ``radius`` (aperture, fraction of the side), ``colour`` (RGB 0-1; black or
    white means a luminance grating).
    """

    name = "grating"

    def sample(self, rng: np.random.Generator) -> dict:
        return {
            "orientation": float(15 * rng.integers(12)),
            "frequency": round(float(rng.choice([2, 3, 4, 6, 8])), 3),
            "phase": float(90 * rng.integers(4)),
            "contrast": round(float(rng.uniform(0.5, 1.0)), 3),
            "radius": round(float(rng.uniform(0.2, 0.45)), 3),
            "colour": _colour(rng),
        }

    def render(self, params: dict, size_px: int) -> np.ndarray:
        centre = (np.arange(size_px) + 0.5) / size_px - 0.5
        x, y = np.meshgrid(centre, -centre)
        theta = np.deg2rad(params["orientation"])
        across = x * np.cos(theta) + y * np.sin(theta)
        pattern = np.cos(2 * np.pi * params["frequency"] * across + np.deg2rad(params["phase"]))
        return _compose(pattern, params["contrast"], params["colour"],
                        _aperture(size_px, params["radius"]))


class Texture(Family):
    """Band-pass noise: white noise filtered around a spatial frequency, in an aperture.

    Parameters: ``seed`` (of the noise), ``frequency`` (centre, cycles per
    image side), ``bandwidth`` (octaves, full width at half height),
    ``orientation`` (degrees) and ``anisotropy`` (0 isotropic, up to 1
    strongly oriented), ``contrast`` (0-1), ``radius`` (aperture), ``colour``.
    """

    name = "texture"

    def sample(self, rng: np.random.Generator) -> dict:
        return {
            "seed": int(rng.integers(2**31)),
            "frequency": round(float(2 ** rng.uniform(1, 4)), 3),
            "bandwidth": round(float(rng.uniform(0.5, 1.5)), 3),
            "orientation": float(15 * rng.integers(12)),
            "anisotropy": round(float(rng.choice([0.0, 0.5, 0.9])), 3),
            "contrast": round(float(rng.uniform(0.5, 1.0)), 3),
            "radius": round(float(rng.uniform(0.3, 0.5)), 3),
            "colour": _colour(rng),
        }

    def render(self, params: dict, size_px: int) -> np.ndarray:
        noise = np.random.default_rng(params["seed"]).standard_normal((size_px, size_px))
        fy, fx = np.meshgrid(np.fft.fftfreq(size_px) * size_px, np.fft.rfftfreq(size_px) * size_px,
                             indexing="ij")
        f = np.hypot(fx, fy)
        octaves = np.log2(np.maximum(f, 1e-9) / params["frequency"])
        sigma = params["bandwidth"] / 2.355
        gain = np.exp(-0.5 * (octaves / sigma) ** 2) * (f > 0)
        theta = np.deg2rad(params["orientation"])
        along = np.abs(fx * np.cos(theta) + fy * np.sin(theta)) / np.maximum(f, 1e-9)
        gain *= (1 - params["anisotropy"]) + params["anisotropy"] * along**4
        pattern = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=noise.shape)
        pattern /= max(np.abs(pattern).max(), 1e-12)
        return _compose(pattern, params["contrast"], params["colour"],
                        _aperture(size_px, params["radius"]))


FAMILIES: dict[str, Family] = {f.name: f for f in (Contour(), Dot(), Grating(), Texture())}
