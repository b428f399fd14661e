"""The marker streams as third parties see them: a described JSON stream, a numeric companion that
mne-lsl epochs on, a source_id that stays the rig's from session to session, and a simulator that
serves only its own session all the same."""

from __future__ import annotations

import re
import threading
import time
import warnings

import numpy as np
import pylsl
import pytest

from closedloop.acquire.streams import count_stream_info, desc_value, marker_stream, resolve_stream, session_stream
from closedloop.config import DisplaySpec, SpikeStreamSpec, StreamSpec, UnitSpec, load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.present.geometry import Layout
from closedloop.present.headless import HeadlessPresenter
from closedloop.present.markers import EVENT_CODES, NO_INDEX, MarkerOutlet, onset_marker, parse_marker
from closedloop.present.trials import trial_marker
from closedloop.session import Session
from closedloop.simulate.rig import SpikeSimulator
from closedloop.stimuli import generate_pool

LAYOUT = Layout(patch_px=8, patch_centre_px=(0.0, 0.0), fixation_px=4.0, background=0.5)
VERSION_PATH = "closedloop/version"


def _open(name: str) -> pylsl.StreamInlet:
    inlet = pylsl.StreamInlet(pylsl.resolve_byprop("name", name, timeout=10)[0])
    inlet.open_stream(timeout=10)
    return inlet


def _pull(inlet: pylsl.StreamInlet, count: int) -> tuple[list, list[float]]:
    """The first ``count`` samples and their stamps (failing after 10 s)."""
    samples, stamps, deadline = [], [], time.monotonic() + 10
    while len(samples) < count:
        assert time.monotonic() < deadline, f"{len(samples)} of {count} samples"
        got, at = inlet.pull_chunk(timeout=1.0)
        samples += got
        stamps += at
    return samples, stamps


def test_every_marker_has_a_numeric_companion_stamped_alike(stream_name):
    """Through a presenter: a trial start, a whole presentation, one cut by a fixation break and one
    of a stimulus the pool lacks give int32 samples (event code, presentation index, pool index),
    each stamped as its JSON marker; both streams say in ``<desc>`` what they carry."""
    pool = generate_pool({"dot": 4}, 8, seed=0)
    outlet = MarkerOutlet(StreamSpec(name=stream_name, type="Markers"), "presenter-9", session_id="ses-3",
                          rig="rig-b", pool_index=pool.index)
    text, numeric = _open(stream_name), _open(f"{stream_name}-numeric")
    try:
        presenter = HeadlessPresenter(DisplaySpec(backend="headless", refresh_rate=120.0), LAYOUT, outlet)
        presenter.blank(1, trial_marker("trial_start", 5))
        presenter.present(pool.images[2], 0, pool.ids[2], on_frames=2, off_frames=1)
        presenter.present(pool.images[3], 1, pool.ids[3], on_frames=2, off_frames=1, holding=lambda: False)
        presenter.present(pool.images[0], 2, "not-in-the-pool", on_frames=2, off_frames=1)
        markers, marker_stamps = _pull(text, 8)
        samples, stamps = _pull(numeric, 8)
        text_info, numeric_info = text.info(timeout=10), numeric.info(timeout=10)
    finally:
        text.close_stream()
        numeric.close_stream()
    assert [parse_marker(m[0])["event"] for m in markers] == ["trial_start", "onset", "offset", "onset", "offset",
                                                              "fixation_break", "onset", "offset"]
    onset, offset, cut = EVENT_CODES["onset"], EVENT_CODES["offset"], EVENT_CODES["fixation_break"]
    assert samples == [[EVENT_CODES["trial_start"], NO_INDEX, NO_INDEX], [onset, 0, 2], [offset, 0, 2],
                       [onset, 1, 3], [offset, 1, 3], [cut, 1, 3], [onset, 2, NO_INDEX], [offset, 2, NO_INDEX]]
    assert stamps == marker_stamps
    assert numeric_info.source_id() == "presenter-9-numeric" and numeric_info.channel_format() == pylsl.cf_int32
    assert desc_value(text_info, "closedloop/marker_format") == "json"
    assert desc_value(text_info, "closedloop/marker_schema/onset/stimulus").startswith("content hash")
    assert desc_value(text_info, "channels/channel/label") == "marker"
    for info in (text_info, numeric_info):
        assert desc_value(info, "closedloop/session_id") == "ses-3" and desc_value(info, "closedloop/rig") == "rig-b"
        assert desc_value(info, VERSION_PATH)
    assert desc_value(numeric_info, "closedloop/event_codes/offset") == "2"
    labels, channel = [], numeric_info.desc().child("channels").child("channel")
    while not channel.empty():
        labels.append(channel.child_value("label"))
        channel = channel.next_sibling("channel")
    assert labels == ["event", "presentation", "pool_index"]
    outlet.close()


def test_mne_lsl_epochs_a_counts_stream_on_the_numeric_markers(stream_name):
    """mne-lsl's StreamLSL refuses string markers but connects to the numeric companion (channel
    names from its desc, no warning), and its EpochsStream cuts an epoch of a closedloop counts
    stream at an onset pushed through MarkerOutlet."""
    from mne_lsl.stream import EpochsStream, StreamLSL

    spec = SpikeStreamSpec(name=f"{stream_name}-c", type="Spikes", format="counts")
    counts = pylsl.StreamOutlet(count_stream_info(spec, "nsp-2", 2, 100.0, [UnitSpec(name="dot", channel=1)]))
    markers = MarkerOutlet(StreamSpec(name=f"{stream_name}-m", type="Markers"), "presenter-2")
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.05):
            counts.push_chunk(np.ones((5, 2), np.int32))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    streams = [StreamLSL(bufsize=4, name=f"{stream_name}-c"), StreamLSL(bufsize=4, name=f"{stream_name}-m-numeric")]
    epochs = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for stream in streams:
                stream.connect(acquisition_delay=0.01, timeout=10)
        assert not [str(w.message) for w in caught]
        assert streams[0].ch_names == ["dot", "ch2"]
        assert streams[1].ch_names == ["event", "presentation", "pool_index"]
        assert streams[1].get_channel_types() == ["stim", "misc", "misc"]
        epochs = EpochsStream(streams[0], bufsize=4, event_id={"onset": EVENT_CODES["onset"]}, event_channels="event",
                              event_stream=streams[1], tmin=-0.2, tmax=0.1, baseline=None)
        epochs.connect(acquisition_delay=0.01)
        deadline, index = time.monotonic() + 20, 0
        while epochs.n_new_epochs == 0:  # an onset, again until one falls inside the counts buffer
            assert time.monotonic() < deadline, "no epoch"
            markers.push(onset_marker(index, "stim"), pylsl.local_clock())
            index += 1
            time.sleep(0.3)
        data = epochs.get_data()
        assert data.shape[1:] == (2, 31)  # channels, 0.3 s at 100 Hz
        assert np.all(data[-1] == 1)  # the counts pushed: one spike per bin on both channels
        events, _ = streams[1].get_data()
        assert EVENT_CODES["onset"] in events[0]
    finally:
        if epochs is not None and epochs.connected:
            epochs.disconnect()
        for stream in streams:
            if stream.connected:
                stream.disconnect()
        stop.set()
        feeder.join()
    markers.close()
    del counts


def test_the_simulator_serves_only_its_sessions_marker_outlet(tmp_path, stream_name, sim_files):
    """Two marker outlets of one rig (same name, same stable source_id), sessions ``ses-a`` and
    ``ses-b``: a simulator serving ``ses-b`` waits past ``ses-a``'s and answers only ``ses-b``'s
    onsets; resolving for a third session explains the refusals."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    (tmp_path / "rig.toml").write_text((tmp_path / "rig.toml").read_text() + '[clock]\nsync = "events"\n')
    rig = load_rig(tmp_path / "rig.toml")
    pool = generate_pool({"dot": 4}, 32, seed=0)
    source_id = marker_stream(rig).source_id
    foreign = MarkerOutlet(rig.markers, source_id, session_id="ses-a", rig=rig.rig.name)
    simulator = SpikeSimulator(rig, pool, session_id="ses-b")
    stop = threading.Event()
    thread = threading.Thread(target=simulator.run, args=(stop,), daemon=True)
    thread.start()
    inlet = pylsl.StreamInlet(resolve_stream(session_stream(rig.spikes, "spikes", "ses-b"), timeout=5.0))
    own = None
    try:
        inlet.open_stream(timeout=5.0)
        echoed: set[int] = set()

        def pull() -> None:
            samples, _ = inlet.pull_chunk(timeout=0.2, as_numpy=True)
            if len(samples):
                echoed.update(samples[samples[:, 0] == rig.clock.sync_channel, 1].tolist())

        for k in range(5):  # the simulator is waiting for markers; ses-a's onsets are not for it
            foreign.push(onset_marker(100 + k, pool.ids[0]), pylsl.local_clock())
            pull()
        own = MarkerOutlet(rig.markers, source_id, session_id="ses-b", rig=rig.rig.name)
        deadline = time.monotonic() + 30
        while 0 not in echoed and time.monotonic() < deadline:
            foreign.push(onset_marker(101, pool.ids[1]), pylsl.local_clock())
            own.push(onset_marker(0, pool.ids[0]), pylsl.local_clock())
            pull()
        assert 0 in echoed, "the simulator never answered its own session's marker outlet"
        assert not echoed & {100, 101, 102, 103, 104}  # nothing of ses-a's was answered
        with pytest.raises(ClosedLoopError) as refused:
            resolve_stream(marker_stream(rig), 5.0, {"closedloop/session_id": "ses-c"})
        # (on a busy machine LSL's resolver may list only one of the two: either is explained)
        assert re.search(f"refused same-named outlets .*{source_id}.*desc closedloop/session_id 'ses-[ab]', "
                         "not 'ses-c'", str(refused.value))
    finally:
        stop.set()
        thread.join(timeout=10)
        inlet.close_stream()
    assert not thread.is_alive()
    foreign.close()
    own.close()


def test_the_marker_source_id_is_the_rigs_in_every_session_and_settable(tmp_path, stream_name, sim_files):
    """Two sessions of one rig publish markers under one source_id, ``closedloop-markers-<rig name>``
    (a recorder pins it in advance), each naming its session in ``<desc>``; the rig file's
    ``[markers] source_id`` replaces it."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    sim_files.protocol(tmp_path / "protocol.toml", 4)
    protocol = load_protocol(tmp_path / "protocol.toml")
    rig = load_rig(tmp_path / "rig.toml")
    pinned_text = (tmp_path / "rig.toml").read_text().replace('type = "Markers"\n',
                                                              'type = "Markers"\nsource_id = "rig-7-stim"\n')
    (tmp_path / "pinned.toml").write_text(pinned_text)
    pinned = load_rig(tmp_path / "pinned.toml")
    for session_id, source_id, session_rig in (("ses-1", f"closedloop-markers-{stream_name}", rig),
                                               ("ses-2", f"closedloop-markers-{stream_name}", rig),
                                               ("ses-3", "rig-7-stim", pinned)):
        with Session(protocol, session_rig, tmp_path / session_id):
            found = pylsl.resolve_bypred(f"source_id='{source_id}' and desc/closedloop/session_id='{session_id}'",
                                         timeout=10)
            assert [info.name() for info in found] == [f"{stream_name}-markers"]
