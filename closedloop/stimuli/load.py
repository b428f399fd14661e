"""Any image pool a command takes, as a :class:`StimulusPool`: one loader for every kind of file.

``POOL`` arguments (``closedloop design --pool``, ``inspect --pool``, ``compress --images``) may be

- a stimulus set file (``.toml``), or the name of a shipped set in ``stimuli/`` such as ``demo``:
  rendered at ``size_px``, each stimulus keeping its family and parameters;
- a saved pool (``.npz`` written by :meth:`StimulusPool.save`, e.g. a session's ``stimuli.npz``),
  or any ``.npz`` with an ``images`` array (K, H, W, 3) (family ``image``, params ``{"index": i}``):
  kept at its own size;
- a folder or ``.zip`` of image files (family ``natural``, params ``{"source", "file"}`` as a set's
  natural-image entry records them): centre-cropped and resized to ``size_px``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.stimuli.natural import image_names, load_images
from closedloop.stimuli.pool import StimulusPool
from closedloop.stimuli.registry import NATURAL
from closedloop.stimuli.sets import load_stimulus_set

SHIPPED = Path(__file__).resolve().parent.parent.parent / "stimuli"
"""Folder of the shipped stimulus sets (``stimuli/<name>.toml``)."""

IMAGE = "image"
"""Family recorded for images from an ``.npz`` that carries no families."""


def shipped_set(path: Path | str) -> Path:
    """``path`` as given, or a bare name such as ``demo`` for the shipped ``stimuli/demo.toml``."""
    path = Path(path)
    shipped = SHIPPED / f"{path}.toml"
    if not path.exists() and path.suffix == "" and len(path.parts) == 1 and shipped.exists():
        return shipped
    return path


def load_pool(path: Path | str, size_px: int = 112, background: float = 0.5) -> tuple[StimulusPool, str]:
    """The pool in a stimulus set, saved pool, or folder or zip of images (see the module docstring).

    Parameters
    ----------
    path : Path or str
        The file or folder, or a shipped set's name.
    size_px : int
        Side (pixels) at which sets and image files are rendered; saved pools keep their own.
    background : float
        Grey (0-1) behind set stimuli and transparent pixels.

    Returns
    -------
    (StimulusPool, str)
        The pool and a short description of it (name and size).

    Raises
    ------
    ClosedLoopError
        One line naming the file: missing, unreadable, of an unknown kind, empty, or holding
        images of the wrong shape.
    """
    path = shipped_set(path)
    where = f"image pool {path}"
    if not path.exists():
        raise ClosedLoopError(f"{where}: not found")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        stimulus_set = load_stimulus_set(path)
        pool = stimulus_set.render(size_px, background)
        name = stimulus_set.info.name
    elif suffix == ".npz":
        pool, name = _npz_pool(path, where), path.name
    elif path.is_dir() or suffix == ".zip":
        try:
            names = image_names(path)
        except ClosedLoopError as error:
            if "no image files" in str(error):
                raise ClosedLoopError(f"{where}: empty pool (no image files in it)") from None
            raise
        images = np.stack([image for _, image in load_images(path, size_px, background, names=names)])
        pool = StimulusPool(images, [NATURAL] * len(names), [{"source": str(path), "file": n} for n in names])
        name = path.name
    else:
        raise ClosedLoopError(f"{where}: not a stimulus set (.toml), a pool (.npz) or a folder/.zip of images")
    if len(pool) == 0:
        raise ClosedLoopError(f"{where}: empty pool (0 images)")
    side = pool.images.shape[1]
    return pool, f"{name} ({len(pool)} images, {side} px)"


def _npz_pool(path: Path, where: str) -> StimulusPool:
    """A saved pool, or the ``images`` array of any ``.npz`` (non-uint8 values rounded and clipped)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise ClosedLoopError(f"{where}: no 'images' array (arrays: {', '.join(data.files) or 'none'})")
            images = data["images"]
            meta = json.loads(str(data["meta"])) if "meta" in data.files else None
    except ClosedLoopError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read is the user's file
        raise ClosedLoopError(f"{where}: unreadable ({' '.join(str(error).split())})") from None
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ClosedLoopError(f"{where}: images have shape {images.shape}, expected (K, H, W, 3) RGB")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images.astype(np.float64)), 0, 255).astype(np.uint8)
    if meta is None:
        return StimulusPool(images, [IMAGE] * len(images), [{"index": i} for i in range(len(images))])
    try:
        families, params = list(meta["families"]), list(meta["params"])
    except (KeyError, TypeError) as error:
        raise ClosedLoopError(f"{where}: corrupt 'meta' table ({error})") from None
    if not len(families) == len(params) == len(images):
        raise ClosedLoopError(f"{where}: corrupt 'meta' table ({len(families)} families and {len(params)} "
                              f"params for {len(images)} images)")
    return StimulusPool(images, families, params)
