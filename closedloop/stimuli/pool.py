"""The candidate pool: rendered stimuli, addressed by a content hash of their pixels.

Pools are made by :func:`closedloop.stimuli.generate_pool` (random members of
families) or by rendering a stimulus set (:mod:`closedloop.stimuli.sets`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from closedloop.errors import ClosedLoopError


def stimulus_id(image: np.ndarray) -> str:
    """Content hash of a rendered image (16 hex digits of SHA-256 over shape and pixels)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes())
    return digest.hexdigest()[:16]


GALLERY_PAD = 4  # pixels between gallery cells
GALLERY_LABEL = 14  # caption strip under each image
GALLERY_TITLE = 18  # title strip at the top
GALLERY_CANVAS = (32, 32, 32)
GALLERY_INK = (235, 235, 235)


def gallery_size(count: int, side: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a gallery of ``count`` images of ``side`` pixels, ``columns`` a row."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    return (GALLERY_PAD + columns * (side + GALLERY_PAD),
            GALLERY_TITLE + rows * (side + GALLERY_LABEL + GALLERY_PAD))


def _fitter(ink: ImageDraw.ImageDraw, font):
    """A function cutting text to fit a width in pixels (an ellipsis marks the cut)."""
    def fit(text: str, width: int) -> str:
        if ink.textlength(text, font=font) <= width:
            return text
        while text and ink.textlength(text + "…", font=font) > width:
            text = text[:-1]
        return text + "…" if text else ""
    return fit


@dataclass(frozen=True)
class Stimulus:
    """One rendered stimulus: family, parameters and an N x N x 3 uint8 image."""

    family: str
    params: dict
    image: np.ndarray = field(repr=False)

    @property
    def id(self) -> str:
        return stimulus_id(self.image)


class StimulusPool:
    """An ordered set of stimuli; ``images`` is a (K, N, N, 3) uint8 array."""

    def __init__(self, images: np.ndarray, families: list[str], params: list[dict]):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (K, N, N, 3) uint8, got {images.shape} {images.dtype}")
        self.images = images
        self.families = list(families)
        self.params = list(params)
        self.ids = [stimulus_id(im) for im in images]
        self._index = {sid: i for i, sid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Stimulus:
        return Stimulus(self.families[i], self.params[i], self.images[i])

    def __contains__(self, sid: object) -> bool:
        return sid in self._index

    def index(self, sid: str) -> int:
        """Position of the stimulus with this id; ``KeyError`` if absent."""
        return self._index[sid]

    def append(self, images: np.ndarray, families: list[str], params: list[dict]) -> np.ndarray:
        """Add stimuli (e.g. synthesised during a session) at the end; their indices."""
        added = StimulusPool(images, families, params)
        start = len(self)
        self.images = np.concatenate([self.images, added.images])
        self.families += added.families
        self.params += added.params
        self.ids += added.ids
        self._index.update({sid: start + i for i, sid in enumerate(added.ids) if sid not in self._index})
        return np.arange(start, len(self))

    def save(self, path: Path | str) -> None:
        """Write to an ``.npz`` file (images plus a JSON table of families and params)."""
        meta = json.dumps({"families": self.families, "params": self.params})
        np.savez_compressed(path, images=self.images, meta=np.array(meta))

    def label(self, i: int) -> str:
        """A short caption of stimulus ``i``: its index and family (a natural image: its file name)."""
        params = self.params[i]
        what = params.get("file", self.families[i]) if isinstance(params, dict) else self.families[i]
        gaudy = " gaudy" if isinstance(params, dict) and params.get("gaudy") else ""
        return f"{i} {what}{gaudy}"

    def gallery(self, columns: int = 16, limit: int | None = None, title: str | None = None) -> Image.Image:
        """A contact sheet: the first ``limit`` images (all by default), ``columns`` a row, each captioned.

        Layout (pixels, N the image side): a ``GALLERY_TITLE`` high title strip, then cells of
        N + ``GALLERY_PAD`` wide and N + ``GALLERY_LABEL`` + ``GALLERY_PAD`` high, with a
        ``GALLERY_PAD`` margin on the left and at the bottom.
        """
        count = len(self) if limit is None else min(limit, len(self))
        if count == 0:
            raise ValueError("an empty pool has no gallery")
        side = self.images.shape[1]
        columns = max(1, min(columns, count))
        width, height = gallery_size(count, side, columns)
        sheet = Image.new("RGB", (width, height), GALLERY_CANVAS)
        ink = ImageDraw.Draw(sheet)
        font = ImageFont.load_default()
        fit = _fitter(ink, font)
        ink.text((GALLERY_PAD, 2), fit(title or f"{len(self)} stimuli", width - 2 * GALLERY_PAD), fill=GALLERY_INK,
                 font=font)
        for i in range(count):
            row, column = divmod(i, columns)
            x = GALLERY_PAD + column * (side + GALLERY_PAD)
            y = GALLERY_TITLE + row * (side + GALLERY_LABEL + GALLERY_PAD)
            sheet.paste(Image.fromarray(self.images[i]), (x, y))
            ink.text((x, y + side + 1), fit(self.label(i), side + GALLERY_PAD - 1), fill=GALLERY_INK, font=font)
        return sheet

    @classmethod
    def load(cls, path: Path | str) -> StimulusPool:
        """Read a pool written by :meth:`save`."""
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                return cls(data["images"], meta["families"], meta["params"])
        except FileNotFoundError:
            raise ClosedLoopError(f"stimulus file {path}: not found") from None
        except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
            raise ClosedLoopError(f"stimulus file {path}: unreadable ({exc})") from None


def write_added(folder: Path | str, pool: StimulusPool, start: int) -> Path:
    """Save stimuli ``start:`` of ``pool`` (added during a session) as ``folder/<start>.npz``,
    atomically, so a reader never sees part of a file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    part = StimulusPool(pool.images[start:], pool.families[start:], pool.params[start:])
    path = folder / f"{start:06d}.npz"
    partial = folder / f"{start:06d}.partial.npz"
    part.save(partial)
    partial.replace(path)
    return path


def first_added(folder: Path | str) -> int | None:
    """The pool index of the first stimulus :func:`write_added` saved in ``folder`` (the size of the
    pool the session started with); None when none was."""
    starts = [int(path.stem) for path in Path(folder).glob("*.npz") if path.stem.isdigit()]
    return min(starts, default=None)


def read_added(folder: Path | str, pool: StimulusPool) -> int:
    """Append to ``pool`` the stimuli saved by :func:`write_added` that follow its end, in order;
    returns how many were added."""
    folder, before = Path(folder), len(pool)
    while (path := folder / f"{len(pool):06d}.npz").exists():
        part = StimulusPool.load(path)
        pool.append(part.images, part.families, part.params)
    return len(pool) - before
