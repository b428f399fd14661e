import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import DisagreementStrategy, RandomStrategy, make_strategy


def test_disagreement_picks_the_candidates_members_disagree_on():
    rng = np.random.default_rng(0)
    members, neurons, candidates = 5, 3, 40
    predictions = np.full((members, neurons, candidates), 2.0)
    predictions += rng.normal(0, 0.01, predictions.shape)
    contested = [7, 21, 33]
    predictions[:, :, contested] += rng.normal(0, 1.0, (members, neurons, 3))
    predictions = np.abs(predictions)
    pool_index = np.arange(100, 140)
    chosen, scores = DisagreementStrategy().choose(predictions, pool_index, 3, rng)
    assert sorted(chosen.tolist()) == [107, 121, 133]
    assert np.all(np.diff(scores) <= 0)


def test_disagreement_is_relative_to_the_predicted_rate():
    # The same spread matters less on a high predicted count (Poisson scale).
    predictions = np.zeros((2, 1, 2))
    predictions[:, 0, 0] = [1.0, 2.0]
    predictions[:, 0, 1] = [20.0, 21.0]
    chosen, _ = DisagreementStrategy().choose(predictions, np.array([0, 1]), 1, np.random.default_rng(0))
    assert chosen.tolist() == [0]


def test_random_is_reproducible_and_covers_the_pool():
    pool_index = np.arange(50)
    a, _ = RandomStrategy().choose(None, pool_index, 10, np.random.default_rng(3))
    b, _ = RandomStrategy().choose(None, pool_index, 10, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10
    seen = set()
    rng = np.random.default_rng(4)
    for _ in range(60):
        seen.update(RandomStrategy().choose(None, pool_index, 5, rng)[0].tolist())
    assert seen == set(range(50))


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ClosedLoopError, match="unknown strategy 'best'.*disagreement, random"):
        make_strategy("best")
