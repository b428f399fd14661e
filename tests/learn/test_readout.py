"""Bayesian readouts: Woodbury steps equal the batch posterior, the evidence picks a sensible ridge,
and the count formulas match Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.learn.readout import (ALPHAS, COUNT_FLOOR, INTERCEPT_PRECISION, Posterior, count_variance,
                                      expected_counts, fit, stabilise, with_intercept)


def _batch(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """``S = (X'X + P)^-1`` and ``M = S X'Y`` computed directly."""
    precision = np.full(x.shape[1], ridge)
    precision[0] = INTERCEPT_PRECISION
    s = np.linalg.inv(x.T @ x + np.diag(precision))
    return s, s @ x.T @ y


def _close(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    """Equal up to ``tolerance`` of the largest entry."""
    assert np.abs(actual - expected).max() <= tolerance * np.abs(expected).max()


# A rank-b step (b > 1) straight from the prior inverts C = I + x S x' whose condition number is
# about b / INTERCEPT_PRECISION (the intercept's prior variance is 1e6): it keeps ~10 of the 16
# digits, so those steps are compared to 1e-4; rank-one steps, and rank-b steps once the intercept
# is pinned down, keep (nearly) all of them.
def _data(n=60, d=6, units=3, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    x = with_intercept(rng.standard_normal((n, d)))
    w = rng.standard_normal((d + 1, units))
    return x, x @ w + noise * rng.standard_normal((n, units))


@pytest.mark.parametrize("b, first, tolerance", [(1, 1, 1e-10), (4, 1, 1e-10), (7, 1, 1e-10), (4, 4, 1e-4),
                                                 (7, 7, 1e-4)])
def test_woodbury_steps_equal_the_batch_posterior(b, first, tolerance):
    x, y = _data()
    ridge = 2.5
    posterior = Posterior.prior(x.shape[1] - 1, y.shape[1], ridge)
    posterior.update(x[:first], y[:first])
    for start in range(first, len(x), b):  # rank-b steps (the last one shorter when b does not divide n)
        posterior.update(x[start:start + b], y[start:start + b])
    s, m = _batch(x, y, ridge)
    assert posterior.n == len(x)
    _close(posterior.S, s, tolerance)
    _close(posterior.M, m, tolerance)
    np.testing.assert_array_equal(posterior.S, posterior.S.T)


def test_update_returns_what_updates_kept_predictions():
    """``mu += (X Sx) C^-1 R`` and ``v -= rowsum((X Sx C^-1) * X Sx)`` track the posterior exactly."""
    x, y = _data(n=30)
    pool = with_intercept(np.random.default_rng(5).standard_normal((20, x.shape[1] - 1)))
    posterior = Posterior.prior(x.shape[1] - 1, y.shape[1], 1.0)
    mu, v = pool @ posterior.M, ((pool @ posterior.S) * pool).sum(1)
    bounds = [0, 1, 3, *range(6, len(x) + 1, 3)]  # steps of rank 1, 2, then 3
    for start, stop in zip(bounds, bounds[1:]):
        sx, c_inv, residuals = posterior.update(x[start:stop], y[start:stop])
        g = pool @ sx
        mu += g @ c_inv @ residuals
        v -= ((g @ c_inv) * g).sum(1)
    _close(mu, pool @ posterior.M, 1e-10)
    _close(v, ((pool @ posterior.S) * pool).sum(1), 1e-8)  # v starts at ~1e6 (the intercept's prior)


def test_fit_with_one_ridge_is_the_batch_posterior():
    x, y = _data()
    scale = np.var(x[:, 1:], axis=0).mean()  # the ridge is in units of the mean feature variance
    posterior = fit(x, y, alphas=np.array([3.0]))
    s, m = _batch(x, y, 3.0 * scale)
    assert posterior.ridge == pytest.approx(3.0 * scale) and posterior.n == len(x)
    np.testing.assert_allclose(posterior.S, s, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(posterior.M, m, rtol=1e-8, atol=1e-10)
    # the noise: (RSS + m' P m) / n per unit, the maximum of the evidence at that ridge
    residual = ((y - x @ m) ** 2).sum(0)
    penalty = 3.0 * scale * (m[1:] ** 2).sum(0) + INTERCEPT_PRECISION * m[0] ** 2
    np.testing.assert_allclose(posterior.noise, (residual + penalty) / len(x), rtol=1e-6)
    # and Woodbury steps from the prior at that ridge reach the same weights
    stepped = Posterior.prior(x.shape[1] - 1, y.shape[1], posterior.ridge)
    stepped.update(x[:1], y[:1])
    stepped.update(x[1:10], y[1:10])
    stepped.update(x[10:], y[10:])
    _close(stepped.M, posterior.M, 1e-10)
    _close(stepped.S, posterior.S, 1e-10)


def test_the_evidence_picks_a_ridge_that_recovers_the_truth():
    """Few responses for many features: weights from N(0, 0.3^2), noise 1, so the best ridge is
    about 1 / 0.09 = 11 (in units of the feature variance). The evidence finds it and predicts new
    images better than the smallest and the largest ridge tried."""
    rng = np.random.default_rng(1)
    n, d, units = 45, 30, 6
    noise_sd = np.linspace(0.8, 1.2, units)
    w = 0.3 * rng.standard_normal((d, units)) * noise_sd
    x = with_intercept(rng.standard_normal((n, d)))
    y = 2.0 + x[:, 1:] @ w + noise_sd * rng.standard_normal((n, units))
    x_new = with_intercept(rng.standard_normal((2000, d)))
    truth = 2.0 + x_new[:, 1:] @ w

    def error(posterior: Posterior) -> float:
        return float(np.mean((x_new @ posterior.M - truth) ** 2))

    chosen = fit(x, y)
    scale = np.var(x[:, 1:], axis=0).mean()
    assert 2.0 < chosen.ridge / scale < 60.0
    assert error(chosen) < 0.8 * error(fit(x, y, alphas=ALPHAS[:1]))
    assert error(chosen) < 0.8 * error(fit(x, y, alphas=ALPHAS[-1:]))
    # each unit's noise variance comes out near its own
    np.testing.assert_allclose(chosen.noise, noise_sd ** 2, rtol=0.45)


def test_fit_without_data_is_the_prior():
    posterior = fit(np.zeros((0, 5)), np.zeros((0, 2)))
    assert posterior.n == 0 and posterior.M.shape == (5, 2)
    np.testing.assert_array_equal(posterior.M, 0.0)


def test_expected_counts_and_their_variance_match_monte_carlo():
    """A latent ``f ~ N(mu, tau2)``, stabilised count ``y = f + N(0, noise)``, count
    ``c = y^2 / 4 - 3/8`` (Anscombe inverted): the mean of ``c`` and the variance over ``f`` of
    ``E[c | f]`` are the closed forms."""
    rng = np.random.default_rng(2)
    mu, tau2, noise = np.array([1.5, 3.0, 5.0]), np.array([0.4, 0.1, 1.0]), np.array([1.0, 0.6, 1.3])
    f = mu + np.sqrt(tau2) * rng.standard_normal((400_000, 3))
    y = f + np.sqrt(noise) * rng.standard_normal(f.shape)
    counts = y * y / 4.0 - 0.375
    np.testing.assert_allclose(expected_counts(mu, tau2, noise), counts.mean(0), rtol=0.01)
    conditional = (f * f + noise) / 4.0 - 0.375  # E[c | f]
    np.testing.assert_allclose(count_variance(mu, tau2), conditional.var(0), rtol=0.02)
    assert expected_counts(np.zeros(1), np.zeros(1), np.zeros(1))[0] == COUNT_FLOOR


def test_stabilised_poisson_counts_have_unit_variance():
    rng = np.random.default_rng(3)
    for rate in (3.0, 8.0, 30.0):
        assert np.var(stabilise(rng.poisson(rate, 200_000))) == pytest.approx(1.0, abs=0.06)
    assert stabilise(np.array([-1.0]))[0] == pytest.approx(2 * np.sqrt(0.375))  # negatives are 0


def test_posterior_draws_have_the_posterior_moments():
    x, y = _data(n=40, d=3, units=2)
    posterior = fit(x, y)
    draws = posterior.draws(20_000, np.random.default_rng(4))
    assert draws.shape == (20_000, 4, 2)
    spread = np.sqrt(posterior.noise.max() * np.diag(posterior.S).max() / 20_000)  # of the mean of the draws
    np.testing.assert_allclose(draws.mean(0), posterior.M, atol=5 * spread)
    for u in range(2):
        np.testing.assert_allclose(np.cov(draws[:, :, u].T), posterior.noise[u] * posterior.S, rtol=0.06,
                                   atol=0.06 * posterior.noise[u] * np.abs(posterior.S).max())
