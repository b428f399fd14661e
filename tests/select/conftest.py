"""A stand-in model with a closed-form posterior, for strategies' tests."""

from __future__ import annotations

import numpy as np
import pytest


class ClosedForm:
    """A model whose posterior gives each pool image's expected counts a known mean and variance,
    (units, K) each, and no draws: a strategy that asks for draws fails. ``asked`` records the
    pool indices each :meth:`predictive` call was for."""

    def __init__(self, mean, variance=None):
        self.mean = np.asarray(mean, float)
        self.variance = np.zeros_like(self.mean) if variance is None else np.asarray(variance, float)
        self.asked: list[list[int]] = []

    def predictive(self, index=None):
        index = np.arange(self.mean.shape[1]) if index is None else np.asarray(index)
        self.asked.append(index.tolist())
        return self.mean[:, index], self.variance[:, index]

    def predictions(self, index=None):
        raise AssertionError("posterior draws asked for by a strategy that should not need them")


@pytest.fixture
def closed_form():
    """The :class:`ClosedForm` class."""
    return ClosedForm
