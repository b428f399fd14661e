"""Selection strategies: plug-ins that rank candidate images.

A strategy sees the ensemble's predictions for the candidates and returns the
``k`` it wants shown next, with a score for each (higher is better).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from closedloop.errors import ClosedLoopError


class Strategy(ABC):
    """Chooses ``k`` candidates; ``needs_model`` says whether predictions are used."""

    name: ClassVar[str]
    needs_model: ClassVar[bool] = True

    @abstractmethod
    def scores(self, predictions: np.ndarray | None, rng: np.random.Generator,
               n_candidates: int) -> np.ndarray:
        """One score per candidate; ``predictions`` is (members, neurons, candidates)."""

    def choose(self, predictions: np.ndarray | None, candidates: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of ``candidates`` (pool indices) and their scores."""
        if len(candidates) == 0:
            raise ClosedLoopError("no candidate images left to choose from")
        if predictions is not None and predictions.shape[-1] != len(candidates):
            raise ValueError("predictions and candidates disagree in length")
        s = self.scores(predictions, rng, len(candidates))
        k = min(k, len(candidates))
        best = np.argpartition(-s, k - 1)[:k]
        best = best[np.argsort(-s[best])]
        return candidates[best], s[best]


class RandomStrategy(Strategy):
    """Uniformly random candidates (the control every lab runs)."""

    name = "random"
    needs_model = False

    def scores(self, predictions, rng, n_candidates):
        return rng.random(n_candidates)


class DisagreementStrategy(Strategy):
    """Ensemble disagreement, as in the compact-model paper's active learning.

    Score: across members, the variance of each neuron's predicted count over
    its mean (a Fano factor, so high-rate neurons do not dominate), averaged
    over neurons.
    """

    name = "disagreement"

    def scores(self, predictions, rng, n_candidates):
        if predictions is None:
            raise ValueError("disagreement needs the ensemble's predictions")
        variance = predictions.var(axis=0)
        mean = predictions.mean(axis=0)
        return (variance / (mean + 1e-3)).mean(axis=0)


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (RandomStrategy, DisagreementStrategy)}


def make_strategy(name: str) -> Strategy:
    """The strategy called ``name``; a one-line error lists the known ones."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ClosedLoopError(
            f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        ) from None
