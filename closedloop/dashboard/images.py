"""The session's stimuli as PNG files, by pool index (``stimuli.npz``, then what strategies added)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from closedloop.record.session import ADDED
from closedloop.stimuli import StimulusPool, read_added


class PoolImages:
    """PNG encodings of a session's pool images, read when first asked for.

    Parameters
    ----------
    path : Path
        The session directory (``stimuli.npz`` is written atomically when it is created; stimuli a
        strategy adds appear in ``synthesized/``).
    """

    def __init__(self, path: Path):
        self.path = path
        self.pool: StimulusPool | None = None
        self._png: dict[int, bytes] = {}

    def png(self, pool_index: int) -> bytes | None:
        """Image ``pool_index`` as PNG bytes; None when the pool has no such image (yet).

        Raises
        ------
        ClosedLoopError
            An unreadable ``stimuli.npz`` (one line naming it).
        """
        if pool_index not in self._png:
            pool = self._pool(pool_index)
            if pool is None or pool_index >= len(pool):
                return None
            buffer = io.BytesIO()
            Image.fromarray(pool.images[pool_index]).save(buffer, "PNG")
            self._png[pool_index] = buffer.getvalue()
        return self._png[pool_index]

    def _pool(self, pool_index: int) -> StimulusPool | None:
        """The pool, read up to ``pool_index`` where the session has added that far (None before it exists)."""
        if self.pool is None:
            if not (self.path / "stimuli.npz").exists():
                return None
            self.pool = StimulusPool.load(self.path / "stimuli.npz")
        if pool_index >= len(self.pool):
            read_added(self.path / ADDED, self.pool)
        return self.pool
