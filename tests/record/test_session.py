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


def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path, pool, wait_until):
    """A killed run keeps what was logged: the writer flushes every record by itself. Each one is
    read back through a separate handle (as after a kill) before the next is logged; nothing
    calls ``flush`` or ``close``."""
    writer = SessionWriter(tmp_path / "s", {}, {}, pool)
    for i in range(3):
        writer.log("responses", {"index": i, "counts": [i]})
        wait_until(lambda: len(read_session(tmp_path / "s").responses) == i + 1, f"response {i}")
        writer.spikes(np.array([0.1 * i]), np.array([1]), np.array([i]))
        wait_until(lambda: len(read_session(tmp_path / "s").spikes) == i + 1, f"spike {i}")
        writer.frames(np.array([0.5 * i]))
        wait_until(lambda: len(read_session(tmp_path / "s").frames) == i + 1, f"frame {i}")
    record = read_session(tmp_path / "s")
    assert record.responses == [{"index": i, "counts": [i]} for i in range(3)]
    assert record.spikes["unit"].tolist() == [0, 1, 2] and record.frames.tolist() == [0.0, 0.5, 1.0]
    assert record.summary is None
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
