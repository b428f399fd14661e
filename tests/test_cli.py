"""The command line: bad input gives one clear line and exit status 2, and keeps what was recorded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from closedloop.record.naming import parse_dirname
from closedloop.stimuli import generate_pool

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "protocols" / "demo.toml"


def closedloop(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "closedloop", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The error, which is all the command wrote to stderr: one line (no traceback, no liblsl log)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("closedloop: error:"), result.stderr
    return lines[0]


def test_invalid_rig_names_file_and_field(tmp_path):
    rig = tmp_path / "rig.toml"
    rig.write_text("[rig]\nname = 'r'\nsimulated = true\n[simulation]\nmean_rate = -3\n"
                   "[[simulation.neurons]]\nkind = 'dot'\n")
    line = error_line(closedloop("run", DEMO, "--rig", rig, "--out", tmp_path))
    assert str(rig) in line and "simulation.mean_rate" in line


def test_invalid_protocol_names_file_and_field(tmp_path):
    protocol = tmp_path / "protocol.toml"
    protocol.write_text("[protocol]\nname = 'p'\non_frames = 'six'\n")
    line = error_line(closedloop("run", protocol, "--rig", ROOT / "rigs" / "sim.toml", "--out", tmp_path))
    assert str(protocol) in line and "protocol.on_frames" in line


def test_unknown_strategy(tmp_path):
    line = error_line(closedloop("run", DEMO, "--rig", ROOT / "rigs" / "sim.toml", "--strategy", "best",
                                 "--out", tmp_path))
    assert "unknown strategy 'best'" in line and "disagreement" in line and "random" in line


def test_missing_stream_lists_those_found(tmp_path, stream_name):
    rig = tmp_path / "rig.toml"
    rig.write_text(f"resolve_timeout = 1.0\n[rig]\nname = 'lab'\n[display]\nbackend = 'headless'\n"
                   f"[markers]\nname = '{stream_name}-markers'\ntype = 'Markers'\n"
                   f"[spikes]\nname = '{stream_name}-absent'\ntype = 'Spikes'\n"
                   f"[[units]]\nname = 'a'\nchannel = 1\n")
    result = closedloop("run", DEMO, "--rig", rig, "--out", tmp_path / "sessions")
    line = error_line(result)
    assert f"'{stream_name}-absent'" in line and "streams found:" in line
    assert f"{stream_name}-markers" in line  # our own marker outlet is on the network, and listed
    # The session directory keeps what was recorded before the error.
    (session,) = (tmp_path / "sessions").iterdir()
    assert (session / "protocol.json").exists() and (session / "rig.json").exists()
    assert (session / "stimuli.npz").stat().st_size > 0


def test_unreadable_model_file(tmp_path, stream_name):
    (tmp_path / "compact_model_1_neuron0.pt").write_bytes(b"not a state dict")
    (tmp_path / "compact_model_1_neuron0.nums_filters.npy").write_bytes(b"junk")
    rig = tmp_path / "rig.toml"
    rig.write_text(f"[rig]\nname = 'sim'\nsimulated = true\n[display]\nbackend = 'headless'\n"
                   f"[markers]\nname = '{stream_name}-m'\ntype = 'Markers'\n"
                   f"[spikes]\nname = '{stream_name}-s'\ntype = 'Spikes'\n"
                   f"[simulation]\n[[simulation.neurons]]\nkind = 'compact'\n"
                   f"path = 'compact_model_1_neuron0.pt'\n")
    generate_pool({"dot": 3}, 32, seed=0).save(tmp_path / "stimuli.npz")
    line = error_line(closedloop("simulate", "--rig", rig, "--stimuli", tmp_path / "stimuli.npz"))
    assert "compact_model_1_neuron0" in line
    line = error_line(closedloop("run", DEMO, "--rig", rig, "--out", tmp_path / "sessions"))
    assert "compact_model_1_neuron0" in line


def test_errors_stay_on_one_line_whatever_the_arguments_hold(tmp_path):
    """A newline in an argument (a path, a stray word) is escaped, never a second line of stderr."""
    line = error_line(closedloop("run", tmp_path / "no\nsuch.toml", "--rig", ROOT / "rigs" / "sim.toml"))
    assert "no\\nsuch.toml" in line
    result = closedloop("export", "session", "extra\nword", "--nwb", tmp_path / "s.nwb")
    assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith("Error: Got unexpected extra") \
        and result.stderr.splitlines()[-1].endswith("(extra\\nword)"), result.stderr


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["simulate", "--help"], ["demo", "--help"]])
def test_help(command):
    result = closedloop(*command)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_demo_compares_model_chosen_with_random(tmp_path, stream_name, sim_files):
    """`closedloop demo` (on a short protocol) runs both sessions and prints the comparison."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    sim_files.protocol(tmp_path / "protocol.toml", 40)
    (tmp_path / "protocol.toml").write_text(
        (tmp_path / "protocol.toml").read_text().replace('strategy = "random"', 'strategy = "disagreement"'))
    result = closedloop("demo", "--protocol", tmp_path / "protocol.toml", "--rig", tmp_path / "rig.toml",
                        "--out", tmp_path / "sessions", "--subject-id", "M7")
    assert result.returncode == 0, result.stderr
    assert "model-chosen vs random images" in result.stdout
    for strategy in ("disagreement", "random"):
        assert f"{strategy}: " in result.stdout and "deadline misses" in result.stdout
    sessions = sorted((tmp_path / "sessions").iterdir())
    assert len(sessions) == 2 and all((s / "summary.json").exists() for s in sessions)
    for session in sessions:  # named as an archive names them, with the subject given on the command line
        assert parse_dirname(session.name)[0] == "M7" and session.name.endswith("-short")
        assert json.loads((session / "rig.json").read_text())["subject"]["id"] == "M7"
    for session in sessions:  # the learner's core (the scratch CNN: no shared data needed), recorded and shown
        core = json.loads((session / "summary.json").read_text())["core"]
        assert core.startswith("scratch") and f"core {core}, learner a process, session {session}" in result.stdout
    for unit in ("curvature", "dot", "orientation"):
        assert unit in result.stdout


def test_a_bad_subject_field_on_the_command_line_is_one_line(tmp_path, sim_files, stream_name):
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    sim_files.protocol(tmp_path / "protocol.toml", 10)
    result = closedloop("run", tmp_path / "protocol.toml", "--rig", tmp_path / "rig.toml", "--out", tmp_path / "s",
                        "--species", "monkey")
    assert error_line(result).startswith("closedloop: error: --species: ") and not (tmp_path / "s").exists()


def _small_session(path: Path) -> None:
    """A session written by the real SessionWriter: 6 presentations, 2 units."""
    from closedloop.config import Protocol, to_jsonable
    from closedloop.record import SessionWriter

    pool = generate_pool({"dot": 3, "grating": 3}, 32, seed=0)
    rig = {"rig": {"name": "lab"}, "subject": {"id": "M1", "species": "Macaca mulatta", "sex": "U", "age": "P5Y"},
           "recorded_units": [{"name": "a", "channel": 1, "unit": 1},
                                                       {"name": "b", "channel": 2, "unit": 1}]}
    protocol = to_jsonable(Protocol.model_validate({"protocol": {"name": "p"}}))
    writer = SessionWriter(path, protocol, rig, pool)
    for i in range(6):
        onset = 100.0 + 0.2 * i
        writer.log("markers", {"index": i, "stimulus": pool.ids[i], "pool_index": i, "role": "chosen",
                               "onset": onset, "offset": onset + 0.1})
        writer.log("responses", {"index": i, "stimulus": pool.ids[i], "pool_index": i, "role": "chosen",
                                 "onset": onset, "counts": [1, i % 2]})
        writer.spikes(np.array([onset + 0.06, onset + 0.07]), np.array([1, 2]), np.array([1, 1]))
    writer.close({"presentations": 6})


def test_export_writes_nwb_and_refuses_to_overwrite(tmp_path):
    from pynwb import NWBHDF5IO

    _small_session(tmp_path / "session")
    result = closedloop("export", tmp_path / "session", "--nwb", tmp_path / "s.nwb")
    assert result.returncode == 0, result.stderr
    with NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io:
        nwb = io.read()
        assert len(nwb.units) == 2 and len(nwb.intervals["presentations"]) == 6
    again = closedloop("export", tmp_path / "session", "--nwb", tmp_path / "s.nwb")
    assert "s.nwb" in error_line(again)
    missing = closedloop("export", tmp_path / "nope", "--nwb", tmp_path / "t.nwb")
    assert "nope" in error_line(missing)


def test_responses_of_a_neo_recording(tmp_path):
    """A NIX file written by neo plus a stimulus log: the CLI prints the live response table."""
    import json

    import neo
    import quantities as pq

    block = neo.Block()
    segment = neo.Segment()
    block.segments.append(segment)
    for channel, times in ((1, [1.06, 1.07, 1.30]), (2, [1.10, 1.26])):
        train = neo.SpikeTrain(times * pq.s, t_stop=3 * pq.s, name=f"u{channel}")
        train.annotate(channel=channel, unit=1)
        segment.spiketrains.append(train)
    with neo.io.NixIO(str(tmp_path / "rec.nix"), mode="ow") as io:
        io.write_block(block)
    (tmp_path / "log.jsonl").write_text(
        json.dumps({"index": 0, "stimulus": "aa", "onset": 1.0, "offset": 1.1}) + "\n" +
        json.dumps({"index": 1, "stimulus": "bb", "onset": 1.2, "offset": 1.3}) + "\n")
    result = closedloop("responses", tmp_path / "rec.nix", "--log", tmp_path / "log.jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["index"], r["stimulus"], r["counts"]) for r in rows] == [(0, "aa", [2, 1]), (1, "bb", [1, 1])]
    bad = closedloop("responses", tmp_path / "log.jsonl")
    assert "log.jsonl" in error_line(bad)


def test_a_bad_benchmark_strategy_is_named_before_any_work(tmp_path):
    line = error_line(closedloop("bench", "efficiency", "--twins", tmp_path, "--pool", tmp_path, "--heldout", tmp_path,
                                 "--strategies", "disagreement;vr=variance_reduction+2"))
    assert "strategy 'vr'" in line and "control fraction" in line


def test_run_shows_progress_time_left_turnaround_and_each_unit(tmp_path, sim_files, stream_name):
    """`closedloop run` with its display redirected (rich prints the last view): the progress bar with
    the time left, the turnaround, the spike rate and stream lag, and one line per unit whose mean
    count and held-out r are the session's; each decision logged its predictions."""
    from closedloop.progress import RECENT_RESPONSES
    from closedloop.record import read_session

    sim_files.rig(tmp_path / "rig.toml", stream_name)
    sim_files.protocol(tmp_path / "protocol.toml", 40)
    result = closedloop("run", tmp_path / "protocol.toml", "--rig", tmp_path / "rig.toml", "--out", tmp_path / "s")
    assert result.returncode == 0, result.stderr
    view = result.stderr
    assert re.search(r"━{40}\s+40/40 presented\s+0:00:00 left", view), view
    assert re.search(r"selection turnaround\s+\d+\.\d ms \(median of the last 20 decisions\)", view), view
    assert re.search(r"spike rate\s+\d+\.\d spikes/s \(all units\)", view), view
    assert re.search(r"spike stream\s+ok, lag \d+ ms", view), view
    for row in ("deadline misses", "dropped frames", "trials", "learner refreshes"):
        assert row in view
    summary = json.loads(result.stdout)
    record = read_session(Path(summary["session"]))
    handed = [r["counts"] for r in record.responses if not (r.get("gap") or r.get("aborted"))]
    mean_counts = np.mean(handed[-RECENT_RESPONSES:], axis=0)
    for u, unit in enumerate(summary["units"]):
        line = re.search(rf"^\s*{unit}\s+(\d+\.\d)\s+(\d+\.\d\d)\s+(\S+)\s+(\S+)\s*$", view, re.MULTILINE)
        assert line, view
        assert float(line[1]) > 0 and float(line[2]) == pytest.approx(mean_counts[u], abs=0.006)
        for shown, r in zip(line.groups()[2:], (summary["heldout_r_observed"][u], summary["heldout_r_true"][u])):
            assert shown == ("-" if r is None else f"{r:.2f}")
    # Every decision once the learner had learned a response: expected counts per chosen image and unit.
    predicted = [s["predicted"] for s in record.selections if "predicted" in s]
    assert len(predicted) >= len(record.selections) - 2 > 5
    for s in record.selections[2:]:
        assert np.shape(s["predicted"]) == (len(s["chosen"]), 3) and np.isfinite(s["predicted"]).all()


def test_the_progress_view_shows_what_progress_holds():
    """The view of known values: the bar's time left from the recent presentation rate, the median
    turnaround (the first decision's left out), spike rates over the recent spikes, one line per unit."""
    import io

    from rich.console import Console

    from closedloop.cli import _progress_view
    from closedloop.progress import Progress

    progress = Progress(total=200, units=("curvature", "dot"), presented=50, responses=48, deadline_misses=1,
                        dropped_frames=2, core_version=3, r_observed=0.41, r_true=0.62,
                        turnaround_ms=[900.0, 3.0, 5.0, 4.0], strategy_state={"posterior": {"h1": 0.7, "h2": 0.3}},
                        final_accuracy={"r_observed": [0.33, None], "r_true": [0.55, 0.69]})
    progress.shown_at.extend(10.0 + 0.1 * np.arange(50))  # 10 presentations/s: 150 to go in 15 s
    progress.recent_counts.extend([np.array([2, 6]), np.array([4, 8])])
    progress.add_spikes(np.array([100.0, 100.5]), np.array([0, 1]), now=100.52)  # 20 ms late
    progress.add_spikes(np.array([101.0, 102.0, 103.0]), np.array([1, -1, 1]), now=103.01)  # 10 ms; -1: no unit
    out = io.StringIO()
    Console(file=out, width=120).print(_progress_view(progress, "short (disagreement)"))
    view = out.getvalue()
    assert "short (disagreement)" in view and re.search(r"━{10} +50/200 presented +0:00:15 left", view), view
    # 3 s of spikes since the first: curvature 1, dot 3 (the unknown spike not counted)
    for row, value in (("responses", "48"), ("selection turnaround", "4.0 ms"), ("spike rate", "1.3 spikes/s"),
                       ("spike stream", "ok, lag 15 ms"), ("deadline misses", "1"), ("dropped frames", "2"),
                       ("learner refreshes", "3"), ("held-out r, median of units", "0.41 observed, 0.62 true"),
                       ("posterior", "h1 0.70, h2 0.30")):
        assert re.search(rf"{row} +{re.escape(value)}", view), (row, view)
    assert re.search(r"curvature +0\.3 +3\.00 +0\.33 +0\.55", view), view
    assert re.search(r"dot +1\.0 +7\.00 +- +0\.69", view), view
