"""Republish: a recording's spikes and markers on real LSL outlets, read back by real inlets."""

from __future__ import annotations

import threading

import numpy as np
import pylsl
import pytest
from click.testing import CliRunner

from closedloop.acquire.streams import check_spike_stream, resolve_stream
from closedloop.cli import main
from closedloop.config import Protocol, SpikeStreamSpec, StreamSpec, UnitSpec, to_jsonable
from closedloop.record import SessionWriter
from closedloop.record.session import SPIKE_DTYPE
from closedloop.replay import Recording, presentations_from_markers, response_table
from closedloop.replay.republish import republish
from closedloop.stimuli import generate_pool

SPEED = 10.0
UNITS = [UnitSpec(name="a", channel=1, unit=1), UnitSpec(name="b", channel=1, unit=2),
         UnitSpec(name="c", channel=4, unit=1)]


def make_recording() -> Recording:
    """12 presentations of 4 stimuli, 0.25 s apart, and Poisson spikes of three units (seeded)."""
    rng = np.random.default_rng(4)
    onsets = 500.0 + 0.25 * np.arange(12)
    presentations = [{"index": i, "stimulus": f"s{i % 4}", "onset": float(t), "offset": float(t) + 0.1}
                     for i, t in enumerate(onsets)]
    parts = []
    for unit in UNITS:
        times = np.sort(rng.uniform(499.5, 503.5, rng.poisson(40 * 4.0)))
        part = np.empty(len(times), SPIKE_DTYPE)
        part["time"], part["channel"], part["unit"] = times, unit.channel, unit.unit
        parts.append(part)
    return Recording(units=UNITS, spikes=np.concatenate(parts), presentations=presentations, source="truth")


def pull_all(inlet: pylsl.StreamInlet, n: int, timeout: float = 30.0) -> tuple[list, list]:
    """``n`` samples and their stamps (waits on the inlet, up to ``timeout`` s for each chunk)."""
    samples, stamps = [], []
    while len(stamps) < n:
        chunk, times = inlet.pull_chunk(timeout=timeout, max_samples=n - len(stamps))
        if not times:
            pytest.fail(f"only {len(stamps)} of {n} samples arrived")
        samples += chunk
        stamps += times
    return samples, stamps


def test_spikes_and_markers_arrive_as_recorded(stream_name):
    truth = make_recording()
    spikes, markers = StreamSpec(name=f"{stream_name}-spikes", type="Spikes"), \
        StreamSpec(name=f"{stream_name}-markers", type="Markers")
    done: dict = {}

    def send() -> None:  # waits for both inlets, and keeps the outlets until they close
        done["result"] = republish(truth, spikes, markers, SPEED, wait=30.0, linger=30.0)

    thread = threading.Thread(target=send)
    thread.start()
    spike_info, marker_info = resolve_stream(spikes, 10.0), resolve_stream(markers, 10.0)
    check_spike_stream(spike_info, SpikeStreamSpec(name=spikes.name, type="Spikes"))  # the live inlet's format
    # recover=False: an outlet gone too early fails the test instead of leaving the inlet waiting
    spike_inlet, marker_inlet = (pylsl.StreamInlet(info, recover=False) for info in (spike_info, marker_info))
    spike_inlet.open_stream(timeout=5.0)
    marker_inlet.open_stream(timeout=5.0)
    try:
        samples, spike_stamps = pull_all(spike_inlet, len(truth.spikes))
        labels, marker_stamps = pull_all(marker_inlet, 2 * len(truth.presentations))
    finally:
        spike_inlet.close_stream()
        marker_inlet.close_stream()
        thread.join()
    result = done["result"]
    assert (result.spikes, result.markers, result.stopped) == (len(truth.spikes), 24, False)

    def back(stamps) -> np.ndarray:  # LSL stamps to recording time
        return (np.asarray(stamps) - result.start) * SPEED + result.first

    samples = np.array(samples)
    assert samples[:, 0].tolist() == truth.spikes["channel"].tolist()
    assert samples[:, 1].tolist() == truth.spikes["unit"].tolist()
    np.testing.assert_allclose(back(spike_stamps), truth.spikes["time"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.diff(spike_stamps), np.diff(truth.spikes["time"]) / SPEED, rtol=0, atol=1e-9)
    presentations, notes = presentations_from_markers(back(marker_stamps), [label[0] for label in labels])
    assert notes == [] and [(p["index"], p["stimulus"]) for p in presentations] == \
        [(p["index"], p["stimulus"]) for p in truth.presentations]
    heard = np.empty(len(samples), SPIKE_DTYPE)
    heard["time"], heard["channel"], heard["unit"] = back(spike_stamps), samples[:, 0], samples[:, 1]
    again = Recording(units=UNITS, spikes=heard, presentations=presentations, source="lsl")
    assert [r["counts"] for r in response_table(again, 0.05, 0.15)] == \
        [r["counts"] for r in response_table(truth, 0.05, 0.15)]


def test_a_session_directory_is_republished(tmp_path, stream_name):
    """The command reads a session and sends every spike and marker (fast, nobody listening)."""
    pool = generate_pool({"dot": 3}, 16, seed=0)
    writer = SessionWriter(tmp_path / "session", to_jsonable(Protocol.model_validate({"protocol": {"name": "x"}})),
                           {"rig": {"name": "lab"}, "recorded_units": [u.model_dump() for u in UNITS]}, pool)
    truth = make_recording()
    for p in truth.presentations:
        writer.log("markers", {**p, "stimulus": pool.ids[p["index"] % 3], "pool_index": p["index"] % 3,
                               "role": "chosen"})
    writer.spikes(truth.spikes["time"], truth.spikes["channel"], truth.spikes["unit"])
    writer.close()
    result = CliRunner().invoke(main, ["republish", str(tmp_path / "session"), "--speed", "1000", "--wait", "0",
                                       "--spikes", f"{stream_name}-s", "--markers", f"{stream_name}-m"])
    assert result.exit_code == 0, result.output
    assert f"sent {len(truth.spikes)} spikes and 24 markers" in result.output
