"""Real LSL over loopback: outlets are opened in the test, inlets closed first."""

import subprocess
import sys
import threading

import numpy as np
import pylsl
import pytest

from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import CLOCK_REFRESH, count_stream_info, resolve_stream, session_stream, spike_stream_info
from closedloop.config import SpikeStreamSpec, StreamSpec
from closedloop.errors import ClosedLoopError


def _discoverable(name: str) -> None:
    """Wait (up to 10 s, back as soon as it answers) until an outlet named ``name`` answers queries."""
    assert pylsl.resolve_byprop("name", name, timeout=10), f"outlet {name!r} never answered"


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
    _discoverable(stream_name + "-other")  # up and answering, so the listing must show it
    with pytest.raises(ClosedLoopError) as info:  # nothing will ever answer to the name: a short wait
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


def test_binned_counts_become_spikes_at_bin_centres(stream_name):
    """A counts stream: k in channel c at stamp t gives k spikes on (c, 1) at t - half a bin."""
    rate, n_channels = 1000.0, 4
    spec = SpikeStreamSpec(name=stream_name, type="Spikes", format="counts")
    outlet = pylsl.StreamOutlet(count_stream_info(spec, stream_name, n_channels, rate))
    info = resolve_stream(spec, timeout=5)
    got = []
    done = threading.Event()
    rng = np.random.default_rng(1)
    bins = rng.poisson(0.3, (400, n_channels)).astype(np.int32)

    def on_spikes(times, channels, units):
        got.append(np.column_stack([times, channels, units]))
        if sum(len(g) for g in got) >= bins.sum():
            done.set()

    inlet = SpikeInlet(info, on_spikes, lambda t: None, spec=spec, channels=n_channels)
    inlet.start()
    stamps = pylsl.local_clock() - 1.0 + np.arange(len(bins)) / rate
    outlet.push_chunk(bins, stamps)
    assert done.wait(10), "counts did not arrive"
    inlet.stop()
    received = np.concatenate(got)
    assert len(received) == bins.sum() and np.all(received[:, 2] == 1)
    expected_times = np.repeat(stamps, bins.sum(axis=1)) - 0.5 / rate
    np.testing.assert_allclose(np.sort(received[:, 0]), expected_times + inlet.offset, atol=1e-9)
    for c in range(n_channels):
        assert (received[:, 1] == c + 1).sum() == bins[:, c].sum()


def test_counts_stream_must_be_regular_and_wide_enough(stream_name):
    spec = SpikeStreamSpec(name=stream_name, type="Spikes", format="counts")
    irregular = pylsl.StreamOutlet(pylsl.StreamInfo(stream_name, "Spikes", 8, 0, pylsl.cf_int32, "a"))
    info = resolve_stream(spec, timeout=5)
    with pytest.raises(ClosedLoopError, match="needs a regular sampling rate"):
        SpikeInlet(info, lambda *a: None, lambda t: None, spec=spec, channels=4)
    del irregular
    narrow = pylsl.StreamOutlet(count_stream_info(spec, "b", 2, 1000.0))
    info = resolve_stream(spec, timeout=5)
    with pytest.raises(ClosedLoopError, match="units name channel 4, but the stream has 2 channels"):
        SpikeInlet(info, lambda *a: None, lambda t: None, spec=spec, channels=4)
    del narrow


def test_a_stray_outlet_with_the_same_name_is_refused(stream_name):
    """Pinned by source_id and host: a same-named outlet from elsewhere is reported, not used."""
    stray = pylsl.StreamOutlet(spike_stream_info(StreamSpec(name=stream_name, type="Spikes"), "stray-box"))
    _discoverable(stream_name)  # the timeouts below are waits for a pinned outlet that never comes
    pinned = StreamSpec(name=stream_name, type="Spikes", source_id="nsp-1", host=stray.get_info().hostname())
    with pytest.raises(ClosedLoopError) as error:
        resolve_stream(pinned, timeout=1.0)
    assert "refused" in str(error.value) and "source_id 'stray-box', not 'nsp-1'" in str(error.value)
    real = pylsl.StreamOutlet(spike_stream_info(StreamSpec(name=stream_name, type="Spikes"), "nsp-1"))
    assert resolve_stream(pinned, timeout=5).source_id() == "nsp-1"  # the pinned one is chosen
    with pytest.raises(ClosedLoopError, match="2 outlets match"):
        resolve_stream(StreamSpec(name=stream_name, type="Spikes"), timeout=1.0)
    wrong_host = StreamSpec(name=stream_name, type="Spikes", source_id="nsp-1", host="rig-pc-7")
    with pytest.raises(ClosedLoopError, match="host .*not 'rig-pc-7'"):
        resolve_stream(wrong_host, timeout=1.0)
    del stray, real


def test_a_stream_that_drops_out_and_returns_leaves_a_recorded_gap(stream_name, wait_until):
    """The outlet vanishes (acquisition software restarts) and comes back with the same source_id."""
    spec = StreamSpec(name=stream_name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, "nsp"))
    info = resolve_stream(spec, timeout=5)
    gaps, ticks, events = [], [], []
    first, back = threading.Event(), threading.Event()
    arrived = {"before": 0, "after": 0}

    def on_spikes(times, channels, units):
        arrived["after" if gaps else "before"] += len(times)
        first.set()
        if gaps and arrived["after"]:
            back.set()

    def on_gap(start, end):
        gaps.append((start, end))

    inlet = SpikeInlet(info, on_spikes, ticks.append, stall_after=0.5, on_gap=on_gap, on_event=events.append)
    inlet.start()
    one = np.ones((5, 2), np.int32)
    outlet.push_chunk(one, pylsl.local_clock() + np.zeros(5))
    assert first.wait(10), "the first spikes did not arrive"
    lost_at = pylsl.local_clock()  # after the last sample's arrival
    del outlet  # gone
    wait_until(lambda: inlet.in_gap_since is not None, "the inlet did not notice the silence")
    frozen = len(ticks)
    assert max(ticks) <= lost_at  # acquisition time never passed the last data it had
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, "nsp"))  # the restart
    deadline = pylsl.local_clock() + 20
    while not back.is_set() and pylsl.local_clock() < deadline:
        outlet.push_chunk(one, pylsl.local_clock() + np.zeros(5))
        back.wait(0.1)
    inlet.stop()
    assert back.is_set(), "the inlet did not reconnect"
    assert len(gaps) == 1 and gaps[0][0] <= lost_at < gaps[0][1]
    assert events[-1]["kind"] == "spike_gap" and events[-1]["end"] == gaps[0][1]
    # Time stood still through the gap and moves again from its end: no window closed on missing data.
    assert all(t >= gaps[0][1] for t in ticks[frozen:]) and max(ticks) >= gaps[0][1]
    del outlet


def test_an_outlet_gone_before_its_inlet_opens_is_the_error_and_stop_still_works(stream_name):
    """The real error reaches the user: a failed ``start`` says which stream did not answer, and
    the clean-up's ``stop`` after it raises nothing of its own."""
    spec = StreamSpec(name=stream_name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, stream_name))
    info = resolve_stream(spec, timeout=5)
    del outlet
    inlet = SpikeInlet(info, lambda *_: None, lambda _: None)
    with pytest.raises(ClosedLoopError, match=f"LSL stream '{stream_name}': its outlet did not answer within 0.5 s"):
        inlet.start(timeout=0.5)
    inlet.stop()


def test_a_session_finds_only_its_own_outlet(stream_name):
    """An outlet of the same name whose source_id belongs to no session is refused, naming both ids;
    the session's own is found beside it."""
    spec = StreamSpec(name=stream_name, type="Spikes")
    mine = session_stream(spec, "spikes", "session-1")
    foreign = pylsl.StreamOutlet(spike_stream_info(spec, "an-orphan"))
    with pytest.raises(ClosedLoopError, match="source_id 'an-orphan', not 'closedloop-spikes-session-1'"):
        resolve_stream(mine, timeout=1.0)
    own = pylsl.StreamOutlet(spike_stream_info(spec, mine.source_id))
    assert resolve_stream(mine, timeout=5.0).source_id() == "closedloop-spikes-session-1"
    del foreign, own


def test_a_stream_silent_beyond_lost_after_is_lost_and_flagged_if_asked(stream_name, wait_until):
    """Silent beyond ``stall_after`` it is a gap; beyond ``lost_after`` lost (reported once). With
    ``on_lost = "flag"`` the acquisition time goes on past the silence, which is flagged as gaps
    ahead of it; with ``"end"`` it stands still."""
    for on_lost in ("flag", "end"):
        spec = SpikeStreamSpec(name=f"{stream_name}-{on_lost}", type="Spikes", lost_after=0.6, on_lost=on_lost)
        outlet = pylsl.StreamOutlet(spike_stream_info(spec, spec.name))
        ticks, gaps, events = [], [], []
        inlet = SpikeInlet(resolve_stream(spec, timeout=5), lambda *_: None, ticks.append, 0.05, spec,
                           stall_after=0.2, on_gap=lambda a, b: gaps.append((a, b)), on_event=events.append)
        inlet.start()
        outlet.push_sample([1, 1], pylsl.local_clock())
        wait_until(lambda: inlet.state == "gap", "a gap")
        wait_until(lambda: inlet.state == "lost", "the stream lost")
        lost_at = ticks[-1]
        wait_until(lambda: pylsl.local_clock() > lost_at + 0.2 + 0.5, "half a second more")  # ticks lag 0.2 s
        inlet.stop()
        assert [e["kind"] for e in events] == ["spike_stream_lost"] and events[0]["on_lost"] == on_lost
        if on_lost == "flag":
            assert ticks[-1] > lost_at + 0.4 and gaps and all(b > a for a, b in gaps)
            assert gaps[0][0] == inlet.in_gap_since and gaps[-1][1] > ticks[-1]
            assert all(gaps[k][1] == gaps[k + 1][0] for k in range(len(gaps) - 1))  # no hole between them
        else:
            assert ticks[-1] == lost_at and not gaps
        del outlet


def test_a_moved_lsl_clock_offset_is_applied_from_then_on_and_logged(stream_name, monkeypatch, wait_until):
    """The sending host's LSL clock steps 5 s (here: liblsl's offset estimate says so): the inlet
    reads the offset again every few seconds, from its own thread, and stamps the spikes that
    follow with the new one; the move is an event."""
    spec = StreamSpec(name=stream_name, type="Spikes")
    outlet = pylsl.StreamOutlet(spike_stream_info(spec, stream_name))
    got, events = [], []
    inlet = SpikeInlet(resolve_stream(spec, timeout=5), lambda t, c, u: got.extend(t), lambda t: None,
                       on_event=events.append, stall_after=30.0)  # silent until the offset moves
    inlet.start()
    measured = inlet._inlet.time_correction
    monkeypatch.setattr(inlet._inlet, "time_correction", lambda timeout=1.0: measured(timeout=timeout) + 5.0)
    wait_until(lambda: events, "the offset was not read again", timeout=3 * CLOCK_REFRESH)
    stamp = pylsl.local_clock()
    outlet.push_sample([1, 1], stamp)
    wait_until(lambda: got, "the spike did not arrive")
    inlet.stop()
    assert [e["kind"] for e in events] == ["clock_offset_changed"]
    assert events[0]["seconds"] == pytest.approx(5.0, abs=1e-3) and events[0]["offset"] == inlet.offset
    assert got[0] == pytest.approx(stamp + 5.0, abs=1e-3)


OUTLET = """
import sys, time, pylsl
from closedloop.acquire.streams import spike_stream_info
from closedloop.config import StreamSpec
outlet = pylsl.StreamOutlet(spike_stream_info(StreamSpec(name=sys.argv[1], type="Spikes"), "nsp-restarts"))
print("up", flush=True)
while True:
    outlet.push_sample([1, 1], pylsl.local_clock())
    time.sleep(0.01)
"""


def test_an_outlet_restarted_within_stall_after_is_a_gap_every_time(stream_name, wait_until):
    """A spike outlet killed (-9) and started again (same source_id) sooner than ``stall_after``:
    every restart is a gap all the same, from the last stamp before it to the first after."""
    def start_outlet() -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", OUTLET, stream_name], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "up"
        return process

    outlet = start_outlet()
    gaps, events, arrivals = [], [], []
    inlet = SpikeInlet(resolve_stream(StreamSpec(name=stream_name, type="Spikes"), timeout=10),
                       lambda t, c, u: arrivals.append(pylsl.local_clock()), lambda t: None, stall_after=30.0,
                       on_gap=lambda a, b: gaps.append((a, b)), on_event=events.append)
    inlet.start()
    try:
        for restart in range(1, 3):
            wait_until(lambda: arrivals, "no spikes from the outlet")
            outlet.kill()
            outlet.wait()
            killed = pylsl.local_clock()
            outlet = start_outlet()
            arrivals.clear()
            wait_until(lambda: len(gaps) == restart, f"restart {restart} was not a gap", timeout=20)
            assert gaps[-1][0] <= killed < gaps[-1][1] and inlet.state == "ok"
    finally:
        inlet.stop()
        outlet.kill()
        outlet.wait()
    assert [e["kind"] for e in events] == ["spike_gap", "spike_gap"]
