"""kill -9 of a run at random moments, then ``closedloop resume`` to completion.

Each kill waits for its phase — the session directory made (``session``), the simulator child
started (``simulator``), the model worker child started (``worker``), or a drawn number of
presentations recorded (``presenting``) — then a drawn delay, and kills the run's own process
only, as a crash or the OOM killer would. What it had started is then left to its own devices:
whatever is still alive :attr:`Bench.grace` s later is an orphan.
"""

from __future__ import annotations

import time

from closedloop.benchmarks.faults_files import short_protocol, simulated_rig
from closedloop.benchmarks.faults_procs import Launch, pid_alive, role, wait_for
from closedloop.benchmarks.faults_runs import Bench, finish, session_of, start_run
from closedloop.benchmarks.faults_session import Snapshot, count_lines, losses

PHASES = ("session", "simulator", "worker", "presenting")
DELAY = {"session": 1.0, "simulator": 2.5, "worker": 3.0, "presenting": 0.1}  # s: most drawn delay


def plan(kills: int, bench: Bench) -> list[tuple[str, int, float]]:
    """(phase, presentations to wait for, delay in s) of each kill: the phases in turn, shuffled."""
    phases = [PHASES[i % len(PHASES)] for i in range(kills)]
    bench.rng.shuffle(phases)
    return [(phase, int(bench.rng.integers(1, bench.presentations)) if phase == "presenting" else 0,
             float(bench.rng.uniform(0.0, DELAY[phase]))) for phase in phases]


def _reached(phase: str, launch: Launch, trial, target: int) -> bool:
    session = session_of(trial)
    if phase == "session":
        return session is not None
    if phase == "presenting":
        return session is not None and count_lines(session / "markers.jsonl") >= target
    return launch.child("simulator" if phase == "simulator" else "model worker") is not None


def kill_and_resume(bench: Bench, number: int, phase: str, target: int, delay: float) -> dict:
    """One kill -9 and its resume; the figures of both (see the module docstring)."""
    trial = bench.trial(f"kill-{number:02d}")
    protocol = short_protocol(trial / "protocol.toml", bench.presentations)
    launch = start_run(bench, trial, protocol, simulated_rig(trial / "rig.toml", bench.streams(f"k{number}")))
    row = {"kill": number, "phase": phase, "target": target, "delay_s": round(delay, 2)}
    try:
        reached = wait_for(lambda: launch.process.poll() is not None or _reached(phase, launch, trial, target),
                           bench.timeout)
        if reached:
            time.sleep(delay)
        if launch.process.poll() is not None or not reached:
            status = finish(launch, bench.timeout)
            return {**row, "killed": False, "hang": status is None, "exit": status,
                    "error": launch.error_line()}
        row["children"] = sorted(role(p) for p in launch.children())
        row["at_s"] = round(launch.elapsed(), 2)
        launch.kill()
        session = session_of(trial)
        before = Snapshot.of(session)
        row.update(killed=True, markers_before=len(before.markers), responses_before=len(before.responses),
                   orphans=launch.orphans(bench.grace))
        if session is None:
            return {**row, "resumed": False, "hang": False, "lost": losses(before, before)}
        resume = bench.launch(["python", "-m", "closedloop", "resume", str(session)], trial, "resume")
        try:
            status = finish(resume, bench.timeout)
            after = Snapshot.of(session)
            row.update(resumed=after.complete(bench.presentations), hang=status is None, exit=status,
                       error=resume.error_line() if status != 0 else "", status=after.status,
                       resume_s=round(resume.elapsed(), 1), lost=losses(before, after),
                       unanswered=after.unanswered(), resume_orphans=resume.orphans(bench.grace) if status is not None
                       else [])
        finally:
            resume.clean_up()
        row["orphans_at_end"] = [p for p in row["orphans"] if pid_alive(p["pid"])]
        return row
    finally:
        launch.clean_up()


def run_kills(bench: Bench, kills: int, log) -> list[dict]:
    """``kills`` kill -9 trials; ``log(line)`` hears of each."""
    rows = []
    for number, (phase, target, delay) in enumerate(plan(kills, bench)):
        row = kill_and_resume(bench, number, phase, target, delay)
        rows.append(row)
        log(f"kill {number}: {phase} +{delay:.2f} s: {_line(row)}")
    return rows


def _line(row: dict) -> str:
    if not row["killed"]:
        return f"not killed (run ended first, exit {row.get('exit')}, hang {row['hang']})"
    lost = row["lost"]["lost"]
    return (f"{row['markers_before']} presentations / {row['responses_before']} responses recorded, "
            f"orphans {[o['role'] for o in row['orphans']]}, resume {row.get('status')} "
            f"({'complete' if row.get('resumed') else 'incomplete'}), lost {lost}, hang {row['hang']}"
            + (f", error: {row['error']}" if row.get("error") else ""))
