"""The validation test within a session: do the model's top images drive a neuron more than
random natural images?

As in the compact-model paper, but trial by trial: once the model has
trained (after the protocol's warm-up), every decision interleaves two arms
for the unit ``neuron``:

- **top** — drawn at random from the ``top`` allowed images with the highest
  expected count (the model's posterior mean), re-ranked at every decision as the
  model learns;
- **random** — drawn uniformly from the allowed images of ``family``
  (``natural`` by default), never an image the same batch shows as a top one.

The arm with fewer images so far goes first and the arms alternate, so they
stay balanced. Only responses to images the test chose count.

The test
    Responses are paired in order: the i-th count to a top image with the
    i-th count to a random one. A pair is a win when the top count is larger,
    a loss when smaller; ties carry no information about the direction and
    are dropped. Under the null hypothesis ("top images drive the neuron no
    more than random natural images": given the past, a pair is no more
    likely a win than a loss) the wins among the ``n`` untied pairs are
    Bernoulli with ``theta <= 1/2``. The e-value is the one-sided mixture
    likelihood ratio (Robbins' mixture sequential probability ratio test),
    ``theta`` uniform on [1/2, 1] against ``theta = 1/2``::

        E = 2 * integral_{1/2}^{1} theta**w (1 - theta)**l dtheta / 2**-n
          = sum_{j <= w} C(n + 1, j) / ((n + 1) C(n, w))

    (``w`` wins, ``l`` losses; computed exactly in integers). For every
    ``theta <= 1/2`` it is a nonnegative supermartingale starting at 1, so by
    Ville's inequality the chance it ever reaches ``1 / alpha`` is at most
    ``alpha``: the test is checked after every response and may stop at any
    time (optional stopping) with its false-positive rate still at most
    ``alpha``. It rejects the null when ``E >= 1 / alpha``; the anytime-valid
    p-value is ``min(1, 1 / max E so far)``.

Why this test
    Spike counts are discrete, over-dispersed and of unknown scale, so a
    sequential t-test's boundaries would rest on asymptotics that a short
    session does not reach. The sign of paired differences needs no model of
    the counts, and its mixture martingale is exact at every sample size and
    under optional stopping; the price is that it ignores by how much a top
    image wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from closedloop.config import MANY, POOL_LIMIT
from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import NoParams, SelectionContext, Strategy, unit_index

ARMS = ("top", "random")


def mixture_e_value(wins: int, losses: int) -> float:
    """The one-sided mixture SPRT e-value of ``wins`` against ``losses`` (module docstring)."""
    n = wins + losses
    numerator = sum(math.comb(n + 1, j) for j in range(wins + 1))
    log_e = math.log(numerator) - math.log((n + 1) * math.comb(n, wins))
    return math.exp(min(log_e, 700.0))


class ValidationParams(NoParams):
    """Settings of the ``validation`` strategy."""

    neuron: str = Field(min_length=1, description="the unit tested")
    top: int = Field(20, ge=1, le=POOL_LIMIT, description="top-predicted images the top arm draws from")
    alpha: float = Field(0.05, gt=0, lt=1, description="false-positive rate of the test")
    budget: int | None = Field(None, gt=0, le=MANY, description="most counted responses; none: until it rejects")
    family: str = Field("natural", min_length=1, description="family of the random arm")


class ValidationStrategy(Strategy):
    """The model's top images against random images of a family, with a sequential sign test.

    See the module docstring.
    """

    name = "validation"
    needs_model = True
    Params = ValidationParams

    def __init__(self, params: ValidationParams | None = None):
        super().__init__(params)
        self.counts: dict[str, list[float]] = {arm: [] for arm in ARMS}  # the neuron's counts per arm
        self.chosen = {arm: 0 for arm in ARMS}  # images chosen per arm
        self.wins = self.losses = self.ties = 0
        self.e_value = self.max_e_value = 1.0
        self._arm: dict[int, str] = {}  # pool index -> the arm it was chosen for, until its response
        self._unit: int | None = None

    def _unit_index(self, units: Sequence[str]) -> int:
        return unit_index(units, self.params.neuron, self.name)

    def check(self, units, pool):
        self._unit_index(units)
        if self.params.family not in pool.families:
            raise ClosedLoopError(f"strategy 'validation': the pool has no {self.params.family} images for the "
                                  f"random arm (families: {', '.join(sorted(set(pool.families)))})")

    # ------------------------------------------------------------- choosing --
    def scores(self, context: SelectionContext, rng: np.random.Generator) -> np.ndarray:
        """The neuron's expected count for each allowed image (posterior mean, spikes per window)."""
        self._unit = self._unit_index(context.units)
        return context.mean()[self._unit]

    def choose(self, context, k, rng):
        """``k`` images alternating between the arms (their order is the order to show them);
        scores are the predicted counts."""
        self.check_context(context)
        allowed = np.asarray(context.allowed)
        predicted = self.scores(context, rng)
        arms: list[str] = []
        for _ in range(k):
            arms.append(min(ARMS, key=lambda arm: self.chosen[arm] + arms.count(arm)))
        best = np.argsort(-predicted, kind="stable")[:self.params.top]  # positions in allowed
        top = rng.choice(best, size=min(arms.count("top"), len(best)), replace=False)
        family = np.setdiff1d(np.flatnonzero([context.pool.families[i] == self.params.family for i in allowed]), top)
        if not len(family):
            raise ClosedLoopError(f"strategy 'validation': no {self.params.family} image left to choose "
                                  f"(the pool's are all recent or held out)")
        drawn = {"top": top.tolist(),
                 "random": rng.choice(family, size=min(arms.count("random"), len(family)), replace=False).tolist()}
        order = []
        for arm in arms:
            if drawn[arm]:
                order.append(drawn[arm].pop())
                self._arm[int(allowed[order[-1]])] = arm
                self.chosen[arm] += 1
        return allowed[order], predicted[order]

    # ----------------------------------------------------------------- test --
    def observe(self, pool_index, counts):
        arm = self._arm.pop(int(pool_index), None)
        if arm is None or self._unit is None or not np.isfinite(counts[self._unit]):
            return
        self.counts[arm].append(float(counts[self._unit]))
        top, random = self.counts["top"], self.counts["random"]
        while self.wins + self.losses + self.ties < min(len(top), len(random)):
            pair = self.wins + self.losses + self.ties
            difference = top[pair] - random[pair]
            self.wins += int(difference > 0)
            self.losses += int(difference < 0)
            self.ties += int(difference == 0)
        self.e_value = mixture_e_value(self.wins, self.losses)
        self.max_e_value = max(self.max_e_value, self.e_value)

    @property
    def responses(self) -> int:
        """Counted responses, both arms."""
        return sum(len(c) for c in self.counts.values())

    @property
    def rejected(self) -> bool:
        """Whether the test has shown that the top images drive the neuron more (at ``alpha``)."""
        return self.max_e_value >= 1.0 / self.params.alpha

    @property
    def finished(self):
        budget = self.params.budget
        return self.rejected or (budget is not None and self.responses >= budget)

    def state(self):
        """The test so far: ``e_value`` (the statistic) and ``p_value``; ``wins``, ``losses``, ``ties``
        of the pairs; ``counts`` and ``means`` per arm and their ``difference`` (top - random,
        spikes per window); ``decision`` (None until it rejects)."""
        means = {arm: float(np.mean(c)) if c else None for arm, c in self.counts.items()}
        difference = means["top"] - means["random"] if None not in means.values() else None
        return {"e_value": self.e_value, "p_value": min(1.0, 1.0 / self.max_e_value), "difference": difference,
                "wins": self.wins, "losses": self.losses, "ties": self.ties,
                "counts": {arm: len(c) for arm, c in self.counts.items()}, "means": means,
                "responses": self.responses,
                "decision": "top images drive the neuron more" if self.rejected else None}
