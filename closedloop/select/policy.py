"""The selection policy: one piece of code between a strategy and whoever shows its choices.

Live runs (the model worker), replays, ``closedloop design`` and the benchmarks all choose through
:class:`SelectionPolicy`; what it adds to a strategy:

* **warm-up**: uniformly random images until ``warmup`` responses were learned;
* **no repeats**: not the last ``no_repeat`` images learned, nor the images of the last decision
  (they may be on screen or in flight);
* **candidates only**: held-out images are never offered;
* **a growing pool**: images a strategy makes are appended to the pool and to the model together,
  and ``on_added`` is told (the worker saves them before it announces the choice);
* **timing**: a strategy that does not need the model chooses before the newest responses are
  learned (:attr:`SelectionPolicy.learn_first`), so it never waits on learning.

The roles of presentations (held out, control, fallback, requeued) are the presenter's
(:class:`RoleSchedule`): they never wait on a choice.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from closedloop.select.strategies import Predictor, RandomStrategy, SelectionContext, Strategy
from closedloop.stimuli import StimulusPool


@dataclass
class Decision:
    """One choice: the pool indices to show, their scores, and what the strategy said."""

    strategy: str
    chosen: np.ndarray
    scores: np.ndarray
    choose_ms: float  # the strategy's own time
    added: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # pool indices made this time
    state: dict | None = None
    finished: bool = False
    context: SelectionContext | None = None


class SelectionPolicy:
    """Chooses batches with ``strategy`` under warm-up, no-repeat and in-flight rules.

    Parameters
    ----------
    strategy : Strategy
        Built once per session (:func:`closedloop.select.registry.make_strategy`).
    model : Predictor or None
        The learner whose predictions the strategy sees (needs ``extend`` to grow the pool).
    pool : StimulusPool
        The stimuli; grows when the strategy makes images.
    candidates : ndarray of int
        Pool indices that may be chosen (the pool less held-out images).
    units : tuple of str
        Unit names.
    batch, warmup, no_repeat : int
        Images per decision; responses before the strategy chooses; recent images not offered.
    seed : int
        Seed of the choices' random stream.
    on_added : callable, optional
        Called with the first new pool index after images are appended.
    """

    def __init__(self, strategy: Strategy, model: Predictor | None, pool: StimulusPool, candidates: np.ndarray,
                 units: tuple[str, ...], batch: int, warmup: int = 0, no_repeat: int = 0, seed: int = 0,
                 on_added: Callable[[int], None] | None = None):
        self.strategy, self.model, self.pool, self.units = strategy, model, pool, tuple(units)
        self.candidates = np.asarray(candidates, int)
        self.batch, self.warmup, self.no_repeat = batch, warmup, no_repeat
        self.rng = np.random.default_rng(seed)
        self.on_added = on_added
        self._warmup = RandomStrategy()
        self._recent: deque[int] = deque(maxlen=no_repeat or None)
        self._in_flight: list[int] = []
        self._shown = np.zeros(64, int)  # the history, in arrays that double when full
        self._counts = np.zeros((64, len(self.units)))
        self._learned = 0
        self._added: list[int] = []

    def current(self, learned: int) -> Strategy:
        """The strategy that makes the next choice after ``learned`` responses."""
        return self.strategy if learned >= self.warmup else self._warmup

    def learn_first(self, learned: int) -> bool:
        """Whether the next choice needs the newest responses learned before it is made."""
        return self.current(learned).needs_model

    def observe(self, pool_index: int, counts: np.ndarray) -> None:
        """A trained-on response (not held-out ones)."""
        self.strategy.observe(pool_index, counts)
        if self.no_repeat:
            self._recent.append(int(pool_index))
        if self._learned == len(self._shown):
            self._shown = np.concatenate([self._shown, np.zeros_like(self._shown)])
            self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
        self._shown[self._learned], self._counts[self._learned] = pool_index, counts
        self._learned += 1

    def allowed(self) -> np.ndarray:
        """Candidates the next choice may take."""
        excluded = list(self._recent) + self._in_flight
        return self.candidates[~np.isin(self.candidates, excluded)] if excluded else self.candidates

    def decide(self, learned: int) -> Decision:
        """The next batch, after ``learned`` responses."""
        strategy = self.current(learned)
        context = SelectionContext(self.allowed(), self.pool, None, self.model, self.units,
                                   self._shown[:self._learned], self._counts[:self._learned], self.add_images)
        started = time.perf_counter()
        chosen, scores = strategy.choose(context, self.batch, self.rng)
        choose_ms = (time.perf_counter() - started) * 1000.0
        self._in_flight = [int(i) for i in chosen]
        added, self._added = np.array(self._added, int), []
        return Decision(strategy.name, np.asarray(chosen, int), np.asarray(scores, float), choose_ms, added,
                        strategy.state(), strategy.finished, context)

    def add_images(self, images: np.ndarray, families: list[str], params: list[dict]) -> np.ndarray:
        """Append stimuli to the pool and the model, in step; their pool indices."""
        start = len(self.pool)
        index = self.pool.append(images, families, params)
        if self.model is not None and not np.array_equal(self.model.extend(images), index):
            raise RuntimeError("the model's pool and the stimulus pool are out of step")
        self._added += index.tolist()
        if self.on_added is not None:
            self.on_added(start)
        return index


class RoleSchedule:
    """Which kind of image each presentation shows, decided by the presenter without waiting.

    Every ``every``-th presentation is a held-out image (in a seeded order); otherwise an image cut
    by a spike gap or a fixation break is shown again (``requeued``), or with probability
    ``control_fraction`` a random candidate (``control``), or the next chosen image (``chosen``), or
    a random candidate when no choice is waiting (``fallback``: a missed deadline, counted).
    """

    def __init__(self, every: int, control_fraction: float, candidates: np.ndarray, heldout: np.ndarray,
                 seed: int):
        self.every, self.control = every, control_fraction
        self.rng = np.random.default_rng(seed)
        self.candidates = candidates
        self.heldout = self.rng.permutation(heldout)
        self.queue: deque[int] = deque()
        self.requeued: deque[int] = deque()

    def next(self, i: int) -> tuple[str, int]:
        """(role, pool index) for presentation ``i``."""
        if i % self.every == self.every - 1:
            return "heldout", int(self.heldout[(i // self.every) % len(self.heldout)])
        if self.requeued:
            return "requeued", self.requeued.popleft()
        if self.rng.random() < self.control:
            return "control", int(self.rng.choice(self.candidates))
        if self.queue:
            return "chosen", self.queue.popleft()
        return "fallback", int(self.rng.choice(self.candidates))
