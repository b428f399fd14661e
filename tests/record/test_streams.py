"""Recorded LSL streams (``streams/<key>.json`` + ``.bin``): written by the real SessionWriter as chunks
arrive, read back by read_session, a kill's partial row dropped (and cut off on resume), a bad header
refused in one line; end to end, a simulated session killed with SIGKILL keeps its gaze samples."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import uuid

import numpy as np
import psutil
import pylsl
import pytest

from closedloop.config import load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.record import SessionWriter, read_session
from closedloop.record.naming import archive_id
from closedloop.record.schema import STREAMS
from closedloop.session import Session
from closedloop.simulate.generate import protocol_text, rig_text

GAZE = {"key": "gaze", "role": "gaze", "name": "eye", "type": "Gaze", "source_id": "tracker-1", "hostname": "pc",
        "channel_count": 2, "nominal_srate": 500.0, "labels": ["x", "y"], "units": ["degrees", "degrees"],
        "types": ["", ""]}
ROW = 8 * 3  # bytes: time, x, y
KILL_AFTER = 12  # presentations on disk before the run is killed
ORPHAN_DEADLINE = 5.0  # s for a killed run's children to end


def _chunk(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` gaze samples from sample ``start``: times 100 s + 2 ms per sample, values distinct per sample."""
    k = np.arange(start, start + n)
    return 100.0 + 0.002 * k, np.column_stack([k * 0.1, -k * 0.2]).astype(np.float32)


@pytest.fixture
def with_gaze(write_small_session, tmp_path):
    """The small session reopened and given 30 gaze samples in three chunks (float32, as LSL hands them)."""
    path = write_small_session(tmp_path / "s")
    writer = SessionWriter.reopen(path)
    writer.stream_header("gaze", GAZE)
    for start in (0, 10, 20):
        writer.samples("gaze", *_chunk(start, 10))
    writer.close()
    return path


def test_samples_round_trip_with_their_header(with_gaze):
    stream = read_session(with_gaze).streams["gaze"]
    times, values = _chunk(0, 30)
    assert stream.header == GAZE and (stream.labels, stream.units) == (["x", "y"], ["degrees", "degrees"])
    assert (stream.role, stream.name, stream.rate) == ("gaze", "eye", 500.0)
    assert stream.times.dtype == np.float64 and stream.values.shape == (30, 2)
    np.testing.assert_array_equal(stream.times, times)
    np.testing.assert_array_equal(stream.values, values.astype(np.float64))


def test_samples_are_on_disk_before_close(write_small_session, tmp_path, wait_until):
    """The writer thread flushes each chunk by itself (a kill keeps it): read through another handle."""
    writer = SessionWriter.reopen(write_small_session(tmp_path / "s"))
    writer.stream_header("gaze", GAZE)
    assert json.loads((tmp_path / "s" / STREAMS / "gaze.json").read_text()) == GAZE  # before any sample
    binary = tmp_path / "s" / STREAMS / "gaze.bin"
    for n in (1, 2):
        writer.samples("gaze", *_chunk(10 * n, 10))
        wait_until(lambda: binary.stat().st_size == n * 10 * ROW, f"chunk {n} on disk")
    assert len(read_session(tmp_path / "s").streams["gaze"].times) == 20
    writer.close()


def test_a_session_without_streams_reads_as_none(small_session):
    assert not (small_session / STREAMS).exists() and read_session(small_session).streams == {}


def test_a_partial_last_row_is_dropped_and_cut_off_on_resume(with_gaze, caplog):
    binary = with_gaze / STREAMS / "gaze.bin"
    with open(binary, "ab") as f:
        f.write(b"\x00" * (ROW - 5))  # a kill mid-row
    with caplog.at_level(logging.WARNING, logger="closedloop.record.session"):
        assert len(read_session(with_gaze).streams["gaze"].times) == 30
    assert any("gaze.bin: last record cut short" in r.getMessage() for r in caplog.records)
    writer = SessionWriter.reopen(with_gaze)
    assert binary.stat().st_size == 30 * ROW
    writer.stream_header("gaze", {**GAZE, "hostname": "another"})  # resumed: the first header stays
    writer.samples("gaze", *_chunk(30, 5))
    writer.close()
    stream = read_session(with_gaze).streams["gaze"]
    np.testing.assert_array_equal(stream.times, _chunk(0, 35)[0])
    assert stream.header["hostname"] == "pc"


def test_resuming_with_another_channel_count_is_refused(with_gaze):
    writer = SessionWriter.reopen(with_gaze)
    with pytest.raises(ClosedLoopError, match=r"gaze\.json: stream 'eye' now has 3 channels; it was recorded "
                                              r"with 2$"):
        writer.stream_header("gaze", {**GAZE, "channel_count": 3, "labels": ["x", "y", "p"],
                                      "units": [""] * 3, "types": [""] * 3})
    writer.close()


@pytest.mark.parametrize("damage, named, why", [
    (lambda folder: (folder / "gaze.json").write_text("{not json"), "gaze.json", "not JSON"),
    (lambda folder: (folder / "gaze.json").write_text(json.dumps({**GAZE, "labels": ["x"]})), "gaze.json",
     r"field 'labels': Value error, 1 entries for 2 channels"),
    (lambda folder: (folder / "gaze.json").write_text(json.dumps({**GAZE, "key": "eye"})), "gaze.json",
     "field 'key': 'eye' is not the file's 'gaze'"),
    (lambda folder: (folder / "gaze.json").unlink(), "gaze.bin", "no header gaze.json beside it"),
    (lambda folder: (folder / "gaze.bin").write_bytes(np.array([np.nan, 1.0, 2.0]).tobytes()), "gaze.bin",
     "record 0: time nan is not finite"),
])
def test_a_bad_stream_is_refused_in_one_line_naming_the_file(with_gaze, damage, named, why):
    damage(with_gaze / STREAMS)
    with pytest.raises(ClosedLoopError) as raised:
        read_session(with_gaze)
    line = str(raised.value)
    assert line.startswith(f"session file {with_gaze / STREAMS / named}") and why in line and "\n" not in line


def test_the_writer_refuses_a_bad_header_and_a_key_twice(write_small_session, tmp_path):
    writer = SessionWriter.reopen(write_small_session(tmp_path / "s"))
    with pytest.raises(ValueError, match="field 'channel_count'"):
        writer.stream_header("gaze", {**GAZE, "channel_count": 0})
    writer.stream_header("gaze", GAZE)
    with pytest.raises(ClosedLoopError, match="two streams are recorded as 'gaze' \\(stream 'other'\\)"):
        writer.stream_header("gaze", {**GAZE, "name": "other"})
    writer.close()


def _covered(sessions) -> float | None:
    """The onset of presentation ``KILL_AFTER - 1`` once the gaze rows on disk reach it, else None."""
    found = list(sessions.glob(f"*/{STREAMS}/gaze.bin"))
    lines = found[0].parent.parent.joinpath("markers.jsonl").read_bytes().split(b"\n")[:-1] if found else []
    if len(lines) < KILL_AFTER:
        return None
    onset = json.loads(lines[KILL_AFTER - 1])["onset"]
    raw = found[0].read_bytes()
    rows = np.frombuffer(raw[:len(raw) - len(raw) % ROW], "<f8").reshape(-1, 3)
    return onset if len(rows) and rows[-1, 0] >= onset else None


def test_a_run_killed_with_sigkill_keeps_its_gaze_and_photodiode_samples(tmp_path, processes, wait_until):
    """``closedloop run`` on a simulated rig with an eye and a photodiode, killed with SIGKILL once the
    gaze rows on disk reach the onset of presentation ``KILL_AFTER``: afterwards the record holds both
    streams, whole rows only (sample times rising from before the first onset past that one; the
    photodiode's up to the first onset at least), beside the markers."""
    (tmp_path / "rig.toml").write_text(rig_text(f"cltest-streams-{uuid.uuid4().hex[:8]}", gaze=True, photodiode=True))
    (tmp_path / "protocol.toml").write_text(protocol_text(400))
    sessions = tmp_path / "sessions"
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "closedloop", "run", tmp_path / "protocol.toml", "--rig",
                                tmp_path / "rig.toml", "--out", sessions], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _covered(sessions) is not None or run.poll() is not None,
                   f"gaze on disk past presentation {KILL_AFTER}'s onset", timeout=300)
        assert run.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        children = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert not processes.left_after(children, ORPHAN_DEADLINE)
    (session,) = sessions.iterdir()
    record = read_session(session)
    assert record.summary is None  # killed: nothing closed it
    gaze = record.streams["gaze"]
    assert gaze.role == "gaze" and gaze.values.shape == (len(gaze.times), 2) and np.all(np.diff(gaze.times) > 0)
    assert (session / STREAMS / "gaze.bin").stat().st_size == len(gaze.times) * ROW  # no partial row
    onsets = [m["onset"] for m in record.markers[:KILL_AFTER]]
    assert len(record.markers) >= KILL_AFTER and gaze.times[0] <= onsets[0] and gaze.times[-1] >= onsets[-1]
    light = record.streams["photodiode"]
    assert light.role == "photodiode" and np.all(np.diff(light.times) > 0)
    assert (session / STREAMS / "photodiode.bin").stat().st_size == light.values.size * 8 + len(light.times) * 8
    assert light.times[0] <= onsets[0] <= light.times[-1] and light.values.max() > light.values.min()  # it saw a flash


def test_a_rig_record_stream_is_recorded_in_a_session(tmp_path, stream_name, wait_until):
    """A 2-channel "Reward" outlet named in the rig's ``[[record]]``: a sample pushed after each presentation
    (and pulled before the run goes on) is in ``streams/<its file-safe name>.bin`` with the outlet's labels."""
    reward = f"{stream_name}.Reward"
    info = pylsl.StreamInfo(reward, "Reward", 2, pylsl.IRREGULAR_RATE, pylsl.cf_double64, f"{reward}-pump")
    channels = info.desc().append_child("channels")
    for label, unit in (("volume", "ml"), ("valve", "")):
        channels.append_child("channel").append_child_value("label", label).append_child_value("unit", unit)
    outlet = pylsl.StreamOutlet(info)
    (tmp_path / "rig.toml").write_text(rig_text(stream_name) + f'[[record]]\nname = "{reward}"\ntype = "Reward"\n')
    (tmp_path / "protocol.toml").write_text(protocol_text(8))
    pushed: list[tuple[float, list[float]]] = []

    def push(progress) -> None:
        if progress.finished or len(pushed) == progress.presented:
            return
        pushed.append((pylsl.local_clock(), [0.1 * progress.presented, 1.0]))
        outlet.push_sample(pushed[-1][1], pushed[-1][0])
        wait_until(lambda: session.recorded[0].samples == len(pushed), f"reward sample {len(pushed)} pulled")

    session = Session(load_protocol(tmp_path / "protocol.toml"), load_rig(tmp_path / "rig.toml"),
                      tmp_path / "session", on_progress=push)
    with session:
        summary = session.run()
    key = archive_id(reward)  # the name made file-safe ("." is not)
    streams = read_session(tmp_path / "session").streams
    assert list(streams) == [key] and key.endswith("-Reward")
    assert summary["stream_samples"] == {key: len(pushed)} and len(pushed) == 8
    stream = streams[key]
    assert (stream.role, stream.name, stream.labels, stream.units) == ("record", reward, ["volume", "valve"],
                                                                      ["ml", ""])
    np.testing.assert_array_equal(stream.values, [v for _, v in pushed])
    np.testing.assert_allclose(stream.times, [t for t, _ in pushed], atol=1e-3)  # one host: offset about 0
