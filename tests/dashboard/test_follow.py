"""The dashboard's state reader: its numbers are the session files', read as they are appended."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.dashboard import snapshot as snap
from closedloop.dashboard.follow import SessionFollower
from closedloop.dashboard.snapshot import snapshot
from closedloop.errors import ClosedLoopError
from closedloop.record import read_session
from tests.dashboard.conftest import PREDICTED, TOTAL


def test_snapshot_numbers_are_the_files(live_session):
    live_session.present(TOTAL)
    live_session.finish()
    follower = SessionFollower(live_session.path)
    assert follower.poll()
    s = snapshot(follower)
    record = read_session(live_session.path)

    assert s["status"] == "complete" and s["complete"]
    p = s["progress"]
    assert (p["presented"], p["total"], p["responses"], p["time_left_s"]) == (len(record.markers), TOTAL,
                                                                              len(record.responses), 0.0)
    onsets = np.array([m["onset"] for m in record.markers])
    assert p["rate_per_s"] == (len(onsets) - 1) / (onsets[-1] - onsets[0])
    t = s["timing"]
    assert t["deadline_misses"] == sum(e["kind"] == "deadline_miss" for e in record.events) == 1
    assert t["dropped_frames"] == sum(m["dropped_frames"] for m in record.markers) == 1
    assert t["decisions"] == len(record.selections)
    turnaround = [sel["turnaround_ms"] for sel in record.selections]
    assert t["turnaround_ms"]["latest"] == turnaround[-1] and t["turnaround_ms"]["median"] == np.median(turnaround[1:])

    for k, unit in enumerate(s["units"]):
        spec = record.rig["recorded_units"][k]
        times = np.sort(record.spikes["time"][(record.spikes["channel"] == spec["channel"])
                                              & (record.spikes["unit"] == spec["unit"])])
        assert unit["name"] == spec["name"] and unit["spikes"] == len(times)
        assert unit["mean_count"] == np.mean([r["counts"][k] for r in record.responses])
        # raster rows: each presentation's spikes relative to its onset
        for row in unit["raster"]["rows"]:
            onset = onsets[row["index"]]
            mine = times[(times >= onset - snap.BEFORE) & (times < onset + unit["raster"]["after_s"])] - onset
            assert np.allclose(row["t"], mine, atol=1e-4)
        # PSTH: every presentation's spikes are in (the last one's reach past the newest spike)
        after = unit["raster"]["after_s"]
        covered = onsets[onsets + after <= record.spikes["time"].max()]
        assert unit["psth"]["presentations"] == len(covered) == TOTAL - 1
        relative = np.concatenate([times[(times >= o - snap.BEFORE) & (times < o + after)] - o for o in covered])
        expected = np.histogram(relative, np.arange(-snap.BEFORE, after + snap.BIN / 2, snap.BIN))[0]
        assert np.allclose(np.array(unit["psth"]["rate_hz"]) * len(covered) * snap.BIN, expected)
        # every response paired with the prediction of the decision that chose its image
        assert unit["predicted_observed"] == [[PREDICTED[i % 2][k], r["counts"][k]]
                                              for i, r in enumerate(record.responses)]
        assert unit["r"] == [[a["responses"], a["r_observed"][k], a["r_true"][k]] for a in record.accuracy]

    latest = record.selections[-1]
    newest = [im for im in s["chosen"] if im["decision"] == len(record.selections) - 1]
    assert [im["pool_index"] for im in newest] == latest["chosen"]
    assert [im["predicted"] for im in newest] == PREDICTED
    shown = {r["pool_index"]: r["counts"] for r in record.responses[-2:]}
    assert [im["observed"] for im in newest] == [shown[i] for i in latest["chosen"]]
    posterior = s["posterior"]
    assert posterior["responses"] == [sel["responses"] for sel in record.selections]
    assert posterior["hypotheses"]["tuned"] == [sel["state"]["posterior"]["tuned"] for sel in record.selections]
    assert s["state"] == latest["state"]
    assert s["stream"]["pending_windows"] == 0 and s["stream"]["newest_onset"] == onsets[-1]
    assert s["stream"]["spikes_behind_s"] == onsets[-1] - record.spikes["time"].max()


def test_older_sessions_without_predictions(small_session):
    """A session from before decisions recorded predictions: no pairs, images without predictions."""
    follower = SessionFollower(small_session)
    follower.poll()
    s = snapshot(follower)
    assert all(unit["predicted_observed"] == [] for unit in s["units"])
    assert [im["predicted"] for im in s["chosen"]] == [None, None] and s["posterior"] is None


def test_follows_appended_records(live_session):
    """Each poll reads only what was appended: the counts grow with the session, the progress estimates
    the time left from the presentation rate, and a poll with nothing new reports no change."""
    follower = SessionFollower(live_session.path)
    assert follower.poll() and snapshot(follower)["progress"]["presented"] == 0
    live_session.present(4)
    assert follower.poll()
    first = snapshot(follower)
    assert first["status"] == "running" and not first["complete"]
    assert (first["progress"]["presented"], first["progress"]["responses"]) == (4, 4)
    assert first["progress"]["time_left_s"] == (TOTAL - 4) / first["progress"]["rate_per_s"]
    assert not follower.poll()
    live_session.present(4)
    assert follower.poll()
    assert snapshot(follower)["progress"]["presented"] == 8 and len(follower.markers) == 8
    assert [m["index"] for m in follower.markers] == list(range(8))
    assert follower.spikes[0].size == 16 and np.all(np.diff(follower.spikes[0]) >= 0)


def test_partial_last_line_and_record_wait(small_session):
    """A line or spike record still being written (no newline yet, part of a record) is read once complete."""
    follower = SessionFollower(small_session)
    follower.poll()
    markers, spikes = len(follower.markers), follower.spikes[0].size
    line = (b'{"index": 8, "stimulus": "x", "pool_index": 0, "role": "chosen", "onset": 103.0, '
            b'"offset": 103.1}\n')
    record = np.array([(103.06, 1, 1)], dtype=follower._spikes.dtype).tobytes()
    with open(small_session / "markers.jsonl", "ab") as f, open(small_session / "spikes.bin", "ab") as g:
        f.write(line[:30])
        g.write(record[:7])
        f.flush()
        g.flush()
        assert not follower.poll()
        assert (len(follower.markers), follower.spikes[0].size) == (markers, spikes)
        f.write(line[30:])
        g.write(record[7:])
    assert follower.poll()
    assert len(follower.markers) == markers + 1 and follower.markers[-1]["onset"] == 103.0
    assert follower.spikes[0].size == spikes + 1 and follower.newest_spike == 103.06


def test_waits_for_a_session_to_appear(tmp_path, live_session):
    """Before its setup is written a session is 'waiting'; a bad record is a one-line error naming it."""
    follower = SessionFollower(tmp_path / "later")
    assert not follower.poll() and snapshot(follower) == {"session": "later", "status": "waiting", "complete": False}
    live_session.present(1)
    with open(live_session.path / "responses.jsonl", "a") as f:
        f.write('{"index": "one"}\n')
    follower = SessionFollower(live_session.path)
    with pytest.raises(ClosedLoopError) as error:
        follower.poll()
    assert str(error.value).startswith(f"session file {live_session.path / 'responses.jsonl'} line 2: field 'index'")
