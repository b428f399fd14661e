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
from closedloop.errors import ClosedLoopError

PULL_TIMEOUT = 0.005  # s
MAX_CHUNK = 65536  # samples per pull
BUFFER_SECONDS = 60  # s of a regular-rate stream held by the inlet
BUFFER_SPIKES = 600_000  # samples of an event stream held by the inlet
BACKWARDS = 0.001  # s a stamp may step back before it is reported
JUMP = 1.0  # s a stamp may run ahead of the wall clock before it is reported
FLAG_AHEAD = 1.0  # s of a lost stream's silence flagged as a gap ahead of the acquisition time

log = logging.getLogger(__name__)


SpikeCallback = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
TickCallback = Callable[[float], None]


class SpikeInlet(InletThread):
    """Pulls (channel, unit) spike samples on a thread and hands them on.

    Timestamps are moved onto this machine's LSL clock with
    ``inlet.time_correction()``, re-read every few seconds
    (:class:`~closedloop.acquire.streams.InletThread`: what a clock step does
    to it, and what it cannot see), or through a :class:`ClockMap`. After every pull
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
        centre, ``t - 0.5 / rate``; timing is then only as fine as the bins. A count that is
        not a whole number (1.7 in a float stream) or is negative ends the inlet with a
        ``ClosedLoopError`` naming the stream (in ``error``), never a truncated count.
    channels : int
        For ``counts``: the highest stream channel the rig's units name.
    clock : ClockMap, optional
        Map stamps through sync events instead of LSL's ``time_correction``:
        samples on ``sync_channel`` carry a presentation index in their unit
        field and are handed to the map, not passed on as spikes; spikes
        wait until the first sync pair is matched. Where the stamps (syncs
        included) step ahead by more than ``JUMP`` s beyond the wall clock or
        back by more than ``JUMP`` s, the chunk is split there and the map
        starts a new segment (:meth:`ClockMap.restart`): what came before is
        mapped by the old line, what follows waits for the new segment's first
        sync pair (and the acquisition time with it). Smaller steps the map
        finds itself, from the sync residuals.
    sync_channel : int
        The channel of sync events.
    on_event : callable(dict), optional
        Receives clock anomalies: stamps going backwards by more than 1 ms
        (``clock_backwards``), or jumping ahead more than 1 s beyond the
        wall clock (``clock_jump``); moves of LSL's clock offset
        (``clock_offset_changed``); the end of every gap (``spike_gap``, with
        ``start`` and ``end`` on this machine's clock).
    stall_after : float
        Seconds without a single sample after which the stream counts as gone
        (cable pulled, acquisition software restarting). From then on the
        acquisition time stops advancing, so no response window closes on
        missing data; when samples come back (the inlet reconnects by itself)
        the gap is reported to ``on_gap(start, end)`` and ``on_event``. A
        reconnection of the inlet (the outlet restarted with the same
        source_id) is a gap too, however short the silence: from the newest
        stamp before it to the first after it (with event sync and a clock
        step at the reconnection, to the chunk's arrival).
        A silence longer than ``spec.lost_after`` s makes the stream *lost* (``state``;
        ``spike_stream_lost`` to ``on_event``). With ``spec.on_lost`` ``"flag"`` the
        acquisition time goes on regardless and the silence is handed to ``on_gap`` in steps
        of ``FLAG_AHEAD`` s ahead of it, so every window in it closes flagged as a gap (the
        windows of the first ``FLAG_AHEAD`` s after the stream returns too); with ``"end"``
        the session ends the run.
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
        super().__init__(info, max_buflen=buffer, thread_name="spike-inlet", on_event=on_event)
        self._on_spikes, self._on_tick = on_spikes, on_tick
        self.max_latency = max_latency
        self.clock, self.sync_channel = clock, sync_channel
        self.clock_events = 0
        self.stall_after, self._on_gap = stall_after, on_gap
        self.gaps: list[tuple[float, float]] = []
        self.in_gap_since: float | None = None  # s, local clock: the newest stamp before the gap
        self.lost = False  # silent beyond spec.lost_after (until samples come back)
        self._flagged_until = -np.inf  # s, local clock: a lost stream's silence flagged so far
        self._last: tuple[float, float] | None = None  # (latest spike stamp, monotonic time it came)
        self._stamped: tuple[float, float] | None = None  # the same for every sample, syncs included
        self._newest = -np.inf  # s, local clock: the latest stamp seen, mapped
        self._held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # raw spikes awaiting the clock map
        self.received = 0

    def _pull(self) -> None:
        last_arrival = pylsl.local_clock()  # s, local clock: when the latest chunk was pulled
        while not self._stop.is_set():
            samples, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, max_samples=MAX_CHUNK,
                                                     min_samples=1, as_numpy=True)
            # One reading per pull for both the stall check and the tick, so a tick can never
            # run past the last arrival while the silence is still shorter than stall_after.
            pulled = pylsl.local_clock()
            self._refresh_offset()
            quiet = max(self.max_latency, self.stall_after)  # silence confirms nothing sooner: dead streams are silent
            if not len(stamps) and pulled - last_arrival > self.stall_after:
                self._begin_gap(pulled, f"no samples for {self.stall_after:.1f} s")
                if pulled - last_arrival > self.spec.lost_after and self._lose(pulled):
                    self._on_tick(pulled - quiet)  # on_lost "flag": windows close, flagged
                continue  # acquisition time stands still: no window closes on missing data
            if len(stamps):
                last_arrival = pulled
                self._arrived(samples, stamps, pulled)
            if self._mappable():
                self._on_tick(max(self._newest, pulled - quiet))

    def _arrived(self, samples: np.ndarray, stamps: np.ndarray, pulled: float) -> None:
        """One pulled chunk: close a gap (or the one a reconnection makes), split the chunk where the
        acquisition clock stepped (event sync), and hand on its spikes."""
        if self.reconnected():  # the outlet came back within stall_after: a gap all the same
            self._begin_gap(pulled, "the stream reconnected")
        times, channels, units = self._decode(samples, stamps)
        steps = self._clock_steps(times) if self.clock is not None else {}
        if self.in_gap_since is not None:
            mapped = self._mappable() and 0 not in steps
            self._end_gap(float(self._to_local(times[:1])[0]) if mapped else pulled)
        bounds = sorted({0, *steps, len(times)})
        for start, end in zip(bounds[:-1], bounds[1:]):
            if start in steps:  # from here on the stamps follow a stepped clock: a new sync segment
                self.clock.restart(steps[start])
            self._take(times[start:end], channels[start:end], units[start:end])
        if self._mappable():
            self._newest = max(self._newest, float(self._to_local(stamps[-1:])[0]))

    def _take(self, times: np.ndarray, channels: np.ndarray, units: np.ndarray) -> None:
        """Spikes (and sync events) stamped on one clock: syncs to the clock map, spikes on once
        they can be mapped (held until the map has a pair)."""
        if self.clock is not None:
            sync = channels == self.sync_channel
            for index, t in zip(units[sync], times[sync]):
                self.clock.add_sync(int(index), float(t))
            times, channels, units = times[~sync], channels[~sync], units[~sync]
        self._check_stamps(times)
        self._held.append((times, channels, units))
        if self._mappable():
            times, channels, units = (np.concatenate(part) for part in zip(*self._held))
            self._held.clear()
            self.received += len(times)
            if len(times):
                self._on_spikes(self._to_local(times), channels, units)

    def _mappable(self) -> bool:
        """Whether stamps can be put on this machine's clock now (event sync: a pair in the segment)."""
        return self.clock is None or self.clock.ready

    def _clock_steps(self, stamps: np.ndarray) -> dict[int, str]:
        """Where in this chunk (sample index) the stamps, syncs included, step ahead by more than
        ``JUMP`` s beyond the wall clock, or back by more than ``JUMP`` s: ``clock_jump`` or
        ``clock_backwards``."""
        wall = time.monotonic()
        previous, elapsed = (stamps[0], 0.0) if self._stamped is None else (self._stamped[0], wall - self._stamped[1])
        self._stamped = (float(stamps[-1]), wall)
        moves = np.diff(stamps, prepend=previous)
        return {int(k): "clock_jump" if moves[k] > 0 else "clock_backwards"
                for k in np.flatnonzero((moves > elapsed + JUMP) | (moves < -JUMP))}

    @property
    def state(self) -> str:
        """``"ok"``, ``"gap"`` (silent beyond ``stall_after``) or ``"lost"`` (beyond ``spec.lost_after``)."""
        return "lost" if self.lost else "gap" if self.in_gap_since is not None else "ok"

    def _lose(self, until: float) -> bool:
        """The stream is lost: report it once; with ``on_lost`` ``"flag"``, flag its silence as a gap
        up to ``until`` (s, local clock) and return True (the acquisition time goes on)."""
        if not self.lost:
            self.lost = True
            log.warning("spike stream %r: no samples for %.1f s: lost", self.name, self.spec.lost_after)
            if self._on_event is not None:
                self._on_event({"kind": "spike_stream_lost", "stream": self.name, "since": self.in_gap_since,
                                "on_lost": self.spec.on_lost, "time": pylsl.local_clock()})
        if self.spec.on_lost != "flag" or self._on_gap is None:
            return False
        if until > self._flagged_until:
            start = max(self._flagged_until, self.in_gap_since)
            self._flagged_until = until + FLAG_AHEAD
            self._on_gap(start, self._flagged_until)
        return True

    def _begin_gap(self, now: float, why: str) -> None:
        """The stream went away (``why``): the gap starts at the newest stamp (or ``now``, s)."""
        if self.in_gap_since is None:
            self.in_gap_since = self._newest if np.isfinite(self._newest) else now
            log.warning("spike stream %r: %s; a gap from %.3f s", self.name, why, self.in_gap_since)

    def _end_gap(self, end: float) -> None:
        start, self.in_gap_since, self.lost = self.in_gap_since, None, False
        self._flagged_until = -np.inf
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
        values = samples[rows, cols]
        counts = values.astype(np.int64)
        if np.any(counts != values):  # truncating 1.7 to 1 spike would lose data silently
            raise ClosedLoopError(f"LSL stream {self.name!r}: format 'counts' needs whole spike counts, "
                                  f"found {values[counts != values][0]:g}")
        if np.any(counts < 0):
            raise ClosedLoopError(f"LSL stream {self.name!r}: format 'counts' found a negative spike count "
                                  f"({counts.min()})")
        times = np.repeat(stamps[rows] - self.half_bin, counts)
        order = np.argsort(times, kind="stable")
        channels = np.repeat(cols + 1, counts)[order]
        return times[order], channels, np.ones_like(channels)
