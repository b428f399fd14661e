"""All stimulus families by name, and rendering any recorded stimulus from its parameters.

A stimulus is recorded as a family name and a parameter dict (as in a
session's ``stimuli.npz``). Two additions to a family's own parameters:

- ``"gaudy": true`` — the rendered image went through :func:`gaudy`;
- family ``"natural"`` — an image file, params ``{"source": folder or zip,
  "file": path inside it}`` (``source`` as written in the set file, relative
  to the set file's folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.stimuli.contours import Contour
from closedloop.stimuli.families import Dot, Family, Grating, Texture, gaudy
from closedloop.stimuli.natural import load_image

NATURAL = "natural"  # the family name recorded for images from a folder or zip

FAMILIES: dict[str, Family] = {f.name: f for f in (Contour(), Dot(), Grating(), Texture())}


def get_family(name: str) -> Family:
    """The family called ``name``; a :class:`ClosedLoopError` lists the known ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ClosedLoopError(f"unknown stimulus family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def render_stimulus(family: str, params: dict, size_px: int, background: float = 0.5,
                    base: Path | str = ".") -> np.ndarray:
    """Render a recorded stimulus again: the same (size_px, size_px, 3) uint8 pixels.

    ``base`` is the folder a natural image's ``source`` is relative to (the set file's folder).
    """
    params = dict(params)
    transform = bool(params.pop("gaudy", False))
    if family == NATURAL:
        image = load_image(Path(base) / params["source"], params["file"], size_px, background)
    else:
        image = get_family(family).render(params, size_px, background)
    return gaudy(image) if transform else image
