"""Spike ingestion: an LSL inlet on its own thread, clock-corrected."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import InletThread, check_spike_stream
from closedloop.align.clock import ClockMap
from closedloop.config import SpikeStreamSpec

CLOCK_REFRESH = 5.0  # s between time_correction() queries
PULL_TIMEOUT = 0.005  # s
MAX_CHUNK = 65536  # samples per pull
BUFFER_SECONDS = 60  # s of a regular-rate stream held by the inlet
BUFFER_SPIKES = 600_000  # samples of an event stream held by the inlet
BACKWARDS = 0.001  # s a stamp may step back before it is reported
JUMP = 1.0  # s a stamp may run ahead of the wall clock before it is reported

log = logging.getLogger(__name__)


SpikeCallback = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
TickCallback = Callable[[float], None]


class SpikeInlet(InletThread):
    """Pulls (channel, unit) spike samples on a thread and hands them on.

    Timestamps are moved onto this machine's LSL clock with
    ``inlet.time_correction()`` (refreshed every few seconds). After every pull
    ``on_tick(acquisition_time)`` is called: the time up to which all spikes
    are known to have arrived: the newest stamp, or, when the stream is
    quiet, ``local_clock() - max(max_latency, stall_after)``.

    Parameters
    ----------
    info : pylsl.StreamInfo
        The resolved spike stream.
    on_spikes : callable(times, channels, units)
        Receives each chunk: times in seconds (corrected), int arrays.
    on_tick : callable(float)
        Receives the acquisition time after every pull.
    max_latency : float
        Longest network delay of a spike, seconds.
    spec : SpikeStreamSpec, optional
        The stream's format (default: ``events``). A ``counts`` stream is
        turned into spikes: a sample stamped ``t`` with ``k`` in stream
        channel ``c`` (from 1) gives ``k`` spikes on (c, 1) at the bin's
        centre, ``t - 0.5 / rate``; timing is then only as fine as the bins.
    channels : int
        For ``counts``: the highest stream channel the rig's units name.
    clock : ClockMap, optional
        Map stamps through sync events instead of LSL's ``time_correction``:
        samples on ``sync_channel`` carry a presentation index in their unit
        field and are handed to the map, not passed on as spikes; spikes
        wait until the first sync pair is matched.
    sync_channel : int
        The channel of sync events.
    on_event : callable(dict), optional
        Receives clock anomalies: stamps going backwards by more than 1 ms
        (``clock_backwards``), or jumping ahead more than 1 s beyond the
        wall clock (``clock_jump``); and the end of every gap (``spike_gap``,
        with ``start`` and ``end`` on this machine's clock).
    stall_after : float
        Seconds without a single sample after which the stream counts as gone
        (cable pulled, acquisition software restarting). From then on the
        acquisition time stops advancing, so no response window closes on
        missing data; when samples come back (the inlet reconnects by itself)
        the gap is reported to ``on_gap(start, end)`` and ``on_event``.
    on_gap : callable(start, end), optional
        Receives each gap, seconds on this machine's clock.
    """

    def __init__(self, info: pylsl.StreamInfo, on_spikes: SpikeCallback, on_tick: TickCallback,
                 max_latency: float = 0.05, spec: SpikeStreamSpec | None = None, channels: int = 0,
                 clock: ClockMap | None = None, sync_channel: int = 0,
                 on_event: Callable[[dict], None] | None = None, stall_after: float = 2.0,
                 on_gap: Callable[[float, float], None] | None = None):
        self.spec = spec or SpikeStreamSpec(name=info.name(), type=info.type())
        check_spike_stream(info, self.spec, channels)
        self.half_bin = 0.5 / info.nominal_srate() if self.spec.format == "counts" else 0.0
        # 60 s of a regular stream; for an irregular one LSL counts in hundreds of samples: 600,000.
        buffer = BUFFER_SECONDS if info.nominal_srate() > 0 else BUFFER_SPIKES // 100
        super().__init__(info, max_buflen=buffer, thread_name="spike-inlet")
        self._on_spikes, self._on_tick = on_spikes, on_tick
        self.max_latency = max_latency
        self.clock, self.sync_channel, self._on_event = clock, sync_channel, on_event
        self.corrects_clock = clock is None  # else the sync fit maps the stamps
        self.clock_events = 0
        self.stall_after, self._on_gap = stall_after, on_gap
        self.gaps: list[tuple[float, float]] = []
        self.in_gap_since: float | None = None  # s, local clock: the newest stamp before the gap
        self._last: tuple[float, float] | None = None  # (latest stamp, monotonic time it came)
        self.received = 0

    def _pull(self) -> None:
        newest = -np.inf  # s, local clock: the latest stamp seen, corrected
        held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # raw spikes awaiting the clock map
        next_clock = time.monotonic() + CLOCK_REFRESH
        last_arrival = pylsl.local_clock()  # s, local clock: when the latest chunk was pulled
        while not self._stop.is_set():
            samples, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, max_samples=MAX_CHUNK,
                                                     min_samples=1, as_numpy=True)
            # One reading per pull for both the stall check and the tick, so a tick can never
            # run past the last arrival while the silence is still shorter than stall_after.
            pulled = pylsl.local_clock()
            if self.clock is None and time.monotonic() > next_clock:
                try:
                    self.offset = self._inlet.time_correction(timeout=1.0)
                except pylsl.util.TimeoutError:  # a reconnected stream needs a new estimate (about 1 s):
                    log.warning("spike stream %r: no clock offset within 1 s; keeping the last one", self.name)
                next_clock = time.monotonic() + CLOCK_REFRESH
            if not len(stamps) and pulled - last_arrival > self.stall_after:
                if self.in_gap_since is None:
                    self.in_gap_since = newest if np.isfinite(newest) else pylsl.local_clock()
                    log.warning("spike stream %r: no samples for %.1f s; waiting for it to return",
                                self.name, self.stall_after)
                continue  # acquisition time stands still: no window closes on missing data
            if len(stamps):
                last_arrival = pulled
                if self.in_gap_since is not None:
                    self._end_gap(float(self._to_local(stamps[:1])[0]))
                times, channels, units = self._decode(samples, stamps)
                if self.clock is not None:
                    sync = channels == self.sync_channel
                    for index, t in zip(units[sync], times[sync]):
                        self.clock.add_sync(int(index), float(t))
                    times, channels, units = times[~sync], channels[~sync], units[~sync]
                self._check_stamps(times)
                held.append((times, channels, units))
                if self.clock is None or self.clock.ready:
                    times, channels, units = (np.concatenate(part) for part in zip(*held))
                    held.clear()
                    newest = max(newest, float(self._to_local(stamps[-1:])[0]))
                    self.received += len(times)
                    if len(times):
                        self._on_spikes(self._to_local(times), channels, units)
            if self.clock is None or self.clock.ready:
                # Silence confirms nothing until stall_after: a dead stream is silent too.
                quiet = max(self.max_latency, self.stall_after)
                self._on_tick(max(newest, pulled - quiet))

    def _end_gap(self, end: float) -> None:
        start, self.in_gap_since = self.in_gap_since, None
        self.gaps.append((start, end))
        log.warning("spike stream %r: back after a gap from %.3f to %.3f s", self.name, start, end)
        if self._on_gap is not None:
            self._on_gap(start, end)
        if self._on_event is not None:
            self._on_event({"kind": "spike_gap", "stream": self.name, "start": start, "end": end,
                            "seconds": end - start, "time": pylsl.local_clock()})

    def _to_local(self, times: np.ndarray) -> np.ndarray:
        """Stream stamps (s) on this machine's clock: through the sync fit, or LSL's correction."""
        return self.clock.to_local(times) if self.clock is not None else times + self.offset

    def _check_stamps(self, times: np.ndarray) -> None:
        """Report stamps that go backwards, or jump ahead further than the wall clock moved."""
        if not len(times):
            return
        wall = time.monotonic()
        previous, elapsed = (times[0], 0.0) if self._last is None else (self._last[0], wall - self._last[1])
        steps = np.diff(times, prepend=previous)
        if np.any(steps < -BACKWARDS):
            self._report("clock_backwards", float(-steps.min()))
        if steps.max() - elapsed > JUMP:  # further ahead than the wall clock moved
            self._report("clock_jump", float(steps.max() - elapsed))
        self._last = (float(times[-1]), wall)  # after a reported step, follow the new clock

    def _report(self, kind: str, seconds: float) -> None:
        self.clock_events += 1
        log.warning("spike stream %r: %s of %.6f s", self.name, kind.replace("_", " "), seconds)
        if self._on_event is not None:
            self._on_event({"kind": kind, "stream": self.name, "seconds": seconds,
                            "time": pylsl.local_clock()})

    def _decode(self, samples: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spike times (uncorrected), channels and units from one pulled chunk."""
        if self.spec.format == "events":
            return stamps, samples[:, 0], samples[:, 1]
        rows, cols = np.nonzero(samples)
        counts = samples[rows, cols].astype(np.int64)
        if np.any(counts < 0):
            raise ValueError(f"negative spike count in stream {self.name!r}")
        times = np.repeat(stamps[rows] - self.half_bin, counts)
        order = np.argsort(times, kind="stable")
        channels = np.repeat(cols + 1, counts)[order]
        return times[order], channels, np.ones_like(channels)
