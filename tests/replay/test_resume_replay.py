"""Replay of a resumed session: each model worker lifetime made again from the one directory."""

from __future__ import annotations

import pytest

from closedloop.config import load_protocol, load_rig
from closedloop.session import run_session
from closedloop.record import read_session
from closedloop.replay.session_replay import replay
from closedloop.replay.sources import open_source


def test_a_resumed_session_replays_both_workers(tmp_path, sim_files, stream_name):
    """A session of 36 presentations stopped by Ctrl-C after the 20th (its open windows drained,
    its summary 'interrupted') and resumed (``closedloop resume``): the second worker learns the
    recorded responses first, then goes on; both are made again decision by decision."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    sim_files.protocol(tmp_path / "protocol.toml", 36)
    text = (tmp_path / "protocol.toml").read_text()
    for old, new in (("contour = 100, dot = 80, grating = 80, texture = 80", "contour = 40, dot = 30, grating = 30"),
                     ("members = 5\ninput_px = 32\nchannels = [8, 8, 8, 8, 8]\nsteps_per_update = 30",
                      "members = 3\ninput_px = 16\nchannels = [4, 4, 4, 4, 4]\nsteps_per_update = 8"),
                     ("images = 60\nevery = 4", "images = 20\nevery = 4"), ("warmup = 20", "warmup = 8")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "protocol.toml").write_text(text)
    rig, session = load_rig(tmp_path / "rig.toml"), tmp_path / "session"

    def interrupt_after_20(progress) -> None:
        if progress.presented == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_session(load_protocol(tmp_path / "protocol.toml"), rig, session, on_progress=interrupt_after_20)
    assert read_session(session).summary["status"] == "interrupted"
    run_session(load_protocol(session / "protocol.json"), rig, session, resume=True)

    record = read_session(session)
    first = [k for k, s in enumerate(record.selections) if s["received"] == 0]
    assert len(first) == 2 and [e["kind"] for e in record.events].count("resumed") == 1
    assert record.selections[-1]["received"] == 36  # the new worker learned the 20 recorded responses too
    report = replay(open_source(session), tmp_path / "out")
    assert report["reproduced"] == report["decisions"] == len(record.selections)
    assert report["responses"] == 36
