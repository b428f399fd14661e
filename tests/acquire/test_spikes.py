"""Real LSL over loopback: outlets are opened in the test, inlets closed first."""

import threading

import numpy as np
import pylsl
import pytest

from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import resolve_stream, spike_stream_info
from closedloop.config import StreamSpec
from closedloop.errors import ClosedLoopError


def test_every_spike_arrives_with_its_channel_unit_and_time(stream_name):
    spec = StreamSpec(name=stream_name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, stream_name))
    info = resolve_stream(spec, timeout=5)
    got, ticks = [], []
    done = threading.Event()
    n = 3000

    def on_spikes(times, channels, units):
        got.append(np.column_stack([times, channels, units]))
        if sum(len(g) for g in got) >= n:
            done.set()

    inlet = SpikeInlet(info, on_spikes, ticks.append, max_latency=0.05)
    inlet.start()
    rng = np.random.default_rng(0)
    t0 = pylsl.local_clock()
    stamps = np.sort(t0 + rng.uniform(-1.0, 0.0, n))
    sent = np.column_stack([rng.integers(1, 97, n), rng.integers(0, 4, n)]).astype(np.int32)
    for chunk in range(0, n, 500):
        outlet.push_chunk(sent[chunk:chunk + 500].tolist(), stamps[chunk:chunk + 500].tolist())
    assert done.wait(10), "spikes did not arrive"
    inlet.stop()
    received = np.concatenate(got)
    assert len(received) == n
    # Same host: the clock correction is (close to) zero and times survive exactly.
    assert abs(inlet.offset) < 1e-3
    np.testing.assert_allclose(received[:, 0], stamps + inlet.offset, atol=1e-9)
    np.testing.assert_array_equal(received[:, 1:].astype(int), sent)
    assert ticks and max(ticks) >= stamps[-1] + inlet.offset - 1e-9


def test_a_missing_stream_names_itself_and_lists_the_others(stream_name):
    other = pylsl.StreamOutlet(pylsl.StreamInfo(stream_name + "-other", "EEG", 1, 100, pylsl.cf_float32, "x"))
    with pytest.raises(ClosedLoopError) as info:
        resolve_stream(StreamSpec(name=stream_name, type="Spikes"), timeout=0.5)
    message = str(info.value)
    assert f"{stream_name!r} of type 'Spikes' not found" in message
    assert f"{stream_name}-other (EEG)" in message
    del other


def test_a_stream_with_the_wrong_channel_count_is_refused(stream_name):
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(stream_name, "Spikes", 3, 0, pylsl.cf_int32, "y"))
    info = resolve_stream(StreamSpec(name=stream_name, type="Spikes"), timeout=5)
    with pytest.raises(ClosedLoopError, match=f"{stream_name}.*expected 2 channels.*found 3"):
        SpikeInlet(info, lambda *a: None, lambda t: None)
    del outlet
