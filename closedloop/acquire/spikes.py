"""Spike ingestion: an LSL inlet on its own thread, clock-corrected."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import check_spike_stream
from closedloop.config import SpikeStreamSpec

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
    spec : SpikeStreamSpec, optional
        The stream's format (default: ``events``). A ``counts`` stream is
        turned into spikes: a sample stamped ``t`` with ``k`` in stream
        channel ``c`` (from 1) gives ``k`` spikes on (c, 1) at the bin's
        centre, ``t - 0.5 / rate``; timing is then only as fine as the bins.
    channels : int
        For ``counts``: the highest stream channel the rig's units name.
    """

    def __init__(self, info: pylsl.StreamInfo, on_spikes: SpikeCallback, on_tick: TickCallback,
                 max_latency: float = 0.05, spec: SpikeStreamSpec | None = None, channels: int = 0):
        self.spec = spec or SpikeStreamSpec(name=info.name(), type=info.type())
        check_spike_stream(info, self.spec, channels)
        self.half_bin = 0.5 / info.nominal_srate() if self.spec.format == "counts" else 0.0
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
                    newest = max(newest, float(stamps[-1]) + self.offset)
                    times, channels, units = self._decode(samples, stamps)
                    self.received += len(times)
                    if len(times):
                        self._on_spikes(times + self.offset, channels, units)
                self._on_tick(max(newest, pylsl.local_clock() - self.max_latency))
        except BaseException as exc:  # surfaced by the session loop, never swallowed
            self.error = exc

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
