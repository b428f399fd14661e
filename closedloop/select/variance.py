"""Integrated variance reduction: images that make the model's predictions surest where it matters.

For a readout that is linear in the model's features ``z`` (the learner's Bayesian readouts on
variance-stabilised counts; approximately, any readout near its fit), the posterior covariance
of the weights is proportional to ``S = (Z'Z + a I)^-1`` over the images shown so far, whatever
their responses, and the stabilised count's noise variance is the same at every rate (Poisson
noise after the Anscombe transform). Showing image ``x`` next lowers the posterior variance of
the latent prediction at image ``t`` by ``(z_t' S z_x)^2 / (1 + z_x' S z_x)``.

What is summed over the target images ``T`` (``scale``):

- ``counts`` (default): the variance of the predicted *expected counts*, each unit's in units of
  the spread of its predictions over the target. With ``m`` the expected count, the latent scale
  is ``2 sqrt(m + 3/8)``, so (delta method) a latent variance becomes a count variance times
  ``m + 3/8``: the gain is ``x' S A S x / (1 + x' S x)`` with
  ``A = sum_t w_t z_t z_t'`` and ``w_t = sum_u (m_ut + 3/8) / var_T(m_u)``. High-rate targets,
  where a unit's tuning shows, weigh more; every unit counts equally, as in a median r.
- ``latent``: the latent variance, every target image alike (``w_t = 1``).

The batch is chosen greedily, ``S`` updated after each pick (Sherman-Morrison), so the images of
one batch complement each other (batch diversity).

Why not disagreement: the reference measurements in the project's notes show that uncertainty
sampling on a fixed pool drifts to outliers and repeats them. This criterion weighs an image by
how much it teaches about the images one wants to predict (``target``: the pool, or one family of
it such as natural images or a held-out set), and it never takes Poisson noise for model
uncertainty.

The model supplies the features and the ridge (:class:`closedloop.select.strategies.Predictor`):
``context.model.embedding(pool_index)`` -> (images, dims), ``context.model.ridge`` (the readout's
``a``) and, with ``scale = "counts"``, ``context.model.predictive(pool_index)``; a model without a
readout (a plain image model) says so in one line.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from closedloop.errors import ClosedLoopError
from closedloop.config import POOL_LIMIT
from closedloop.select.strategies import NoParams, SelectionContext, Strategy

ANSCOMBE = 0.375  # spikes: the offset of the variance-stabilising transform 2 sqrt(c + 3/8)


class VarianceParams(NoParams):
    target: str | None = Field(None, description="family of the pool whose predictions matter "
                                                 "(e.g. natural, or a held-out set); default: the whole pool")
    sample: int = Field(512, ge=16, le=POOL_LIMIT, description="target images drawn per decision (for speed)")
    scale: Literal["counts", "latent"] = Field("counts", description="the variance summed over the target: of "
                                               "expected counts (per unit, relative to its spread) or latent")


class VarianceReductionStrategy(Strategy):
    """Greedy integrated (transductive) variance reduction in the model's feature space."""

    name = "variance_reduction"
    Params = VarianceParams

    def check(self, units, pool):
        target = self.params.target
        if target is not None and target not in pool.families:
            raise ClosedLoopError(f"strategy 'variance_reduction': params.target: no {target!r} images in the "
                                  f"pool (families: {', '.join(sorted(set(pool.families)))})")

    def choose(self, context: SelectionContext, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        self.check_context(context)
        model = context.model
        if model is None:
            raise ClosedLoopError("strategy 'variance_reduction': needs the model's features (context.model)")
        allowed = np.asarray(context.allowed)
        target = self._target(context, rng)
        z_allowed, z_target = model.embedding(allowed), model.embedding(target)
        z_shown = model.embedding(np.asarray(context.shown)) if len(context.shown) else z_allowed[:0]
        center = z_target.mean(0)
        z_allowed, z_target, z_shown = z_allowed - center, z_target - center, z_shown - center
        s = np.linalg.inv(z_shown.T @ z_shown + model.ridge * np.eye(z_allowed.shape[1]))
        weights = self._weights(model, target)
        a = (z_target * weights[:, None]).T @ z_target
        chosen, scores = [], []
        for _ in range(min(k, len(allowed))):
            sz = z_allowed @ s  # (allowed, dims)
            gain = ((sz @ a) * sz).sum(1) / (1.0 + (sz * z_allowed).sum(1))
            gain[chosen] = -np.inf
            best = int(np.argmax(gain))
            chosen.append(best)
            scores.append(float(gain[best]))
            v = sz[best]
            s = s - np.outer(v, v) / (1.0 + v @ z_allowed[best])
        return allowed[chosen], np.array(scores)

    def _weights(self, model, target: np.ndarray) -> np.ndarray:
        """``w_t`` per target image (see the module docstring)."""
        if self.params.scale == "latent":
            return np.ones(len(target))
        mean = np.asarray(model.predictive(target)[0], dtype=np.float64)  # (units, T) spikes
        spread = mean.var(axis=1, keepdims=True) + 1e-6
        return ((mean + ANSCOMBE) / spread).sum(0)

    def _target(self, context: SelectionContext, rng: np.random.Generator) -> np.ndarray:
        """Pool indices whose predictions matter: a random sample of the target family (or pool)."""
        pool = context.pool
        if pool is None:
            index = np.asarray(context.allowed)
        elif self.params.target is None:
            index = np.arange(len(pool))
        else:
            index = np.flatnonzero(np.array(pool.families) == self.params.target)
        if len(index) > self.params.sample:
            index = np.sort(rng.choice(index, self.params.sample, replace=False))
        return index
