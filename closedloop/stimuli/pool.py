"""The candidate pool: rendered stimuli, addressed by a content hash of their pixels."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.stimuli.families import FAMILIES


def stimulus_id(image: np.ndarray) -> str:
    """Content hash of a rendered image (16 hex digits of SHA-256 over shape and pixels)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes())
    return digest.hexdigest()[:16]


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

    def index(self, sid: str) -> int:
        """Position of the stimulus with this id; ``KeyError`` if absent."""
        return self._index[sid]

    def save(self, path: Path | str) -> None:
        """Write to an ``.npz`` file (images plus a JSON table of families and params)."""
        meta = json.dumps({"families": self.families, "params": self.params})
        np.savez_compressed(path, images=self.images, meta=np.array(meta))

    @classmethod
    def load(cls, path: Path | str) -> StimulusPool:
        """Read a pool written by :meth:`save`."""
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                return cls(data["images"], meta["families"], meta["params"])
        except FileNotFoundError:
            raise ClosedLoopError(f"stimulus file {path}: not found") from None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ClosedLoopError(f"stimulus file {path}: unreadable ({exc})") from None


def generate_pool(families: dict[str, int], size_px: int, seed: int) -> StimulusPool:
    """Render ``families[name]`` random members of each named family, reproducibly.

    Duplicate renderings (same pixels) are kept once.
    """
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ClosedLoopError(
            f"unknown stimulus family {unknown[0]!r}; known: {', '.join(sorted(FAMILIES))}"
        )
    rng = np.random.default_rng(seed)
    images, names, params, seen = [], [], [], set()
    for name, count in families.items():
        family = FAMILIES[name]
        for _ in range(count):
            p = family.sample(rng)
            image = family.render(p, size_px)
            sid = stimulus_id(image)
            if sid not in seen:
                seen.add(sid)
                images.append(image)
                names.append(name)
                params.append(p)
    if not images:
        raise ClosedLoopError("the stimulus pool is empty: ask for at least one image")
    return StimulusPool(np.stack(images), names, params)
