"""Spike ingestion: an LSL inlet on its own thread, clock-corrected."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import check_spike_stream

CLOCK_REFRESH = 5.0  # s between time_correction() queries
PULL_TIMEOUT = 0.005  # s
MAX_CHUNK = 65536  # samples per pull


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
    """

    def __init__(self, info: pylsl.StreamInfo, on_spikes: SpikeCallback, on_tick: TickCallback,
                 max_latency: float = 0.05):
        check_spike_stream(info)
        self.name = info.name()
        self._inlet = pylsl.StreamInlet(info, max_buflen=60, recover=True)
        self._on_spikes, self._on_tick = on_spikes, on_tick
        self.max_latency = max_latency
        self.offset = 0.0  # s, latest time correction
        self.received = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spike-inlet", daemon=True)

    def start(self) -> None:
        self._inlet.open_stream(timeout=5.0)
        self.offset = self._inlet.time_correction(timeout=5.0)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._inlet.close_stream()

    def _run(self) -> None:
        newest = -np.inf
        next_clock = time.monotonic() + CLOCK_REFRESH
        try:
            while not self._stop.is_set():
                samples, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, max_samples=MAX_CHUNK,
                                                         min_samples=1, as_numpy=True)
                if time.monotonic() > next_clock:
                    self.offset = self._inlet.time_correction(timeout=1.0)
                    next_clock = time.monotonic() + CLOCK_REFRESH
                if len(stamps):
                    times = stamps + self.offset
                    self.received += len(times)
                    newest = max(newest, float(times[-1]))
                    self._on_spikes(times, samples[:, 0], samples[:, 1])
                self._on_tick(max(newest, pylsl.local_clock() - self.max_latency))
        except BaseException as exc:  # surfaced by the session loop, never swallowed
            self.error = exc
