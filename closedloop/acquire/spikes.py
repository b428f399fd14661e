"""Spike ingestion: an LSL inlet on its own thread, clock-corrected."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import check_spike_stream
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


class SpikeInlet:
    """Pulls (channel, unit) spike samples on a thread and hands them on.

    Timestamps are moved onto this machine's LSL clock with
    ``inlet.time_correction()`` (refreshed every few seconds). After every pull
    ``on_tick(acquisition_time)`` is called: the time up to which all spikes
    are known to have arrived, ``max(newest spike, local_clock() - max_latency)``.

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
        wall clock (``clock_jump``).
    """

    def __init__(self, info: pylsl.StreamInfo, on_spikes: SpikeCallback, on_tick: TickCallback,
                 max_latency: float = 0.05, spec: SpikeStreamSpec | None = None, channels: int = 0,
                 clock: ClockMap | None = None, sync_channel: int = 0,
                 on_event: Callable[[dict], None] | None = None):
        self.spec = spec or SpikeStreamSpec(name=info.name(), type=info.type())
        check_spike_stream(info, self.spec, channels)
        self.half_bin = 0.5 / info.nominal_srate() if self.spec.format == "counts" else 0.0
        self.name = info.name()
        # 60 s of a regular stream; for an irregular one LSL counts in hundreds of samples: 600,000.
        buffer = BUFFER_SECONDS if info.nominal_srate() > 0 else BUFFER_SPIKES // 100
        self._inlet = pylsl.StreamInlet(info, max_buflen=buffer, recover=True)
        self._on_spikes, self._on_tick = on_spikes, on_tick
        self.max_latency = max_latency
        self.offset = 0.0  # s, latest time correction
        self.clock, self.sync_channel, self._on_event = clock, sync_channel, on_event
        self.clock_events = 0
        self._last: tuple[float, float] | None = None  # (latest stamp, monotonic time it came)
        self.received = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spike-inlet", daemon=True)

    def start(self) -> None:
        self._inlet.open_stream(timeout=5.0)
        if self.clock is None:
            self.offset = self._inlet.time_correction(timeout=5.0)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._inlet.close_stream()

    def _run(self) -> None:
        newest = -np.inf  # s, local clock: the latest stamp seen, corrected
        held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # raw spikes awaiting the clock map
        next_clock = time.monotonic() + CLOCK_REFRESH
        try:
            while not self._stop.is_set():
                samples, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, max_samples=MAX_CHUNK,
                                                         min_samples=1, as_numpy=True)
                if self.clock is None and time.monotonic() > next_clock:
                    self.offset = self._inlet.time_correction(timeout=1.0)
                    next_clock = time.monotonic() + CLOCK_REFRESH
                if len(stamps):
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
                    self._on_tick(max(newest, pylsl.local_clock() - self.max_latency))
        except BaseException as exc:  # surfaced by the session loop, never swallowed
            self.error = exc

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
