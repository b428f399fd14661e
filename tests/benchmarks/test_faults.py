"""The fault-injection benchmark counts right: orphans it made on purpose, records read back from
sessions, losses; and its smallest configuration runs real sessions end to end (no timings)."""

import json

from click.testing import CliRunner

from closedloop.benchmarks.faults import faults_command
from closedloop.benchmarks.faults_procs import Launch, pid_alive
from closedloop.benchmarks.faults_session import Snapshot, complete_records, losses

ORPHANING = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
time.sleep(120)
"""


def test_a_process_left_behind_by_a_killed_parent_is_an_orphan(tmp_path, wait_until):
    launch = Launch.start(["python", "-c", ORPHANING], tmp_path, "parent")
    wait_until(lambda: len(launch.children()) == 1, "the parent started its child")
    child = launch.children()[0].pid
    launch.kill()
    orphans = launch.orphans(grace=0.5)
    assert [o["pid"] for o in orphans] == [child]
    launch.clean_up()
    wait_until(lambda: not pid_alive(child), "the orphan is killed")
    assert launch.tagged() == []


def test_a_clean_exit_leaves_no_orphan(tmp_path):
    launch = Launch.start(["python", "-c", "print('bye')"], tmp_path, "clean")
    assert launch.wait(30) == 0
    assert launch.orphans(grace=0.5) == [] and launch.error_line() == ""


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_line_cut_short_is_not_a_record(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    _write(session / "markers.jsonl", [{"index": i} for i in range(3)], tail='{"index": 3, "sti')
    _write(session / "responses.jsonl", [{"index": i} for i in range(2)])
    snapshot = Snapshot.of(session)
    lines = (session / "markers.jsonl").read_text().count("\n")
    assert len(snapshot.markers) == lines == len(complete_records(session / "markers.jsonl")) == 3
    assert snapshot.unanswered() == [2] and snapshot.status == "none" and not snapshot.complete(3)


def test_losses_count_missing_and_repeated_records():
    before = Snapshot([0, 1, 2], [0, 1], None)
    after = Snapshot([0, 2, 2, 3], [0, 1, 1], {"status": "complete"})
    assert losses(before, after) == {"markers": 1, "responses": 0, "duplicated": 2, "lost": 3}
    assert losses(before, Snapshot([0, 1, 2, 3], [0, 1, 2, 3], None))["lost"] == 0


def test_the_smallest_configuration_runs_and_adds_up(tmp_path):
    """One kill -9 and resume, the simulator killed, SIGINT: every figure is read back from the
    sessions the benchmark kept."""
    out = tmp_path / "faults.json"
    result = CliRunner().invoke(faults_command, [
        "--kills", "1", "--only", "kills,simulator,sigint", "--presentations", "12", "--timeout", "40",
        "--work", str(tmp_path / "work"), "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (kill,), scenarios = report["kills"], report["scenarios"]
    assert [s["scenario"] for s in scenarios] == ["kill -9 simulator", "SIGINT to the process group"]
    totals = report["totals"]
    assert totals["hangs"] == sum(bool(r.get("hang")) for r in [kill, *scenarios])
    if kill["killed"]:
        assert totals["presentations_recorded"] == kill["markers_before"]
        assert totals["resume_successes"] == int(bool(kill.get("resumed")))
        if "status" in kill:  # resumed: what the session now holds decides "resumed"
            session = next((tmp_path / "work" / "kill-00" / "out").iterdir())
            markers = [m["index"] for m in complete_records(session / "markers.jsonl")]
            assert kill["resumed"] == (kill["status"] == "complete" and sorted(markers) == list(range(12)))
    for scenario, folder in zip(scenarios, ("kill-simulator", "sigint")):
        session = next((tmp_path / "work" / folder / "out").iterdir())
        assert scenario["presented"] == (session / "markers.jsonl").read_text().count("\n")
    assert "totals" in result.output
