"""Count each unit's spikes in a response window after every stimulus onset."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Response:
    """Spike counts of every unit for one presentation."""

    index: int
    onset: float  # s, acquisition clock (LSL local clock of the stimulus PC)
    counts: np.ndarray  # (units,) spikes in [onset + start, onset + end)
    info: dict = field(default_factory=dict)  # what the presenter attached; "gap": True if
    # the window overlaps a stretch of lost spikes (its counts are then incomplete)


class ResponseAligner:
    """Collects onsets and spikes; hands out a presentation's counts once its window closed.

    Thread-safe: onsets come from the presentation loop, spikes from the
    ingestion thread.

    Parameters
    ----------
    units : list of (channel, unit)
        The recorded units, in the order of the counts.
    start, end : float
        Response window in seconds after onset.
    light_window : float
        With a photodiode: seconds after a flip in which its light change counts.
    """

    def __init__(self, units: list[tuple[int, int]], start: float, end: float,
                 light_window: float = 0.1):
        self._unit_of = {tuple(u): i for i, u in enumerate(units)}
        self.n_units = len(units)
        self.start, self.end = start, end
        self._lock = threading.Lock()
        self._pending: list[tuple[int, float, dict]] = []
        self._times = np.zeros(0)
        self._units = np.zeros(0, dtype=int)
        self.unknown_spikes = 0  # spikes from (channel, unit) pairs not in the rig
        self._gaps: list[tuple[float, float]] = []
        self.light_window = light_window  # s after a flip in which its light change may come
        self._lights: list[float] = []  # photodiode light changes not yet matched to a flip

    def add_onset(self, index: int, onset: float, info: dict | None = None) -> None:
        """Register presentation ``index`` shown at ``onset`` (seconds)."""
        with self._lock:
            self._pending.append((index, onset, info or {}))
            if self._lights:
                self._match_lights()

    def add_spikes(self, times: np.ndarray, channels: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Add spikes (times in seconds on the acquisition clock, corrected); returns each spike's
        position in ``units`` (-1: not a recorded unit)."""
        idx = np.array([self._unit_of.get((c, u), -1) for c, u in zip(channels.tolist(), units.tolist())],
                       dtype=int)
        known = idx >= 0
        with self._lock:
            self.unknown_spikes += int((~known).sum())
            self._times = np.concatenate([self._times, np.asarray(times, float)[known]])
            self._units = np.concatenate([self._units, idx[known]])
        return idx

    def add_gap(self, start: float, end: float) -> None:
        """Spikes between ``start`` and ``end`` (s) were lost: windows overlapping it are flagged."""
        with self._lock:
            self._gaps.append((start, end))

    def add_light(self, light: float) -> None:
        """A photodiode saw the screen change at ``light`` (s): it becomes the onset it belongs to.

        The onset is the latest uncorrected flip at most ``light_window`` s
        before the light. Lights may come before their flip is registered;
        they wait here until it is.
        """
        with self._lock:
            self._lights.append(light)
            self._match_lights()

    def _match_lights(self) -> None:
        unmatched = []
        for light in self._lights:
            for k in range(len(self._pending) - 1, -1, -1):
                index, onset, info = self._pending[k]
                if "flip" not in info and onset <= light <= onset + self.light_window:
                    self._pending[k] = (index, light, {**info, "flip": onset,
                                                       "photodiode_correction": light - onset})
                    break
            else:
                unmatched.append(light)
        latest = max((p[1] for p in self._pending), default=-np.inf)
        self._lights = [t for t in unmatched if t > latest - 10 * self.light_window]  # keep recent ones

    def complete(self, now: float, settled: float = np.inf) -> list[Response]:
        """Responses whose window ended before acquisition time ``now``, oldest first.

        Only onsets (as flipped) before ``settled`` are completed: later ones
        may still be moved by :meth:`add_light`.
        """
        with self._lock:
            def ready(p):
                return p[1] + self.end <= now and p[2].get("flip", p[1]) < settled

            done = [p for p in self._pending if ready(p)]
            if not done:
                return []
            self._pending = [p for p in self._pending if not ready(p)]
            responses = [self._count(*p) for p in done]
            # Future onsets are at least ``now - end`` (they are registered just after their flip).
            oldest = min((p[1] for p in self._pending), default=now - self.end)
            self._forget_before(oldest + self.start)
        return responses

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _count(self, index: int, onset: float, info: dict) -> Response:
        inside = (self._times >= onset + self.start) & (self._times < onset + self.end)
        counts = np.bincount(self._units[inside], minlength=self.n_units)
        a, b = onset + self.start, onset + self.end
        gap = any(start < b and end > a for start, end in self._gaps)
        return Response(index, onset, counts, {**info, "gap": True} if gap else info)

    def _forget_before(self, t: float) -> None:
        keep = self._times >= t
        self._times, self._units = self._times[keep], self._units[keep]
