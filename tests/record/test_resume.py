"""check_resumable: where a killed session goes on, and the sessions it must not append to."""

from __future__ import annotations

import dataclasses
import json

import pytest

from closedloop.errors import ClosedLoopError
from closedloop.record import ResumePoint, check_resumable, read_session
from closedloop.stimuli import StimulusPool

PRESENTATIONS = 8  # in the small session (conftest), two per trial, every fourth held out


def refused(record, expected: str) -> None:
    with pytest.raises(ClosedLoopError) as info:
        check_resumable(record)
    message = str(info.value)
    assert expected in message and "\n" not in message and str(record.path) in message, message


def test_a_killed_session_goes_on_after_its_last_marker_and_requeues_what_was_in_flight(tmp_path,
                                                                                         write_small_session):
    """Killed with responses 5, 6 and 7 still open: 7 is held out (it comes round again anyway),
    5 and 6 (pool images 1 and 0) are shown again."""
    session = write_small_session(tmp_path / "s", answered=5, complete=False)
    record = read_session(session)
    assert [(m["pool_index"], m["role"]) for m in record.markers[5:]] == [(1, "chosen"), (0, "chosen"),
                                                                           (5, "heldout")]
    assert check_resumable(record) == ResumePoint(next_index=PRESENTATIONS, next_trial=PRESENTATIONS // 2,
                                                  in_flight=[1, 0], unanswered=[5, 6, 7], lifetime=1)


def test_an_earlier_resume_and_a_trial_without_markers_count(tmp_path, write_small_session):
    session = write_small_session(tmp_path / "s", complete=False)
    with open(session / "events.jsonl", "a") as f:
        f.write(json.dumps({"kind": "resumed", "from_presentation": 4, "time": 1.0, "unanswered": []}) + "\n")
        f.write(json.dumps({"kind": "trial", "trial": 9, "end": "no_fixation", "shown": [], "time": 2.0}) + "\n")
    point = check_resumable(read_session(session))
    assert (point.next_index, point.next_trial, point.in_flight, point.lifetime) == (PRESENTATIONS, 10, [], 2)


def test_a_complete_session_is_refused(small_session):
    refused(read_session(small_session), "complete (summary.json)")


def test_a_failed_run_resumes(small_session):
    (small_session / "summary.json").write_text(json.dumps({"status": "aborted"}))
    assert check_resumable(read_session(small_session)).next_index == PRESENTATIONS


@pytest.mark.parametrize("name, change", [
    ("protocol.json", lambda text: text.replace('"presentations": 8', '"presentations": 80')),
    ("rig.json", lambda text: text.replace('"name": "b"', '"name": "c"')),
])
def test_a_session_whose_setup_changed_is_refused(small_session, name, change):
    (small_session / "summary.json").unlink()
    path = small_session / name
    path.write_text(change(path.read_text()))
    refused(read_session(small_session), f"{name} changed since the session was created")


def test_a_session_whose_pool_changed_is_refused(small_session):
    """The same images (the records still agree with the pool), other parameters."""
    (small_session / "summary.json").unlink()
    pool = StimulusPool.load(small_session / "stimuli.npz")
    StimulusPool(pool.images, pool.families, [{"changed": True}] * len(pool)).save(small_session / "stimuli.npz")
    refused(read_session(small_session), "stimuli.npz changed since the session was created")


def test_a_session_from_before_the_manifest_is_checked_instead(small_session):
    (small_session / "summary.json").unlink()
    (small_session / "session.json").unlink()
    assert check_resumable(read_session(small_session)).next_index == PRESENTATIONS
    (small_session / "protocol.json").write_text("[]")
    with pytest.raises(ClosedLoopError, match="protocol.json: not a JSON object"):
        read_session(small_session)


def test_responses_without_markers_are_refused(small_session):
    """An emptied markers file: resuming would start again at 0 and answer presentations twice."""
    (small_session / "summary.json").unlink()
    record = read_session(small_session)
    refused(dataclasses.replace(record, markers=[]), "responses.jsonl line 1: field 'index': presentation 0 has "
                                                     "no marker")
