"""Photodiode ingestion: when the light actually changed, on this machine's clock."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pylsl

from closedloop.acquire.streams import InletThread
from closedloop.config import PhotodiodeSpec
from closedloop.errors import ClosedLoopError

PULL_TIMEOUT = 0.005  # s

log = logging.getLogger(__name__)


def light_changes(samples: np.ndarray, stamps: np.ndarray, threshold: float,
                  previous: tuple[float, float] | None) -> np.ndarray:
    """Times (s) at which an analog trace rises through ``threshold``, interpolated between samples.

    ``previous`` is the (time, value) of the sample before this chunk, so a
    crossing between chunks is not missed.
    """
    t, v = np.asarray(stamps, float), np.asarray(samples, float)
    if previous is not None:
        t, v = np.concatenate([[previous[0]], t]), np.concatenate([[previous[1]], v])
    rise = np.nonzero((v[:-1] < threshold) & (v[1:] >= threshold))[0]
    fraction = (threshold - v[rise]) / (v[rise + 1] - v[rise])
    return t[rise] + fraction * (t[rise + 1] - t[rise])


class PhotodiodeInlet(InletThread):
    """Pulls a photodiode stream on a thread and hands on every light change.

    Parameters
    ----------
    info : pylsl.StreamInfo
        The resolved photodiode stream.
    spec : PhotodiodeSpec
        Its format, channel and threshold.
    on_light : callable(float)
        Receives each light change, seconds on this machine's clock.
    max_latency : float
        ``events`` only: longest delay (s) of an event on the network. An
        event stream is silent between light changes, so once a pull finds
        nothing newer, every light change up to ``max_latency`` s before it
        is known.
    on_event : callable(dict), optional
        Receives ``clock_offset_changed`` (:class:`~closedloop.acquire.streams.InletThread`).
    on_samples : callable(times, values), optional
        Receives each chunk as pulled (to record it): times (n,) s on this machine's clock,
        values (n, channels).
    """

    def __init__(self, info: pylsl.StreamInfo, spec: PhotodiodeSpec, on_light: Callable[[float], None],
                 max_latency: float = 0.05, on_event: Callable[[dict], None] | None = None,
                 on_samples: Callable[[np.ndarray, np.ndarray], None] | None = None):
        if spec.format == "analog" and (info.nominal_srate() <= 0 or info.channel_count() <= spec.channel):
            raise ClosedLoopError(f"LSL stream {info.name()!r}: an analog photodiode needs a regular rate "
                                  f"and channel {spec.channel}; found {info.channel_count()} channels at "
                                  f"{info.nominal_srate():g} Hz")
        super().__init__(info, max_buflen=60, thread_name="photodiode-inlet", on_event=on_event)
        self.spec = spec
        self._on_light = on_light
        self._on_samples = on_samples
        self.max_latency = max_latency
        self.covered_until = -np.inf  # s, local clock: every light change before this is known
        self.changes = 0

    def _pull(self) -> None:
        previous = None
        while not self._stop.is_set():
            samples, stamps = self._inlet.pull_chunk(timeout=PULL_TIMEOUT, max_samples=4096,
                                                     min_samples=1, as_numpy=True)
            pulled = pylsl.local_clock()
            self._refresh_offset()
            stamps = stamps + self.offset
            if len(stamps) and self._on_samples is not None:
                self._on_samples(stamps, samples)
            if self.spec.format == "events":
                lights = stamps
                heard = pulled - self.max_latency  # nothing newer by now: none before max_latency ago
            elif len(stamps):
                trace = samples[:, self.spec.channel]
                lights = light_changes(trace, stamps, self.spec.threshold, previous)
                previous = (float(stamps[-1]), float(trace[-1]))
                heard = -np.inf  # a trace covers only the time its samples reached
            else:
                continue
            for light in lights:
                self.changes += 1
                self._on_light(float(light))
            self.covered_until = float(max(self.covered_until, heard, *stamps[-1:]))
