"""The model worker: a separate process that learns and chooses, so presentation never waits.

Messages in (``inbox``):
    ``("response", pool_index, counts, heldout, completed_at)`` and ``("stop",)``.
Messages out (``outbox``):
    ``("ready", info)`` once, then ``("choice", decision)`` after every batch
    of responses, ``("accuracy", report)`` every few responses, and
    ``("stopped", report)`` last.

Checkpoints of the ensemble go to ``checkpoints/`` in the session directory
every ``[model] checkpoint_every`` responses (``ensemble-<responses>.pt``) and
at the end (``ensemble-final.pt``); the worker writes them, so presentation
never waits on the disk.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl

from closedloop.config import ModelSpec, SelectionSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import RandomStrategy, make_strategy
from closedloop.stimuli import StimulusPool

ACCURACY_EVERY = 10  # responses between accuracy reports


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker needs; picklable."""

    pool_path: Path
    units: int
    model: ModelSpec
    selection: SelectionSpec
    candidates: tuple[int, ...]  # pool indices the strategy may choose
    heldout: tuple[int, ...]  # pool indices never trained on nor chosen
    seed: int
    truth: SimulationSpec | None = None  # a simulated rig's neurons, for ground-truth accuracy
    checkpoints: Path | None = None  # folder for ensemble checkpoints; None: none are written


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


class _Learner:
    """The worker's state: the online ensemble, the strategy and the held-out tally."""

    def __init__(self, config: WorkerConfig):
        import torch

        from closedloop.model.online import OnlineEnsemble

        torch.set_num_threads(config.model.threads)
        self.config = config
        pool = StimulusPool.load(config.pool_path)
        self.ensemble = OnlineEnsemble(pool.images, config.units, config.model, config.seed)
        self.strategy = make_strategy(config.selection.strategy)
        self.warmup = RandomStrategy()
        self.rng = np.random.default_rng(config.seed)
        self.candidates = np.array(config.candidates)
        self.heldout = np.array(config.heldout)
        self.heldout_sum = np.zeros((config.units, len(self.heldout)))
        self.heldout_n = np.zeros(len(self.heldout))
        self.recent: list[int] = []
        self.stale = False  # True when the last decision left the readouts un-refitted
        self.truth = _true_rates(config.truth, pool.images, self.heldout) if config.truth else None

    def add(self, pool_index: int, counts: np.ndarray, heldout: bool) -> None:
        if heldout:
            where = int(np.searchsorted(self.heldout, pool_index))
            self.heldout_sum[:, where] += counts
            self.heldout_n[where] += 1
        else:
            self.ensemble.add(pool_index, counts)
            self.recent = (self.recent + [pool_index])[-self.config.selection.no_repeat:]

    def decide(self, completed_at: float) -> dict:
        """Update the model and choose the next batch."""
        warm = self.ensemble.n_responses >= self.config.selection.warmup
        strategy = self.strategy if warm else self.warmup
        allowed = self.candidates[~np.isin(self.candidates, self.recent)]
        if strategy.needs_model:
            self.ensemble.update()
        self.stale = not strategy.needs_model
        # Scoring the whole pool and then indexing is cheaper than gathering features first.
        predictions = self.ensemble.predictions()[:, :, allowed] if strategy.needs_model else None
        chosen, scores = strategy.choose(predictions, allowed, self.config.selection.batch, self.rng)
        return {
            "strategy": strategy.name,
            "chosen": chosen.tolist(),
            "scores": scores.tolist(),
            "responses": self.ensemble.n_responses,
            "core_version": self.ensemble.core_version,
            "turnaround_ms": (pylsl.local_clock() - completed_at) * 1000.0,
        }

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
        """Held-out accuracy: r against mean observed counts and, if simulated, true rates."""
        self.ensemble.update()
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
    try:
        learner = _Learner(config)
        outbox.put(("ready", {"parameters_per_member": learner.ensemble.model.parameters_per_member}))
        outbox.put(("choice", learner.decide(pylsl.local_clock())))
        since_report = 0
        while True:
            try:
                batch = [inbox.get(timeout=1.0)]
            except queue.Empty:
                if mp.parent_process() is not None and not mp.parent_process().is_alive():
                    break  # the session was killed: nothing is left to serve
                continue
            while True:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            responses = [m for m in batch if m[0] == "response"]
            before = learner.ensemble.n_responses  # trained-on responses (held-out ones never count)
            for _, pool_index, counts, heldout, _ in responses:
                learner.add(pool_index, counts, heldout)
            if responses:
                outbox.put(("choice", learner.decide(responses[-1][4])))
                if learner.stale:  # the choice did not need the model: learn after answering
                    learner.ensemble.update()
                learner.checkpoint(before)
                since_report += len(responses)
                if since_report >= ACCURACY_EVERY:
                    outbox.put(("accuracy", learner.accuracy()))
                    since_report = 0
            if any(m[0] == "stop" for m in batch):
                break
        outbox.put(("stopped", learner.accuracy()))
        learner.checkpoint(final=True)
        learner.ensemble.close()
    except ClosedLoopError as exc:  # bad input (e.g. the warm-start file): its one line
        outbox.put(("error", str(exc)))
    except Exception:  # reported to the session, which logs it and stops
        outbox.put(("error", traceback.format_exc(limit=3)))
