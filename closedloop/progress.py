"""The live state of a running session, for displays (:class:`Progress`).

The session only records into it as things happen, cheaply: counters, and a time per presentation
(the presentation loop); each response's counts and each spike chunk's counts per unit (the inlet
thread); each decision's turnaround and each accuracy report (worker messages). A display reads it
in its own thread and computes what it shows from the recent windows below: the time left, the
turnaround, spike rates and the stream lag.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

RECENT_PRESENTATIONS = 50  # presentations the presentation rate (and so the time left) is measured over
RECENT_DECISIONS = 20  # decisions the turnaround shown is the median of
RECENT_RESPONSES = 20  # responses each unit's mean count shown is over
RECENT_CHUNKS = 100  # spike chunks the stream lag shown is the median of
SPIKE_WINDOW = 5.0  # s of spikes the spike rates shown count
MIN_SPIKE_SPAN = 1.0  # s of spikes seen before a spike rate is shown


@dataclass
class Progress:
    """Live state of a running session, for displays.

    Attributes
    ----------
    total : int
        Presentations planned.
    units : tuple of str
        The recorded units' names, in the order of the counts.
    final_accuracy : dict
        The latest held-out accuracy report (``accuracy.jsonl``'s record: ``r_observed`` and, when
        simulated, ``r_true``, one per unit); r_observed and r_true are their medians over units.
    shown_at : deque of float
        When the latest presentations were shown, s (monotonic clock).
    recent_counts : deque of ndarray
        Counts (units,) of the latest responses handed to the model, spikes.
    spike_chunks : deque of (float, ndarray)
        The newest spike time (s, LSL clock) and spikes per unit (units,) of each spike chunk
        within ``SPIKE_WINDOW`` s of the newest.
    lags : deque of float
        Age of each recent chunk's newest spike when it was handed on, s.
    """

    total: int
    units: tuple[str, ...] = ()
    presented: int = 0
    responses: int = 0
    deadline_misses: int = 0
    dropped_frames: int = 0
    core_version: int = 0
    r_observed: float | None = None
    r_true: float | None = None
    clock_events: int = 0
    gap_responses: int = 0
    aborted_responses: int = 0
    trials: dict[str, int] = field(default_factory=lambda: {
        "completed": 0, "fixation_break": 0, "no_fixation": 0})
    turnaround_ms: list[float] = field(default_factory=list)
    final_accuracy: dict = field(default_factory=dict)
    strategy_state: dict | None = None  # the strategy's latest (e.g. a hypothesis test's posterior)
    finished: bool = False  # the strategy has finished (e.g. its test decided): the session ends
    stream: str = "ok"  # the spike stream: "ok", "gap" (silent beyond stall_after) or "lost"
    shown_at: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_PRESENTATIONS))
    recent_counts: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=RECENT_RESPONSES))
    spike_chunks: deque[tuple[float, np.ndarray]] = field(default_factory=deque)
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_CHUNKS))
    first_spike: float | None = None  # s, LSL clock

    # ------------------------------------------------------------ recording --
    def add_spikes(self, times: np.ndarray, unit_index: np.ndarray, now: float) -> None:
        """A chunk of spikes (``times``: s, LSL clock; ``unit_index``: each one's unit, -1 for none
        recorded), handed on at ``now`` (s, LSL clock)."""
        newest = float(np.max(times))
        counts = np.bincount(unit_index[unit_index >= 0], minlength=len(self.units))
        self.spike_chunks.append((newest, counts))
        while self.spike_chunks[0][0] < newest - SPIKE_WINDOW:
            self.spike_chunks.popleft()
        self.lags.append(now - newest)
        if self.first_spike is None:
            self.first_spike = float(np.min(times))

    # ------------------------------------------------------------ reading --
    def time_left_s(self) -> float | None:
        """Presentations still to come at the rate of the recent ones, s (None: not measured yet)."""
        shown = list(self.shown_at)
        if len(shown) < 2 or shown[-1] <= shown[0]:
            return None
        return max(self.total - self.presented, 0) * (shown[-1] - shown[0]) / (len(shown) - 1)

    def recent_turnaround_ms(self) -> float | None:
        """Median turnaround of the recent decisions (the first, timed from the worker's start,
        left out), ms."""
        recent = self.turnaround_ms[1:][-RECENT_DECISIONS:]
        return float(np.median(recent)) if recent else None

    def spike_rates(self) -> np.ndarray | None:
        """Spikes/s per unit over the ``SPIKE_WINDOW`` s up to the newest spike (None: less than
        ``MIN_SPIKE_SPAN`` s of spikes seen)."""
        chunks = list(self.spike_chunks)
        if not chunks or self.first_spike is None:
            return None
        newest = chunks[-1][0]
        span = min(SPIKE_WINDOW, newest - self.first_spike)
        if span < MIN_SPIKE_SPAN:
            return None
        return sum(counts for t, counts in chunks if t > newest - span) / span

    def stream_lag_ms(self) -> float | None:
        """Median age of the recent chunks' newest spikes when handed on, ms."""
        lags = list(self.lags)
        return float(np.median(lags)) * 1000.0 if lags else None

    def mean_recent_counts(self) -> np.ndarray | None:
        """Mean counts (units,) of the recent responses, spikes (None: none yet)."""
        counts = list(self.recent_counts)
        return np.mean(counts, axis=0) if counts else None
