"""The model worker as a Ray actor: the learner on another host (a GPU machine, a cluster's node) or
on this one, chosen by the rig's ``[learner]`` table (``where = "ray"``).

:class:`RayWorker` is what the session talks to, exactly as to a process
(:class:`~closedloop.learn.worker.ModelWorker`): ``send_response`` and ``messages`` only touch two
local queues, so the presenter never waits on the network (a decision that comes late is a deadline
miss, counted as always). Two pump threads move responses to the actor and its messages back. The
actor runs the worker's own loop (:func:`~closedloop.learn.worker.serve`), so it learns and decides
as a process does, and ``closedloop replay`` reproduces its decisions.

The actor's host may not see the session's disk (Ray Client, ``ray://``, reaches a cluster from
anywhere), so everything travels through Ray calls:

* in, by value, when it starts: the pool (``stimuli.npz``), what a strategy synthesised before (a
  resumed session's ``synthesized/``) and the model's input files (the core's file or folder, the
  warm-start checkpoint); a simulated rig's truth (model files on this host) is turned into true
  rates here first (:func:`~closedloop.learn.worker.with_true_rates`).
* out: the actor writes ``checkpoints/``, ``cores/`` and ``synthesized/`` into a scratch folder of
  its own and sends every file it wrote (a :class:`File`) before the message that follows it; the
  session's side writes each into the session folder atomically before it passes that message on,
  so a synthesised image is on disk before its choice is seen, as with a process. Paths the
  worker's messages name (the core's, an error's) are the session host's.

Faults: a dead actor or a lost connection makes :meth:`RayWorker.check_alive` raise one line; an
error inside the worker is an :class:`~closedloop.learn.worker.Error` message, as from a process.
Stopping or ending the worker kills the actor (``ray.kill``); an actor also dies with its driver,
the session's process.

Turnaround: the two hosts' clocks differ, so the session's side times each decision, from the last
response handed on to the decision received back (the network both ways included).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pylsl

from closedloop.cluster import connect
from closedloop.config import LearnerSpec
from closedloop.errors import ClosedLoopError, one_line
from closedloop.learn.worker import (Choice, Error, Message, Ready, Stopped, Worker, WorkerConfig, serve,
                                     with_true_rates)
from closedloop.record.atomic import write_atomic

TAKE_WAIT = 0.5  # s the actor holds a request for messages open while it has none
RAY_WAIT = 60.0  # s a call to the actor may take beyond that before it counts as unreachable


@dataclass(frozen=True)
class File:
    """A file the actor wrote: its path in the session folder (POSIX, relative) and its bytes."""

    path: str
    data: bytes = field(repr=False)


def actor_name(session: Path) -> str:
    """The Ray actor of ``session``'s model worker (one at a time)."""
    return f"closedloop-learner-{Path(session).name}"


def _place(path: Path, root: Path) -> PurePosixPath:
    """Where a file the worker reads or writes lies in the actor's scratch folder: the session
    folder's (``root``) under ``session/``, any other (a model input) under ``inputs/`` by its
    absolute path."""
    if path.is_relative_to(root):
        return PurePosixPath("session", *path.relative_to(root).parts)
    return PurePosixPath("inputs", *path.parts[1:])


def _moved(config: WorkerConfig, move: Callable[[Path], Path]) -> WorkerConfig:
    """``config`` with every path it names (the session's files, the model's inputs) replaced by
    ``move(path)``."""
    def moved(path: Path | None) -> Path | None:
        return None if path is None else move(path)

    model = config.model
    model = model.model_copy(update={"warm_start": moved(model.warm_start),
                                     "core": model.core.model_copy(update={"path": moved(model.core.path)})})
    return dataclasses.replace(config, pool_path=move(config.pool_path), added=moved(config.added),
                               checkpoints=moved(config.checkpoints), cores=moved(config.cores),
                               recorded=moved(config.recorded), model=model)


def _inputs(config: WorkerConfig, root: Path) -> dict[str, bytes]:
    """What the worker reads, by its place in the scratch folder: the pool, what was synthesised
    before, the model's input files (a file and its siblings of the same stem, or every file in a
    folder); a path that does not exist is left for the worker to report."""
    files = {}
    for path in filter(None, (config.pool_path, config.added, config.model.core.path, config.model.warm_start)):
        # a file travels with its siblings of the same stem (a compact model's .nums_filters.npy)
        for file in (sorted({path, *path.parent.glob(f"{path.stem}.*")}) if path.is_file()
                     else sorted(p for p in path.rglob("*") if p.is_file())):
            files[str(_place(file, root))] = file.read_bytes()
    return files


class _Outbox:
    """The actor's outbox: before each message, every file the worker wrote or replaced in the
    scratch folder's ``session/`` since the message before goes out as a :class:`File` (a file still
    being written, ``*.partial*``, before a later message, once whole); paths in messages are named
    as on the session's host."""

    def __init__(self, scratch: Path, root: Path):
        self.folder = scratch / "session"
        self.names = ((str(scratch / "session"), str(root)), (str(scratch / "inputs"), ""))
        self.queue: queue.Queue = queue.Queue()
        self.seen = self._files()  # what was sent in

    def _files(self) -> dict[Path, tuple[int, int]]:
        found = {}
        for folder, _, names in os.walk(self.folder):
            for name in names:
                if ".partial" not in name:
                    stat = os.stat(path := Path(folder, name))
                    found[path] = (stat.st_size, stat.st_mtime_ns)
        return found

    def put(self, message: Message) -> None:
        files = self._files()
        for path in sorted(p for p, stamp in files.items() if self.seen.get(p) != stamp):
            self.queue.put(File(path.relative_to(self.folder).as_posix(), path.read_bytes()))
        self.seen = files
        if isinstance(message, Ready):
            message = dataclasses.replace(message, core=self._named(message.core))
        elif isinstance(message, Error):
            message = Error(self._named(message.detail))
        self.queue.put(message)

    def _named(self, text: str) -> str:
        for here, there in self.names:
            text = text.replace(here, there)
        return text


class _Learner:
    """The Ray actor: the worker's loop in a thread, over a scratch folder of its own (removed when
    the loop ends: every file it wrote was read into a message by then)."""

    def __init__(self, config: WorkerConfig, root: str, files: dict[str, bytes]):
        self.scratch = Path(tempfile.mkdtemp(prefix="closedloop-learner-"))
        for name, data in files.items():
            (self.scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (self.scratch / name).write_bytes(data)
        self.inbox: queue.Queue = queue.Queue()
        self.outbox = _Outbox(self.scratch, Path(root))
        config = _moved(config, lambda path: self.scratch / _place(path, Path(root)))
        threading.Thread(target=self._serve, args=(config,), name="closedloop-model", daemon=True).start()

    def _serve(self, config: WorkerConfig) -> None:
        serve(config, self.inbox, self.outbox)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def node(self) -> str:
        """The address of the node the actor runs on."""
        import ray

        return ray.util.get_node_ip_address()

    def put(self, messages: list) -> None:
        """Messages for the worker, in order."""
        for message in messages:
            self.inbox.put(message)

    def take(self, timeout: float) -> list:
        """Everything the worker said since the last call; waits up to ``timeout`` s for something."""
        try:
            out = [self.outbox.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self.outbox.queue.get_nowait())
            except queue.Empty:
                return out


class RayWorker(Worker):
    """The model worker in a Ray actor, behind a local inbox and outbox.

    Parameters
    ----------
    config : WorkerConfig
        As for a process; its paths are this host's (the session's folder, the model's inputs).
    session : Path
        The session folder: the actor's files land there.
    learner : LearnerSpec
        The rig's ``[learner]``: the cluster's address, the CPUs and GPUs the actor reserves.
    """

    def __init__(self, config: WorkerConfig, session: Path, learner: LearnerSpec):
        self.root = Path(session).absolute()
        self.config = _moved(config, Path.absolute)
        self.learner, self.name = learner, actor_name(session)
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.where = {"where": "ray", "cpus": learner.cpus, "gpus": learner.gpus}
        self.actor = None
        self._sent_at: list[float] = []  # when each response was handed on, s (LSL clock)
        self._lost: str | None = None  # why the actor is gone
        self._ended = threading.Event()  # the worker's loop sent its last message
        self._closing = threading.Event()  # terminate() was called: the actor's end is expected
        self._pumps: list[threading.Thread] = []

    @property
    def what(self) -> str:
        node = self.where.get("node")
        return f"model worker (Ray actor{f' on {node}' if node else ''})"

    def _launch(self) -> None:
        import ray

        self.where["ray"] = connect(self.learner.address)
        self._check_room()
        config = with_true_rates(self.config)
        self.actor = ray.remote(_Learner).options(
            name=self.name, num_cpus=self.learner.cpus, num_gpus=self.learner.gpus, max_concurrency=4,
            max_restarts=0).remote(config, str(self.root), _inputs(config, self.root))
        self._pumps = [threading.Thread(target=pump, name=f"closedloop-ray-{pump.__name__[1:]}", daemon=True)
                       for pump in (self._send, self._receive)]
        for pump in self._pumps:
            pump.start()

    def _check_room(self) -> None:
        """Refuse an actor the cluster could never place (it would wait for ever)."""
        import ray

        have = ray.cluster_resources()
        if self.learner.cpus > have.get("CPU", 0) or self.learner.gpus > have.get("GPU", 0):
            raise ClosedLoopError(f"[learner] asks for {self.learner.cpus:g} CPUs and {self.learner.gpus:g} GPUs; "
                                  f"the Ray cluster ({self.where['ray']}) has {have.get('CPU', 0):g} and "
                                  f"{have.get('GPU', 0):g}")

    def send_response(self, pool_index: int, counts: np.ndarray, heldout: bool, completed_at: float) -> None:
        self._sent_at.append(completed_at)
        super().send_response(pool_index, counts, heldout, completed_at)

    def gone(self) -> str | None:
        """Why the actor no longer serves: it died or cannot be reached, or its loop ended."""
        if self._lost is not None:
            return self._lost
        if self.actor is None:
            return f"{self.what} not started"
        return f"{self.what} ended" if self._ended.is_set() else None

    def terminate(self, grace: float = 0.0) -> None:
        """Kill the actor (``grace``: s for the last messages to come in first) and end the pumps."""
        if self.actor is None or self._closing.is_set():
            return
        import ray

        if self._pumps:
            self._pumps[1].join(timeout=grace)  # the receiver ends with the worker's last message
        self._closing.set()
        self.inbox.put(None)  # ends the sender
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # already dead, or the cluster is gone: nothing is left to end
            pass
        for pump in self._pumps:
            pump.join(timeout=TAKE_WAIT + 1.0)

    # ------------------------------------------------------------ the pumps --
    def _send(self) -> None:
        """Responses (and the stop) to the actor, in order: one call at a time."""
        import ray

        while True:
            batch = [self.inbox.get()]
            while True:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            messages = [m for m in batch if m is not None]
            if messages:
                try:
                    ray.get(self.actor.put.remote(messages), timeout=RAY_WAIT)
                except Exception as exc:
                    self._lose(exc)
                    return
            if len(messages) < len(batch):
                return

    def _receive(self) -> None:
        """The actor's messages to the local outbox, its files into the session folder first."""
        import ray

        try:
            self.where["node"] = ray.get(self.actor.node.remote())  # waits for the actor to be placed
            while not self._closing.is_set():
                for message in ray.get(self.actor.take.remote(TAKE_WAIT), timeout=TAKE_WAIT + RAY_WAIT):
                    if isinstance(message, File):
                        self._save(message)
                        continue
                    self.outbox.put(self._timed(message))
                    if isinstance(message, (Stopped, Error)):
                        self._ended.set()
                        return
        except Exception as exc:
            self._lose(exc)

    def _save(self, file: File) -> None:
        path = PurePosixPath(file.path)
        if path.is_absolute() or ".." in path.parts:
            raise ClosedLoopError(f"{self.what} sent a file outside the session folder: {file.path!r}")
        target = self.root.joinpath(*path.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, file.data)
        except OSError as exc:
            raise ClosedLoopError(f"{self.what}: cannot write {target}: {one_line(exc)}") from None

    def _timed(self, message: Message) -> Message:
        """A decision's turnaround as this host saw it: from the last response it answers to now."""
        if isinstance(message, Choice) and message.received:
            return dataclasses.replace(
                message, turnaround_ms=(pylsl.local_clock() - self._sent_at[message.received - 1]) * 1000.0)
        return message

    def _lose(self, exc: BaseException) -> None:
        import ray

        if self._closing.is_set() or self._lost is not None:
            return
        if isinstance(exc, ClosedLoopError):
            self._lost = str(exc)
        elif isinstance(exc, ray.exceptions.RayActorError):
            self._lost = f"{self.what} died: {_why_dead(exc)}"
        else:
            self._lost = f"{self.what} unreachable: {one_line(exc)}"


def _why_dead(exc: BaseException) -> str:
    """Why Ray says an actor died, in a few words: ``it was killed by `ray.kill```, ``its worker
    process has died``, or the error its creation raised."""
    lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
    because = "The actor is dead because "
    reason = next((line.removeprefix(because) for line in lines if line.startswith(because)), lines[-1])
    reason = " ".join(reason.split(". ")[0].rstrip(".").split())
    return reason if len(reason) <= 120 else reason[:117] + "..."
