"""The simulated acquisition system over real LSL."""

from __future__ import annotations

import threading

import numpy as np
import pylsl

from closedloop.acquire.streams import resolve_stream
from closedloop.config import load_rig
from closedloop.present.markers import MarkerOutlet, onset_marker
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
