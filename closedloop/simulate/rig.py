"""The simulated acquisition system: markers in, Poisson spikes out, over real LSL.

It resolves the stimulus marker stream, looks up each shown stimulus by its
id in the stimulus file, and makes every simulated neuron fire at its driven
rate from ``onset + latency`` to ``offset + latency`` and at its baseline rate
otherwise. Each spike is one (channel, unit) sample stamped at its spike time.
Neuron ``i`` (in rig order, after folders expand) is channel ``i + 1``, unit 1.

With a ``[gaze]`` stream in the rig it also plays the eye: gaze samples (x, y
degrees from fixation) with Gaussian jitter, and fixation breaks as a Poisson
process (``fixation_breaks`` per second) that each take the gaze 10 degrees
away for ``break_duration`` s.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl

from closedloop.acquire.streams import (count_stream_info, gaze_stream_info, marker_stream, photodiode_stream_info,
                                        resolve_stream, session_stream, spike_stream_info)
from closedloop.config import Rig, StreamSpec, UnitSpec
from closedloop.errors import ClosedLoopError
from closedloop.present.markers import parse_marker
from closedloop.stimuli import StimulusPool, read_added

log = logging.getLogger(__name__)

STEP = 0.002  # s between spike batches
STOP_CHECK = 0.5  # s: the longest wait between two looks at the stop event
MARKER_SLACK = 0.02  # s: the photodiode trace is pushed once every marker up to it has arrived
BREAK_GAZE = (10.0, 0.0)  # degrees: where the eye goes during a fixation break


def simulated_units(rig: Rig) -> list[UnitSpec]:
    """The units a simulated rig records: one per neuron, channel i + 1, unit 1."""
    from closedloop.simulate.neurons import neuron_names

    return [UnitSpec(name=name, channel=i + 1, unit=1)
            for i, name in enumerate(neuron_names(rig.simulation))]


def _stamps(times: np.ndarray) -> list[float]:
    """Per-sample stamps (s) as pylsl's ``push_chunk`` takes them: a list (a one-element array would
    pass for a single stamp, with a NumPy deprecation warning)."""
    return np.asarray(times, np.float64).tolist()


@dataclass
class _Episode:
    """A stimulus driving the neurons from ``start`` until ``end`` (s, local clock)."""

    index: int
    start: float
    rates: np.ndarray  # spikes/s per neuron
    end: float = np.inf


class SpikeSimulator:
    """Turns markers into spikes for the neurons of a simulated rig.

    Parameters
    ----------
    rig : Rig
        A rig with a ``[simulation]`` table.
    pool : StimulusPool
        The stimuli the presenter may show; also the calibration images.
    added : Path, optional
        Folder of stimuli added during the session (``closedloop.stimuli.write_added``),
        read when a marker names a stimulus the pool lacks.
    session_id : str, optional
        The session served: its marker stream is the rig's
        (:func:`closedloop.acquire.streams.marker_stream`) whose ``<desc><closedloop><session_id>``
        is this one (a same-named outlet of another session is refused, and the wait goes on), and
        the outlets here are given that session's source_ids
        (:func:`closedloop.acquire.streams.session_stream`). Without it, the rig file's source_ids
        (or ``closedloop-sim-<kind>-<rig name>``) and markers by name (and the rig's source_id, if set).

    Every outlet describes itself (:func:`closedloop.acquire.streams.outlet_info`): channel labels
    and units, the simulated units' names, the rig and the session.
    """

    def __init__(self, rig: Rig, pool: StimulusPool, added: Path | None = None, session_id: str | None = None):
        from closedloop.simulate.neurons import Population, build_neurons

        self.rig, self.sim, self.pool, self.added = rig, rig.simulation, pool, added
        self.markers = marker_stream(rig) if session_id is not None else rig.markers
        self._session = {"closedloop/session_id": session_id} if session_id is not None else {}
        own = {"session_id": session_id, "rig": rig.rig.name}
        self.population = Population(build_neurons(self.sim), self.sim, pool.images)
        units = simulated_units(rig)
        self.n = len(units)
        self.rng = np.random.default_rng(self.sim.seed)
        self._rates: dict[int, np.ndarray] = {}
        self._episodes: list[_Episode] = []
        self.unknown_stimuli = 0
        self._syncs: list[tuple[float, int]] = []  # (local time, presentation index) to send
        self.delay = self.sim.display_lag + self.sim.latency  # s from a flip to the neurons' response
        self._light: list[list[float]] = []  # [on, off] s, local clock: when the screen showed an image
        self.photodiode = None
        if rig.photodiode is not None:
            spec = self._pinned(rig.photodiode, "photodiode", session_id)
            self.photodiode = pylsl.StreamOutlet(photodiode_stream_info(spec, spec.source_id, self.sim.photodiode_rate,
                                                                        own=own))
        self.clock_rate = 1.0 + self.sim.clock_drift_ppm * 1e-6
        self.gaze = None
        if rig.gaze is not None:
            spec = self._pinned(rig.gaze, "gaze", session_id)
            self.gaze = pylsl.StreamOutlet(gaze_stream_info(spec, spec.source_id, self.sim.gaze_rate, own=own))
            self._eye_rng = np.random.default_rng(self.sim.seed + 1)
            self._break = (np.inf, np.inf)  # (start, end) s of the next or current fixation break
        self.spikes_sent = 0
        source_id = self._pinned(rig.spikes, "spikes", session_id).source_id
        if rig.spikes.format == "counts":
            info = count_stream_info(rig.spikes, source_id, self.n, rig.spikes.rate, units, own=own)
        else:
            info = spike_stream_info(rig.spikes, source_id, units, own=own)
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)

    def _pinned(self, spec: StreamSpec, role: str, session_id: str | None) -> StreamSpec:
        """The stream of ``role`` as this simulator offers it (see ``session_id``)."""
        if session_id is not None:
            return session_stream(spec, role, session_id)
        if spec.source_id is not None:
            return spec
        return spec.model_copy(update={"source_id": f"closedloop-sim-{role}-{self.rig.rig.name}"})

    def rates(self, pool_index: int) -> np.ndarray:
        """Driven rates (spikes/s) of every neuron for one stimulus, cached (about 0.5 ms per unit to
        compute: :meth:`precompute` does it ahead of the markers)."""
        if pool_index not in self._rates:
            self._rates[pool_index] = self.population.rates(self.pool.images[pool_index:pool_index + 1])[0]
        return self._rates[pool_index]

    @property
    def rates_cached(self) -> int:
        """Stimuli whose rates are computed (a marker for one of them costs a lookup)."""
        return len(self._rates)

    def precompute(self, stop: threading.Event) -> None:
        """Fill the rate cache for every image of the pool as it was at the start, one image at a
        time, until done or ``stop`` is set (within one image's computation). Run off the serving
        thread, so that a marker costs a lookup, not tens of milliseconds of stalled streams."""
        for index in range(len(self.pool)):
            if stop.is_set():
                return
            self.rates(index)

    def on_marker(self, marker: dict, t: float) -> None:
        """React to one marker at time ``t`` (s, local clock)."""
        if marker.get("event") == "onset":
            if self.rig.clock.sync == "events":
                self._syncs.append((t, int(marker["index"])))
            if marker.get("stimulus") not in self.pool and self.added is not None:
                read_added(self.added, self.pool)  # synthesised during the session
            try:
                rates = self.rates(self.pool.index(marker["stimulus"]))
            except KeyError:
                self.unknown_stimuli += 1
                log.warning("unknown stimulus %s in presentation %s: no driven response",
                            marker.get("stimulus"), marker.get("index"))
                return
            light = t + self.sim.display_lag
            for span in self._light:
                span[1] = min(span[1], light)
            self._light.append([light, np.inf])
            for episode in self._episodes:  # a new image ends whatever was on before
                episode.end = min(episode.end, t + self.delay)
            self._episodes.append(_Episode(marker["index"], t + self.delay, rates))
        elif marker.get("event") == "offset":
            if self._light:
                self._light[-1][1] = min(self._light[-1][1], t + self.sim.display_lag)
            for episode in self._episodes:
                if episode.index == marker["index"]:
                    episode.end = t + self.delay

    def spikes_between(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Poisson spikes in [t0, t1): sorted times and neuron indices."""
        edges = sorted({t0, t1, *(e.start for e in self._episodes if t0 < e.start < t1),
                        *(e.end for e in self._episodes if t0 < e.end < t1)})
        times, neurons = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            rate = np.full(self.n, self.sim.baseline_rate)
            for e in self._episodes:
                if e.start <= a and b <= e.end:
                    rate = e.rates
            counts = self.rng.poisson(rate * (b - a))
            neurons.append(np.repeat(np.arange(self.n), counts))
            times.append(self.rng.uniform(a, b, counts.sum()))
        times, neurons = np.concatenate(times), np.concatenate(neurons)
        order = np.argsort(times)
        self._episodes = [e for e in self._episodes if e.end > t1]
        return times[order], neurons[order]

    def push_photodiode(self, t0: float, t1: float) -> float:
        """Photodiode samples (1 with an image on screen, else 0) from ``t0`` up to ``t1``; returns the next."""
        period = 1.0 / self.sim.photodiode_rate
        times = t0 + period * np.arange(int((t1 - t0) / period))
        if not len(times):
            return t0
        lit = np.zeros(len(times), np.float32)
        for on, off in self._light:
            lit[(times >= on) & (times < off)] = 1.0
        self.photodiode.push_chunk(lit[:, None], _stamps(times))
        self._light = [span for span in self._light if span[1] > times[-1]]
        return float(times[-1] + period)

    def push_gaze(self, t0: float, t1: float) -> float:
        """Gaze samples from ``t0`` up to ``t1`` (s, local clock); returns the next sample time."""
        period = 1.0 / self.sim.gaze_rate
        times = t0 + period * np.arange(int((t1 - t0) / period))
        if not len(times):
            return t0
        gaze = self._eye_rng.normal(0.0, self.sim.gaze_noise, (len(times), 2))
        for k, t in enumerate(times):
            if self._break[0] == np.inf and self.sim.fixation_breaks > 0:
                start = t + self._eye_rng.exponential(1.0 / self.sim.fixation_breaks)
                self._break = (start, start + self.sim.break_duration)
            if self._break[0] <= t < self._break[1]:
                gaze[k] += BREAK_GAZE
            elif t >= self._break[1]:
                self._break = (np.inf, np.inf)
        self.gaze.push_chunk(gaze.astype(np.float32), _stamps(times))
        return float(times[-1] + period)

    def acquisition_clock(self, t: np.ndarray) -> np.ndarray:
        """The simulated acquisition system's clock at local times ``t`` (offset and drift imposed)."""
        return self.sim.clock_offset + self.clock_rate * np.asarray(t)

    def _push_counts(self, times: np.ndarray, neurons: np.ndarray, t0: float, t1: float,
                     bin_width: float) -> None:
        """Push spikes in [t0, t1) as counts per bin, each sample stamped at its bin's end."""
        n_bins = int(round((t1 - t0) / bin_width))
        counts = np.zeros((n_bins, self.n), np.int32)
        which = np.minimum(((times - t0) / bin_width).astype(int), n_bins - 1)
        np.add.at(counts, (which, neurons), 1)
        self.outlet.push_chunk(counts, _stamps(self.acquisition_clock(t0 + bin_width * np.arange(1, n_bins + 1))))

    def _open_markers(self, stop: threading.Event) -> tuple[pylsl.StreamInlet, float] | None:
        """The marker stream's inlet and its clock offset (s), or None if ``stop`` is set first.

        Raises
        ------
        ClosedLoopError
            No marker stream (of the session served) within the rig's ``resolve_timeout``; the
            message says why same-named outlets were refused.
        """
        deadline = time.monotonic() + self.rig.resolve_timeout
        while not stop.is_set():
            if not pylsl.resolve_byprop("name", self.markers.name, timeout=STOP_CHECK) \
                    and time.monotonic() < deadline:
                continue  # none of that name yet (resolve_stream would also list every other stream)
            try:
                info = resolve_stream(self.markers, STOP_CHECK, self._session)
            except ClosedLoopError:
                if time.monotonic() > deadline:
                    raise
                continue
            inlet = pylsl.StreamInlet(info, recover=True)
            inlet.open_stream(timeout=5.0)
            return inlet, inlet.time_correction(timeout=5.0)
        return None

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; every wait in here (finding the marker stream, a chunk of
        markers, the pool's rates computed on a thread of their own) looks at ``stop`` at least
        every :data:`STOP_CHECK` s, so a stop takes effect within about that."""
        rates = threading.Thread(target=self.precompute, args=(stop,), name="rates", daemon=True)
        rates.start()
        try:
            opened = self._open_markers(stop)
            if opened is not None:
                self._serve(*opened, stop)
        finally:
            stop.set()  # also ends the rates thread when serving failed
            rates.join()

    def _serve(self, inlet: pylsl.StreamInlet, offset: float, stop: threading.Event) -> None:
        """Answer the markers of ``inlet`` (clock ``offset`` s) until ``stop`` is set."""
        bin_width = 1.0 / self.rig.spikes.rate if self.rig.spikes.format == "counts" else 0.0
        done = light_done = gaze_done = pylsl.local_clock()
        if bin_width:
            done = np.floor(done / bin_width) * bin_width
        while not stop.is_set():
            markers, stamps = inlet.pull_chunk(timeout=STEP)
            for (text,), stamp in zip(markers, stamps):
                self.on_marker(parse_marker(text), stamp + offset)
            now = pylsl.local_clock()
            if self.photodiode is not None:
                light_done = self.push_photodiode(light_done, now - MARKER_SLACK)
            if self.gaze is not None:
                gaze_done = self.push_gaze(gaze_done, now)
            if bin_width:
                now = np.floor(now / bin_width) * bin_width  # whole bins only
                if now <= done:
                    continue
            times, neurons = self.spikes_between(done, now)
            if bin_width:
                self._push_counts(times, neurons, done, now, bin_width)  # counts carry no syncs
            elif len(times) or self._syncs:
                samples = np.column_stack([neurons + 1, np.ones_like(neurons)])
                if self._syncs:  # the sync events of the onsets seen since the last push
                    sync_times, indices = np.array(self._syncs).T
                    self._syncs.clear()
                    samples = np.vstack([np.column_stack([np.full(len(indices), self.rig.clock.sync_channel),
                                                          indices]), samples])
                    times = np.concatenate([sync_times, times])
                self.outlet.push_chunk(samples.astype(np.int32), _stamps(self.acquisition_clock(times)))
            self.spikes_sent += len(times)
            done = now
        inlet.close_stream()
