"""Map the acquisition system's clock onto the stimulus PC's clock from sync events.

The stimulus PC sends a sync event to the acquisition system at every onset
(a TTL or strobe word carrying the presentation index); the acquisition
system stamps it on its own clock. Each onset then gives a pair (acquisition
time, stimulus-PC time) of the same instant, and a straight line through
recent pairs — an offset and a drift — maps every spike onto the stimulus
PC's clock. This holds when the two clocks differ by hours and drift by
hundreds of ppm, where LSL's ``time_correction`` cannot be used because the
acquisition clock is not an LSL clock.

Clock steps. When the acquisition clock is set or restarted mid-session its
stamps move by a step while the stimulus PC's clock does not. The fit is then
split into *segments*: a new segment starts

* at once, when the spike inlet sees the stamps jump (:meth:`ClockMap.restart`,
  from its ``clock_jump`` / backwards detector); the map is not :attr:`ready`
  until the new segment's first sync pair, so spikes wait rather than being
  mapped through the old line; or
* at a sync pair whose residual against the current fit is far beyond the
  fit's scatter (more than ``STEP_MIN`` s and ``STEP_SCATTER`` times its RMS):
  steps too small for the inlet to see. Spikes between such a step and that
  pair have already been mapped through the old line.

A new segment keeps the old one's drift until its own pairs span enough time
to fit it; sync stamps taken before the step still pair into the old segment.
Every step is reported once, with its size, when its segment's first pair is
matched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FIT_PAIRS = 64  # most recent pairs in the fit
MIN_SPAN = 1e-3  # s of acquisition time the pairs must span before the drift is fitted
STEP_MIN = 0.05  # s: the smallest sync residual taken as a clock step (more than a few frames)
STEP_SCATTER = 20.0  # a step's residual is at least this many times the fit's RMS scatter


@dataclass
class _Segment:
    """One stretch of the acquisition clock without a step: its pairs and its line."""

    cause: str  # what started it: "start", "sync_residual", or the inlet's anomaly
    slope: float = 1.0  # local s per acquisition s, carried from the segment before until fitted
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (acquisition, local) s
    fit: tuple[float, float, float, float] | None = None  # x0, y0, slope, intercept

    def refit(self) -> None:
        pairs = np.array(self.pairs[-FIT_PAIRS:])
        # Centre on the first pair: an hour's offset would otherwise cost precision.
        x0, y0 = pairs[0]
        x, y = pairs[:, 0] - x0, pairs[:, 1] - y0
        if np.ptp(x) < MIN_SPAN:
            slope, intercept = self.slope, float(np.mean(y - self.slope * x))
        else:
            slope, intercept = np.polyfit(x, y, 1)
        self.fit = (float(x0), float(y0), float(slope), float(intercept))

    def to_local(self, acquisition_times: np.ndarray) -> np.ndarray:
        x0, y0, slope, intercept = self.fit
        return y0 + intercept + slope * (np.asarray(acquisition_times, dtype=np.float64) - x0)

    def residuals(self) -> np.ndarray:
        """Local minus fitted time (s) of the pairs in the fit."""
        pairs = np.array(self.pairs[-FIT_PAIRS:])
        return pairs[:, 1] - self.to_local(pairs[:, 0]) if len(pairs) else np.zeros(0)

    def is_step(self, acquisition_time: float, local_time: float) -> bool:
        """Whether a new pair lies far beyond this fit's scatter (see the module docstring)."""
        if self.fit is None:
            return False
        residual = local_time - float(self.to_local(acquisition_time))
        scatter = float(np.sqrt(np.mean(self.residuals() ** 2)))
        return abs(residual) > max(STEP_MIN, STEP_SCATTER * scatter)


class ClockMap:
    """A running linear fit ``local = a + b * acquisition`` from matched sync pairs, in segments
    split at clock steps (see the module docstring).

    Thread-safe: local onsets come from the presentation loop, sync stamps
    from the ingestion thread; they are matched by presentation index.

    Parameters
    ----------
    on_step : callable(dict), optional
        Receives each clock step once its new segment has its first pair:
        ``{"kind": "clock_step", "seconds": s the acquisition clock moved (positive: ahead),
        "cause": ..., "segment": n, "index": the presentation of that pair, "time": its onset
        (s, local clock)}``. Called outside the lock, from whichever thread matched the pair.
    """

    def __init__(self, on_step: Callable[[dict], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_step = on_step
        self._local: dict[int, float] = {}
        self._acquired: dict[int, tuple[float, int]] = {}  # index: (acquisition time, segment)
        self._segments = [_Segment("start")]

    @property
    def ready(self) -> bool:
        """Whether the current segment has at least one matched pair."""
        return self._segments[-1].fit is not None

    @property
    def pairs(self) -> int:
        """Matched pairs, all segments."""
        return sum(len(s.pairs) for s in self._segments)

    @property
    def steps(self) -> int:
        """Clock steps so far (segments after the first)."""
        return len(self._segments) - 1

    def add_onset(self, index: int, local_time: float) -> None:
        """Presentation ``index`` was shown at ``local_time`` (s, stimulus-PC clock)."""
        with self._lock:
            self._local[index] = local_time
            step = self._match(index)
        self._report(step)

    def add_sync(self, index: int, acquisition_time: float) -> None:
        """The acquisition system stamped presentation ``index``'s sync at ``acquisition_time`` (s)."""
        with self._lock:
            self._acquired[index] = (acquisition_time, len(self._segments) - 1)
            step = self._match(index)
        self._report(step)

    def restart(self, cause: str) -> None:
        """The acquisition stamps from now on follow a stepped clock: start a new segment, not
        :attr:`ready` until its first sync pair. Without a fit yet there is nothing to split."""
        with self._lock:
            if self.ready:
                self._segments.append(_Segment(cause, slope=self._segments[-1].fit[2]))

    def to_local(self, acquisition_times: np.ndarray) -> np.ndarray:
        """Acquisition-clock times (s) of the current segment on the stimulus PC's clock; needs
        :attr:`ready`."""
        with self._lock:
            if not self.ready:
                raise RuntimeError("no sync pair yet")
            return self._segments[-1].to_local(acquisition_times)

    def residuals(self) -> np.ndarray:
        """Fit residuals (s) of the pairs in every segment's fit, each against its own line."""
        with self._lock:
            return np.concatenate([s.residuals() for s in self._segments if s.fit is not None] or [np.zeros(0)])

    def _match(self, index: int) -> dict | None:
        """Pair ``index`` if both halves came; returns the step event this pair completes, if any."""
        if index not in self._local or index not in self._acquired:
            return None
        local = self._local.pop(index)
        acquired, number = self._acquired.pop(index)
        current = self._segments[-1]
        if number == len(self._segments) - 1 and current.is_step(acquired, local):
            self._segments.append(_Segment("sync_residual", slope=current.fit[2]))
            number += 1
        segment = self._segments[number]
        segment.pairs.append((acquired, local))
        segment.refit()
        if number == 0 or len(segment.pairs) > 1:
            return None
        moved = float(self._segments[number - 1].to_local(acquired)) - local
        return {"kind": "clock_step", "seconds": moved, "cause": segment.cause, "segment": number,
                "index": index, "time": local}

    def _report(self, step: dict | None) -> None:
        if step is not None and self._on_step is not None:
            self._on_step(step)
