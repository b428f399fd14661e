"""A session's faults, with real processes and real LSL: a parent killed with SIGKILL leaves no
child, a foreign outlet of the rig's stream name is never picked up, a killed simulator or model
worker ends the run in one line with a full summary, and Ctrl-C to the process group ends `closedloop run` with a
summary (status interrupted) and no traceback from any process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pylsl
import pytest

from closedloop.acquire.streams import SPIKE_CHANNELS
from closedloop.config import load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.session import run_session
from closedloop.record import read_session

ORPHAN_DEADLINE = 5.0  # s for a killed run's children to end
NOTICED = 5.0  # s from a simulator's death to the run's end (summary written)
KILL_AT = 8  # presentations shown before the simulator is killed
INTERRUPT_AT = 8  # presentations on disk before Ctrl-C


def _files(tmp, sim_files, presentations: int):
    sim_files.rig(tmp / "rig.toml", f"cltest-faults-{uuid.uuid4().hex[:8]}")
    sim_files.protocol(tmp / "protocol.toml", presentations)
    return tmp / "protocol.toml", tmp / "rig.toml"


def _run_command(protocol, rig, out, log, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "closedloop", "run", protocol, "--rig", rig, "--out", out],
                            stdout=log, stderr=subprocess.PIPE, **options)


@pytest.mark.parametrize("when", ["simulator", "worker"])
def test_a_parent_killed_with_sigkill_leaves_no_child(tmp_path, sim_files, wait_until, processes, when):
    """``closedloop run`` killed as soon as its simulator (or its model worker too) exists: every
    process it started ends within ``ORPHAN_DEADLINE`` s."""
    protocol, rig = _files(tmp_path, sim_files, 40)
    with open(tmp_path / "run.log", "wb") as log:
        run = _run_command(protocol, rig, tmp_path / "sessions", log)
    try:
        parent = psutil.Process(run.pid)
        wanted = {"simulator": ["simulate"], "worker": ["simulate", "spawn_main"]}[when]

        def started() -> bool:
            lines = [" ".join(p.cmdline()) for p in parent.children(recursive=True) if processes.running(p)]
            return all(any(w in line for line in lines) for w in wanted) or run.poll() is not None

        wait_until(started, f"the run starts its {when}", timeout=120, poll=0.01)
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
        children = parent.children(recursive=True)
    finally:
        run.kill()
        run.wait()
    lingering = processes.left_after(children, ORPHAN_DEADLINE)
    assert not lingering, f"still running {ORPHAN_DEADLINE:g} s after the run was killed: {lingering}"


@pytest.mark.parametrize("child, error", [("simulate", "simulator exited with status -9: "),
                                          ("spawn_main", "model worker exited with status -9")])
def test_a_killed_child_ends_the_run_in_one_line_beside_a_foreign_outlet(tmp_path, sim_files, processes, child,
                                                                       error):
    """An orphaned outlet of the rig's spike stream name (another source_id) is never picked up:
    the session counts its own simulator's spikes. When the simulator (or the model worker) is
    killed mid-run, the run ends within ``NOTICED`` s with a one-line error naming its exit and a
    full summary (status failed)."""
    protocol, rig = (load(path) for load, path in zip((load_protocol, load_rig), _files(tmp_path, sim_files, 200)))
    foreign = pylsl.StreamOutlet(pylsl.StreamInfo(rig.spikes.name, rig.spikes.type, len(SPIKE_CHANNELS),
                                                  pylsl.IRREGULAR_RATE, pylsl.cf_int32, "an-orphan"))
    killed: list[float] = []
    before = {p.pid for p in psutil.Process().children()}

    def kill(progress) -> None:
        if progress.presented == KILL_AT and not killed:  # (the session reaps it: no wait here)
            (process,) = [p for p in psutil.Process().children() if child in " ".join(p.cmdline())]
            process.kill()
            killed.append(time.monotonic())

    with pytest.raises(ClosedLoopError) as raised:
        run_session(protocol, rig, tmp_path / "session", on_progress=kill)
    ended = time.monotonic()
    del foreign
    assert killed and ended - killed[0] < NOTICED
    assert str(raised.value).startswith(error) and "\n" not in str(raised.value)
    record = read_session(tmp_path / "session")
    summary = record.summary
    assert summary["status"] == "failed" and summary["error"] == str(raised.value)
    assert summary["presentations"] == len(record.markers) <= KILL_AT + protocol.trial.images
    assert summary["responses"] == len(record.responses) > 0 and summary["spikes"] == len(record.spikes) > 0
    assert summary["units"] == ["curvature", "dot", "orientation"] and "frames" in summary
    started = [" ".join(p.cmdline()) for p in psutil.Process().children()
               if processes.running(p) and p.pid not in before]
    assert not [line for line in started if "resource_tracker" not in line]  # (multiprocessing's own, shared)


def test_ctrl_c_writes_a_full_summary_and_no_traceback(tmp_path, sim_files, wait_until):
    """SIGINT to the process group of ``closedloop run``: exit status 2, one line, no traceback
    from any process; the summary says interrupted with every count, and every presentation
    shown has its response (the open windows were drained)."""
    protocol, rig = _files(tmp_path, sim_files, 400)
    with open(tmp_path / "run.log", "wb") as log:
        run = _run_command(protocol, rig, tmp_path / "sessions", log, start_new_session=True)
    try:
        def shown() -> bool:
            found = list((tmp_path / "sessions").glob("*/markers.jsonl"))
            return bool(found) and found[0].read_bytes().count(b"\n") >= INTERRUPT_AT or run.poll() is not None

        wait_until(shown, f"{INTERRUPT_AT} presentations on disk", timeout=300)
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
        os.killpg(run.pid, signal.SIGINT)
        stderr = run.communicate(timeout=60)[1].decode()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    (session,) = (tmp_path / "sessions").iterdir()
    assert run.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr and "Aborted" not in stderr, stderr[-2000:]
    assert f"closedloop: error: interrupted; session recorded in {session}" in stderr
    assert "Traceback" not in (session / "simulator.log").read_text()
    summary = json.loads((session / "summary.json").read_text())
    record = read_session(session)
    assert summary["status"] == "interrupted" and summary["error"].startswith("interrupted")
    assert summary["presentations"] == len(record.markers) >= INTERRUPT_AT
    assert {m["index"] for m in record.markers} == {r["index"] for r in record.responses}
    assert summary["responses"] == len(record.responses) and summary["trials"]["completed"] > 0
