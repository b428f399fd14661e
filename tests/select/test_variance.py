"""Integrated variance reduction on constructed feature spaces where the answer is known."""

import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext
from closedloop.stimuli import StimulusPool


class Embedded:
    """A model whose features are given rows (the contract ``variance_reduction`` reads)."""

    def __init__(self, features, ridge=1.0, counts=None):
        self.features, self.ridge = np.asarray(features, float), ridge
        self.counts = np.ones((2, len(self.features))) if counts is None else np.asarray(counts, float)

    def embedding(self, index):
        return self.features[np.asarray(index, int)]

    def predictive(self, index):
        mean = self.counts[:, np.asarray(index, int)]
        return mean, np.zeros_like(mean)


def pool_of(families):
    images = np.zeros((len(families), 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(families))  # distinct ids
    return StimulusPool(images, families, [{}] * len(families))


def context(features, allowed, shown=(), families=None, ridge=1.0, counts=None):
    families = families or ["natural"] * len(features)
    predictions = np.ones((2, 1, len(allowed)))
    return SelectionContext(np.array(allowed), pool_of(families), predictions, Embedded(features, ridge, counts),
                            ("u",), np.array(shown, int), np.zeros((len(shown), 1)))


def test_prefers_the_direction_the_shown_images_left_unexplored():
    # 0-9: shown, all along e1; 10: candidate along e1; 11: candidate along e2.
    features = np.zeros((12, 2))
    features[:10, 0] = np.linspace(-2, 2, 10)
    features[10] = [1.5, 0.0]
    features[11] = [0.0, 1.5]
    features[:10, 1] = 0.01
    chosen, scores = make_strategy("variance_reduction").choose(
        context(features, [10, 11], shown=range(10)), 1, np.random.default_rng(0))
    assert chosen.tolist() == [11]


def test_a_batch_complements_itself_instead_of_repeating_a_direction():
    # Two near-copies along e2 and one along e3: the second pick must be e3, not the copy.
    features = np.zeros((6, 3))
    features[0], features[1] = [1, 0, 0], [-1, 0, 0]
    features[2], features[3] = [0, 1.0, 0], [0, 1.0, 0.001]
    features[4] = [0, 0, 0.9]
    features[5] = [0, -1, -1]
    chosen, _ = make_strategy("variance_reduction").choose(
        context(features, [2, 3, 4], shown=[0, 1]), 2, np.random.default_rng(0))
    assert sorted(chosen.tolist()) in ([2, 4], [3, 4])


def test_the_target_family_decides_what_is_worth_learning():
    # The natural images vary only along e1, so a candidate along e1 beats a stronger one along e2.
    features = np.zeros((8, 2))
    features[:6, 0] = np.linspace(-1, 1, 6)
    features[6] = [0.5, 0.0]
    features[7] = [0.0, 3.0]
    families = ["natural"] * 6 + ["contour", "contour"]
    strategy = make_strategy("variance_reduction", {"target": "natural"})
    chosen, _ = strategy.choose(context(features, [6, 7], families=families), 1, np.random.default_rng(0))
    assert chosen.tolist() == [6]
    chosen, _ = make_strategy("variance_reduction").choose(
        context(features, [6, 7], families=families), 1, np.random.default_rng(0))
    assert chosen.tolist() == [7]  # over the whole pool, e2 matters too


def test_on_the_count_scale_the_targets_a_unit_responds_to_weigh_more():
    # Targets 0-3 lie along e1 and drive the unit hard (20 spikes), targets 4-7 along e2 barely (0.5);
    # the candidate along e2 is a little stronger. The latent variance counts both directions alike
    # and takes it; the variance of expected counts (delta method: x (m + 3/8)) takes e1.
    features = np.zeros((10, 2))
    features[:4, 0] = [-1.0, -0.5, 0.5, 1.0]
    features[4:8, 1] = [-1.0, -0.5, 0.5, 1.0]
    features[8], features[9] = [1.0, 0.0], [0.0, 1.2]
    counts = np.array([[20.0, 20.5, 21.0, 21.5, 0.5, 0.6, 0.7, 0.8, 1.0, 1.0]] * 2)
    families = ["natural"] * 8 + ["contour"] * 2
    for scale, expected in (("latent", 9), ("counts", 8)):
        strategy = make_strategy("variance_reduction", {"target": "natural", "scale": scale})
        chosen, _ = strategy.choose(context(features, [8, 9], families=families, counts=counts), 1,
                                    np.random.default_rng(0))
        assert chosen.tolist() == [expected], scale


def test_bad_settings_are_named():
    with pytest.raises(ClosedLoopError, match="params.target: no 'natural' images"):
        make_strategy("variance_reduction", {"target": "natural"}).check(["u"], pool_of(["contour"]))
    with pytest.raises(ClosedLoopError, match="params.sample"):
        make_strategy("variance_reduction", {"sample": 1})
    with pytest.raises(ClosedLoopError, match="params.scale"):
        make_strategy("variance_reduction", {"scale": "poisson"})
    no_model = SelectionContext(np.arange(3), pool_of(["natural"] * 3), np.ones((2, 1, 3)))
    with pytest.raises(ClosedLoopError, match="variance_reduction': needs the model's features"):
        make_strategy("variance_reduction").choose(no_model, 1, np.random.default_rng(0))
