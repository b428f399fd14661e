"""The model worker: learns and chooses off the presentation thread, so presentation never waits.

The worker runs one loop (:func:`serve`) wherever it runs: in a child process of the session
(:class:`ModelWorker`) or in a Ray actor on this machine or another host
(:class:`closedloop.learn.remote.RayWorker`; the rig's ``[learner]`` table says which). The session
talks to either through the same :class:`Worker` interface, whose ``send_response`` and
``messages`` only touch local queues.

The worker holds an :class:`~closedloop.learn.learner.OnlineLearner` and a
:class:`~closedloop.select.policy.SelectionPolicy` (all selection rules live there) and talks to
the session through typed messages:

* in (``inbox``): :class:`Response` per response handed on, :class:`Stop` once;
* out (``outbox``): :class:`Ready` once (or :class:`Error`), then a :class:`Choice` after every
  batch of responses, a :class:`Comparison` for every fine-tuned core the learner judged,
  an :class:`Accuracy` every ``accuracy_every`` responses, and :class:`Stopped` last (or
  :class:`Error` whenever it fails).

The session logs choices to ``selections.jsonl``, accuracy reports to ``accuracy.jsonl``, and
the ready message and comparisons to ``events.jsonl`` (``kind`` ``model_ready`` and
``core_comparison``); the summary records the core (``core``).

A strategy that synthesises images appends them to the pool; the worker saves them to
``synthesized/`` in the session directory (see :func:`closedloop.stimuli.write_added`) before it
announces the choice, and the choice carries them (:class:`Added`) so the presenter's pool grows in
step.

The worker writes to the session directory, so presentation never waits on the disk: learner
checkpoints to ``checkpoints/`` every ``[model] checkpoint_every`` trained-on responses
(``learner-<responses>.pt``) and at the end (``learner-final.pt``, on disk before :class:`Stopped`);
fine-tuned cores to ``cores/`` (:func:`cores_folder`; ``finetune-<responses>.pt``), as they are
made. A Ray actor writes them on its own host and sends each file back before the message that
follows it; the session's side writes it into the session directory (see
:mod:`closedloop.learn.remote`), so the session directory ends up the same either way.

Reproducibility contract
------------------------
Timing decides only *when* the worker does things, never *what*; what timing decided is logged
with every decision, so ``closedloop replay`` reproduces every decision of a session (same chosen
pool indices) from its directory:

* The worker's input is the session's ``responses.jsonl`` in file order, less the responses
  flagged ``gap`` or ``aborted`` (never sent); which of them arrived together is timing: each
  decision logs ``received``, the responses handed over so far (held-out ones included), so
  batch ``k`` is the responses between decisions ``k - 1`` and ``k``.
* Each batch goes through :meth:`WorkerState.step`, one fixed sequence: held-out responses to
  the learner's held-out set, trained-on ones to the policy; swap in a finished refresh; if
  :meth:`SelectionPolicy.learn_first <closedloop.select.policy.SelectionPolicy.learn_first>`,
  learn the batch (one Woodbury step) and choose, else choose and then learn; send the choice and
  the comparisons of a swapped-in refresh; checkpoint; every ``accuracy_every`` responses an
  accuracy report; start the next refresh last (:meth:`OnlineLearner.refresh
  <closedloop.learn.learner.OnlineLearner.refresh>` snapshots the learner then, never later).
* Whether the refresh in flight had finished when a batch came is timing: refreshes are swapped
  in only at the start of a step, and each decision logs ``core_version`` (swaps so far) and
  ``cores_trained_on`` (the responses the current readout hyperparameters and core were fitted
  on), so a replay swaps at the same steps, refreshing synchronously
  (``OnlineLearner(background=False)``) and reading each fine-tuned core from ``cores/``
  (``recorded``) instead of training it again.
* Every random draw comes from streams seeded by ``[protocol] seed``: the choices' (the policy:
  ``default_rng(seed)``; a strategy with its own ``seed`` setting draws from that), the posterior
  draws strategies see as members (``default_rng([seed, 2])``), each fine-tuning's minibatches
  (``default_rng([seed, 1, responses])``) and the core's initialisation (torch, ``seed``). Torch
  and numpy's BLAS run ``[model] threads`` threads (1 by default: bitwise deterministic on CPU);
  a replay must use as many.

* Where the worker ran does not matter: a process and a Ray actor run the same :func:`serve` on
  the same messages, and a simulated rig's true rates a Ray actor reports were computed by the
  session with the worker's thread settings (:func:`with_true_rates`). An actor on another host
  computes the same sums as this one where its CPU and BLAS do (same threads, same
  instruction set); a replay on such a host reproduces it.

Not covered: ``turnaround_ms``, ``choose_ms`` and times (wall clock); and the model worker of a
resumed session (``closedloop resume``) starts afresh on the recorded responses, so a replay
reproduces each worker lifetime separately (each has its own :func:`cores_folder`).
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pylsl
from threadpoolctl import threadpool_limits

from closedloop.children import die_with_parent, ignore_sigint, sigint_shielded
from closedloop.config import ModelSpec, SelectionSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.select.policy import SelectionPolicy
from closedloop.select.strategies import SelectionContext, Strategy
from closedloop.stimuli import StimulusPool, read_added, write_added

ACCURACY_EVERY = 10  # responses between accuracy reports
STOP_GRACE = 5.0  # s a stopped worker has to end by itself before it is ended
CORES = "cores"  # the session's folder of fine-tuned cores
PREDICTED_DECIMALS = 3  # a decision's predicted counts are logged to 0.001 spikes


# ------------------------------------------------------------------ messages in --
@dataclass(frozen=True)
class Response:
    """A response handed to the worker.

    Attributes
    ----------
    pool_index : int
        The image shown.
    counts : ndarray of int, (units,)
        Spikes per unit in the response window.
    heldout : bool
        A held-out image's response: scored on, never trained on.
    completed_at : float
        When the session handed it on, s (LSL clock): the start of the turnaround.
    """

    pool_index: int
    counts: np.ndarray
    heldout: bool
    completed_at: float


@dataclass(frozen=True)
class Stop:
    """Finish: the last accuracy report and checkpoint, then exit."""


# ----------------------------------------------------------------- messages out --
@dataclass(frozen=True)
class Ready:
    """The worker has loaded the pool and its learner.

    Attributes
    ----------
    core : str
        The core's name (what the learner knew about images before the first trial).
    features : int
        Dimensions of the features the readouts are linear in.
    """

    core: str
    features: int


@dataclass(frozen=True)
class Added:
    """Stimuli a strategy made: pool images ``start:`` (saved by the worker before the choice)."""

    start: int
    images: np.ndarray = field(repr=False)  # (B, N, N, 3) uint8
    families: list[str]
    params: list[dict]


@dataclass(frozen=True)
class Choice:
    """One decision: the images to show next and what it was made from.

    Attributes
    ----------
    strategy : str
        The strategy that chose (``random`` during warm-up).
    chosen : list of int
        Pool indices, best first.
    scores : list of float
        Their scores.
    responses : int
        Trained-on responses the decision knew of.
    received : int
        Responses handed to the worker so far, held-out ones included.
    core_version, cores_trained_on : int
        Refreshes swapped in so far; responses the current core and readout hyperparameters were
        fitted on.
    turnaround_ms : float
        From the last response handed on (or the worker's start) to the decision, ms; a Ray
        actor's, to the decision received back by the session (the hosts' clocks differ).
    choose_ms : float
        The strategy's own time, ms.
    added : Added or None
        Stimuli the strategy made for this decision.
    state : dict or None
        What the strategy logs with a decision (e.g. a posterior).
    finished : bool
        The strategy has nothing more to learn: the session ends.
    predicted : list of list of float or None
        The learner's expected count (spikes in the response window) of each chosen image
        (outer, as ``chosen``) per unit (inner, in the units' order) when the decision was made
        (:meth:`WorkerState.predicted`; None before the learner learned a response).
    """

    strategy: str
    chosen: list[int]
    scores: list[float]
    responses: int
    received: int
    core_version: int
    cores_trained_on: int
    turnaround_ms: float
    choose_ms: float
    added: Added | None = None
    state: dict | None = None
    finished: bool = False
    predicted: list[list[float]] | None = None

    def record(self, added: list[int] | None = None) -> dict:
        """The decision as ``selections.jsonl`` logs it (``added``: the new pool indices)."""
        record = {k: getattr(self, k) for k in ("strategy", "chosen", "scores", "responses", "received",
                                                 "core_version", "cores_trained_on", "turnaround_ms", "choose_ms")}
        if added:
            record["added"] = added
        if self.state is not None:
            record["state"] = self.state
        if self.finished:
            record["finished"] = True
        if self.predicted is not None:
            record["predicted"] = self.predicted
        return record


@dataclass(frozen=True)
class Accuracy:
    """Held-out accuracy of the learner as it is.

    Attributes
    ----------
    responses, core_version : int
        Trained-on responses learned; refreshes swapped in.
    heldout_shown : int
        Held-out responses received.
    r_observed : list of float or None
        Pearson r per unit between predicted and mean observed counts of the held-out images shown.
    r_true : list of float or None, optional
        The same against a simulated rig's true rates, on every held-out image (None: not simulated).
    """

    responses: int
    core_version: int
    heldout_shown: int
    r_observed: list[float | None]
    r_true: list[float | None] | None = None

    def record(self) -> dict:
        """The report as ``accuracy.jsonl`` logs it (``r_true`` only when simulated)."""
        record = {"responses": self.responses, "core_version": self.core_version,
                  "heldout_shown": self.heldout_shown, "r_observed": self.r_observed}
        if self.r_true is not None:
            record["r_true"] = self.r_true
        return record


@dataclass(frozen=True)
class Comparison:
    """A fine-tuned core judged against the current one on the held-out responses (mean Pearson r
    over units; None: not enough held-out images); kept only if ``accepted``."""

    responses: int
    heldout_images: int
    r_current: float | None
    r_finetuned: float | None
    accepted: bool

    def record(self) -> dict:
        """The comparison as ``events.jsonl`` logs it."""
        return {"kind": "core_comparison", "responses": self.responses, "heldout_images": self.heldout_images,
                "r_current": self.r_current, "r_finetuned": self.r_finetuned, "accepted": self.accepted}


@dataclass(frozen=True)
class Stopped:
    """The worker finished; its last accuracy report."""

    accuracy: Accuracy


@dataclass(frozen=True)
class Error:
    """The worker failed: a traceback, or one line for bad input (e.g. the warm-start file)."""

    detail: str

    @property
    def line(self) -> str:
        """The detail's last line (the exception)."""
        return self.detail.strip().splitlines()[-1]


Message = Response | Stop | Ready | Choice | Comparison | Accuracy | Stopped | Error
Send = Callable[[Message], None]


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker needs; picklable (the worker is a spawned process).

    Attributes
    ----------
    pool_path : Path
        The session's pool (``stimuli.npz``).
    units : tuple of str
        Names of the recorded units, in count order.
    model, selection : ModelSpec, SelectionSpec
        The protocol's.
    strategy : Strategy
        Built once per session (:func:`closedloop.select.registry.make_strategy`); each
        :class:`WorkerState` works on its own copy.
    candidates, heldout : tuple of int
        Pool indices the strategy may choose; pool indices never trained on nor chosen.
    seed : int
        The protocol's seed.
    truth : SimulationSpec, optional
        A simulated rig's neurons, for ground-truth accuracy.
    truth_rates : ndarray, (units, heldout), optional
        Their true rates on the held-out images, computed beforehand (:func:`with_true_rates`: a
        worker on another host cannot read the neurons' model files); used instead of ``truth``.
    checkpoints : Path, optional
        Folder for learner checkpoints (None: none are written).
    added : Path, optional
        Folder for synthesised stimuli (None: kept in memory only).
    cores : Path, optional
        Folder each fine-tuned core is written to (live; None: not kept).
    recorded : Path, optional
        Folder fine-tuned cores are read from instead of trained (a faithful replay).
    accuracy_every : int
        Responses between accuracy reports.
    """

    pool_path: Path
    units: tuple[str, ...]
    model: ModelSpec
    selection: SelectionSpec
    strategy: Strategy
    candidates: tuple[int, ...]
    heldout: tuple[int, ...]
    seed: int
    truth: SimulationSpec | None = None
    truth_rates: np.ndarray | None = field(default=None, repr=False)
    checkpoints: Path | None = None
    added: Path | None = None
    cores: Path | None = None
    recorded: Path | None = None
    accuracy_every: int = ACCURACY_EVERY


def cores_folder(session: Path, lifetime: int = 0) -> Path:
    """Where worker lifetime ``lifetime`` of ``session`` keeps its fine-tuned cores: ``cores/`` for
    the first, ``cores/resumed-<k>/`` for the one started by the k-th ``closedloop resume``."""
    folder = Path(session) / CORES
    return folder / f"resumed-{lifetime}" if lifetime else folder


def correlations(predicted: np.ndarray, observed: np.ndarray) -> list[float | None]:
    """Pearson r per unit between (units, images) arrays; None where undefined (fewer than 3
    images, or a constant row)."""
    p, o = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    if p.shape[1] < 3:
        return [None] * len(p)
    p, o = p - p.mean(axis=1, keepdims=True), o - o.mean(axis=1, keepdims=True)
    scale = np.sqrt((p * p).sum(axis=1) * (o * o).sum(axis=1))
    defined = (p.std(axis=1) > 0) & (o.std(axis=1) > 0)
    r = np.clip((p * o).sum(axis=1) / np.where(defined, scale, 1.0), -1.0, 1.0)
    return [float(v) if ok else None for v, ok in zip(r, defined)]


class Queue(Protocol):
    """What the worker's loop needs of its inbox and outbox (``queue.Queue``, ``multiprocessing``'s
    queues): ``get_nowait`` raises :class:`queue.Empty` when there is nothing."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...

    def get_nowait(self) -> Any: ...

    def put(self, item: Any) -> None: ...


class Worker:
    """A model worker as the session sees it: a local inbox and outbox, wherever the worker runs.

    ``send_response`` and ``messages`` only touch the local queues: they never wait on the worker.
    Subclasses set ``inbox``, ``outbox`` and ``where`` and implement :meth:`_launch`, :meth:`gone`
    and :meth:`terminate`.

    Attributes
    ----------
    where : dict
        Where the worker runs, as the session records it (``where``: ``process`` or ``ray``, and
        details).
    """

    inbox: Queue
    outbox: Queue
    where: dict

    def start(self, timeout: float = 300.0) -> Ready:
        """Start the worker and wait (at most ``timeout`` s) until it has loaded the pool and the
        learner.

        Raises
        ------
        ClosedLoopError
            The worker failed or ended first, or did not get ready in time.
        """
        with sigint_shielded():
            self._launch()
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.outbox.get(timeout=0.5)
                break
            except queue.Empty:
                if (gone := self.gone()) is not None:
                    raise ClosedLoopError(f"{gone} before it was ready") from None
                if time.monotonic() > deadline:
                    raise ClosedLoopError(f"model worker not ready after {timeout:g} s") from None
        if isinstance(message, Error):
            raise ClosedLoopError(f"model worker failed: {message.line}")
        return message

    def is_alive(self) -> bool:
        """Whether the worker still runs."""
        return self.gone() is None

    def check_alive(self) -> None:
        """Raise ClosedLoopError (one line: why) if the worker no longer runs."""
        if (gone := self.gone()) is not None:
            raise ClosedLoopError(gone)

    def send_response(self, pool_index: int, counts: np.ndarray, heldout: bool, completed_at: float) -> None:
        """Hand on a response (``completed_at``: now, s, LSL clock)."""
        self.inbox.put(Response(int(pool_index), np.asarray(counts), bool(heldout), completed_at))

    def messages(self) -> list[Message]:
        """Everything the worker has said since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def stop(self, timeout: float = 30.0) -> list[Message]:
        """Ask the worker to finish (waiting at most ``timeout`` s), then end it; returns its last
        messages."""
        self.inbox.put(Stop())
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.outbox.get(timeout=0.5)
            except queue.Empty:
                if not self.is_alive():
                    out.extend(self.messages())  # what it said just before it ended
                    break
                continue
            out.append(message)
            if isinstance(message, (Stopped, Error)):
                break
        self.terminate(grace=STOP_GRACE)
        return out

    def _launch(self) -> None:
        """Start the worker (in the main thread: children it starts ignore Ctrl-C)."""
        raise NotImplementedError

    def gone(self) -> str | None:
        """Why the worker no longer runs, in one line; None while it runs."""
        raise NotImplementedError

    def terminate(self, grace: float = 0.0) -> None:
        """End the worker now if it still runs, after ``grace`` s to end by itself."""
        raise NotImplementedError


class ModelWorker(Worker):
    """The worker in a child process, fed through two ``multiprocessing`` queues.

    The process dies with the session's (even under SIGKILL) and ignores Ctrl-C: the session stops
    it (see :mod:`closedloop.children`).
    """

    def __init__(self, config: WorkerConfig):
        ctx = mp.get_context("spawn")
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_main, args=(config, self.inbox, self.outbox),
                                   name="closedloop-model", daemon=True)
        self.where = {"where": "process"}

    def _launch(self) -> None:
        self.process.start()
        self.where = {"where": "process", "pid": self.process.pid}

    def gone(self) -> str | None:
        """``model worker exited with status <code>`` once the process has ended."""
        code = self.process.exitcode
        return None if code is None else f"model worker exited with status {code}"

    def terminate(self, grace: float = 0.0) -> None:
        """End the process if it still runs: ``grace`` s to exit by itself, then SIGTERM, then
        SIGKILL after 5 s."""
        if self.process.is_alive():
            self.process.join(timeout=grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerState:
    """The worker's learner and policy and its steps, without a process or queues.

    The worker process runs one (background refreshes); a replay runs another in the replaying
    thread (``background=False``, ``swap`` told by the session's log), and the two make the same
    decisions (see the module docstring). Messages go to ``send`` as soon as each is ready.

    Parameters
    ----------
    config : WorkerConfig
        What the session gives the worker.
    background : bool
        Refresh the learner in a background thread (the live loop).
    """

    def __init__(self, config: WorkerConfig, background: bool = True):
        import torch

        from closedloop.learn.learner import OnlineLearner

        torch.set_num_threads(config.model.threads)
        self.config = config
        self.pool = _pool(config)
        self.learner = OnlineLearner(self.pool.images, len(config.units), config.model, config.seed,
                                     background=background, store=config.cores, recorded=config.recorded)
        self.heldout = np.array(config.heldout)
        self.policy = SelectionPolicy(copy.deepcopy(config.strategy), self.learner, self.pool,
                                      np.array(config.candidates), config.units, config.selection.batch,
                                      config.selection.warmup, config.selection.no_repeat, config.seed,
                                      on_added=self._save_added)
        self.heldout_sum = np.zeros((len(config.units), len(self.heldout)))
        self.heldout_n = np.zeros(len(self.heldout))
        self.received = 0  # responses handed over, held-out ones included
        self.trained = 0  # trained-on responses handed over (learned, or about to be)
        self.since_report = 0  # responses since the last accuracy report
        self.compared = 0  # learner comparisons sent so far
        self.truth = config.truth_rates if config.truth_rates is not None else \
            _true_rates(config.truth, self.pool.images, self.heldout) if config.truth else None
        self.on_decision: Callable[[SelectionContext, Choice], None] | None = None  # sees every choice made

    def begin(self, send: Send) -> None:
        """Announce the learner (:class:`Ready`) and make the first choice, before any response."""
        send(Ready(self.learner.core.name, self.learner.projection.dims))
        send(self.decide(pylsl.local_clock()))

    def step(self, responses: Sequence[Response], send: Send, swap: bool | None = None) -> None:
        """Learn a batch of responses, choose, report (the sequence of the module docstring).

        Parameters
        ----------
        responses : sequence of Response
            The batch, in the order handed over.
        send : callable
            Receives each message out.
        swap : bool or None
            None: swap in the refresh in flight if it is done (live); True: wait for it, or run it
            here; False: not now.

        Raises
        ------
        ClosedLoopError
            ``swap`` is True and no refresh is in flight.
        """
        trained = [r for r in responses if not r.heldout]
        before = self.trained
        for r in responses:
            if r.heldout:
                self.add_heldout(r.pool_index, r.counts)
            else:
                self.policy.observe(r.pool_index, r.counts)
        self.received += len(responses)
        self.trained += len(trained)
        with self.learner.choosing():  # the background refresh waits meanwhile
            if swap is None:
                self.learner.swap()
            elif swap and not self.learner.swap(wait=True):
                raise ClosedLoopError(f"no learner refresh to swap in at {self.received} responses")
            learn_first = self.policy.learn_first(self.trained)
            if learn_first:
                self._learn(trained)
            send(self.decide(responses[-1].completed_at))
            if not learn_first:
                self._learn(trained)
        for comparison in self.learner.comparisons[self.compared:]:
            send(Comparison(**comparison))
        self.compared = len(self.learner.comparisons)
        self.checkpoint(before)
        self.since_report += len(responses)
        if self.since_report >= self.config.accuracy_every:
            send(self.accuracy())
            self.since_report = 0
        self.learner.refresh()

    def finish(self, send: Send) -> None:
        """The last checkpoint, the refreshes stopped (a fine-tuned core in the making is kept), then
        the last accuracy report (:class:`Stopped`): every file is written before it."""
        accuracy = self.accuracy()
        self.checkpoint(final=True)
        self.learner.close()
        send(Stopped(accuracy))

    def add_heldout(self, pool_index: int, counts: np.ndarray) -> None:
        """A held-out response: kept for the accuracy reports and the learner's core comparisons."""
        where = int(np.searchsorted(self.heldout, pool_index))
        self.heldout_sum[:, where] += counts
        self.heldout_n[where] += 1
        self.learner.add_heldout(pool_index, counts)

    def _learn(self, responses: list[Response]) -> None:
        if responses:
            self.learner.learn(np.array([r.pool_index for r in responses]), np.stack([r.counts for r in responses]))

    def decide(self, completed_at: float) -> Choice:
        """Choose the next batch with the learner as it is (``completed_at``: s, LSL clock, when the
        last response was handed on)."""
        decision = self.policy.decide(self.trained)
        added = None
        if len(decision.added):
            start = int(decision.added[0])
            added = Added(start, self.pool.images[start:], self.pool.families[start:], self.pool.params[start:])
        choice = Choice(decision.strategy, decision.chosen.tolist(), decision.scores.tolist(), self.trained,
                        self.received, self.learner.core_version, self.learner.trained_on,
                        (pylsl.local_clock() - completed_at) * 1000.0, decision.choose_ms, added, decision.state,
                        decision.finished, self.predicted(decision.chosen))
        if self.on_decision is not None:
            self.on_decision(decision.context, choice)
        return choice

    def predicted(self, chosen: np.ndarray) -> list[list[float]] | None:
        """The learner's expected counts (chosen, units) of pool images ``chosen`` (spikes in the
        response window); None while it has learned no response and was not warm-started: the
        prior's are meaningless (its intercept is all but unconstrained)."""
        if not self.learner.n_responses and self.config.model.warm_start is None:
            return None
        predicted = self.learner.predictive(chosen)[0].T  # one pass over the chosen images alone
        return np.round(predicted.astype(np.float64), PREDICTED_DECIMALS).tolist()

    def _save_added(self, start: int) -> None:
        """Save the stimuli a strategy made (pool images ``start:``) before the choice is announced."""
        if self.config.added is not None:
            write_added(self.config.added, self.pool, start)

    def checkpoint(self, before: int = 0, final: bool = False) -> None:
        """Save the learner when the trained-on responses passed a multiple of ``checkpoint_every``
        (``before``: the count before the latest ones), or as the final checkpoint."""
        folder, every, n = self.config.checkpoints, self.config.model.checkpoint_every, self.learner.n_responses
        if folder is None:
            return
        if final:
            self.learner.save(folder / "learner-final.pt")
        elif every and n // every > before // every:
            self.learner.save(folder / f"learner-{n:06d}.pt")

    def accuracy(self) -> Accuracy:
        """Held-out accuracy of the learner's expected counts: r against the mean observed counts
        and, if simulated, the true rates."""
        predicted = self.learner.predictive(self.heldout)[0]  # (units, heldout)
        seen = self.heldout_n > 0
        return Accuracy(self.learner.n_responses, self.learner.core_version, int(self.heldout_n.sum()),
                        correlations(predicted[:, seen], self.heldout_sum[:, seen] / self.heldout_n[seen]),
                        None if self.truth is None else correlations(predicted, self.truth))


def _pool(config: WorkerConfig) -> StimulusPool:
    """The session's pool as the worker sees it: ``stimuli.npz`` and, on a resumed session, what a
    strategy added before."""
    pool = StimulusPool.load(config.pool_path)
    if config.added is not None:
        read_added(config.added, pool)
    return pool


def with_true_rates(config: WorkerConfig) -> WorkerConfig:
    """``config`` with a simulated rig's true rates on the held-out images computed here, as the
    worker would (the same pool, ``[model] threads`` threads: the same numbers), and ``truth``
    dropped: for a worker on another host, which cannot read the neurons' model files."""
    if config.truth is None:
        return config
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(config.model.threads)
    try:
        with threadpool_limits(config.model.threads):
            rates = _true_rates(config.truth, _pool(config).images, np.array(config.heldout))
    finally:
        torch.set_num_threads(threads)
    return dataclasses.replace(config, truth=None, truth_rates=rates)


def _true_rates(simulation: SimulationSpec, pool: np.ndarray, index: np.ndarray) -> np.ndarray:
    """A simulated rig's true driven rates (units, images) on ``pool[index]``.

    Calibrated on the whole pool, exactly as the simulator does.
    """
    from closedloop.simulate.neurons import Population, build_neurons

    return Population(build_neurons(simulation), simulation, pool).rates(pool[index]).T


def serve(config: WorkerConfig, inbox: Queue, outbox: Queue) -> None:
    """The worker's loop, wherever it runs (its process's or actor's own): load the pool and the
    learner, then learn each batch of responses until :class:`Stop`; every message goes to
    ``outbox`` as soon as it is ready, an error as one :class:`Error` last."""
    try:
        threadpool_limits(config.model.threads)  # numpy's BLAS too: oversubscribed, it is many times slower
        state = WorkerState(config)
        state.begin(outbox.put)
        while True:
            batch = [inbox.get()]
            while True:  # everything that arrived meanwhile is one batch
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            responses = [m for m in batch if isinstance(m, Response)]
            if responses:
                state.step(responses, outbox.put)
            if any(isinstance(m, Stop) for m in batch):
                break
        state.finish(outbox.put)
    except ClosedLoopError as exc:  # bad input (e.g. the warm-start file): its one line
        outbox.put(Error(str(exc)))
    except Exception:  # reported to the session, which logs it and stops
        outbox.put(Error(traceback.format_exc(limit=3)))


def _main(config: WorkerConfig, inbox: mp.Queue, outbox: mp.Queue) -> None:
    """The child process of :class:`ModelWorker`."""
    die_with_parent(mp.parent_process().pid)
    ignore_sigint()  # the session stops this process
    serve(config, inbox, outbox)
