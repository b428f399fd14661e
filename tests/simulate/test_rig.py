"""The simulated acquisition system over real LSL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pylsl

from closedloop.acquire.streams import resolve_stream, session_stream
from closedloop.config import load_rig
from closedloop.present.markers import MarkerOutlet, onset_marker
from closedloop.session import Session
from closedloop.simulate.generate import rig_text
from closedloop.simulate.rig import SpikeSimulator
from closedloop.stimuli import generate_pool


def test_the_simulator_follows_a_marker_outlet_that_restarts(tmp_path, stream_name, sim_files):
    """The presenter's marker outlet vanishes (a killed run) and comes back with the same
    source_id (``closedloop resume``): the acquisition side keeps answering onsets."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    text = (tmp_path / "rig.toml").read_text()
    (tmp_path / "rig.toml").write_text(text + '[clock]\nsync = "events"\n')  # echo each onset seen
    rig = load_rig(tmp_path / "rig.toml")
    pool = generate_pool({"dot": 4}, 32, seed=0)
    markers = MarkerOutlet(rig.markers, source_id="presenter-1")
    simulator = SpikeSimulator(rig, pool)
    stop = threading.Event()
    thread = threading.Thread(target=simulator.run, args=(stop,), daemon=True)
    thread.start()
    inlet = pylsl.StreamInlet(resolve_stream(rig.spikes, timeout=5.0))
    inlet.open_stream(timeout=5.0)
    echoed: set[int] = set()

    def show_until_echoed(index: int) -> bool:
        """Push onset ``index`` until its sync event comes back (at most 20 s)."""
        deadline = pylsl.local_clock() + 20
        while index not in echoed and pylsl.local_clock() < deadline:
            markers.push(onset_marker(index, pool.ids[index % len(pool)]), pylsl.local_clock())
            samples, _ = inlet.pull_chunk(timeout=0.2, as_numpy=True)
            if samples is not None and len(samples):
                sync = samples[samples[:, 0] == rig.clock.sync_channel]
                echoed.update(np.unique(sync[:, 1]).tolist())
        return index in echoed

    try:
        assert show_until_echoed(0), "the simulator never answered the first marker outlet"
        markers.close()  # the run dies
        markers = MarkerOutlet(rig.markers, source_id="presenter-1")  # and is resumed
        assert show_until_echoed(1), "the simulator did not follow the restarted marker outlet"
    finally:
        stop.set()
        thread.join(timeout=10)
        inlet.close_stream()
    assert not thread.is_alive()


def test_a_simulator_for_a_session_offers_and_wants_only_that_sessions_streams(tmp_path, stream_name, sim_files):
    """With a session id its spike outlet carries the session's source_id (found by it), and it
    listens to the rig's marker outlet (the rig's stable source_id; which session's: its desc,
    tests/present/test_marker_streams.py)."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    rig = load_rig(tmp_path / "rig.toml")
    simulator = SpikeSimulator(rig, generate_pool({"dot": 4}, 32, seed=0), session_id="sess-a")
    info = resolve_stream(session_stream(rig.spikes, "spikes", "sess-a"), timeout=5.0)
    assert info.source_id() == "closedloop-spikes-sess-a"
    assert simulator.markers == rig.markers.model_copy(update={"source_id": f"closedloop-markers-{rig.rig.name}"})


def test_simulate_stops_on_sigterm_while_it_waits_for_markers(tmp_path, stream_name, sim_files):
    """``closedloop simulate`` with no marker stream yet waits up to the rig's resolve_timeout (here
    10 minutes) for one: SIGTERM ends it cleanly all the same, long before (it looks at its stop
    event every STOP_CHECK s; the bound below only keeps a broken build from hanging the tests)."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    (tmp_path / "rig.toml").write_text("resolve_timeout = 600.0\n" + (tmp_path / "rig.toml").read_text())
    generate_pool({"dot": 4}, 32, seed=0).save(tmp_path / "stimuli.npz")
    process = subprocess.Popen([sys.executable, "-m", "closedloop", "simulate", "--rig", str(tmp_path / "rig.toml"),
                                "--stimuli", str(tmp_path / "stimuli.npz")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert "simulating" in process.stdout.readline()  # SIGTERM's handler is in place
        assert pylsl.resolve_byprop("name", f"{stream_name}-spikes", timeout=10)  # waiting for markers
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        assert "sent 0 spikes" in process.stdout.read()
    finally:
        process.kill()
        process.wait()


def test_a_burst_of_new_images_costs_lookups_with_96_units(tmp_path, stream_name):
    """The rates of every pool image are computed off the serving thread at start-up (before, each
    new image cost tens of milliseconds for 96 units, on the serving thread): once they are, 30
    new images shown at once are all answered (their sync events sent) from the cache."""
    rig_path = tmp_path / "rig.toml"
    rig_path.write_text(rig_text(stream_name, 96).replace("[simulation]\n", "[simulation]\ncalibration_images = 2\n")
                        + '[clock]\nsync = "events"\n')
    rig = load_rig(rig_path)
    pool = generate_pool({"dot": 30}, 32, seed=0)
    markers = MarkerOutlet(rig.markers, source_id="presenter-96")
    simulator = SpikeSimulator(rig, pool)
    stop = threading.Event()
    thread = threading.Thread(target=simulator.run, args=(stop,), daemon=True)
    thread.start()
    inlet = pylsl.StreamInlet(resolve_stream(rig.spikes, timeout=5.0))
    try:
        inlet.open_stream(timeout=5.0)
        deadline = time.monotonic() + 60
        while simulator.rates_cached < len(pool) and time.monotonic() < deadline:
            inlet.pull_chunk(timeout=0.1)  # 96 units x 30 images: a couple of seconds
        assert simulator.rates_cached == len(pool)
        assert pylsl.resolve_byprop("source_id", "presenter-96", timeout=10)
        while not inlet.pull_chunk(timeout=0.1)[0]:
            pass  # serving: it has found the markers
        sent = time.monotonic()
        for index in range(len(pool)):
            markers.push(onset_marker(index, pool.ids[index]), pylsl.local_clock())
        echoed: set[int] = set()
        while len(echoed) < len(pool) and time.monotonic() < sent + 10:
            samples, _ = inlet.pull_chunk(timeout=0.05, as_numpy=True)
            if len(samples):
                echoed.update(samples[samples[:, 0] == rig.clock.sync_channel, 1].tolist())
        assert len(echoed) == len(pool)  # every image answered from the cache (how fast: bench, not test)
    finally:
        stop.set()
        thread.join(timeout=5)
        inlet.close_stream()
    assert not thread.is_alive()


def test_the_session_kills_a_simulator_that_ignores_sigterm(tmp_path):
    """Closing never waits on a simulator for long nor raises: SIGKILL after SIMULATOR_STOP s."""
    session = Session.__new__(Session)  # only its simulator: nothing else to stop
    session.simulator = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert session.simulator.stdout.readline().strip() == "ready"
    session._stop_simulator()  # returns (the test would hang for 60 s if it waited on the child)
    assert session.simulator.returncode == -signal.SIGKILL  # SIGTERM ignored, then killed
