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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl

from closedloop.acquire.streams import count_stream_info, resolve_stream, spike_stream_info
from closedloop.config import Rig, UnitSpec
from closedloop.present.markers import parse_marker
from closedloop.stimuli import StimulusPool, read_added

log = logging.getLogger(__name__)

STEP = 0.002  # s between spike batches
MARKER_SLACK = 0.02  # s: the photodiode trace is pushed once every marker up to it has arrived
BREAK_GAZE = (10.0, 0.0)  # degrees: where the eye goes during a fixation break


def simulated_units(rig: Rig) -> list[UnitSpec]:
    """The units a simulated rig records: one per neuron, channel i + 1, unit 1."""
    from closedloop.simulate.neurons import neuron_names

    return [UnitSpec(name=name, channel=i + 1, unit=1)
            for i, name in enumerate(neuron_names(rig.simulation))]


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
    """

    def __init__(self, rig: Rig, pool: StimulusPool, added: Path | None = None):
        from closedloop.simulate.neurons import Population, build_neurons

        self.rig, self.sim, self.pool, self.added = rig, rig.simulation, pool, added
        self.population = Population(build_neurons(self.sim), self.sim, pool.images)
        self.n = len(simulated_units(rig))
        self.rng = np.random.default_rng(self.sim.seed)
        self._rates: dict[int, np.ndarray] = {}
        self._episodes: list[_Episode] = []
        self.unknown_stimuli = 0
        self._syncs: list[tuple[float, int]] = []  # (local time, presentation index) to send
        self.delay = self.sim.display_lag + self.sim.latency  # s from a flip to the neurons' response
        self._light: list[list[float]] = []  # [on, off] s, local clock: when the screen showed an image
        self.photodiode = None
        if rig.photodiode is not None:
            pd = pylsl.StreamInfo(rig.photodiode.name, rig.photodiode.type, 1, self.sim.photodiode_rate,
                                  pylsl.cf_float32, rig.photodiode.source_id or f"closedloop-sim-pd-{rig.rig.name}")
            self.photodiode = pylsl.StreamOutlet(pd)
        self.clock_rate = 1.0 + self.sim.clock_drift_ppm * 1e-6
        self.gaze = None
        if rig.gaze is not None:
            gaze = pylsl.StreamInfo(rig.gaze.name, rig.gaze.type, 2, self.sim.gaze_rate, pylsl.cf_float32,
                                    rig.gaze.source_id or f"closedloop-sim-gaze-{rig.rig.name}")
            self.gaze = pylsl.StreamOutlet(gaze)
            self._eye_rng = np.random.default_rng(self.sim.seed + 1)
            self._break = (np.inf, np.inf)  # (start, end) s of the next or current fixation break
        self.spikes_sent = 0
        source_id = rig.spikes.source_id or f"closedloop-sim-{rig.rig.name}"
        if rig.spikes.format == "counts":
            info = count_stream_info(rig.spikes, source_id, self.n, rig.spikes.rate)
        else:
            info = spike_stream_info(rig.spikes, source_id)
        self.outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)

    def rates(self, pool_index: int) -> np.ndarray:
        """Driven rates (spikes/s) of every neuron for one stimulus, cached."""
        if pool_index not in self._rates:
            self._rates[pool_index] = self.population.rates(self.pool.images[pool_index:pool_index + 1])[0]
        return self._rates[pool_index]

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
        self.photodiode.push_chunk(lit[:, None], times)
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
        self.gaze.push_chunk(gaze.astype(np.float32), times)
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
        self.outlet.push_chunk(counts, self.acquisition_clock(t0 + bin_width * np.arange(1, n_bins + 1)))

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (or the marker stream is resolved and the process is killed)."""
        info = resolve_stream(self.rig.markers, self.rig.resolve_timeout)
        inlet = pylsl.StreamInlet(info, recover=True)
        inlet.open_stream(timeout=5.0)
        offset = inlet.time_correction(timeout=5.0)
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
                self.outlet.push_chunk(samples.astype(np.int32), self.acquisition_clock(times))
            self.spikes_sent += len(times)
            done = now
        inlet.close_stream()
