"""The fault-injection benchmark's single-run scenarios: a child killed, the spike outlet
restarted, the acquisition clock stepped, and SIGINT to the run's process group."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np

from closedloop.benchmarks.faults_files import external_rigs, short_protocol, simulated_rig
from closedloop.benchmarks.faults_procs import Launch, wait_for
from closedloop.benchmarks.faults_runs import Bench, finish, markers_reach, outcome, session_of, start_run
from closedloop.benchmarks.faults_session import complete_records, read_summary

CLOCK_STEP = 5.0  # s the acquisition clock is moved, ahead then back
SETTLE = 8  # presentations after a clock step before alignment is judged again
PER_RESTART = 40  # presentations between two restarts of the spike outlet
OUTLET = Path(__file__).with_name("faults_outlet.py")  # run as a script: it imports the sessions' closedloop


def kill_child(bench: Bench, which: str) -> dict:
    """kill -9 of the run's ``which`` child (``simulator`` or ``model worker``) a third of the way
    through: how (and whether) the run ends."""
    label = "kill-" + which.split()[-1]
    trial = bench.trial(label)
    protocol = short_protocol(trial / "protocol.toml", bench.presentations)
    launch = start_run(bench, trial, protocol, simulated_rig(trial / "rig.toml", bench.streams(label)))
    try:
        row = {"scenario": f"kill -9 {which}", "killed": False}
        if markers_reach(launch, trial, bench.presentations // 3, bench.timeout):
            child = launch.child(which)
            if child is not None:
                child.kill()
                row.update(killed=True, at_presentation=_presented(trial))
        status = finish(launch, bench.timeout)
        row.update(outcome(launch, status, trial, bench.presentations))
        row.update(_stream_figures(session_of(trial), bench.presentations))
        row["orphans"] = launch.orphans(bench.grace) if status is not None else []
        return row
    finally:
        launch.clean_up()


def restart_outlet(bench: Bench, restarts: int) -> dict:
    """A rig whose spikes come from a ``closedloop simulate`` the benchmark runs, killed (-9) and
    started again ``restarts`` times in one run, every :data:`PER_RESTART` presentations."""
    trial = bench.trial("restarts")
    presentations = PER_RESTART * (restarts + 1)
    protocol = short_protocol(trial / "protocol.toml", presentations)
    run_rig, outlet_rig = external_rigs(trial, bench.streams("restarts"))
    launch = start_run(bench, trial, protocol, run_rig)
    outlets: list[Launch] = []
    row = {"scenario": f"restart spike outlet x{restarts}", "restarts": 0}
    try:
        if _session_ready(launch, trial, bench.timeout):
            stimuli = session_of(trial) / "stimuli.npz"
            command = ["python", "-m", "closedloop", "simulate", "--rig", str(outlet_rig), "--stimuli", str(stimuli)]
            outlets.append(bench.launch(command, trial, "outlet-0"))
            for k in range(1, restarts + 1):
                if not (_serving(outlets[-1], bench.timeout) and
                        markers_reach(launch, trial, k * PER_RESTART, bench.timeout)):
                    break
                outlets[-1].kill()
                outlets.append(bench.launch(command, trial, f"outlet-{k}"))
                row["restarts"] = k
        status = finish(launch, bench.timeout)
        row.update(outcome(launch, status, trial, presentations))
        row.update(_stream_figures(session_of(trial), presentations))
        row["orphans"] = launch.orphans(bench.grace) if status is not None else []
        return row
    finally:
        launch.clean_up()
        for outlet in outlets:
            outlet.clean_up()


def step_clock(bench: Bench, sync: str) -> dict:
    """The acquisition clock steps :data:`CLOCK_STEP` s ahead a third of the way through and back
    at two thirds (:mod:`~closedloop.benchmarks.faults_outlet`), with clock ``sync``: the clock
    events the run logs, and whether responses stay aligned (mean spikes per response in each
    part, against the part before the step)."""
    label = f"clock-{sync}"
    trial = bench.trial(label)
    presentations = max(bench.presentations, 120)
    protocol = short_protocol(trial / "protocol.toml", presentations)
    run_rig, outlet_rig = external_rigs(trial, bench.streams(label), sync)
    launch = start_run(bench, trial, protocol, run_rig)
    outlet = None
    row = {"scenario": f"clock step +/-{CLOCK_STEP:g} s ({sync} sync)", "steps": []}
    try:
        if _session_ready(launch, trial, bench.timeout):
            outlet = bench.launch(["python", str(OUTLET), str(outlet_rig),
                                   str(session_of(trial) / "stimuli.npz"), str(CLOCK_STEP)], trial, "outlet")
            for k, sig in ((1, signal.SIGUSR1), (2, signal.SIGUSR2)):
                if not (_serving(outlet, bench.timeout) and
                        markers_reach(launch, trial, k * presentations // 3, bench.timeout)):
                    break
                outlet.process.send_signal(sig)
                row["steps"].append(_presented(trial))
        status = finish(launch, bench.timeout)
        row.update(outcome(launch, status, trial, presentations))
        row.update(_stream_figures(session_of(trial), presentations))
        row["alignment"] = _alignment(session_of(trial), row["steps"])
        row["clock"] = ((outcome_summary(trial) or {}).get("clock"))
        row["orphans"] = launch.orphans(bench.grace) if status is not None else []
        return row
    finally:
        launch.clean_up()
        if outlet is not None:
            outlet.clean_up()


def sigint(bench: Bench) -> dict:
    """SIGINT to the run's whole process group half-way (Ctrl-C in its terminal)."""
    trial = bench.trial("sigint")
    protocol = short_protocol(trial / "protocol.toml", bench.presentations)
    launch = start_run(bench, trial, protocol, simulated_rig(trial / "rig.toml", bench.streams("sigint")))
    try:
        row = {"scenario": "SIGINT to the process group", "sent": False}
        if markers_reach(launch, trial, bench.presentations // 2, bench.timeout):
            launch.signal_group(signal.SIGINT)
            row.update(sent=True, at_presentation=_presented(trial))
        status = finish(launch, bench.timeout)
        row.update(outcome(launch, status, trial, bench.presentations))
        row.update(_stream_figures(session_of(trial), bench.presentations))
        text = launch.stderr.read_text(errors="replace") + launch.stdout.read_text(errors="replace")
        summary = outcome_summary(trial) or {}
        row.update(traceback="Traceback" in text, aborted_line="Aborted!" in text,
                   summary_status=summary.get("status"), summary_counts="presentations" in summary,
                   orphans=launch.orphans(bench.grace) if status is not None else [])
        return row
    finally:
        launch.clean_up()


def outcome_summary(trial: Path) -> dict | None:
    """The trial's session summary, if written."""
    return read_summary(session_of(trial))


def _presented(trial: Path) -> int:
    session = session_of(trial)
    return 0 if session is None else len(complete_records(session / "markers.jsonl"))


def _session_ready(launch: Launch, trial: Path, timeout: float) -> bool:
    """Wait until the run has written its stimuli (its markers log is opened after them)."""
    return wait_for(lambda: launch.process.poll() is not None or (
        session_of(trial) is not None and (session_of(trial) / "markers.jsonl").exists()), timeout) \
        and launch.process.poll() is None


def _serving(outlet: Launch, timeout: float) -> bool:
    """Wait until an outlet says it is simulating (False if it exits or times out first)."""
    def said() -> bool:
        return outlet.process.poll() is not None or "simulating" in (
            outlet.stdout.read_text(errors="replace") + outlet.stderr.read_text(errors="replace"))

    return wait_for(said, timeout) and outlet.process.poll() is None


def _stream_figures(session: Path | None, presentations: int) -> dict:
    """Gaps, gap responses, requeues (a gap-cut image shown again) and lost presentations (an index
    never presented, or presented without a response); clock events by kind."""
    if session is None:
        return {}
    markers = complete_records(session / "markers.jsonl")
    responses = complete_records(session / "responses.jsonl")
    events = complete_records(session / "events.jsonl")
    gapped = [r for r in responses if r.get("gap")]
    shown_after = {}
    for m in markers:
        shown_after.setdefault(m["pool_index"], []).append(m["index"])
    requeued = sum(any(i > r["index"] for i in shown_after.get(r["pool_index"], [])) for r in gapped)
    indices = {m["index"] for m in markers}
    answered = {r["index"] for r in responses}
    kinds = Counter(e["kind"] for e in events if e["kind"].startswith(("clock_", "spike_")))
    return {"gap_responses": len(gapped), "requeued": requeued, "events": dict(kinds),
            "lost": len(set(range(presentations)) - indices) + len(indices - answered)}


def _alignment(session: Path | None, steps: list[int]) -> dict:
    """Mean spikes per response (all units) before the first clock step, between the steps and
    after the second, each after :data:`SETTLE` presentations; and each part's ratio to before."""
    if session is None or not steps:
        return {}
    counts = {r["index"]: sum(r["counts"]) for r in complete_records(session / "responses.jsonl") if not r.get("gap")}
    bounds = [0, *steps, max(counts, default=0) + 1]
    parts = {}
    for name, (start, end) in zip(("before", "stepped", "after"), zip(bounds[:-1], bounds[1:])):
        values = [c for i, c in counts.items() if start + (SETTLE if start else 0) <= i < end]
        parts[name] = round(float(np.mean(values)), 2) if values else None
    before = parts["before"]
    return {"mean_spikes": parts, "ratio": {k: None if v is None or not before else round(v / before, 2)
                                           for k, v in parts.items() if k != "before"}}


SCENARIOS = ("simulator", "worker", "restarts", "clock", "sigint")


def run_scenarios(bench: Bench, names: list[str], restarts: int, log) -> list[dict]:
    """The single-run scenarios ``names`` (of :data:`SCENARIOS`) in turn; ``log(line)`` hears of each."""
    runs = {"simulator": [lambda: kill_child(bench, "simulator")],
            "worker": [lambda: kill_child(bench, "model worker")],
            "restarts": [lambda: restart_outlet(bench, restarts)],
            "clock": [lambda: step_clock(bench, "lsl"), lambda: step_clock(bench, "events")],
            "sigint": [lambda: sigint(bench)]}
    rows = []
    for scenario in (run for name in names for run in runs[name]):
        started = time.monotonic()
        rows.append(scenario())
        row = rows[-1]
        log(f"{row['scenario']}: exit {row.get('exit')}, status {row.get('status')}, {row.get('presented')} "
            f"presented, hang {row.get('hang')}, {time.monotonic() - started:.0f} s"
            + (f"; error: {row['error']}" if row.get("error") else ""))
    return rows
