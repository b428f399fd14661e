"""closedloop's LSL outlets describe themselves (XDF meta-data conventions) to any third-party
consumer: pylsl by desc predicates, mne-lsl by channel names; and a counts stream it cannot read
without losing spikes is refused."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pylsl
import pytest

from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import (count_stream_info, desc_value, gaze_stream_info, resolve_stream,
                                        session_stream, spike_stream_info, stream_header)
from closedloop.config import SpikeStreamSpec, StreamSpec, UnitSpec, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.simulate.rig import SpikeSimulator, simulated_units
from closedloop.stimuli import generate_pool


def _channels(info: pylsl.StreamInfo) -> list[tuple[str, str, str]]:
    """(label, unit, type) of every ``<desc><channels><channel>``, read as a third party would."""
    found, channel = [], info.desc().child("channels").child("channel")
    while not channel.empty():
        found.append(tuple(channel.child_value(field) for field in ("label", "unit", "type")))
        channel = channel.next_sibling("channel")
    return found


def _units(info: pylsl.StreamInfo) -> list[tuple[str, int, int]]:
    """(name, channel, unit) of every ``<desc><units><unit>``."""
    found, unit = [], info.desc().child("units").child("unit")
    while not unit.empty():
        found.append((unit.child_value("name"), int(unit.child_value("channel")), int(unit.child_value("unit"))))
        unit = unit.next_sibling("unit")
    return found


def _described(predicate: str) -> pylsl.StreamInfo:
    """The full description (``<desc>`` included) of the one outlet ``predicate`` finds."""
    (found,) = pylsl.resolve_bypred(predicate, timeout=10)
    inlet = pylsl.StreamInlet(found)
    try:
        return inlet.info(timeout=10)
    finally:
        inlet.close_stream()


def test_a_simulated_rigs_outlets_are_found_by_their_desc_and_carry_labels_and_units(tmp_path, sim_files,
                                                                                     stream_name):
    """A simulated rig serving session ``sess-7``, with gaze, a photodiode and a counts spike stream:
    each outlet is found by ``desc/closedloop/session_id`` alone, with its channels labelled (gaze
    x, y in degrees; light; one count channel per neuron, named after it) and the spike stream
    listing the rig's units; helper ``stream_header`` reads the same labels back."""
    sim_files.rig(tmp_path / "rig.toml", stream_name, fixation_breaks=0.5)
    text = (tmp_path / "rig.toml").read_text()
    text = text.replace('type = "Spikes"\n', 'type = "Spikes"\nformat = "counts"\nrate = 100.0\n')
    text = text.replace("[simulation]\n", f'[photodiode]\nname = "{stream_name}-light"\ntype = "Photodiode"\n'
                                          "[simulation]\n")
    (tmp_path / "rig.toml").write_text(text)
    rig = load_rig(tmp_path / "rig.toml")
    units = simulated_units(rig)
    simulator = SpikeSimulator(rig, generate_pool({"dot": 4}, 32, seed=0), session_id="sess-7")

    gaze = _described(f"name='{stream_name}-gaze' and desc/closedloop/session_id='sess-7'")
    assert _channels(gaze) == [("x", "degrees", "ScreenX"), ("y", "degrees", "ScreenY")]
    assert desc_value(gaze, "acquisition/manufacturer") == "closedloop"
    assert desc_value(gaze, "closedloop/rig") == stream_name
    assert stream_header(gaze, "gaze", "gaze")["labels"] == ["x", "y"]
    assert stream_header(gaze, "gaze", "gaze")["units"] == ["degrees", "degrees"]

    light = _described(f"name='{stream_name}-light' and desc/closedloop/session_id='sess-7'")
    assert _channels(light) == [("light", "a.u.", "Light")]

    spikes = _described(f"name='{stream_name}-spikes' and desc/closedloop/session_id='sess-7' "
                        f"and desc/units/unit/name='{units[-1].name}'")
    assert spikes.source_id() == session_stream(rig.spikes, "spikes", "sess-7").source_id
    assert _channels(spikes) == [(u.name, "spikes", "SpikeCount") for u in units]
    assert _units(spikes) == [(u.name, u.channel, u.unit) for u in units]
    del simulator


def test_an_event_spike_stream_lists_its_units_by_name(stream_name):
    """Events format: two channels (channel, unit), and the units named in ``<desc><units>``."""
    units = [UnitSpec(name="v4-a", channel=3, unit=1), UnitSpec(name="v4-b", channel=3, unit=2)]
    outlet = pylsl.StreamOutlet(spike_stream_info(StreamSpec(name=stream_name, type="Spikes"), "nsp-3", units))
    info = _described(f"source_id='nsp-3' and name='{stream_name}'")
    assert [label for label, _, _ in _channels(info)] == ["channel", "unit"]
    assert _units(info) == [("v4-a", 3, 1), ("v4-b", 3, 2)]
    del outlet


@pytest.fixture
def feeding():
    """``feed(outlet, sample, rate)``: push ``sample`` at ``rate`` on a thread until the test ends (a
    live outlet for mne-lsl to read)."""
    stop, threads = threading.Event(), []

    def feed(outlet: pylsl.StreamOutlet, sample: np.ndarray, rate: float) -> None:
        def run() -> None:
            while not stop.wait(0.05):
                outlet.push_chunk(np.repeat(sample[None], max(1, int(rate * 0.05)), axis=0))

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()

    yield feed
    stop.set()
    for thread in threads:
        thread.join()


def test_mne_lsl_names_the_channels_of_gaze_and_counts_outlets(stream_name, feeding):
    """mne-lsl's StreamLSL connects to a gaze outlet and a counts outlet built by closedloop's own
    functions and names their channels x, y and after the units (``ch3`` where no unit is named),
    with no warning (without labels it names them '0', '1' and warns)."""
    from mne_lsl.stream import StreamLSL

    units = [UnitSpec(name="curvature", channel=1), UnitSpec(name="dot", channel=2)]
    gaze = pylsl.StreamOutlet(gaze_stream_info(StreamSpec(name=f"{stream_name}-g", type="Gaze"), "eye-1", 100.0))
    counts = pylsl.StreamOutlet(count_stream_info(SpikeStreamSpec(name=f"{stream_name}-c", type="Spikes",
                                                                  format="counts"), "nsp-1", 3, 100.0, units))
    feeding(gaze, np.zeros(2, np.float32), 100.0)
    feeding(counts, np.ones(3, np.int32), 100.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        streams = [StreamLSL(bufsize=2, name=f"{stream_name}-g", source_id="eye-1"),
                   StreamLSL(bufsize=2, name=f"{stream_name}-c", source_id="nsp-1")]
        try:
            for stream in streams:
                stream.connect(acquisition_delay=0.01, timeout=10)
            assert streams[0].ch_names == ["x", "y"]
            assert streams[1].ch_names == ["curvature", "dot", "ch3"]
        finally:
            for stream in streams:
                if stream.connected:
                    stream.disconnect()
    assert not [str(w.message) for w in caught]
    del gaze, counts


def _counts_inlet(stream_name: str, rows: np.ndarray) -> tuple[SpikeInlet, pylsl.StreamOutlet, list[int]]:
    """A third-party float32 counts stream (2 channels, 100 Hz) that has sent ``rows``, a started
    SpikeInlet reading it, and the channel of every spike the inlet handed on."""
    spec = SpikeStreamSpec(name=stream_name, type="Spikes", format="counts")
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(stream_name, "Spikes", 2, 100.0, pylsl.cf_float32, "third-party"))
    got: list[int] = []
    inlet = SpikeInlet(resolve_stream(spec, timeout=5), lambda t, c, u: got.extend(c.tolist()), lambda t: None,
                       spec=spec, channels=2)
    inlet.start()
    outlet.push_chunk(rows.astype(np.float32), (pylsl.local_clock() - 1.0 + np.arange(len(rows)) / 100.0).tolist())
    return inlet, outlet, got


def test_a_counts_stream_with_a_fractional_count_is_refused_by_name(stream_name, wait_until):
    """1.7 spikes is not truncated to 1: the inlet fails with one line naming the stream and the value."""
    inlet, outlet, _ = _counts_inlet(stream_name, np.array([[1.0, 0.0], [1.7, 0.0]]))
    try:
        wait_until(lambda: inlet.error is not None, "the inlet's error")
    finally:
        inlet.stop()
    assert isinstance(inlet.error, ClosedLoopError)
    message = str(inlet.error)
    assert stream_name in message and "1.7" in message and "whole spike counts" in message and "\n" not in message
    del outlet


def test_a_float_counts_stream_with_whole_counts_is_read(stream_name, wait_until):
    """The same stream with whole counts in float32: every spike arrives, on its channel."""
    inlet, outlet, got = _counts_inlet(stream_name, np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]))
    try:
        wait_until(lambda: len(got) == 6 or inlet.error is not None, "6 spikes")
    finally:
        inlet.stop()
    assert inlet.error is None
    assert sorted(got) == [1, 1, 1, 1, 1, 2]
    del outlet
