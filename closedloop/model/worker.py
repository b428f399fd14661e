"""The model worker: a separate process that learns and chooses, so presentation never waits.

Messages in (``inbox``):
    ``("response", pool_index, counts, heldout, completed_at)`` and ``("stop",)``.
Messages out (``outbox``):
    ``("ready", info)`` once, then ``("choice", decision)`` after every batch
    of responses, ``("accuracy", report)`` every few responses, and
    ``("stopped", report)`` last.

A strategy that synthesises images appends them to the pool; the worker saves
them to ``synthesized/`` in the session directory (see
:func:`closedloop.stimuli.write_added`) before it announces the choice, and the
choice carries them (``added``) so the presenter's pool grows in step.

Checkpoints of the ensemble go to ``checkpoints/`` in the session directory
every ``[model] checkpoint_every`` responses (``ensemble-<responses>.pt``) and
at the end (``ensemble-final.pt``); the worker writes them, so presentation
never waits on the disk.

Reproducibility contract
------------------------
Timing decides only *when* the worker does things, never *what*; what timing
decided is logged with every decision, so ``closedloop replay`` reproduces
every decision of a session (same chosen pool indices) from its directory:

* The worker's input is the session's ``responses.jsonl`` in file order,
  less the responses flagged ``gap`` or ``aborted`` (never sent); which of
  them arrived together is timing: each decision logs ``received``, the
  responses handed over so far (held-out ones included), so batch ``k`` is
  the responses between decisions ``k - 1`` and ``k``.
* Each batch goes through :meth:`Learner.step`, one fixed sequence (see
  there): readout refits, accuracy reports (which refit too) and checkpoints
  come at fixed points of it, and the core retraining's snapshot (model copy,
  responses, pool) is taken at its end, never by the retraining thread;
  a new retraining starts only once the previous one is swapped in.
* Whether a retraining had finished when a batch came is timing: cores are
  swapped in only at the start of a step, and each decision logs
  ``core_version`` (swaps so far) and ``cores_trained_on`` (the responses
  the current cores were trained on), so a replay swaps at the same steps,
  retraining synchronously (``OnlineEnsemble(background=False)``).
* Every random draw comes from streams seeded by ``[protocol] seed`` and
  drawn in this fixed order: the strategy's (``seed``), bootstrap weights and
  readout minibatches (``seed``), core minibatches (``seed + 1``), model
  initialisation (torch, ``seed``). Torch runs ``[model] threads`` threads
  (1 by default: bitwise deterministic on CPU); a replay must use as many.

Not covered: ``turnaround_ms`` and times (wall clock); and the model worker of
a resumed session (``closedloop resume``) starts afresh on the recorded
responses, so a replay reproduces each worker lifetime separately.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl
from threadpoolctl import threadpool_limits

from closedloop.config import ModelSpec, SelectionSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import RandomStrategy, SelectionContext
from closedloop.stimuli import StimulusPool, read_added, write_added

ACCURACY_EVERY = 10  # responses between accuracy reports

Send = Callable[[str, dict], None]  # send(kind, payload): a message out


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker needs; picklable."""

    pool_path: Path
    units: tuple[str, ...]  # names of the recorded units, in count order
    model: ModelSpec
    selection: SelectionSpec
    candidates: tuple[int, ...]  # pool indices the strategy may choose
    heldout: tuple[int, ...]  # pool indices never trained on nor chosen
    seed: int
    truth: SimulationSpec | None = None  # a simulated rig's neurons, for ground-truth accuracy
    checkpoints: Path | None = None  # folder for ensemble checkpoints; None: none are written
    added: Path | None = None  # folder for synthesised stimuli; None: kept in memory only
    accuracy_every: int = ACCURACY_EVERY  # responses between accuracy reports


def correlations(predicted: np.ndarray, observed: np.ndarray) -> list[float | None]:
    """Pearson r per unit between (units, images) arrays; None where undefined."""
    out = []
    for p, o in zip(predicted, observed):
        if len(p) < 3 or np.std(p) == 0 or np.std(o) == 0:
            out.append(None)
        else:
            out.append(float(np.corrcoef(p, o)[0, 1]))
    return out


class ModelWorker:
    """Starts the worker process and talks to it through two queues."""

    def __init__(self, config: WorkerConfig):
        ctx = mp.get_context("spawn")
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_main, args=(config, self.inbox, self.outbox),
                                   name="closedloop-model", daemon=True)

    def start(self, timeout: float = 300.0) -> dict:
        """Start the process and wait until it has loaded the pool; returns its info."""
        self.process.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, info = self.outbox.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise ClosedLoopError(f"model worker exited with status {self.process.exitcode} "
                                          "before it was ready") from None
                if time.monotonic() > deadline:
                    raise ClosedLoopError(f"model worker not ready after {timeout:g} s") from None
        if kind == "error":
            raise ClosedLoopError(f"model worker failed: {info.strip().splitlines()[-1]}")
        return info

    def send_response(self, pool_index: int, counts: np.ndarray, heldout: bool, completed_at: float) -> None:
        self.inbox.put(("response", int(pool_index), np.asarray(counts), bool(heldout), completed_at))

    def messages(self) -> list[tuple[str, dict]]:
        """Everything the worker has said since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def stop(self, timeout: float = 30.0) -> list[tuple[str, dict]]:
        """Ask the worker to finish; returns its last messages."""
        self.inbox.put(("stop",))
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kind, payload = self.outbox.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    break
                continue
            out.append((kind, payload))
            if kind in ("stopped", "error"):
                break
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.terminate()
        return out


class Learner:
    """The worker's state and its steps, without a process or queues.

    The worker process runs one (background core retraining); a replay runs
    another in the replaying thread (``background=False``, ``swap`` told by
    the session's log), and the two make the same decisions (see the module
    docstring). Messages go to ``send(kind, payload)`` as soon as each is ready.

    Parameters
    ----------
    config : WorkerConfig
        What the session gives the worker.
    background : bool
        Retrain the cores in a background thread (the live loop).
    """

    def __init__(self, config: WorkerConfig, background: bool = True):
        import torch

        from closedloop.model.online import OnlineEnsemble

        torch.set_num_threads(config.model.threads)
        self.config = config
        self.pool = StimulusPool.load(config.pool_path)
        if config.added is not None:  # a resumed session: what a strategy added before
            read_added(config.added, self.pool)
        self.ensemble = OnlineEnsemble(self.pool.images, len(config.units), config.model, config.seed,
                                       background=background)
        self.strategy = make_strategy(config.selection.strategy, config.selection.params)
        self.warmup = RandomStrategy()
        self.rng = np.random.default_rng(config.seed)
        self.candidates = np.array(config.candidates)
        self.heldout = np.array(config.heldout)
        self.heldout_sum = np.zeros((len(config.units), len(self.heldout)))
        self.heldout_n = np.zeros(len(self.heldout))
        self.recent: list[int] = []
        self.in_flight: list[int] = []  # the last decision's images, possibly not answered yet
        self.received = 0  # responses handed to the learner, held-out ones included
        self.since_report = 0  # responses since the last accuracy report
        self.truth = _true_rates(config.truth, self.pool.images, self.heldout) if config.truth else None
        self.added: list[np.ndarray] = []  # pool indices added since the last decision
        self.stale = False  # True when the last decision left the readouts un-refitted
        self.on_decision: Callable[[SelectionContext, dict], None] | None = None  # sees every choice made

    def begin(self, send: Send) -> None:
        """Announce the model (``ready``) and make the first choice, before any response."""
        send("ready", {"parameters_per_member": self.ensemble.model.parameters_per_member})
        send("choice", self.decide(pylsl.local_clock()))

    def step(self, responses: list[tuple[int, np.ndarray, bool]], completed_at: float, send: Send,
             swap: bool | None = None) -> None:
        """Learn a batch of responses ``(pool index, counts, held out)``, choose, report.

        The sequence: add the responses; swap in retrained cores (``swap``
        None: if the background retraining is done; True: wait for it, or run
        it here; False: not now); refit the readouts if the strategy needs the
        model; choose and send the decision; refit if it did not; checkpoint;
        every ``accuracy_every`` responses send an accuracy report; start the
        next core retraining on a snapshot of all this.
        """
        before = self.ensemble.n_responses  # trained-on responses (held-out ones never count)
        for pool_index, counts, heldout in responses:
            self.add(pool_index, counts, heldout)
        self.received += len(responses)
        if swap is None:
            self.ensemble.swap()  # if the background retraining is done
        elif swap and not self.ensemble.swap(wait=True):
            raise ClosedLoopError(f"no core retraining to swap in at {self.received} responses")
        decision = self.decide(completed_at)
        send("choice", decision)
        if self.stale:  # the choice did not need the model: learn after answering
            self.ensemble.refit()
        self.checkpoint(before)
        self.since_report += len(responses)
        if self.since_report >= self.config.accuracy_every:
            send("accuracy", self.accuracy())
            self.since_report = 0
        self.ensemble.retrain()

    def finish(self, send: Send) -> None:
        """The last accuracy report and checkpoint; stops the core retraining."""
        send("stopped", self.accuracy())
        self.checkpoint(final=True)
        self.ensemble.close()

    def add(self, pool_index: int, counts: np.ndarray, heldout: bool) -> None:
        if heldout:
            where = int(np.searchsorted(self.heldout, pool_index))
            self.heldout_sum[:, where] += counts
            self.heldout_n[where] += 1
        else:
            self.ensemble.add(pool_index, counts)
            self.strategy.observe(pool_index, counts)
            self.recent = (self.recent + [pool_index])[-self.config.selection.no_repeat:]

    def decide(self, completed_at: float) -> dict:
        """Choose the next batch with the model as it is (refitted first if the strategy needs it)."""
        warm = self.ensemble.n_responses >= self.config.selection.warmup
        strategy = self.strategy if warm else self.warmup
        # Not what was shown lately, nor the last choice: those images may be on screen or in flight.
        allowed = self.candidates[~np.isin(self.candidates, self.recent + self.in_flight)]
        if strategy.needs_model:
            self.ensemble.refit()
        self.stale = not strategy.needs_model
        # Scoring the whole pool and then indexing is cheaper than gathering features first.
        predictions = self.ensemble.predictions()[:, :, allowed] if strategy.needs_model else None
        shown, counts = self.ensemble.history()
        context = SelectionContext(allowed, self.pool, predictions, self.ensemble, self.config.units,
                                   shown, counts, self.add_images)
        started = time.perf_counter()
        chosen, scores = strategy.choose(context, self.config.selection.batch, self.rng)
        choose_ms = (time.perf_counter() - started) * 1000.0
        self.in_flight = chosen.tolist()
        decision = {
            "strategy": strategy.name,
            "chosen": chosen.tolist(),
            "scores": scores.tolist(),
            "responses": self.ensemble.n_responses,
            "received": self.received,
            "core_version": self.ensemble.core_version,
            "cores_trained_on": self.ensemble.trained_on,
            "turnaround_ms": (pylsl.local_clock() - completed_at) * 1000.0,
            "choose_ms": choose_ms,
        }
        if self.added:
            start = int(self.added[0][0])
            decision["added"] = {"start": start, "images": self.pool.images[start:],
                                 "families": self.pool.families[start:], "params": self.pool.params[start:]}
            self.added = []
        if (state := strategy.state()) is not None:
            decision["state"] = state
        if strategy.finished:
            decision["finished"] = True
        if self.on_decision is not None:
            self.on_decision(context, decision)
        return decision

    def add_images(self, images: np.ndarray, families: list[str], params: list[dict]) -> np.ndarray:
        """Append new stimuli to the pool and the ensemble; saved before the choice is announced."""
        start = len(self.pool)
        index = self.pool.append(images, families, params)
        if not np.array_equal(self.ensemble.extend(images), index):
            raise RuntimeError("the ensemble's pool and the stimulus pool are out of step")
        if self.config.added is not None:
            write_added(self.config.added, self.pool, start)
        self.added.append(index)
        return index

    def checkpoint(self, before: int = 0, final: bool = False) -> None:
        """Save the ensemble when the responses passed a multiple of ``checkpoint_every``
        (``before``: the count before the latest ones), or as the final checkpoint."""
        folder, every, n = self.config.checkpoints, self.config.model.checkpoint_every, self.ensemble.n_responses
        if folder is None:
            return
        if final:
            self.ensemble.save(folder / "ensemble-final.pt")
        elif every and n // every > before // every:
            self.ensemble.save(folder / f"ensemble-{n:06d}.pt")

    def accuracy(self) -> dict:
        """Held-out accuracy (after a readout refit): r against mean observed counts and, if
        simulated, true rates."""
        self.ensemble.refit()
        predicted = self.ensemble.predictions(self.heldout).mean(axis=0)  # (units, heldout)
        seen = self.heldout_n > 0
        report = {
            "responses": self.ensemble.n_responses,
            "core_version": self.ensemble.core_version,
            "heldout_shown": int(self.heldout_n.sum()),
            "r_observed": correlations(predicted[:, seen], self.heldout_sum[:, seen] / self.heldout_n[seen]),
        }
        if self.truth is not None:
            report["r_true"] = correlations(predicted, self.truth)
        return report


def _true_rates(simulation: SimulationSpec, pool: np.ndarray, index: np.ndarray) -> np.ndarray:
    """A simulated rig's true driven rates (units, images) on ``pool[index]``.

    Calibrated on the whole pool, exactly as the simulator does.
    """
    from closedloop.simulate.neurons import Population, build_neurons

    return Population(build_neurons(simulation), simulation, pool).rates(pool[index]).T


def _main(config: WorkerConfig, inbox: mp.Queue, outbox: mp.Queue) -> None:
    def send(kind: str, payload: dict) -> None:
        outbox.put((kind, payload))

    try:
        threadpool_limits(config.model.threads)  # numpy's BLAS too: oversubscribed, it is many times slower
        learner = Learner(config)
        learner.begin(send)
        while True:
            try:
                batch = [inbox.get(timeout=1.0)]
            except queue.Empty:
                if mp.parent_process() is not None and not mp.parent_process().is_alive():
                    break  # the session was killed: nothing is left to serve
                continue
            while True:  # everything that arrived meanwhile is one batch
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            responses = [m[1:4] for m in batch if m[0] == "response"]
            if responses:
                completed_at = [m for m in batch if m[0] == "response"][-1][4]
                learner.step(responses, completed_at, send)
            if any(m[0] == "stop" for m in batch):
                break
        learner.finish(send)
    except ClosedLoopError as exc:  # bad input (e.g. the warm-start file): its one line
        send("error", str(exc))
    except Exception:  # reported to the session, which logs it and stops
        send("error", traceback.format_exc(limit=3))
