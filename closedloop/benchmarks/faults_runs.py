"""Sessions run as subprocesses for the fault-injection benchmark: start, wait on, finish."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from closedloop.benchmarks.faults_procs import Launch, wait_for
from closedloop.benchmarks.faults_session import Snapshot, count_lines, find_session

GRACE = 3.0  # s after a process's death before whatever it started counts as an orphan


@dataclass
class Bench:
    """Settings shared by every scenario.

    Attributes
    ----------
    folder : Path
        Where each scenario gets its own folder of files and sessions.
    presentations : int
        Per session, unless a scenario needs more.
    timeout : float
        s a run or resume may take before it counts as a hang (and is killed).
    rng : numpy.random.Generator
        Draws every random moment.
    grace : float
        s after a death before what it started counts as an orphan.
    source : Path, optional
        A project folder whose closedloop package the sessions run (e.g. an exported older
        commit); by default the one this benchmark imports.
    """

    folder: Path
    presentations: int
    timeout: float
    rng: np.random.Generator
    grace: float = GRACE
    source: Path | None = None
    prefix: str = field(default_factory=lambda: f"clfault-{uuid.uuid4().hex[:6]}")

    def trial(self, label: str) -> Path:
        """A fresh folder for one trial (its streams are named after it)."""
        path = self.folder / label
        path.mkdir(parents=True)
        return path

    def streams(self, label: str) -> str:
        """A stream-name prefix no other trial (nor another benchmark) uses."""
        return f"{self.prefix}-{label}"

    def launch(self, args: list[str], trial: Path, name: str) -> Launch:
        """Start ``args`` in ``trial`` with the sessions' closedloop (see :class:`Launch`)."""
        return Launch.start(args, trial, name, self.source)


def start_run(bench: Bench, trial: Path, protocol: Path, rig: Path) -> Launch:
    """``closedloop run`` of ``protocol`` on ``rig``, its session in ``trial/out``."""
    return bench.launch(["python", "-m", "closedloop", "run", str(protocol), "--rig", str(rig),
                         "--out", str(trial / "out")], trial, "run")


def session_of(trial: Path) -> Path | None:
    """The session directory a run made in ``trial/out``."""
    return find_session(trial / "out")


def markers_reach(launch: Launch, trial: Path, count: int, timeout: float) -> bool:
    """Wait until the run has recorded ``count`` presentations (False if it exits or times out first)."""
    def reached() -> bool:
        session = session_of(trial)
        return launch.process.poll() is not None or (
            session is not None and count_lines(session / "markers.jsonl") >= count)

    return wait_for(reached, timeout) and launch.process.poll() is None


def finish(launch: Launch, timeout: float) -> int | None:
    """Wait for the run to exit: its status, or None when it hung (then its group is killed)."""
    status = launch.wait(timeout - launch.elapsed())
    if status is None:
        launch.clean_up()
    return status


def outcome(launch: Launch, status: int | None, trial: Path, presentations: int) -> dict:
    """How a run ended: exit status, hang, the error line, summary status and what it recorded."""
    snapshot = Snapshot.of(session_of(trial))
    return {"exit": status, "hang": status is None, "error": launch.error_line() if status != 0 else "",
            "status": snapshot.status,
            "seconds": round(launch.elapsed(), 1), "presented": len(snapshot.markers),
            "responses": len(snapshot.responses), "complete": snapshot.complete(presentations)}
