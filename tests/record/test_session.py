import json
import logging
import os

import numpy as np
import pytest

from closedloop.config import Protocol, to_jsonable
from closedloop.errors import ClosedLoopError
from closedloop.record import SessionWriter, read_session
from closedloop.record.atomic import write_atomic
from closedloop.record.manifest import sha256
from closedloop.stimuli import generate_pool

PROTOCOL = to_jsonable(Protocol.model_validate({"protocol": {"name": "p"}}))
RIG = {"rig": {"name": "r"}, "recorded_units": [{"name": "a", "channel": 1, "unit": 1},
                                                 {"name": "b", "channel": 2, "unit": 1}]}


@pytest.fixture
def pool():
    return generate_pool({"dot": 5, "grating": 5}, 32, seed=0)


def marker(pool, i: int) -> dict:
    return {"index": i, "stimulus": pool.ids[i], "pool_index": i, "role": "chosen", "onset": 1.0 + i,
            "offset": 1.1 + i}


def response(pool, i: int, counts: list[int]) -> dict:
    return {"index": i, "onset": 1.0 + i, "counts": counts, "pool_index": i, "role": "chosen"}


def test_everything_written_reads_back(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    writer.log("markers", marker(pool, 0))
    writer.log("responses", response(pool, 0, [1, 2]))
    writer.log("selections", {"chosen": [3]})
    writer.log("accuracy", {"responses": 1, "r_observed": [0.5]})
    writer.log("events", {"kind": "deadline_miss", "index": 0})
    writer.spikes(np.array([1.5, 2.5]), np.array([1, 2]), np.array([1, 1]))
    writer.close({"presentations": 1})
    record = read_session(tmp_path / "s")
    assert record.protocol == PROTOCOL and record.rig == RIG
    assert record.pool.ids == pool.ids
    assert record.markers == [marker(pool, 0)]
    assert record.responses[0]["counts"] == [1, 2]
    assert record.selections == [{"chosen": [3]}] and record.events == [{"kind": "deadline_miss", "index": 0}]
    assert record.spikes["time"].tolist() == [1.5, 2.5] and record.spikes["channel"].tolist() == [1, 2]
    assert record.summary == {"presentations": 1}


def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path, pool, wait_until):
    """A killed run keeps what was logged: the writer flushes every record by itself. Each one is
    read back through a separate handle (as after a kill) before the next is logged; nothing
    calls ``flush`` or ``close``."""
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    for i in range(3):
        writer.log("markers", marker(pool, i))
        writer.log("responses", response(pool, i, [i, 0]))
        wait_until(lambda: len(read_session(tmp_path / "s").responses) == i + 1, f"response {i}")
        writer.spikes(np.array([0.1 * i]), np.array([1]), np.array([i]))
        wait_until(lambda: len(read_session(tmp_path / "s").spikes) == i + 1, f"spike {i}")
        writer.frames(np.array([0.5 * i]))
        wait_until(lambda: len(read_session(tmp_path / "s").frames) == i + 1, f"frame {i}")
    record = read_session(tmp_path / "s")
    assert record.responses == [response(pool, i, [i, 0]) for i in range(3)]
    assert record.spikes["unit"].tolist() == [0, 1, 2] and record.frames.tolist() == [0.0, 0.5, 1.0]
    assert record.summary is None
    writer.close()


def test_a_record_cut_by_a_kill_is_dropped_with_a_warning(tmp_path, pool, caplog):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    writer.close()
    with open(tmp_path / "s" / "markers.jsonl", "a") as f:
        f.write(json.dumps(marker(pool, 0)) + "\n" + '{"index": 1, "stim')
    with open(tmp_path / "s" / "spikes.bin", "ab") as f:
        f.write(b"\x00" * 20)  # one whole record and a partial one
    with caplog.at_level(logging.WARNING, logger="closedloop.record.session"):
        record = read_session(tmp_path / "s")
    assert record.markers == [marker(pool, 0)]
    assert len(record.spikes) == 1
    warned = [r.getMessage() for r in caplog.records]
    assert any("markers.jsonl line 2: cut short by a killed run" in w for w in warned)
    assert any("spikes.bin: last record cut short by a killed run (4 of 16 bytes)" in w for w in warned)


def test_a_cut_last_line_of_invalid_bytes_is_still_only_a_cut_line(tmp_path, pool, caplog):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    writer.log("markers", marker(pool, 0))
    writer.close()
    with open(tmp_path / "s" / "markers.jsonl", "ab") as f:
        f.write(b'{"index": 1, "stimulus": "\xff\xfe')
    assert read_session(tmp_path / "s").markers == [marker(pool, 0)]


def test_missing_and_corrupt_files_are_named(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    writer.close()
    (tmp_path / "s" / "events.jsonl").write_text("{not json}\n")
    with pytest.raises(ClosedLoopError, match=r"events.jsonl line 1: not JSON \(Expecting property name"):
        read_session(tmp_path / "s")
    (tmp_path / "s" / "rig.json").unlink()
    with pytest.raises(ClosedLoopError, match="missing rig.json"):
        read_session(tmp_path / "s")
    with pytest.raises(ClosedLoopError, match="not a directory"):
        read_session(tmp_path / "nothing")


def test_the_writer_refuses_a_record_that_breaks_its_schema(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    with pytest.raises(ValueError, match=r"markers.jsonl record: field 'index': Input should be greater"):
        writer.log("markers", {**marker(pool, 0), "index": -1})
    with pytest.raises(ValueError, match=r"responses.jsonl record: field 'counts\[0\]': Input should be a valid "
                                         r"integer \(got 1.5\)"):
        writer.log("responses", response(pool, 0, [1.5, 2]))
    with pytest.raises(ValueError, match=r"markers.jsonl record: field 'onset': Input should be a finite number"):
        writer.log("markers", {**marker(pool, 0), "onset": float("nan")})
    with pytest.raises(ValueError, match="unknown log 'notes'"):
        writer.log("notes", {})
    writer.close()
    assert all(not (tmp_path / "s" / f"{n}.jsonl").read_text() for n in ("markers", "responses"))
    with pytest.raises(ValueError, match="rig.json record: field 'recorded_units'"):
        SessionWriter(tmp_path / "t", PROTOCOL, {"rig": {"name": "r"}, "recorded_units": {"a": 1}}, pool)


@pytest.mark.parametrize("where", ["folder", "file", "under a file"])
def test_a_new_session_refuses_an_existing_path_in_one_line(tmp_path, pool, where):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("x")
    (tmp_path / "afile").write_text("keep me")
    path = {"folder": tmp_path / "taken", "file": tmp_path / "afile", "under a file": tmp_path / "afile" / "s"}[where]
    with pytest.raises(ClosedLoopError) as info:
        SessionWriter(path, PROTOCOL, RIG, pool)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"session {path}: ")
    assert {"folder": "already exists (a folder)", "file": "already exists (a file)",
            "under a file": f"cannot create ({tmp_path / 'afile'} is a file)"}[where] in message
    assert (tmp_path / "afile").read_text() == "keep me" and os.listdir(tmp_path / "taken") == ["keep"]


def test_creation_writes_whole_files_and_a_manifest(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    writer.close({"status": "complete"})
    names = sorted(os.listdir(tmp_path / "s"))
    assert not [n for n in names if "partial" in n or n.startswith(".")]  # no temporary file left
    manifest = json.loads((tmp_path / "s" / "session.json").read_text())
    assert len(manifest["id"]) == 32
    assert manifest["sha256"] == {n: sha256(tmp_path / "s" / n) for n in ("protocol.json", "rig.json", "stimuli.npz")}
    assert read_session(tmp_path / "s").manifest == manifest


def test_the_summary_is_replaced_whole_or_not_at_all(tmp_path, pool, monkeypatch):
    writer = SessionWriter(tmp_path / "s", PROTOCOL, RIG, pool)
    writer.close({"status": "aborted", "presentations": 3})
    summary = tmp_path / "s" / "summary.json"
    before = summary.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("closedloop.record.atomic.os.replace", crash)
    writer = SessionWriter.reopen(tmp_path / "s")
    summary.write_bytes(before)  # (reopen removed it)
    with pytest.raises(OSError, match="No space left"):
        writer.close({"status": "complete", "presentations": 8, "long": "x" * 100_000})
    assert summary.read_bytes() == before  # the old summary, whole
    assert not [n for n in os.listdir(tmp_path / "s") if "partial" in n]
    monkeypatch.undo()
    write_atomic(summary, json.dumps({"status": "complete"}))
    assert json.loads(summary.read_text()) == {"status": "complete"}
    assert not [n for n in os.listdir(tmp_path / "s") if "partial" in n]
