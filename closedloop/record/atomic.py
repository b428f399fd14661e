"""Whole-file writes that a kill cannot leave half done: the old file or the new one, nothing between."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new content to; on leaving the block it is
    flushed to disk (fsync) and renamed over ``path`` (``os.replace``: atomic on one file
    system), and the folder's entry is synced too. On an error the temporary file is removed
    and ``path`` is untouched.

    The temporary name keeps ``path``'s suffix (``numpy.savez`` appends ``.npz`` to any other).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str: UTF-8) as :func:`replacing` does."""
    with replacing(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
