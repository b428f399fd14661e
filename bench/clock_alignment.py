"""Alignment error of spikes under an imposed clock offset and drift.

Spikes and sync events are stamped on a simulated acquisition clock that runs
``--offset`` seconds ahead and ``--drift-ppm`` fast, with the sync stamps
quantised to the acquisition system's sample period (``--sample-rate``); they
travel over real LSL to closedloop's ``SpikeInlet`` with a ``ClockMap``. The
error is each delivered spike time minus its true time. Baseline in the same
run: the offset from the first sync pair only (no drift fit).

    python bench/clock_alignment.py --offset 3600 --drift-ppm 100 --minutes 10
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid

import numpy as np
import pylsl

from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import resolve_stream, spike_stream_info
from closedloop.align.clock import ClockMap
from closedloop.config import StreamSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset", type=float, default=3600.0, help="s")
    parser.add_argument("--drift-ppm", type=float, default=100.0)
    parser.add_argument("--minutes", type=float, default=10.0, help="session length simulated")
    parser.add_argument("--onset-interval", type=float, default=0.167, help="s between onsets")
    parser.add_argument("--spike-rate", type=float, default=2000.0, help="spikes/s, all units")
    parser.add_argument("--sample-rate", type=float, default=30000.0, help="acquisition samples/s")
    args = parser.parse_args()
    logging.getLogger("closedloop").setLevel(logging.ERROR)

    rng = np.random.default_rng(0)
    span = args.minutes * 60
    t0 = 1000.0
    onsets = t0 + np.arange(0, span, args.onset_interval)
    spikes = np.sort(rng.uniform(t0, t0 + span, int(args.spike_rate * span)))
    rate = 1 + args.drift_ppm * 1e-6

    def acquisition(t):
        return args.offset + rate * t

    def quantise(t):
        return np.floor(t * args.sample_rate) / args.sample_rate

    name = f"bench-clock-{uuid.uuid4().hex[:8]}"
    spec = StreamSpec(name=name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, name), max_buffered=600)
    info = resolve_stream(spec, timeout=10)
    clock = ClockMap()
    got, done = [], threading.Event()

    def on_spikes(times, channels, units):
        got.append(times.copy())
        if sum(len(g) for g in got) >= len(spikes):
            done.set()

    jumps = []  # pushed faster than real time, the stream runs ahead of the wall clock: expected here
    inlet = SpikeInlet(info, on_spikes, lambda t: None, clock=clock, on_event=jumps.append)
    inlet.start()
    stamps = np.concatenate([spikes, onsets])
    samples = np.concatenate([np.column_stack([np.ones(len(spikes)), np.ones(len(spikes))]),
                              np.column_stack([np.zeros(len(onsets)), np.arange(len(onsets))])])
    acquired = np.concatenate([acquisition(spikes), quantise(acquisition(onsets))])
    order = np.argsort(stamps)
    for i, t in enumerate(onsets):
        clock.add_onset(i, t)
    for start in range(0, len(order), 20000):  # in time order, paced so no buffer overflows
        part = order[start:start + 20000]
        outlet.push_chunk(samples[part].astype(np.int32), acquired[part])
        time.sleep(0.02)
    done.wait(120)
    inlet.stop()
    error_us = np.abs(np.sort(np.concatenate(got)) - spikes) * 1e6
    first_pair_offset = onsets[0] - quantise(acquisition(onsets[0]))
    baseline_us = np.abs(acquisition(spikes) + first_pair_offset - spikes) * 1e6
    print(f"{len(spikes):,} spikes over {args.minutes:g} min, {len(onsets):,} sync events; clock offset "
          f"{args.offset:g} s, drift {args.drift_ppm:g} ppm, sync stamps quantised to "
          f"{1e6 / args.sample_rate:.1f} us")
    print(f"sync fit (offset + drift): median {np.median(error_us):.2f} us, max {error_us.max():.2f} us")
    print(f"baseline (first pair's offset only): median {np.median(baseline_us):.0f} us, "
          f"max {baseline_us.max():.0f} us")


if __name__ == "__main__":
    main()
