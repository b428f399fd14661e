"""Replay of a real simulated session: every online decision made again, from the session directory.

The session runs live (real LSL, the simulator process, the model worker process refreshing its
learner and fine-tuning its core in a background thread), so which responses were batched and when
refreshes came in depend on timing; the replay reads both from the log, reads the fine-tuned cores
from the session's ``cores/`` and must make every decision again.
"""

from __future__ import annotations

import json
import shutil
import uuid

import neo
import numpy as np
import pytest
import quantities as pq
from click.testing import CliRunner

from closedloop.cli import main
from closedloop.config import load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.session import run_session
from closedloop.record import read_session
from closedloop.replay.session_replay import Cadence, align, replay
from closedloop.replay.sources import open_source

PRESENTATIONS = 40


@pytest.fixture(scope="module")
def session(tmp_path_factory, sim_files):
    """A short live session chosen by model disagreement; a small pool and model, refreshed every 8
    responses, its core fine-tuned at each refresh."""
    tmp = tmp_path_factory.mktemp("replay")
    sim_files.rig(tmp / "rig.toml", f"cltest-replay-{uuid.uuid4().hex[:8]}")
    sim_files.protocol(tmp / "protocol.toml", PRESENTATIONS)
    text = (tmp / "protocol.toml").read_text()
    for old, new in (('strategy = "random"', 'strategy = "disagreement"'), ("warmup = 20", "warmup = 12"),
                     ("contour = 100, dot = 80, grating = 80, texture = 80", "contour = 40, dot = 30, grating = 30"),
                     ("members = 5\ninput_px = 32\nchannels = [8, 8, 8, 8, 8]\nsteps_per_update = 30",
                      "members = 3\ninput_px = 16\nchannels = [4, 4, 4, 4, 4]\nsteps_per_update = 4\n"
                      "batch_size = 8\nrefresh_every = 8\nfinetune_every = 8"),
                     ("images = 60\nevery = 4", "images = 20\nevery = 4")):
        assert old in text
        text = text.replace(old, new)
    (tmp / "protocol.toml").write_text(text)
    run_session(load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session")
    return tmp / "session"


def test_every_decision_is_made_again(session, tmp_path):
    record = read_session(session)
    assert record.selections[-1]["core_version"] >= 2  # refreshes came in live, at times of their own
    assert any(s["strategy"] == "disagreement" for s in record.selections)  # the model chose
    comparisons = [e for e in record.events if e["kind"] == "core_comparison"]
    assert comparisons  # a fine-tuned core was judged (and kept or not) at a swap...
    assert {f"finetune-{c['responses']:06d}.pt" for c in comparisons} <= \
        {p.name for p in (session / "cores").iterdir()}  # ...and kept in the session, read back by the replay
    report = replay(open_source(session), tmp_path / "out")
    assert report["pacing"] == "recorded"
    assert report["reproduced"] == report["decisions"] == report["logged_decisions"] == len(record.selections)
    assert report["first_divergence"] is None
    accuracy = report["accuracy_reports"]
    assert accuracy["equal"] == accuracy["compared"] == accuracy["logged"] == len(record.accuracy) > 0
    assert report["responses"] == PRESENTATIONS and report["notes"] == []
    decisions = [json.loads(line) for line in (tmp_path / "out" / "decisions.jsonl").read_text().splitlines()]
    assert [d["chosen"] for d in decisions] == [s["chosen"] for s in record.selections]
    assert json.loads((tmp_path / "out" / "replay.json").read_text()) == report


def test_another_seed_makes_other_decisions(session, tmp_path):
    """The check has teeth: other random streams give other choices, and the replay says so."""
    report = replay(open_source(session), tmp_path / "out", seed=12345)
    assert report["reproduced"] < report["logged_decisions"]
    assert report["first_divergence"] == 0  # the first (random warm-up) choice already differs


def test_a_killed_session_replays_up_to_where_it_ends(session, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(session, cut)
    (cut / "summary.json").unlink()
    responses = (cut / "responses.jsonl").read_text().splitlines(keepends=True)
    (cut / "responses.jsonl").write_text("".join(responses[:20]) + responses[20][:20])  # a line cut short
    spikes = (cut / "spikes.bin").read_bytes()
    (cut / "spikes.bin").write_bytes(spikes[:len(spikes) - 7])  # a record cut short
    report = replay(open_source(cut), tmp_path / "out")
    record = read_session(session)
    kept = [s for s in record.selections if s["received"] <= 20]  # (all 20 kept responses were sent)
    assert report["decisions"] == report["reproduced"] == len(kept) < len(record.selections)
    assert any("cut short" in note for note in report["notes"])


def test_a_recording_with_a_stimulus_log_replays_at_a_cadence(session, tmp_path):
    """The session's spikes as a NIX file (neo) and its markers as a stimulus log: the same counts."""
    record = read_session(session)
    nix = tmp_path / "spikes.nix"
    _write_nix(nix, record)
    source = open_source(nix, protocol=session / "protocol.json", pool=session, log=session / "markers.jsonl")
    assert {r["index"]: r["counts"].tolist() for r in align(source)} == {r["index"]: r["counts"]
                                                                        for r in record.responses}
    report = replay(source, tmp_path / "out", cadence=Cadence(every=4, refresh_every=20))
    assert report["pacing"] == {"every": 4, "refresh_every": 20, "accuracy_every": 10}
    assert report["responses"] == PRESENTATIONS and report["decisions"] == 1 + PRESENTATIONS // 4
    assert report["accuracy"]["core_version"] >= 1 and len(report["accuracy"]["r_observed"]) == 3


def test_a_stimulus_log_of_another_recording_is_refused(session, tmp_path):
    nix = tmp_path / "spikes.nix"
    _write_nix(nix, read_session(session))
    log = tmp_path / "other.jsonl"
    lines = [json.loads(line) for line in (session / "markers.jsonl").read_text().splitlines()]
    log.write_text("".join(json.dumps({**m, "onset": m["onset"] + 5000.0}) + "\n" for m in lines))
    with pytest.raises(ClosedLoopError, match=r"^stimulus log \S*other.jsonl: its onsets .* lie outside "
                                              r"the recording's spikes"):
        open_source(nix, protocol=session / "protocol.json", pool=session, log=log)


def test_bad_sources_give_one_line(session, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(session, old)
    lines = [json.loads(line) for line in (old / "selections.jsonl").read_text().splitlines()]
    (old / "selections.jsonl").write_text("".join(json.dumps({k: v for k, v in s.items() if k != "received"}) + "\n"
                                                  for s in lines))
    runner = CliRunner()
    for args, message in (
        ([str(old)], f"{old}: logged its decisions without 'received' counts"),
        ([str(tmp_path / "missing.xdf")], "missing.xdf: "),
        ([str(session / "spikes.bin")], "a recording made elsewhere needs --protocol"),
    ):
        result = runner.invoke(main, ["replay", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("closedloop: error: ") and message in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_the_command_asks_an_alternative_strategy_scored_by_a_twin(session, tmp_path):
    record = read_session(session)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["replay", str(session), "--strategy", "random", "--twin-epochs", "5",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "replay.json").read_text())
    assert report["reproduced"] == report["logged_decisions"]  # asking it changes nothing online
    assert f"{report['reproduced']} of {report['logged_decisions']} logged" in result.output
    alternative = report["alternative"]
    asked = sum(s["strategy"] == "disagreement" for s in record.selections)
    assert alternative["decisions"] == asked > 0
    assert alternative["twin"]["trained_on"] == report["trained_on"]
    assert alternative["twin"]["heldout"]["images"] > 3 and len(alternative["twin"]["heldout"]["r"]) == 3
    scored = [d for d in map(json.loads, (out / "decisions.jsonl").read_text().splitlines()) if "alternative" in d]
    assert len(scored) == asked
    for d in scored:
        assert len(d["alternative"]) == 4 and len(d["twin_online"]) == len(d["twin_alternative"]) == 3
        assert all(v > 0 for v in d["twin_online"] + d["twin_alternative"])  # expected counts (softplus)
    assert alternative["online"] == pytest.approx(np.mean([d["twin_online"] for d in scored]))
    assert 0 <= alternative["overlap"] < 1  # random picks rarely what disagreement picks
    for unit in report["units"]:
        assert unit in result.output


def _write_nix(path, record) -> None:
    """The session's spikes, one neo SpikeTrain per recorded unit, written by neo's NixIO."""
    segment = neo.Segment()
    end = float(record.spikes["time"].max()) + 1.0
    for unit in record.rig["recorded_units"]:
        mine = (record.spikes["channel"] == unit["channel"]) & (record.spikes["unit"] == unit["unit"])
        segment.spiketrains.append(neo.SpikeTrain(record.spikes["time"][mine] * pq.s, t_stop=end * pq.s,
                                                  name=unit["name"], channel=unit["channel"], unit=unit["unit"]))
    block = neo.Block()
    block.segments.append(segment)
    with neo.io.NixIO(str(path), mode="ow") as io:
        io.write_block(block)
