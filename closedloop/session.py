"""One closed-loop session as one object: :meth:`Session.open`, :meth:`Session.run`, :meth:`Session.close`.

The presentation loop runs in the calling thread and never waits: spikes arrive on an ingestion
thread, the model learns and chooses in a worker (a child process, or a Ray actor on this machine or
another host: the rig's ``[learner]``), the session writer appends on its own thread. When the model has not delivered the next image in time, a random fallback image is
shown and the miss is counted and logged.

A :class:`Session` owns everything it starts (the marker outlet, the simulator of a simulated
rig, the model worker, the inlets, the presenter, the writer), so its guarantees live here:

* **No orphans.** The simulator and the model worker die with this process, even under SIGKILL,
  and ignore Ctrl-C (:mod:`closedloop.children`; a Ray actor dies with its driver): the session
  stops them.
* **Its own streams.** The marker outlet's source_id is the rig's, the same in every session
  (:func:`closedloop.acquire.streams.marker_stream`: a recorder can pin it in advance), and its
  ``<desc>`` names the session (its directory name); a simulated rig's simulator serves that
  session alone (it takes only the marker outlet that names its session) and its outlets are
  found by session-specific source_ids (:func:`closedloop.acquire.streams.session_stream`), so an
  orphaned or foreign outlet of the same name is never picked up. A real rig's streams are
  pinned as its rig file says.
* **Faults end the run in one line.** After every presentation and between trials the session
  looks at its children and streams: a simulator that exited (its status and the last line of
  ``simulator.log``), a model worker that failed (its own error) or exited (its status; a Ray
  actor that died or cannot be reached), an inlet that failed. The run then ends with a :class:`~closedloop.errors.ClosedLoopError` within one
  presentation (a trial waiting for fixation: within ``[trial] acquire`` s), with the record
  complete and a full summary (status ``failed``, ``error`` the line). A simulator is not
  restarted. A spike stream silent beyond ``[spikes] lost_after`` s ends the run cleanly (status
  ``stream_lost``) or, with ``on_lost = "flag"``, presentation goes on with every window flagged
  as a gap.
* **Ctrl-C** (KeyboardInterrupt) ends the run with every open response window drained and a full
  summary (status ``interrupted``); the KeyboardInterrupt then goes on to the caller.
* :meth:`close` releases everything in order; the first error is kept, the others are logged.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pylsl

from closedloop.acquire.gaze import GazeInlet
from closedloop.acquire.photodiode import PhotodiodeInlet
from closedloop.acquire.recorded import RecordedInlet
from closedloop.acquire.spikes import SpikeInlet
from closedloop.acquire.streams import InletThread, marker_stream, resolve_stream, session_stream, stream_header
from closedloop.align.clock import ClockMap
from closedloop.align.windows import Response as Window
from closedloop.align.windows import ResponseAligner
from closedloop.checks import check_session
from closedloop.children import set_death_signal, sigint_shielded
from closedloop.config import Protocol, Rig, StreamSpec, UnitSpec, to_jsonable
from closedloop.errors import ClosedLoopError, one_line
from closedloop.learn.worker import (Accuracy, Choice, Comparison, Error, Message, ModelWorker, Stopped, Worker,
                                     WorkerConfig, cores_folder)
from closedloop.present import open_presenter
from closedloop.present.geometry import Layout
from closedloop.present.markers import MarkerOutlet
from closedloop.present.trials import Item, TrialOutcome, run_trial
from closedloop.progress import Progress
from closedloop.record import SessionRecord, SessionWriter, check_resumable, read_session
from closedloop.record.naming import archive_id
from closedloop.record.session import ADDED
from closedloop.select.policy import RoleSchedule
from closedloop.select.registry import make_strategy
from closedloop.stimuli.candidates import candidate_pool, split_pool
from closedloop.stimuli.pool import first_added
from closedloop.summary import (clock_summary, frame_summary, mean_counts, photodiode_summary,
                                turnaround_summary)

log = logging.getLogger(__name__)

SIMULATOR_START = 120.0  # s allowed for the simulator process to load its neurons and open its outlets
SIMULATOR_LOG = "simulator.log"
SIMULATOR_STOP = 3.0  # s a simulator has to exit after SIGTERM (it takes about one) before SIGKILL
RESOLVE_STEP = 1.0  # s of each look for the simulator's streams between looks at the simulator
DRAIN_SLACK = 2.0  # s beyond a window's end and the stream's latency to wait for the last windows


def session_units(rig: Rig) -> list[UnitSpec]:
    """The units whose spikes are counted: the rig's, or one per simulated neuron."""
    if rig.rig.simulated:
        from closedloop.simulate.rig import simulated_units

        return simulated_units(rig)
    return list(rig.units)


def start_simulator(rig_path: Path, stimuli_path: Path, session_id: str, log_path: Path) -> subprocess.Popen:
    """``closedloop simulate`` serving session ``session_id`` as a child process that dies with
    this one and ignores Ctrl-C; its output goes to ``log_path``."""
    with open(log_path, "ab") as out, sigint_shielded():
        return subprocess.Popen(
            [sys.executable, "-m", "closedloop", "simulate", "--rig", str(rig_path), "--stimuli",
             str(stimuli_path), "--session-id", session_id],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=functools.partial(set_death_signal, os.getpid()))


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1].strip() if lines else "(no output)"


def _one_line(error: BaseException) -> str:
    """The run's error as its one line: Ctrl-C, a user-facing error as it is, else what raised it."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (SIGINT, Ctrl-C)"
    return str(error) if isinstance(error, ClosedLoopError) else one_line(error)


def _median(values: list[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return float(np.median(valid)) if valid else None


class _FirstError:
    """Runs clean-up steps one after another: the first error is kept, the later ones logged."""

    def __init__(self, error: BaseException | None):
        self.error = error

    def attempt(self, what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except BaseException as exc:  # a second Ctrl-C too: every step still runs
            if self.error is None:
                self.error = exc
            else:
                log.error("closing the session (%s): %s", what, _one_line(exc))


class Session:
    """A closed-loop session: ``open`` (check, create or reopen the record, start the children and
    the streams), ``run`` (present until done; returns the summary), ``close`` (stop everything in
    order, write the summary). As a context manager it opens and closes itself.

    Parameters
    ----------
    protocol, rig : Protocol, Rig
        Validated configuration (see ``closedloop.config``).
    path : Path
        The session directory: created by ``open`` (it must not exist), or, with ``resume``,
        the one to continue: the model first learns every recorded response, presentation
        numbering goes on after the last recorded marker, and the images in flight when it
        stopped are shown again (held-out ones excepted).
    on_progress : callable, optional
        Called with the :class:`Progress` after every presentation (in the
        presentation thread) and once at the end.
    resume : bool
        Continue ``path``.

    Attributes
    ----------
    state : str
        ``new``, ``open``, ``running`` or ``closed``.
    summary : dict or None
        What ``summary.json`` holds, once the run ended.
    """

    def __init__(self, protocol: Protocol, rig: Rig, path: Path,
                 on_progress: Callable[[Progress], None] | None = None, resume: bool = False):
        self.protocol, self.rig, self.path = protocol, rig, Path(path)
        self.id = self.path.name
        self.on_progress, self.resume = on_progress, resume
        self.state = "new"
        self.units = session_units(rig)
        self.progress = Progress(total=protocol.protocol.presentations, units=tuple(u.name for u in self.units))
        self.summary: dict | None = None
        self.core: str | None = None
        self.requeue: deque[int] = deque()  # pool indices to show again (appended from the inlet thread)
        self.writer: SessionWriter | None = None
        self.markers: MarkerOutlet | None = None
        self.simulator: subprocess.Popen | None = None
        self.worker: Worker | None = None
        self.inlet: SpikeInlet | None = None
        self.photodiode: PhotodiodeInlet | None = None
        self.gaze: GazeInlet | None = None
        self.recorded: list[RecordedInlet] = []  # the rig's [[record]] streams
        self.aligner: ResponseAligner | None = None
        self.clock: ClockMap | None = None
        self.presenter = None
        self._started = time.monotonic()

    # ------------------------------------------------------------------ lifecycle --
    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, kind, error, traceback) -> None:
        self.close(error)

    def _expect(self, state: str) -> None:
        if self.state != state:
            raise RuntimeError(f"session {self.path}: {self.state}, not {state}")

    def open(self) -> Session:
        """Check the configuration, then create (or reopen) the record and start everything.

        Raises
        ------
        ClosedLoopError
            A bad setting, a missing stream, a child that failed to start (one line); everything
            started so far is stopped again.
        """
        self._expect("new")
        check_session(self.protocol, self.rig)
        self.state = "open"
        try:
            recorded = self._open_record()
            infos = self._start_children()
            self._start_worker(recorded)
            self._start_acquisition(infos)
            self.presenter = open_presenter(self.rig.display, self.layout, self.markers)
        except BaseException as exc:
            self.close(exc)
            raise
        return self

    def run(self) -> dict:
        """Present until every presentation is shown, the strategy has finished or the spike stream
        is lost (``on_lost = "end"``); return the summary (status ``complete`` or ``stream_lost``).

        Raises
        ------
        ClosedLoopError
            A child or a stream failed (see the module docstring); :meth:`close` records it.
        """
        self._expect("open")
        self.state = "running"
        p, trial_spec = self.protocol.protocol, self.protocol.trial
        fixating = (lambda: self.gaze.fixating(trial_spec.window_deg)) if self.gaze else None
        while self.next_index < p.presentations and not self.progress.finished and not self._stream_ended():
            self._check()
            while self.requeue:
                self.schedule.requeued.append(self.requeue.popleft())
            outcome = run_trial(self.presenter, trial_spec, self.trial, self._pick, p.on_frames, p.off_frames,
                                fixating, self._on_shown)
            self.writer.frames(self.presenter.take_flips())
            self._record_trial(outcome)
            self.next_index += len(outcome.shown)
            self.trial += 1
        self._finish("stream_lost" if self._stream_ended() else "complete")
        if self.on_progress:
            self.on_progress(self.progress)
        return self.summary

    def close(self, error: BaseException | None = None) -> None:
        """Stop everything this session started, in order, and write the summary.

        Parameters
        ----------
        error : BaseException, optional
            What ended the run early: a KeyboardInterrupt gives status ``interrupted``, anything
            else ``failed`` with its one line as ``error``. Without it (and without a finished
            run) the status is ``aborted``.

        Raises
        ------
        BaseException
            The first error met while closing, unless ``error`` was given (then they are logged).
        """
        if self.state == "closed":
            return
        errors = _FirstError(error)
        if self.presenter is not None:
            errors.attempt("presenter", self.presenter.close)
        if self.writer is not None and self.summary is None:
            status = ("aborted" if error is None else "interrupted" if isinstance(error, KeyboardInterrupt)
                      else "failed")
            errors.attempt("summary", lambda: self._finish(status, None if error is None else _one_line(error)))
            self.summary = self.summary or {"status": status, "session": str(self.path),
                                            "error": _one_line(errors.error) if errors.error else None}
        for what, release in self._releases():
            errors.attempt(what, release)
        self.state = "closed"
        if errors.error is not None and errors.error is not error:
            raise errors.error

    def _releases(self) -> list[tuple[str, Callable[[], object]]]:
        """What :meth:`close` stops, in order: acquisition, children, outlets, the record."""
        steps = [(stream.name, stream.stop) for stream in (self.inlet, self.photodiode, self.gaze, *self.recorded)
                 if stream]
        if self.worker is not None:
            steps.append(("model worker", self.worker.terminate))
        if self.simulator is not None:
            steps.append(("simulator", self._stop_simulator))
        if self.markers is not None:
            steps.append(("marker outlet", self.markers.close))
        if self.writer is not None:
            steps.append(("record", lambda: self.writer.close(self.summary)))
        return steps

    def _stop_simulator(self) -> None:
        """SIGTERM; SIGKILL if it has not exited within ``SIMULATOR_STOP`` s (logged, never raised)."""
        self.simulator.terminate()
        try:
            self.simulator.wait(timeout=SIMULATOR_STOP)
        except subprocess.TimeoutExpired:
            log.warning("the simulator did not exit within %g s of SIGTERM: killed", SIMULATOR_STOP)
            self.simulator.kill()
            self.simulator.wait()

    # ---------------------------------------------------------------- opening --
    def _open_record(self) -> list[dict]:
        """Make or reopen the record; returns the recorded responses the worker learns first."""
        p = self.protocol.protocol
        self.strategy = make_strategy(self.protocol.selection.strategy, self.protocol.selection.params)
        self.layout = Layout.of(self.rig.display, self.protocol.stimulus, self.protocol.trial)
        record = read_session(self.path) if self.resume else None
        self.pool = record.pool if record else candidate_pool(self.protocol, self.layout.patch_px)
        started_with = first_added(self.path / ADDED) if record else None  # the split is the first run's
        self.candidates, self.heldout = split_pool(len(self.pool) if started_with is None else started_with,
                                                   self.protocol.heldout.images, p.seed)
        self.strategy.check([u.name for u in self.units], self.pool)
        if record is None:
            self.next_index = self.trial = self.lifetime = 0
            self.writer = SessionWriter(self.path, to_jsonable(self.protocol), {
                **to_jsonable(self.rig), "recorded_units": [u.model_dump() for u in self.units]}, self.pool)
            return []
        point = check_resumable(record)
        if point.next_index >= p.presentations:
            raise ClosedLoopError(f"session {self.path}: all {p.presentations} presentations are recorded")
        self.next_index, self.trial, self.lifetime = point.next_index, point.next_trial, point.lifetime
        self.progress.presented = self.next_index
        self.requeue.extend(point.in_flight)  # shown when the run stopped, never answered
        self.writer = SessionWriter.reopen(self.path)
        self.writer.log("events", {"kind": "resumed", "from_presentation": self.next_index,
                                   "time": pylsl.local_clock(), "unanswered": point.unanswered})
        return [r for r in record.responses if not (r.get("gap") or r.get("aborted"))]  # as live: never cut ones

    def _start_children(self) -> dict[str, pylsl.StreamInfo]:
        """The marker outlet, the simulator (simulated rig) and the streams it or the rig offers."""
        rig = self.rig
        self.markers = MarkerOutlet(rig.markers, marker_stream(rig).source_id, session_id=self.id, rig=rig.rig.name,
                                    pool_index=self.pool.index)
        if rig.rig.simulated:
            self.simulator = start_simulator(rig.source, self.path / "stimuli.npz", self.id,
                                             self.path / SIMULATOR_LOG)
        return {**{role: self._resolve(spec, role) for role, spec in
                   (("spikes", rig.spikes), ("photodiode", rig.photodiode), ("gaze", rig.gaze)) if spec is not None},
                **{f"record:{spec.name}": self._resolve(spec, "record") for spec in rig.record}}

    def _resolve(self, spec: StreamSpec, role: str) -> pylsl.StreamInfo:
        """The rig's stream of ``role``; a simulated rig's is its own simulator's (waiting for it to
        start, or to fail). A ``[[record]]`` stream (role ``record``) is never the simulator's."""
        if self.simulator is None or role == "record":
            return resolve_stream(spec, self.rig.resolve_timeout)
        spec = session_stream(spec, role, self.id)
        deadline = time.monotonic() + SIMULATOR_START
        while True:
            try:
                return resolve_stream(spec, RESOLVE_STEP)
            except ClosedLoopError as exc:
                self._check_simulator()
                if time.monotonic() > deadline:
                    raise ClosedLoopError(f"the simulator's {role} stream (source_id {spec.source_id!r}) did not "
                                          f"appear within {SIMULATOR_START:g} s: {exc}") from None

    def _start_worker(self, recorded: list[dict]) -> None:
        """The model worker where the rig's ``[learner]`` says; it learns ``recorded`` first."""
        p, rig = self.protocol.protocol, self.rig
        config = WorkerConfig(
            pool_path=self.path / "stimuli.npz", units=tuple(u.name for u in self.units), model=self.protocol.model,
            selection=self.protocol.selection, strategy=self.strategy, candidates=tuple(self.candidates.tolist()),
            heldout=tuple(self.heldout.tolist()), seed=p.seed, truth=rig.simulation if rig.rig.simulated else None,
            checkpoints=self.path / "checkpoints", added=self.path / ADDED,
            cores=cores_folder(self.path, self.lifetime))
        if rig.learner.where == "ray":
            from closedloop.learn.remote import RayWorker

            self.worker = RayWorker(config, self.path, rig.learner)
        else:
            self.worker = ModelWorker(config)
        ready = self.worker.start()
        self.core = ready.core
        self.writer.log("events", {"kind": "model_ready", "core": ready.core, "features": ready.features,
                                   "learner": self.worker.where, "time": pylsl.local_clock()})
        for r in recorded:  # what the animal already showed us
            self.worker.send_response(r["pool_index"], np.array(r["counts"]), r["role"] == "heldout",
                                      pylsl.local_clock())

    def _start_acquisition(self, infos: dict[str, pylsl.StreamInfo]) -> None:
        """The aligner and the inlets (photodiode, spikes, gaze, the ``[[record]]`` streams: every one but the
        spikes recorded to ``streams/``), and the role schedule."""
        protocol, rig, p = self.protocol, self.rig, self.protocol.protocol
        self.aligner = ResponseAligner([(u.channel, u.unit) for u in self.units], protocol.window.start,
                                       protocol.window.end, rig.photodiode.max_delay if rig.photodiode else 0.1)
        self.clock = ClockMap(on_step=self._on_stream_event) if rig.clock.sync == "events" else None
        if "photodiode" in infos:
            self.photodiode = PhotodiodeInlet(infos["photodiode"], rig.photodiode, self.aligner.add_light,
                                              max_latency=rig.max_latency, on_event=self._on_stream_event,
                                              on_samples=functools.partial(self.writer.samples, "photodiode"))
            self._start_recorded(self.photodiode, "photodiode", "photodiode")
        self.inlet = SpikeInlet(infos["spikes"], self._on_spikes, self._on_tick, rig.max_latency, rig.spikes,
                                channels=max(u.channel for u in self.units), clock=self.clock,
                                sync_channel=rig.clock.sync_channel, on_event=self._on_stream_event,
                                stall_after=rig.stall_after, on_gap=self.aligner.add_gap)
        self.inlet.start()
        if "gaze" in infos:
            self.gaze = GazeInlet(infos["gaze"], on_event=self._on_stream_event,
                                  on_samples=functools.partial(self.writer.samples, "gaze"))
            self._start_recorded(self.gaze, "gaze", "gaze")
        for role, info in infos.items():
            if role.startswith("record:"):
                key = archive_id(info.name())
                self.recorded.append(RecordedInlet(info, functools.partial(self.writer.samples, key),
                                                   on_event=self._on_stream_event))
                self._start_recorded(self.recorded[-1], key, "record")
        self.schedule = RoleSchedule(protocol.heldout.every, protocol.selection.control_fraction, self.candidates,
                                     self.heldout, p.seed + 2)

    def _start_recorded(self, inlet: InletThread, key: str, role: str) -> None:
        """Write the header of ``inlet``'s stream (``streams/<key>.json``), then start it: its samples
        go to ``streams/<key>.bin`` as they arrive."""
        self.writer.stream_header(key, stream_header(inlet.info(), key, role))
        inlet.start()

    # ---------------------------------------------------------------- watching --
    def _check(self) -> None:
        """Raise ClosedLoopError (one line) if a child or a stream has failed: the worker's own
        error first, then its exit, the simulator's exit, an inlet's error."""
        self._handle(self.worker.messages())
        self.worker.check_alive()
        self._check_simulator()
        for stream, what in ((self.inlet, "spike"), (self.photodiode, "photodiode"), (self.gaze, "gaze"),
                             *((recorded, "recorded") for recorded in self.recorded)):
            if stream is not None and stream.error is not None:
                raise ClosedLoopError(f"{what} stream {stream.name!r}: {_one_line(stream.error)}")

    def _check_simulator(self) -> None:
        if self.simulator is not None and self.simulator.poll() is not None:
            raise ClosedLoopError(f"simulator exited with status {self.simulator.returncode}: "
                                  f"{_last_line(self.path / SIMULATOR_LOG)}")

    def _stream_ended(self) -> bool:
        return self.inlet.lost and self.rig.spikes.on_lost == "end"

    def _acquiring(self) -> bool:
        """Whether the acquisition time still advances (spikes come, or a lost stream is flagged)."""
        inlet, simulated = self.inlet, self.simulator
        return (inlet is not None and inlet.error is None and (simulated is None or simulated.poll() is None)
                and (inlet.state == "ok" or (inlet.lost and self.rig.spikes.on_lost == "flag")))

    # ---------------------------------------------------- the inlet thread's side --
    def _on_spikes(self, times: np.ndarray, channels: np.ndarray, units: np.ndarray) -> None:
        unit_index = self.aligner.add_spikes(times, channels, units)
        self.writer.spikes(times, channels, units)
        self.progress.add_spikes(times, unit_index, pylsl.local_clock())

    def _on_tick(self, now: float) -> None:
        settled = self.photodiode.covered_until - self.rig.photodiode.max_delay if self.photodiode else np.inf
        for window in self.aligner.complete(now, settled):
            self._respond(window)

    def _respond(self, r: Window) -> None:
        """Log a closed window; hand it to the worker unless a gap or a fixation break cut it."""
        record = {"index": r.index, "onset": r.onset, "counts": r.counts.tolist(), **r.info}
        if self.photodiode and "flip" not in r.info:
            record["photodiode_missed"] = True
        self.writer.log("responses", record)
        self.progress.responses += 1
        if r.info.get("gap"):  # incomplete counts: never trained on, shown again if asked
            self.progress.gap_responses += 1
            if self.protocol.selection.requeue_gaps and r.info["role"] != "heldout":
                self.requeue.append(r.info["pool_index"])
        elif r.info.get("aborted"):  # cut short by a fixation break (re-queued when it broke)
            self.progress.aborted_responses += 1
        else:
            self.worker.send_response(r.info["pool_index"], r.counts, r.info["role"] == "heldout",
                                      pylsl.local_clock())
            self.progress.recent_counts.append(r.counts)

    def _on_stream_event(self, event: dict) -> None:
        self.writer.log("events", event)
        if event["kind"].startswith("clock_"):
            self.progress.clock_events += 1

    # ------------------------------------------------------ the presentation side --
    def _pick(self) -> list[Item]:
        """The trial's images, chosen once fixation is acquired."""
        items = []
        for i in range(self.next_index, min(self.next_index + self.protocol.trial.images,
                                            self.protocol.protocol.presentations)):
            self._handle(self.worker.messages())
            role, index = self.schedule.next(i)
            if role == "fallback":
                self.progress.deadline_misses += 1
                self.writer.log("events", {"kind": "deadline_miss", "index": i, "time": pylsl.local_clock()})
                log.warning("presentation %d: the model had no image ready; showing a random fallback", i)
            items.append(Item(self.pool.images[index], i, self.pool.ids[index], (index, role)))
        return items

    def _on_shown(self, item: Item, timing) -> None:
        index, role = item.info
        info = {"stimulus": item.stimulus, "pool_index": index, "role": role, "trial": self.trial}
        if timing.aborted:
            info["aborted"] = True
        self.aligner.add_onset(item.index, timing.onset, info)
        if self.clock is not None:
            self.clock.add_onset(item.index, timing.onset)
        self.writer.log("markers", {"index": item.index, **info, "onset": timing.onset, "offset": timing.offset,
                                    "dropped_frames": timing.dropped_frames,
                                    "frame_intervals": timing.frame_intervals})
        self.progress.presented += 1
        self.progress.shown_at.append(time.monotonic())
        self.progress.dropped_frames += timing.dropped_frames
        self.progress.stream = self.inlet.state
        if self.on_progress:
            self.on_progress(self.progress)
        self._check()

    def _record_trial(self, outcome: TrialOutcome) -> None:
        """Log how a trial ended; what a fixation break cut short or left unshown is shown again
        (held-out images excepted: they come round again anyway)."""
        cut = [item for item, timing in outcome.shown if timing.aborted] + outcome.unshown
        again = [item.info[0] for item in cut if item.info[1] != "heldout"]
        self.schedule.requeued.extend(again)
        self.progress.trials[outcome.end] += 1
        self.writer.log("events", {"kind": "trial", "trial": outcome.number, "end": outcome.end,
                                   "shown": [item.index for item, _ in outcome.shown],
                                   "requeued": again, "reward": outcome.reward, "time": pylsl.local_clock()})
        if outcome.end != "completed":
            log.info("trial %d: %s; %d image(s) re-queued", outcome.number, outcome.end.replace("_", " "),
                     len(again))

    def _handle(self, messages: Sequence[Message]) -> None:
        """Log what the model worker said and act on it: a choice queues its images (and grows the
        pool by what it made), a report updates the progress, an error ends the session."""
        for message in messages:
            if isinstance(message, Choice):
                self._choose(message)
            elif isinstance(message, (Accuracy, Stopped)):
                report = message if isinstance(message, Accuracy) else message.accuracy
                self.writer.log("accuracy", {"time": pylsl.local_clock(), **report.record()})
                self.progress.r_observed = _median(report.r_observed)
                self.progress.r_true = _median(report.r_true or [])
                self.progress.final_accuracy = report.record()
            elif isinstance(message, Comparison):
                self.writer.log("events", {**message.record(), "time": pylsl.local_clock()})
            elif isinstance(message, Error):
                self.writer.log("events", {"kind": "model_error", "detail": message.detail})
                raise ClosedLoopError(f"model worker failed: {message.line}")

    def _choose(self, choice: Choice) -> None:
        added = None
        if choice.added is not None:  # synthesised stimuli (the worker saved them): the pool grows in step
            made = choice.added
            index = self.pool.append(made.images, made.families, made.params)
            if index[0] != made.start:
                raise ClosedLoopError(f"model worker added stimuli at {made.start}, the pool ends at {index[0]}")
            added = index.tolist()
        self.schedule.queue = deque(choice.chosen)
        self.writer.log("selections", {"time": pylsl.local_clock(), **choice.record(added)})
        progress = self.progress
        progress.turnaround_ms.append(choice.turnaround_ms)
        progress.core_version = choice.core_version
        progress.strategy_state = choice.state if choice.state is not None else progress.strategy_state
        if choice.finished and not progress.finished:
            progress.finished = True
            self.writer.log("events", {"kind": "strategy_finished", "responses": choice.responses,
                                       "time": pylsl.local_clock()})

    # ----------------------------------------------------------------- the end --
    def _finish(self, status: str, error: str | None = None) -> None:
        """Drain the open windows (while the acquisition time advances), stop acquisition, then the
        worker (it learns every logged response first), and summarise what is on disk."""
        deadline = time.monotonic() + self.protocol.window.end + max(self.rig.max_latency, self.rig.stall_after) \
            + DRAIN_SLACK
        while self.aligner is not None and self.aligner.pending and self._acquiring() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        for stream in (self.inlet, self.photodiode, self.gaze, *self.recorded):
            if stream is not None:
                stream.stop()
        if self.worker is not None and self.worker.is_alive():
            self._handle(self.worker.stop())
        self.writer.flush()
        self.summary = self._summary(read_session(self.path), status, error)

    def _summary(self, record: SessionRecord, status: str, error: str | None) -> dict:
        """``summary.json``: what is on disk, the progress and the streams."""
        progress, protocol, rig, inlet = self.progress, self.protocol, self.rig, self.inlet
        final = progress.final_accuracy
        summary = {
            "status": status, "session": str(record.path), "protocol": protocol.protocol.name, "rig": rig.rig.name,
            "strategy": protocol.selection.strategy, "duration_s": round(time.monotonic() - self._started, 2),
            "presentations": progress.presented, "responses": len(record.responses),
            "deadline_misses": progress.deadline_misses,
            "spike_stream": inlet.state if inlet else None,
            "spike_gaps": [{"start": a, "end": b} for a, b in (inlet.gaps if inlet else [])],
            "gap_responses": progress.gap_responses, "aborted_responses": progress.aborted_responses,
            "trials": {**progress.trials, "rewards": progress.trials["completed"] if protocol.trial.reward else 0},
            "frames": frame_summary(record.frames, rig.display.refresh_rate, progress.dropped_frames),
            "spikes": int(inlet.received) if inlet else 0,
            "unknown_spikes": self.aligner.unknown_spikes if self.aligner else 0,
            "units": [u.name for u in self.units], "core": self.core,
            "learner": self.worker.where if self.worker else None,
            "mean_counts": mean_counts(record.responses),
            "heldout_r_observed": final.get("r_observed"), "heldout_r_true": final.get("r_true"),
            "accuracy_over_time": [{key: a.get(key) for key in ("responses", "r_observed", "r_true")}
                                   for a in record.accuracy],
            "strategy_finished": progress.finished, "strategy_state": progress.strategy_state,
            "turnaround_ms": turnaround_summary(progress.turnaround_ms),
            "clock": clock_summary(rig, self.clock, progress.clock_events),
            "stream_samples": {key: len(stream.times) for key, stream in record.streams.items()},
        }
        if error is not None:
            summary["error"] = error
        if rig.photodiode is not None:
            summary["photodiode"] = photodiode_summary(record.responses)
        states = [s["state"] for s in record.selections if "state" in s]
        summary["figures"] = [f.name for f in self.strategy.results(states, self.path)]
        return summary


def run_session(protocol: Protocol, rig: Rig, session_dir: Path,
                on_progress: Callable[[Progress], None] | None = None, resume: bool = False) -> dict:
    """Run one closed-loop session and return its summary (see :class:`closedloop.session.Session`).

    Parameters
    ----------
    protocol, rig : Protocol, Rig
        Validated configuration (see ``closedloop.config``).
    session_dir : Path
        Directory to create; everything recorded goes there.
    on_progress : callable, optional
        Called with a :class:`Progress` after every presentation.
    resume : bool
        Continue the session already in ``session_dir``.

    Raises
    ------
    ClosedLoopError
        A bad setting, a missing stream, a child process that failed (one line); what was
        recorded stays in ``session_dir``, with a summary (status ``failed``).
    KeyboardInterrupt
        After the summary (status ``interrupted``) is written.
    """
    with Session(protocol, rig, session_dir, on_progress, resume) as session:
        return session.run()
