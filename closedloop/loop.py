"""The closed loop: present -> acquire -> align -> model -> select -> record.

:func:`run_session` wires the stages together. The presentation loop runs in
the calling (main) thread and never waits: spikes arrive on an ingestion
thread, the model learns and chooses in a worker process, the session writer
appends on its own thread. When the model has not delivered the next image in
time, a random fallback image is shown and the miss is counted and logged.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pylsl

from closedloop.acquire.gaze import GazeInlet
from closedloop.acquire.photodiode import PhotodiodeInlet
from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import resolve_stream
from closedloop.align.clock import ClockMap
from closedloop.align.windows import ResponseAligner
from closedloop.config import Protocol, Rig, UnitSpec, to_jsonable
from closedloop.errors import ClosedLoopError
from closedloop.learn.worker import (Accuracy, Choice, Comparison, Error, Message, ModelWorker, Stopped,
                                     WorkerConfig, cores_folder)
from closedloop.present import open_presenter
from closedloop.present.base import DROPPED_FRAME
from closedloop.present.geometry import Layout
from closedloop.present.markers import MarkerOutlet
from closedloop.present.trials import Item, TrialOutcome, run_trial
from closedloop.record import SessionWriter, read_session
from closedloop.record.session import ADDED
from closedloop.select.policy import RoleSchedule
from closedloop.select.registry import make_strategy
from closedloop.stimuli import StimulusPool, generate_pool, load_stimulus_set

log = logging.getLogger(__name__)

SIMULATOR_START = 120.0  # s allowed for the simulator process to load its neurons


@dataclass
class Progress:
    """Live state of a running session, for displays."""

    total: int
    presented: int = 0
    responses: int = 0
    deadline_misses: int = 0
    dropped_frames: int = 0
    core_version: int = 0
    r_observed: float | None = None
    r_true: float | None = None
    clock_events: int = 0
    gap_responses: int = 0
    aborted_responses: int = 0
    trials: dict[str, int] = field(default_factory=lambda: {
        "completed": 0, "fixation_break": 0, "no_fixation": 0})
    turnaround_ms: list[float] = field(default_factory=list)
    final_accuracy: dict = field(default_factory=dict)
    strategy_state: dict | None = None  # the strategy's latest (e.g. a hypothesis test's posterior)
    finished: bool = False  # the strategy has finished (e.g. its test decided): the session ends


def session_units(rig: Rig) -> list[UnitSpec]:
    """The units whose spikes are counted: the rig's, or one per simulated neuron."""
    if rig.rig.simulated:
        from closedloop.simulate.rig import simulated_units

        return simulated_units(rig)
    return list(rig.units)


def split_pool(pool_size: int, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (candidate, held-out) pool indices, drawn reproducibly."""
    if heldout >= pool_size:
        raise ClosedLoopError(f"protocol: heldout.images ({heldout}) must be below the pool size ({pool_size})")
    order = np.random.default_rng(seed).permutation(pool_size)
    return np.sort(order[heldout:]), np.sort(order[:heldout])


def candidate_pool(protocol: Protocol, size_px: int) -> StimulusPool:
    """The protocol's candidate pool rendered at ``size_px``: its stimulus set, or random
    members of its families."""
    background = protocol.stimulus.background
    if protocol.pool.set is not None:
        return load_stimulus_set(protocol.pool.set).render(size_px, background)
    return generate_pool(protocol.pool.families, size_px, protocol.protocol.seed, background=background)


def _median(values: list[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return float(np.median(valid)) if valid else None


def start_simulator(rig_path: Path, stimuli_path: Path, log_path: Path) -> subprocess.Popen:
    """``closedloop simulate`` as a child process; its output goes to ``log_path``."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "closedloop", "simulate", "--rig", str(rig_path),
             "--stimuli", str(stimuli_path)],
            stdout=out, stderr=subprocess.STDOUT)


def _resolve_spikes(rig: Rig, simulator: subprocess.Popen | None, log_path: Path) -> pylsl.StreamInfo:
    """Resolve the spike stream; with a simulator, wait for it to start (or fail)."""
    if simulator is None:
        return resolve_stream(rig.spikes, rig.resolve_timeout)
    deadline = time.monotonic() + SIMULATOR_START
    while True:
        try:
            return resolve_stream(rig.spikes, 1.0)
        except ClosedLoopError:
            if simulator.poll() is not None:
                lines = log_path.read_text().strip().splitlines() or ["(no output)"]
                raise ClosedLoopError(f"simulator exited with status {simulator.returncode}: {lines[-1]}") from None
            if time.monotonic() > deadline:
                raise


def run_session(protocol: Protocol, rig: Rig, session_dir: Path,
                on_progress: Callable[[Progress], None] | None = None, resume: bool = False) -> dict:
    """Run one closed-loop session and return its summary.

    Parameters
    ----------
    protocol, rig : Protocol, Rig
        Validated configuration (see ``closedloop.config``).
    session_dir : Path
        Directory to create; everything recorded goes there.
    on_progress : callable, optional
        Called with a :class:`Progress` after every presentation.
    resume : bool
        Continue the session already in ``session_dir`` (its protocol, rig and
        pool): the model first learns every recorded response, and
        presentation numbering goes on after the last recorded marker.

    Raises
    ------
    ClosedLoopError
        A bad setting, a missing stream or a failed model worker (one line); what was recorded
        stays in ``session_dir``.
    """
    p = protocol.protocol
    strategy = make_strategy(protocol.selection.strategy, protocol.selection.params)  # once per session
    units = session_units(rig)
    layout = Layout.of(rig.display, protocol.stimulus, protocol.trial)
    if resume:
        record = read_session(session_dir)
        pool, next_index = record.pool, 1 + max((m["index"] for m in record.markers), default=-1)
        trial = 1 + max((m.get("trial", -1) for m in record.markers), default=-1)
        if next_index >= p.presentations:
            raise ClosedLoopError(f"session {session_dir}: all {p.presentations} presentations are recorded")
        writer = SessionWriter.reopen(session_dir)
        lifetime = 1 + sum(e["kind"] == "resumed" for e in record.events)  # this worker's, for its cores
        answered = {r["index"] for r in record.responses}
        writer.log("events", {"kind": "resumed", "from_presentation": next_index, "time": pylsl.local_clock(),
                              "unanswered": sorted({m["index"] for m in record.markers} - answered)})
    else:
        pool = candidate_pool(protocol, layout.patch_px)
        next_index = trial = lifetime = 0
        writer = SessionWriter(session_dir, to_jsonable(protocol), {**to_jsonable(rig), "recorded_units":
                               [u.model_dump() for u in units]}, pool)
    candidates, heldout = split_pool(len(pool), protocol.heldout.images, p.seed)
    strategy.check([u.name for u in units], pool)
    stimuli_path = session_dir / "stimuli.npz"
    progress = Progress(total=p.presentations, presented=next_index)
    summary: dict = {"status": "aborted", "session": str(session_dir)}
    simulator = worker = inlet = presenter = photodiode = gaze = None
    inlet_stopped = photodiode_stopped = False
    started = time.monotonic()
    try:
        markers = MarkerOutlet(rig.markers, source_id=f"closedloop-markers-{session_dir.name}")
        if rig.rig.simulated:
            simulator = start_simulator(rig.source, stimuli_path, session_dir / "simulator.log")
        spike_info = _resolve_spikes(rig, simulator, session_dir / "simulator.log")
        photodiode_info = resolve_stream(rig.photodiode, rig.resolve_timeout) if rig.photodiode else None
        gaze_info = resolve_stream(rig.gaze, rig.resolve_timeout) if rig.gaze else None

        worker = ModelWorker(WorkerConfig(
            pool_path=stimuli_path, units=tuple(u.name for u in units), model=protocol.model,
            selection=protocol.selection, strategy=strategy, candidates=tuple(candidates.tolist()),
            heldout=tuple(heldout.tolist()), seed=p.seed, truth=rig.simulation if rig.rig.simulated else None,
            checkpoints=session_dir / "checkpoints", added=session_dir / ADDED,
            cores=cores_folder(session_dir, lifetime)))
        ready = worker.start()
        writer.log("events", {"kind": "model_ready", "core": ready.core, "features": ready.features,
                              "time": pylsl.local_clock()})
        if resume:  # what the animal already showed us
            for r in record.responses:
                if not (r.get("gap") or r.get("aborted")):  # as live: cut windows are never trained on
                    worker.send_response(r["pool_index"], np.array(r["counts"]), r["role"] == "heldout",
                                         pylsl.local_clock())

        aligner = ResponseAligner([(u.channel, u.unit) for u in units], protocol.window.start,
                                  protocol.window.end, rig.photodiode.max_delay if rig.photodiode else 0.1)

        def on_spikes(times, channels, unit_ids):
            aligner.add_spikes(times, channels, unit_ids)
            writer.spikes(times, channels, unit_ids)

        requeue: deque[int] = deque()  # pool indices whose windows a spike gap cut (thread-safe appends)

        def on_tick(now):
            settled = photodiode.covered_until - rig.photodiode.max_delay if photodiode else np.inf
            for r in aligner.complete(now, settled):
                record = {"index": r.index, "onset": r.onset, "counts": r.counts.tolist(), **r.info}
                if photodiode and "flip" not in r.info:
                    record["photodiode_missed"] = True
                writer.log("responses", record)
                progress.responses += 1
                if r.info.get("gap"):  # incomplete counts: never trained on, shown again if asked
                    progress.gap_responses += 1
                    if protocol.selection.requeue_gaps and r.info["role"] != "heldout":
                        requeue.append(r.info["pool_index"])
                    continue
                if r.info.get("aborted"):  # cut short by a fixation break (re-queued when it broke)
                    progress.aborted_responses += 1
                    continue
                worker.send_response(r.info["pool_index"], r.counts, r.info["role"] == "heldout",
                                     pylsl.local_clock())

        def on_stream_event(event):
            writer.log("events", event)
            if event["kind"].startswith("clock_"):
                progress.clock_events += 1

        clock = ClockMap() if rig.clock.sync == "events" else None
        if photodiode_info is not None:
            photodiode = PhotodiodeInlet(photodiode_info, rig.photodiode, aligner.add_light,
                                         max_latency=rig.max_latency)
            photodiode.start()
        inlet = SpikeInlet(spike_info, on_spikes, on_tick, rig.max_latency, rig.spikes,
                           channels=max(u.channel for u in units), clock=clock,
                           sync_channel=rig.clock.sync_channel, on_event=on_stream_event,
                           stall_after=rig.stall_after, on_gap=aligner.add_gap)
        inlet.start()
        if gaze_info is not None:
            gaze = GazeInlet(gaze_info)
            gaze.start()
        fixating = (lambda: gaze.fixating(protocol.trial.window_deg)) if gaze else None
        presenter = open_presenter(rig.display, layout, markers)
        schedule = RoleSchedule(protocol.heldout.every, protocol.selection.control_fraction, candidates, heldout,
                                p.seed + 2)

        def pick() -> list[Item]:
            """The trial's images, chosen once fixation is acquired."""
            items = []
            for i in range(next_index, min(next_index + protocol.trial.images, p.presentations)):
                _handle_worker(worker.messages(), schedule, writer, progress, pool)
                role, index = schedule.next(i)
                if role == "fallback":
                    progress.deadline_misses += 1
                    writer.log("events", {"kind": "deadline_miss", "index": i, "time": pylsl.local_clock()})
                    log.warning("presentation %d: the model had no image ready; showing a random fallback", i)
                items.append(Item(pool.images[index], i, pool.ids[index], (index, role)))
            return items

        def on_shown(item: Item, timing) -> None:
            index, role = item.info
            info = {"stimulus": item.stimulus, "pool_index": index, "role": role, "trial": trial}
            if timing.aborted:
                info["aborted"] = True
            aligner.add_onset(item.index, timing.onset, info)
            if clock is not None:
                clock.add_onset(item.index, timing.onset)
            writer.log("markers", {"index": item.index, **info, "onset": timing.onset, "offset": timing.offset,
                                   "dropped_frames": timing.dropped_frames,
                                   "frame_intervals": timing.frame_intervals})
            progress.presented += 1
            progress.dropped_frames += timing.dropped_frames
            if on_progress:
                on_progress(progress)

        while next_index < p.presentations and not progress.finished:
            _handle_worker(worker.messages(), schedule, writer, progress, pool)
            if inlet.error is not None:
                raise ClosedLoopError(f"spike stream {inlet.name!r}: {inlet.error}")
            for stream, name in ((photodiode, "photodiode"), (gaze, "gaze")):
                if stream is not None and stream.error is not None:
                    raise ClosedLoopError(f"{name} stream {stream.name!r}: {stream.error}")
            while requeue:
                schedule.requeued.append(requeue.popleft())
            outcome = run_trial(presenter, protocol.trial, trial, pick, p.on_frames, p.off_frames,
                                fixating, on_shown)
            writer.frames(presenter.take_flips())
            _record_trial(outcome, schedule, writer, progress)
            next_index += len(outcome.shown)
            trial += 1

        _drain(aligner, protocol, rig)
        # The inlet's thread may still be handing the last response to the worker: join it first,
        # so the worker learns every logged response and nothing arrives after the summary.
        inlet.stop()
        inlet_stopped = True
        if photodiode is not None:
            photodiode.stop()
            photodiode_stopped = True
        final = worker.stop()
        _handle_worker(final, schedule, writer, progress, pool)
        writer.flush()
        record = read_session(session_dir)  # what is on disk is what we summarise
        summary = _summary(protocol, rig, units, record, progress, ready.core,
                           time.monotonic() - started, inlet, aligner)
        summary["clock"] = _clock_summary(rig, clock, progress)
        if photodiode is not None:
            summary["photodiode"] = _photodiode_summary(record.responses)
        states = [s["state"] for s in record.selections if "state" in s]
        summary["figures"] = [f.name for f in strategy.results(states, session_dir)]
        if on_progress:
            on_progress(progress)
        return summary
    finally:
        if presenter is not None:
            presenter.close()
        if inlet is not None and not inlet_stopped:
            inlet.stop()
        if photodiode is not None and not photodiode_stopped:
            photodiode.stop()
        if gaze is not None:
            gaze.stop()
        if worker is not None and worker.process.is_alive():
            worker.process.terminate()
        if simulator is not None:
            simulator.terminate()
            simulator.wait(timeout=10)
        writer.close(summary)


def _photodiode_summary(responses: list[dict]) -> dict:
    """Distribution of the photodiode's onset corrections (ms, light minus flip) and the misses."""
    ms = np.array([r["photodiode_correction"] for r in responses if "photodiode_correction" in r]) * 1e3
    quantiles = dict(zip(("min", "p5", "median", "p95", "max"),
                         np.percentile(ms, [0, 5, 50, 95, 100]).round(3).tolist())) if len(ms) else {}
    return {"corrected": len(ms), "missed": sum("photodiode_missed" in r for r in responses),
            "correction_ms": quantiles}


def _clock_summary(rig: Rig, clock: ClockMap | None, progress: Progress) -> dict:
    """How spikes were put on this clock, and how well the sync fit holds (microseconds)."""
    report = {"sync": rig.clock.sync, "anomalies": progress.clock_events}
    if clock is not None:
        residuals = np.abs(clock.residuals()) * 1e6
        report.update(pairs=clock.pairs,
                      residual_median_us=float(np.median(residuals)) if len(residuals) else None,
                      residual_max_us=float(residuals.max()) if len(residuals) else None)
    return report


def _frame_summary(flips: np.ndarray, refresh_rate: float, in_presentations: int) -> dict:
    """Every flip of the session: count, dropped frames (all, and during presentations) and
    the frame interval's median and 99th percentile (ms)."""
    intervals = np.diff(flips) * 1e3
    if not len(intervals):
        return {"count": len(flips), "dropped": 0, "dropped_in_presentations": in_presentations}
    return {"count": len(flips), "dropped": int(np.sum(intervals > DROPPED_FRAME * 1e3 / refresh_rate)),
            "dropped_in_presentations": in_presentations,
            "interval_median_ms": round(float(np.median(intervals)), 3),
            "interval_p99_ms": round(float(np.percentile(intervals, 99)), 3)}


def _drain(aligner: ResponseAligner, protocol: Protocol, rig: Rig) -> None:
    """Wait (bounded) for the last response windows to close."""
    deadline = time.monotonic() + protocol.window.end + max(rig.max_latency, rig.stall_after) + 2.0
    while aligner.pending and time.monotonic() < deadline:
        time.sleep(0.01)


def _record_trial(outcome: TrialOutcome, schedule: RoleSchedule, writer: SessionWriter,
                  progress: Progress) -> None:
    """Log how a trial ended; what a fixation break cut short or left unshown is shown again
    (held-out images excepted: they come round again anyway)."""
    cut = [item for item, timing in outcome.shown if timing.aborted] + outcome.unshown
    again = [item.info[0] for item in cut if item.info[1] != "heldout"]
    schedule.requeued.extend(again)
    progress.trials[outcome.end] += 1
    writer.log("events", {"kind": "trial", "trial": outcome.number, "end": outcome.end,
                          "shown": [item.index for item, _ in outcome.shown],
                          "requeued": again, "reward": outcome.reward, "time": pylsl.local_clock()})
    if outcome.end != "completed":
        log.info("trial %d: %s; %d image(s) re-queued", outcome.number, outcome.end.replace("_", " "),
                 len(again))


def _handle_worker(messages: Sequence[Message], schedule: RoleSchedule, writer: SessionWriter,
                   progress: Progress, pool: StimulusPool) -> None:
    """Log what the model worker said and act on it: a choice queues its images (and grows the
    pool by what it made), a report updates the progress, an error ends the session."""
    for message in messages:
        if isinstance(message, Choice):
            added = None
            if message.added is not None:  # synthesised stimuli (the worker saved them): the pool grows in step
                made = message.added
                index = pool.append(made.images, made.families, made.params)
                if index[0] != made.start:
                    raise ClosedLoopError(f"model worker added stimuli at {made.start}, the pool ends at {index[0]}")
                added = index.tolist()
            schedule.queue = deque(message.chosen)
            writer.log("selections", {"time": pylsl.local_clock(), **message.record(added)})
            progress.turnaround_ms.append(message.turnaround_ms)
            progress.core_version = message.core_version
            progress.strategy_state = message.state if message.state is not None else progress.strategy_state
            if message.finished and not progress.finished:
                progress.finished = True
                writer.log("events", {"kind": "strategy_finished", "responses": message.responses,
                                      "time": pylsl.local_clock()})
        elif isinstance(message, (Accuracy, Stopped)):
            report = message if isinstance(message, Accuracy) else message.accuracy
            writer.log("accuracy", {"time": pylsl.local_clock(), **report.record()})
            progress.r_observed = _median(report.r_observed)
            progress.r_true = _median(report.r_true or [])
            progress.final_accuracy = report.record()
        elif isinstance(message, Comparison):
            writer.log("events", {**message.record(), "time": pylsl.local_clock()})
        elif isinstance(message, Error):
            writer.log("events", {"kind": "model_error", "detail": message.detail})
            raise ClosedLoopError(f"model worker failed: {message.line}")


def _summary(protocol, rig, units, record, progress, core: str, duration, inlet, aligner) -> dict:
    counts = {}
    for r in record.responses:
        counts.setdefault(r["role"], []).append(r["counts"])
    final = progress.final_accuracy
    turnaround = np.array(progress.turnaround_ms[1:] or [np.nan])
    return {
        "status": "complete",
        "session": str(record.path),
        "protocol": protocol.protocol.name,
        "rig": rig.rig.name,
        "strategy": protocol.selection.strategy,
        "duration_s": round(duration, 2),
        "presentations": progress.presented,
        "responses": len(record.responses),
        "deadline_misses": progress.deadline_misses,
        "spike_gaps": [{"start": a, "end": b} for a, b in inlet.gaps],
        "gap_responses": progress.gap_responses,
        "aborted_responses": progress.aborted_responses,
        "trials": {**progress.trials,
                   "rewards": progress.trials["completed"] if protocol.trial.reward else 0},
        "frames": _frame_summary(record.frames, rig.display.refresh_rate, progress.dropped_frames),
        "spikes": int(inlet.received),
        "unknown_spikes": aligner.unknown_spikes,
        "units": [u.name for u in units],
        "core": core,
        "mean_counts": {role: np.mean(c, axis=0).round(3).tolist() for role, c in counts.items()},
        "heldout_r_observed": final.get("r_observed"),
        "heldout_r_true": final.get("r_true"),
        "accuracy_over_time": [
            {key: a.get(key) for key in ("responses", "r_observed", "r_true")} for a in record.accuracy
        ],
        "strategy_finished": progress.finished,
        "strategy_state": progress.strategy_state,
        "turnaround_ms": {"median": float(np.nanmedian(turnaround)),
                          "p99": float(np.nanpercentile(turnaround, 99))},
    }
