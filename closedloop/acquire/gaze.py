"""Eye position from an LSL gaze stream: is the animal looking at the fixation point?"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import InletThread
from closedloop.errors import ClosedLoopError

PULL_TIMEOUT = 0.005  # s
STALE = 0.25  # s: a gaze sample older than this says nothing about now (LSL delivery jitters by ~0.1 s)


class GazeInlet(InletThread):
    """Pulls a gaze stream (channels x, y: degrees right and up of fixation) on a thread.

    Parameters
    ----------
    info : pylsl.StreamInfo
        The resolved gaze stream; at least two numeric channels.
    on_event : callable(dict), optional
        Receives ``clock_offset_changed`` (:class:`~closedloop.acquire.streams.InletThread`).
    on_samples : callable(times, values), optional
        Receives each chunk as pulled (to record it): times (n,) s on this machine's clock,
        values (n, channels).
    """

    def __init__(self, info: pylsl.StreamInfo, on_event: Callable[[dict], None] | None = None,
                 on_samples: Callable[[np.ndarray, np.ndarray], None] | None = None):
        kind = "string" if info.channel_format() == pylsl.cf_string else "numeric"
        if info.channel_count() < 2 or kind == "string":
            raise ClosedLoopError(f"LSL stream {info.name()!r}: a gaze stream needs 2 numeric channels "
                                  f"(x, y in degrees); found {info.channel_count()} {kind}")
        super().__init__(info, max_buflen=10, thread_name="gaze-inlet", on_event=on_event)
        self._latest = (-np.inf, np.nan, np.nan)  # (s on this machine's clock, x, y degrees)
        self._on_samples = on_samples
        self.samples = 0

    def latest(self) -> tuple[float, float, float]:
        """The newest sample: (time s on this machine's clock, x deg, y deg)."""
        return self._latest

    def fixating(self, window_deg: float, now: float | None = None) -> bool:
        """Whether the newest sample, at most ``STALE`` s old, lies within ``window_deg`` of fixation.

        A silent gaze stream counts as not fixating: no evidence, no trial.
        """
        t, x, y = self._latest
        now = pylsl.local_clock() if now is None else now
        return now - t <= STALE and bool(np.hypot(x, y) <= window_deg)

    def _pull(self) -> None:
        while not self._stop.is_set():
            samples, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, as_numpy=True)
            self._refresh_offset()
            if len(stamps):
                stamps = stamps + self.offset
                x, y = np.asarray(samples)[-1, :2]
                self._latest = (float(stamps[-1]), float(x), float(y))
                self.samples += len(stamps)
                if self._on_samples is not None:
                    self._on_samples(stamps, samples)
