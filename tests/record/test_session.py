import json

import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.record import SessionWriter, read_session
from closedloop.stimuli import generate_pool


@pytest.fixture
def pool():
    return generate_pool({"dot": 5, "grating": 5}, 32, seed=0)


def test_everything_written_reads_back(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", {"protocol": {"name": "p"}}, {"rig": {"name": "r"}}, pool)
    writer.log("markers", {"index": 0, "stimulus": pool.ids[0]})
    writer.log("responses", {"index": 0, "counts": [1, 2]})
    writer.log("selections", {"chosen": [3]})
    writer.log("accuracy", {"r_observed": [0.5]})
    writer.log("events", {"kind": "deadline_miss"})
    writer.spikes(np.array([1.5, 2.5]), np.array([1, 2]), np.array([1, 1]))
    writer.close({"presentations": 1})
    record = read_session(tmp_path / "s")
    assert record.protocol == {"protocol": {"name": "p"}} and record.rig == {"rig": {"name": "r"}}
    assert record.pool.ids == pool.ids
    assert record.markers == [{"index": 0, "stimulus": pool.ids[0]}]
    assert record.responses[0]["counts"] == [1, 2]
    assert record.selections == [{"chosen": [3]}] and record.events == [{"kind": "deadline_miss"}]
    assert record.spikes["time"].tolist() == [1.5, 2.5] and record.spikes["channel"].tolist() == [1, 2]
    assert record.summary == {"presentations": 1}


def test_records_are_on_disk_before_close(tmp_path, pool):
    """A killed run keeps what was logged: each record is flushed as it is written."""
    writer = SessionWriter(tmp_path / "s", {}, {}, pool)
    writer.log("responses", {"index": 0, "counts": [4]})
    writer.spikes(np.array([0.1]), np.array([1]), np.array([1]))
    writer.flush()
    record = read_session(tmp_path / "s")  # read while the writer is still open
    assert record.responses == [{"index": 0, "counts": [4]}]
    assert len(record.spikes) == 1 and record.summary is None
    writer.close()


def test_a_line_cut_by_a_kill_is_ignored(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", {}, {}, pool)
    writer.close()
    with open(tmp_path / "s" / "markers.jsonl", "a") as f:
        f.write(json.dumps({"index": 0}) + "\n" + '{"index": 1, "stim')
    with open(tmp_path / "s" / "spikes.bin", "ab") as f:
        f.write(b"\x00" * 20)  # one whole record and a partial one
    record = read_session(tmp_path / "s")
    assert record.markers == [{"index": 0}]
    assert len(record.spikes) == 1


def test_missing_and_corrupt_files_are_named(tmp_path, pool):
    writer = SessionWriter(tmp_path / "s", {}, {}, pool)
    writer.close()
    (tmp_path / "s" / "events.jsonl").write_text("{not json}\n")
    with pytest.raises(ClosedLoopError, match="events.jsonl: corrupt at line 1"):
        read_session(tmp_path / "s")
    (tmp_path / "s" / "rig.json").unlink()
    with pytest.raises(ClosedLoopError, match="missing rig.json"):
        read_session(tmp_path / "s")
    with pytest.raises(ClosedLoopError, match="not a directory"):
        read_session(tmp_path / "nothing")
