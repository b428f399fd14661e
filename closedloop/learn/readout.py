"""Bayesian linear readouts of spike counts, one per unit, updated in closed form per response.

The noise model: a count ``c`` is variance-stabilised, ``y = 2 sqrt(c + 3/8)`` (Anscombe), so a
Poisson count has ``var(y)`` close to 1 at every rate, and ``y`` is Gaussian around a linear
function of the core's features. With ``x = [1, z]`` (an intercept and the features) and unit
``u``'s noise variance ``s_u^2``:

    y_u = x . w_u + noise,  noise ~ N(0, s_u^2),  w_u ~ N(0, s_u^2 P^-1),  P = diag(eps, a, ..., a)

(``a`` the ridge shared by the units; the intercept barely shrunk). The posterior of ``w_u`` is
``N(M_u, s_u^2 S)`` with ``S = (X'X + P)^-1`` and ``M = S X'Y``: one ``S`` for every unit, so a
response (or a batch of ``b``) updates ``S`` and ``M`` by a rank-``b`` Woodbury step in
``O(d^2 + d U)``. ``a`` and ``s_u^2`` are chosen by the evidence (the marginal likelihood),
summed over units, in :func:`fit` (which the learner runs off the choice path).

Expected counts: ``E[c | f] = (f^2 + s_u^2) / 4 - 3/8`` for the latent mean ``f = x . w_u``; with
``f ~ N(mu, tau^2)`` from the posterior, the mean is ``(mu^2 + tau^2 + s_u^2) / 4 - 3/8`` and the
variance of the expected count over the posterior ``mu^2 tau^2 / 4 + tau^4 / 8``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ALPHAS = np.logspace(-3, 5, 65)  # ridge values tried by the evidence, in units of the mean feature variance
INTERCEPT_PRECISION = 1e-6  # prior precision of the intercept (nearly flat)
COUNT_FLOOR = 0.01  # spikes: expected counts below this are taken as this


def stabilise(counts: np.ndarray) -> np.ndarray:
    """Anscombe's transform ``2 sqrt(c + 3/8)`` of spike counts: unit variance for Poisson counts."""
    return 2.0 * np.sqrt(np.maximum(np.asarray(counts, dtype=np.float64), 0.0) + 0.375)


def expected_counts(mu, tau2, noise):
    """Posterior mean of the expected count (spikes) for latent mean ``mu``, latent posterior
    variance ``tau2`` and noise variance ``noise`` (broadcast; e.g. (units, B) and (units, 1)).
    Takes numpy arrays and (differentiably) torch tensors."""
    return ((mu * mu + tau2 + noise) / 4.0 - 0.375).clip(min=COUNT_FLOOR)


def count_variance(mu: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    """Posterior variance of the expected count (spikes^2): ``mu^2 tau^2 / 4 + tau^4 / 8``."""
    return mu * mu * tau2 / 4.0 + tau2 * tau2 / 8.0


def with_intercept(z: np.ndarray) -> np.ndarray:
    """``[1, z]`` for features (B, d): (B, d + 1)."""
    z = np.asarray(z)
    return np.concatenate([np.ones((len(z), 1), z.dtype), z], axis=1)


@dataclass
class Posterior:
    """The readouts' state: ``S`` (d+1, d+1), ``M`` (d+1, units), noise (units,), the ridge, and
    the data seen (count ``n``; ``X'X``-free: ``S`` and ``M`` hold everything)."""

    S: np.ndarray
    M: np.ndarray
    noise: np.ndarray
    ridge: float
    n: int = 0

    @classmethod
    def prior(cls, dims: int, units: int, ridge: float) -> Posterior:
        """No data yet: ``S = P^-1``, ``M = 0``, noise variance 1 (Poisson on the stabilised scale)."""
        precision = np.full(dims + 1, ridge)
        precision[0] = INTERCEPT_PRECISION
        return cls(np.diag(1.0 / precision), np.zeros((dims + 1, units)), np.ones(units), ridge)

    def update(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Learn ``b`` responses: features with intercept ``x`` (b, d+1), stabilised counts ``y``
        (b, units). A Woodbury step; returns ``(Sx, C^-1, residuals)`` so a caller can update
        predictions it keeps: ``mu += (X_pool Sx) C^-1 R``, ``v -= rowsum((X_pool Sx C^-1) * X_pool Sx)``."""
        sx = self.S @ x.T  # (d+1, b)
        c_inv = np.linalg.inv(np.eye(len(x)) + x @ sx)
        residuals = y - x @ self.M  # (b, units)
        self.M += sx @ (c_inv @ residuals)
        self.S -= sx @ c_inv @ sx.T
        self.S = (self.S + self.S.T) / 2.0  # keep it symmetric against rounding
        self.n += len(x)
        return sx, c_inv, residuals

    def draws(self, members: int, rng: np.random.Generator) -> np.ndarray:
        """Posterior samples of the weights, (members, d+1, units)."""
        chol = np.linalg.cholesky(self.S + 1e-10 * np.eye(len(self.S)))
        eps = rng.standard_normal((members, len(self.S), self.M.shape[1]))
        return self.M + np.einsum("ij,mju->miu", chol, eps) * np.sqrt(self.noise)


def fit(x: np.ndarray, y: np.ndarray, alphas: np.ndarray = ALPHAS, prior_mean: np.ndarray | None = None,
        pause: Callable[[], None] | None = None) -> Posterior:
    """The batch posterior on features with intercept ``x`` (n, d+1) and stabilised counts ``y``
    (n, units), with the ridge (a multiple of the mean feature variance, from ``alphas``) and
    each unit's noise variance that maximise the evidence summed over units. ``prior_mean``
    (d+1, units): the weights' prior mean (e.g. a previous session's readouts; default 0);
    ``pause`` is called between blocks of responses (where a background caller yields)."""
    n, d1 = x.shape
    if prior_mean is not None:
        posterior = fit(x, y - x @ prior_mean, alphas, pause=pause)
        posterior.M += prior_mean
        return posterior
    if n < 2:
        return Posterior.prior(d1 - 1, y.shape[1], float(d1 - 1))
    # The ridge by the evidence with the intercept integrated out (centred data: the limit of its
    # flat prior), for every ridge at once in the eigenbasis of the centred features' Gram matrix.
    means = x[:, 1:].mean(0)
    z, yc = x[:, 1:] - means, y - y.mean(0)
    centred = gram(z, pause)
    values, vectors = np.linalg.eigh(centred)
    values = np.maximum(values, 0.0)
    projected = vectors.T @ (z.T @ yc)  # (d, units)
    grid = alphas * max(float(values.sum()) / (n * (d1 - 1)), 1e-12)  # in units of the mean feature variance
    inverse = 1.0 / (values[None, :] + grid[:, None])  # (alphas, d)
    energy = np.maximum((yc * yc).sum(0)[None, :] - inverse @ (projected ** 2), 1e-9)  # RSS + m'Pm, (alphas, units)
    logdet = np.log(values[None, :] + grid[:, None]).sum(1) - (d1 - 1) * np.log(grid)
    evidence = -0.5 * (n - 1) * np.log(energy / (n - 1)).sum(1) - 0.5 * y.shape[1] * logdet
    best = int(np.argmax(evidence))
    alpha = float(grid[best])
    precision = np.full(d1, alpha)
    precision[0] = INTERCEPT_PRECISION
    xx = np.empty((d1, d1))  # x'x from the centred Gram matrix, not a second pass over the responses
    xx[0, 0], xx[0, 1:], xx[1:, 0] = n, n * means, n * means
    xx[1:, 1:] = centred + n * np.outer(means, means)
    c_inv = np.linalg.inv(np.linalg.cholesky(xx + np.diag(precision)))
    s = c_inv.T @ c_inv
    return Posterior((s + s.T) / 2.0, s @ (x.T @ y), np.maximum(energy[best] / n, 1e-3), alpha, n)


GRAM_BLOCK = 256  # responses per block of a Gram matrix


def gram(x: np.ndarray, pause: Callable[[], None] | None = None) -> np.ndarray:
    """``x' x``, a block of rows at a time, calling ``pause`` between blocks."""
    total = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), GRAM_BLOCK):
        if pause is not None:
            pause()
        block = x[start:start + GRAM_BLOCK]
        total += block.T @ block
    return total
