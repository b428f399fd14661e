"""Integrated variance reduction: images that make the model's predictions surest where it matters.

For a readout that is linear in the model's features ``z`` (a ridge or
Bayesian linear readout; approximately, any readout near its fit), the
posterior covariance of the weights is proportional to ``S = (Z'Z + a I)^-1``
over the images shown so far, whatever their responses. Showing image ``x``
next lowers the summed predictive variance over a target set ``T`` by

    sum_t (z_t' S z_x)^2 / (w_x^-1 + z_x' S z_x)

(in units of the noise variance; ``w_x = 1``, or with ``poisson`` the mean
predicted count over its average, since a Poisson count is noisier the higher
it is). The batch is chosen greedily, ``S`` updated after each pick
(Sherman-Morrison), so the images of one batch complement each other.

Why not disagreement: the reference measurements in the project's notes show
that uncertainty sampling on a fixed pool drifts to outliers and repeats them.
This criterion weighs an image by how much it teaches about the images one
wants to predict (``target``: the pool, or one family of it such as natural
images), and it never takes Poisson noise for model uncertainty.

The model supplies the features and the ridge (:class:`closedloop.select.strategies.Predictor`):
``context.model.embedding(pool_index)`` -> (images, dims), and ``context.model.ridge`` (the
readout's ``a``); a model without a readout (a plain image model) says so in one line.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import NoParams, SelectionContext, Strategy


class VarianceParams(NoParams):
    target: str | None = Field(None, description="family of the pool whose predictions matter "
                                                 "(e.g. natural); default: the whole pool")
    sample: int = Field(512, ge=16, description="target images drawn per decision (for speed)")
    poisson: bool = Field(False, description="weigh each image by its Poisson noise (mean predicted count)")


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
        weight = np.ones(len(allowed))
        if self.params.poisson:
            mean = np.maximum(context.mean().mean(axis=0), 1e-3)
            weight = mean.mean() / mean
        chosen, scores = [], []
        for _ in range(min(k, len(allowed))):
            sz = z_allowed @ s  # (allowed, dims)
            gain = ((z_target @ sz.T) ** 2).sum(0) * weight / (1.0 + weight * (sz * z_allowed).sum(1))
            gain[chosen] = -np.inf
            best = int(np.argmax(gain))
            chosen.append(best)
            scores.append(float(gain[best]))
            v = sz[best]
            s = s - weight[best] * np.outer(v, v) / (1.0 + weight[best] * v @ z_allowed[best])
        return allowed[chosen], np.array(scores)

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
