"""Reading a user's files: one-line messages for what a library raised, arrays read safely, and
weights checked to be finite."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError, one_line


def load_array(path: Path, what: str) -> np.ndarray:
    """A numeric array from a ``.npy`` file (no pickles).

    Parameters
    ----------
    path : Path
        The file.
    what : str
        What it holds, for the message (e.g. ``"responses file"``).

    Raises
    ------
    ClosedLoopError
        One line naming the file: not found, unreadable (empty, truncated, not
        ``.npy``, an ``.npz`` archive, pickled objects) or not real numbers.
    """
    if not path.is_file():
        raise ClosedLoopError(f"{path}: {what} not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ClosedLoopError(f"{path}: unreadable {what} ({one_line(error)})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise ClosedLoopError(f"{path}: unreadable {what} (an .npz archive, not one .npy array)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ClosedLoopError(f"{path}: {what} must hold real numbers, found {array.dtype}")
    return array


def load_torch(path: Path, what: str) -> object:
    """What a torch file holds, loaded with ``weights_only=True`` (tensors and plain values only).

    Raises
    ------
    ClosedLoopError
        One line naming the file and ``what`` it should be when it is missing,
        empty, truncated, not a torch file or holds other objects.
    """
    import torch

    if not path.is_file():
        raise ClosedLoopError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises pickle, zip, EOF and runtime errors alike
        raise ClosedLoopError(f"{path}: unreadable or corrupt {what} ({one_line(error)})") from None


def check_finite(path: Path, tensors: Mapping[str, object]) -> None:
    """Refuse weights holding inf or NaN, whichever loader read them.

    Parameters
    ----------
    path : Path
        The file they came from, for the message.
    tensors : Mapping of str to torch.Tensor or np.ndarray
        The weights by name (a state dict, ONNX initializers); integer and boolean ones (e.g.
        BatchNorm's ``num_batches_tracked``) and values of other types are not checked.

    Raises
    ------
    ClosedLoopError
        One line naming the file and the first tensor holding a non-finite value.
    """
    for name, value in tensors.items():
        if not _finite(value):
            raise ClosedLoopError(f"{path}: tensor {name!r} holds non-finite values")


def _finite(value: object) -> bool:
    """Whether a float or complex tensor or array holds only finite values (True for anything else)."""
    import torch

    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex()) or bool(value.isfinite().all())
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.inexact):
        return bool(np.isfinite(value).all())
    return True
