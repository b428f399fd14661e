"""Recorded sessions to train image models on: images, spike counts, held-out splits.

A session is the images shown (a zip or folder, in the order of the responses) and the
responses: (neurons, images) spike counts in the response window averaged over repeats, and,
where the lab kept them, (neurons, images, repeats) single-trial counts (unused repeats NaN).
Images whose pixels are identical (a session that showed the same file under two names, e.g.
V4 session 190925's files 0901-1200) are one image: their averages are averaged and their
single trials pooled.

:func:`find_sessions` finds every session in a folder laid out as the shared V4 data is
(``images_<name>.zip``, ``responses_repeat_averaged_<name>.npy``, optionally
``responses_raw_<name>.npy``, in the folder or its ``sessions/``). :func:`heldout_split` gives
each session's held-out images from the seed and the session's name alone, so adding a session
never changes another's split.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.model.files import load_array

IMAGE_PX = 112
"""Side images are read at, pixels (the V4 sessions' own and the compact models' input)."""

IMAGES, AVERAGED, RAW = "images_{}.zip", "responses_repeat_averaged_{}.npy", "responses_raw_{}.npy"


@dataclass
class Session:
    """One recorded session, ready to train on.

    Attributes
    ----------
    name : str
        For logs and the provenance.
    images : ndarray, (K, 112, 112, 3) uint8
        Distinct images.
    responses : ndarray, (neurons, K) float64
        Mean spike counts per image (duplicates merged).
    sources : tuple of str
        The images and responses files.
    files : int
        Image files read (``files - K`` were duplicates).
    trials : ndarray, (neurons, K, repeats) float64, optional
        Single-trial spike counts (NaN where a repeat was not shown), when the lab kept them.
    """

    name: str
    images: np.ndarray
    responses: np.ndarray
    sources: tuple[str, str]
    files: int
    trials: np.ndarray | None = None

    @property
    def neurons(self) -> int:
        return self.responses.shape[0]


def _counts(path: Path, ndim: int, what: str) -> np.ndarray:
    """A spike-count array from ``path``: ``ndim`` dimensions, finite (NaN allowed for raw), >= 0."""
    counts = load_array(path, "responses file")
    if counts.ndim != ndim or 0 in counts.shape:
        raise ClosedLoopError(f"{path}: expected {what}, found shape {counts.shape}")
    counts = counts.astype(np.float64)
    bad = np.isinf(counts) if ndim == 3 else ~np.isfinite(counts)
    if bad.any():
        raise ClosedLoopError(f"{path}: {int(bad.sum())} responses are not finite")
    if (counts[np.isfinite(counts)] < 0).any():
        raise ClosedLoopError(f"{path}: responses must be spike counts >= 0 (found {np.nanmin(counts):g})")
    return counts


def read_session(images_path: Path | str, responses_path: Path | str, name: str | None = None,
                 raw_path: Path | str | None = None) -> Session:
    """A session's images and responses; one-line errors name the file at fault."""
    from closedloop.stimuli.natural import load_images

    images_path, responses_path = Path(images_path), Path(responses_path)
    responses = _counts(responses_path, 2, "(neurons, images) responses")
    trials = None
    if raw_path is not None:
        trials = _counts(Path(raw_path), 3, "(neurons, images, repeats) single-trial counts")
        if trials.shape[:2] != responses.shape:
            raise ClosedLoopError(f"{raw_path}: {trials.shape[:2]} (neurons, images), but {responses_path} has "
                                  f"{responses.shape}")
    if not images_path.exists():
        raise ClosedLoopError(f"{images_path}: images file not found")
    loaded = [image for _, image in load_images(images_path, IMAGE_PX)]
    if len(loaded) != responses.shape[1]:
        raise ClosedLoopError(f"{responses_path}: {responses.shape[1]} images (columns), but {images_path} "
                              f"has {len(loaded)} images")
    keys = [hashlib.sha1(image.tobytes()).digest() for image in loaded]
    first: dict[bytes, int] = {}  # each distinct image's number, in order of first appearance
    group = np.array([first.setdefault(key, len(first)) for key in keys])
    distinct = len(first)
    images = np.stack([loaded[i] for i in np.unique(group, return_index=True)[1]])
    sums = np.zeros((responses.shape[0], distinct))
    np.add.at(sums.T, group, responses.T)
    merged = sums / np.bincount(group, minlength=distinct)
    if trials is not None and distinct < len(loaded):
        parts = [np.concatenate([trials[:, i] for i in np.flatnonzero(group == g)], axis=1) for g in range(distinct)]
        width = max(p.shape[1] for p in parts)
        trials = np.stack([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=np.nan) for p in parts], 1)
    return Session(name or images_path.stem, images, merged, (str(images_path), str(responses_path)), len(loaded),
                   trials)


def sessions_folder(folder: Path | str, what: str = "data folder") -> Path:
    """The folder holding the session files: ``folder/sessions`` when there is one, else ``folder``
    (an error names it as ``what``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClosedLoopError(f"{folder}: {what} not found")
    return folder / "sessions" if (folder / "sessions").is_dir() else folder


def v4_sessions(folder: Path | str, names: list[str]) -> list[tuple[Path, Path, str]]:
    """``(images, responses, name)`` of sessions ``names`` in a shared-V4 folder (or its ``sessions/``)."""
    sessions = sessions_folder(folder, "V4 data folder")
    return [(sessions / IMAGES.format(n), sessions / AVERAGED.format(n), n) for n in names]


def find_sessions(folder: Path | str, names: list[str] | None = None) -> list[Session]:
    """Every session in a folder (or those named), read, in name order.

    Raises
    ------
    ClosedLoopError
        No session in the folder, a named one missing, or a file that cannot be read.
    """
    where = sessions_folder(folder)
    found = sorted(p.name[len("responses_repeat_averaged_"):-len(".npy")]
                   for p in where.glob(AVERAGED.format("*")))
    if not found:
        raise ClosedLoopError(f"{where}: no sessions (responses_repeat_averaged_<name>.npy with images_<name>.zip)")
    missing = sorted(set(names or ()) - set(found))
    if missing:
        raise ClosedLoopError(f"{where}: no session {', '.join(missing)} (found {', '.join(found)})")
    sessions = []
    for name in names or found:
        raw = where / RAW.format(name)
        sessions.append(read_session(where / IMAGES.format(name), where / AVERAGED.format(name), name,
                                     raw if raw.is_file() else None))
    return sessions


def heldout_split(session: str, images: int, fraction: float, seed: int) -> np.ndarray:
    """The held-out images of a session, sorted indices: a seeded ``fraction`` (at least 3, at most
    all but 3) drawn from the seed and the session's name only."""
    if images < 6:
        raise ClosedLoopError(f"session {session}: {images} distinct images; at least 6 are needed to hold some out")
    held = int(min(max(3, round(fraction * images)), images - 3))
    rng = np.random.default_rng([seed, zlib.crc32(session.encode())])
    return np.sort(rng.permutation(images)[:held])


def noise_ceiling(trials: np.ndarray) -> np.ndarray:
    """Per neuron, the fraction of the variance of repeat-averaged responses across images that is
    not trial noise (the ceiling on a model's R^2), from (neurons, images, repeats) counts with NaN
    for unused repeats; NaN where it cannot be estimated."""
    n = np.sum(np.isfinite(trials), axis=2)  # (neurons, images)
    means = np.nanmean(trials, axis=2)
    noise = np.nanvar(trials, axis=2, ddof=1) / np.maximum(n, 1)  # variance of each mean
    total = np.var(means, axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ceiling = 1 - np.nanmean(np.where(n > 1, noise, np.nan), axis=1) / total
    return np.where(total > 0, ceiling, np.nan)


def correlations(predicted: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Per-column (per-neuron) Pearson r of two (B, n) arrays (NaN where either is constant)."""
    p, o = predicted - predicted.mean(0), observed - observed.mean(0)
    denominator = np.sqrt((p * p).sum(0) * (o * o).sum(0))
    return np.where(denominator > 0, (p * o).sum(0) / np.where(denominator > 0, denominator, 1.0), np.nan)
