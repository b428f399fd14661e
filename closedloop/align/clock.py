"""Map the acquisition system's clock onto the stimulus PC's clock from sync events.

The stimulus PC sends a sync event to the acquisition system at every onset
(a TTL or strobe word carrying the presentation index); the acquisition
system stamps it on its own clock. Each onset then gives a pair (acquisition
time, stimulus-PC time) of the same instant, and a straight line through
recent pairs — an offset and a drift — maps every spike onto the stimulus
PC's clock. This holds when the two clocks differ by hours and drift by
hundreds of ppm, where LSL's ``time_correction`` cannot be used because the
acquisition clock is not an LSL clock.
"""

from __future__ import annotations

import threading

import numpy as np

FIT_PAIRS = 64  # most recent pairs in the fit


class ClockMap:
    """A running linear fit ``local = a + b * acquisition`` from matched sync pairs.

    Thread-safe: local onsets come from the presentation loop, sync stamps
    from the ingestion thread; they are matched by presentation index.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local: dict[int, float] = {}
        self._acquired: dict[int, float] = {}
        self._pairs: list[tuple[float, float]] = []
        self._fit: tuple[float, float, float, float] | None = None  # x0, y0, slope, intercept

    @property
    def ready(self) -> bool:
        """Whether at least one pair has been matched."""
        return self._fit is not None

    @property
    def pairs(self) -> int:
        return len(self._pairs)

    def add_onset(self, index: int, local_time: float) -> None:
        """Presentation ``index`` was shown at ``local_time`` (s, stimulus-PC clock)."""
        with self._lock:
            self._local[index] = local_time
            self._match(index)

    def add_sync(self, index: int, acquisition_time: float) -> None:
        """The acquisition system stamped presentation ``index``'s sync at ``acquisition_time`` (s)."""
        with self._lock:
            self._acquired[index] = acquisition_time
            self._match(index)

    def to_local(self, acquisition_times: np.ndarray) -> np.ndarray:
        """Acquisition-clock times (s) on the stimulus PC's clock; needs :attr:`ready`."""
        with self._lock:
            if self._fit is None:
                raise RuntimeError("no sync pair yet")
            x0, y0, slope, intercept = self._fit
        return y0 + intercept + slope * (np.asarray(acquisition_times, dtype=np.float64) - x0)

    def residuals(self) -> np.ndarray:
        """Fit residuals (s) of the pairs in the current fit."""
        with self._lock:
            pairs = np.array(self._pairs[-FIT_PAIRS:])
        if not len(pairs):
            return np.zeros(0)
        return pairs[:, 1] - self.to_local(pairs[:, 0])

    def _match(self, index: int) -> None:
        if index in self._local and index in self._acquired:
            self._pairs.append((self._acquired.pop(index), self._local.pop(index)))
            self._refit()

    def _refit(self) -> None:
        pairs = np.array(self._pairs[-FIT_PAIRS:])
        # Centre on the first pair: an hour's offset would otherwise cost precision.
        x0, y0 = pairs[0]
        x, y = pairs[:, 0] - x0, pairs[:, 1] - y0
        if len(pairs) == 1 or np.ptp(x) < 1e-3:
            slope, intercept = 1.0, float(np.mean(y - x))
        else:
            slope, intercept = np.polyfit(x, y, 1)
        self._fit = (float(x0), float(y0), float(slope), float(intercept))
