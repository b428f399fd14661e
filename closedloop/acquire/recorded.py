"""Any numeric LSL stream, recorded as it arrives (a rig's ``[[record]]`` streams)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import InletThread
from closedloop.errors import ClosedLoopError

PULL_TIMEOUT = 0.005  # s
MAX_CHUNK = 4096  # samples per pull


class RecordedInlet(InletThread):
    """Pulls a numeric stream on a thread and hands on every chunk, for the record only.

    Parameters
    ----------
    info : pylsl.StreamInfo
        The resolved stream: numeric samples (a string stream is refused).
    on_samples : callable(times, values)
        Receives each chunk: times (n,) s on this machine's clock, values (n, channels).
    on_event : callable(dict), optional
        Receives ``clock_offset_changed`` (:class:`~closedloop.acquire.streams.InletThread`).

    Raises
    ------
    ClosedLoopError
        A string stream (naming it).
    """

    def __init__(self, info: pylsl.StreamInfo, on_samples: Callable[[np.ndarray, np.ndarray], None],
                 on_event: Callable[[dict], None] | None = None):
        if info.channel_format() == pylsl.cf_string:
            raise ClosedLoopError(f"LSL stream {info.name()!r}: a recorded stream needs numeric samples, "
                                  "found strings")
        super().__init__(info, max_buflen=60, thread_name=f"record-{info.name()}", on_event=on_event)
        self._on_samples = on_samples
        self.samples = 0

    def _pull(self) -> None:
        while not self._stop.is_set():
            values, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, max_samples=MAX_CHUNK, as_numpy=True)
            self._refresh_offset()
            if len(stamps):
                self._on_samples(stamps + self.offset, values)
                self.samples += len(stamps)
