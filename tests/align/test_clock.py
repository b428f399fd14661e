"""Clock alignment from sync events: an hour apart and 100 ppm of drift, aligned to microseconds."""

from __future__ import annotations

import threading

import numpy as np
import pylsl
import pytest

from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import resolve_stream, spike_stream_info
from closedloop.align.clock import ClockMap
from closedloop.config import StreamSpec

OFFSET, DRIFT = 3600.0, 100e-6  # s, fraction: the acquisition clock vs the stimulus PC's


def acquisition_clock(t: np.ndarray) -> np.ndarray:
    return OFFSET + (1 + DRIFT) * np.asarray(t)


def assert_aligned(received: np.ndarray, spikes: np.ndarray, onsets: np.ndarray) -> None:
    """Every spike on our clock where it was fired. A spike pulled while the map has one pair
    (before the second onset's sync arrives; where LSL splits the chunk is up to LSL) goes
    through that pair at slope 1: off by the drift over its distance from the first onset at
    most. From the second pair on the drift is fitted: within a microsecond."""
    error = np.abs(np.sort(received) - spikes)
    early = spikes < onsets[1]
    assert len(received) == len(spikes)
    assert np.all(error[early] <= DRIFT * (spikes[early] - onsets[0]) + 1e-6)
    assert error[~early].max() < 1e-6


def test_clock_map_recovers_offset_and_drift():
    clock = ClockMap()
    onsets = 5000.0 + np.arange(50) * 0.25
    with pytest.raises(RuntimeError):
        clock.to_local(np.array([0.0]))
    for i, t in enumerate(onsets):
        if i % 2:  # either may come first
            clock.add_onset(i, t)
            clock.add_sync(i, float(acquisition_clock(t)))
        else:
            clock.add_sync(i, float(acquisition_clock(t)))
            clock.add_onset(i, t)
    assert clock.ready and clock.pairs == 50
    probe = 5000.0 + np.linspace(0, 20, 101)  # also beyond the last pair
    assert np.abs(clock.to_local(acquisition_clock(probe)) - probe).max() < 1e-6
    assert np.abs(clock.residuals()).max() < 1e-6


def test_offset_alone_from_one_pair():
    clock = ClockMap()
    clock.add_onset(7, 10.0)
    clock.add_sync(7, 3610.0)
    assert clock.to_local(np.array([3610.5]))[0] == pytest.approx(10.5)


def send_over_lsl(stream_name: str, clock: ClockMap, spikes: np.ndarray, onsets: np.ndarray,
                  rng: np.random.Generator, step=lambda stamps: 0.0, on_event=None) -> tuple[np.ndarray, int]:
    """Real LSL: ``spikes`` (channels 1-8, unit 1) and a sync event per onset (channel 0, unit = its
    index), stamped on the acquisition clock (plus ``step(stamps)``, s) in one chunk, through a
    SpikeInlet mapping them with ``clock``: the (time, channel, unit) rows it handed on, and the clock
    anomalies it reported."""
    spec = StreamSpec(name=stream_name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, stream_name))
    info = resolve_stream(spec, timeout=5)
    got, done = [], threading.Event()

    def on_spikes(times, channels, units):
        got.append(np.column_stack([times, channels, units]))
        if sum(len(g) for g in got) >= len(spikes):
            done.set()

    inlet = SpikeInlet(info, on_spikes, lambda t: None, clock=clock, sync_channel=0, on_event=on_event)
    inlet.start()
    for i, t in enumerate(onsets):
        clock.add_onset(i, t)
    stamps = np.concatenate([spikes, onsets])
    samples = np.concatenate([np.column_stack([rng.integers(1, 9, len(spikes)), np.ones(len(spikes))]),
                              np.column_stack([np.zeros(len(onsets)), np.arange(len(onsets))])])
    order = np.argsort(stamps, kind="stable")
    stamps, samples = stamps[order], samples[order]
    outlet.push_chunk(samples.astype(np.int32), acquisition_clock(stamps) + step(stamps))
    assert done.wait(10), "spikes did not arrive"
    inlet.stop()
    return np.concatenate(got), inlet.clock_events


def test_spikes_over_lsl_are_aligned_within_a_millisecond(stream_name):
    """Real LSL: spikes and sync events stamped on a foreign clock come out on ours."""
    clock = ClockMap()
    rng = np.random.default_rng(3)
    t0 = 1000.0
    onsets = t0 + np.arange(20) * 0.2
    spikes = np.sort(rng.uniform(t0, t0 + 4.0, 2000))
    received, anomalies = send_over_lsl(stream_name, clock, spikes, onsets, rng)
    assert len(received) == len(spikes) and not np.any(received[:, 1] == 0)  # syncs are not spikes
    assert_aligned(received[:, 0], spikes, onsets)  # the requirement is a millisecond
    assert clock.pairs == len(onsets) and anomalies == 0


def test_stamps_going_backwards_or_jumping_are_reported(stream_name):
    spec = StreamSpec(name=stream_name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, stream_name))
    info = resolve_stream(spec, timeout=5)
    events, arrived = [], threading.Event()
    count = {"n": 0}

    def on_spikes(times, channels, units):
        count["n"] += len(times)
        if count["n"] >= 30:
            arrived.set()

    inlet = SpikeInlet(info, on_spikes, lambda t: None, on_event=events.append)
    inlet.start()
    now = pylsl.local_clock()
    one = np.ones((10, 2), np.int32)
    outlet.push_chunk(one, now + np.arange(10) * 1e-3)
    outlet.push_chunk(one, now - 0.5 + np.arange(10) * 1e-3)  # the clock stepped back 0.5 s
    outlet.push_chunk(one, now + 60 + np.arange(10) * 1e-3)  # and then a minute ahead
    assert arrived.wait(10)
    inlet.stop()
    kinds = [e["kind"] for e in events]
    assert "clock_backwards" in kinds and "clock_jump" in kinds
    back = next(e for e in events if e["kind"] == "clock_backwards")
    assert back["seconds"] == pytest.approx(0.509, abs=0.002) and back["stream"] == stream_name


def test_a_step_in_the_sync_residuals_starts_a_new_segment_and_is_reported():
    """The acquisition clock steps 5 s ahead, then back: the map follows each step from the first
    sync pair after it, keeps the drift, and pairs stamped before a step stay in their segment."""
    steps = []
    clock = ClockMap(on_step=steps.append)
    onsets = 5000.0 + np.arange(60) * 0.25
    shift = np.where((np.arange(60) >= 20) & (np.arange(60) < 40), 5.0, 0.0)  # s the clock is ahead
    for i, t in enumerate(onsets):
        if i != 19:
            clock.add_onset(i, t)
        clock.add_sync(i, float(acquisition_clock(t) + shift[i]))
        if i == 21:  # onset 19 comes late: its sync, stamped before the step, pairs in the old segment
            clock.add_onset(19, onsets[19])
        if i in (20, 40):
            assert np.abs(clock.to_local(acquisition_clock(t) + shift[i]) - t) < 1e-6  # at once
    moved = 5.0 / (1 + DRIFT)  # s of this clock
    assert [s["seconds"] for s in steps] == [pytest.approx(moved), pytest.approx(-moved)] and clock.steps == 2
    assert [s["index"] for s in steps] == [20, 40] and all(s["cause"] == "sync_residual" for s in steps)
    probe = onsets[-1] + np.linspace(0, 5, 11)
    assert np.abs(clock.to_local(acquisition_clock(probe)) - probe).max() < 1e-6
    assert clock.pairs == 60 and np.abs(clock.residuals()).max() < 1e-6


def test_spikes_over_lsl_follow_a_clock_step_ahead_and_back(stream_name):
    """Real LSL: the acquisition stamps (spikes and syncs) step 5 s ahead and back; the inlet sees
    each jump, the map starts a new segment there, and every spike still lands where it was
    fired (see assert_aligned); each step is reported once, with its size."""
    steps, events = [], []
    clock = ClockMap(on_step=steps.append)
    rng = np.random.default_rng(4)
    t0 = 1000.0
    onsets = t0 + np.arange(60) * 0.2
    spikes = np.sort(rng.uniform(t0, t0 + 12.0, 3000))
    received, _ = send_over_lsl(stream_name, clock, spikes, onsets, rng, on_event=events.append,
                             step=lambda stamps: np.where((stamps >= t0 + 4.0) & (stamps < t0 + 8.0), 5.0, 0.0))
    assert_aligned(received[:, 0], spikes, onsets)
    moved = 5.0 / (1 + DRIFT)  # s of this clock
    assert [s["seconds"] for s in steps] == [pytest.approx(moved), pytest.approx(-moved)]
    assert [s["cause"] for s in steps] == ["clock_jump", "clock_backwards"]
    assert {"clock_jump", "clock_backwards"} <= {e["kind"] for e in events}
