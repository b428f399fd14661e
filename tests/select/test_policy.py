"""The selection policy: warm-up, no repeats, images in flight, held-out images, a growing pool."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.select.policy import SelectionPolicy
from closedloop.select.registry import make_strategy
from closedloop.stimuli import generate_pool

UNITS = ("a",)
K = 10


@pytest.fixture
def pool():
    return generate_pool({"dot": K}, 16, seed=0)


@pytest.fixture
def ranked(closed_form):
    """A model whose expected count rises with the pool index: max_response's order is K-1, K-2, ..."""
    return closed_form(np.arange(K, dtype=float)[None, :])


def _policy(pool, model, strategy="max_response", candidates=None, **settings):
    candidates = np.arange(K) if candidates is None else np.asarray(candidates)
    return SelectionPolicy(make_strategy(strategy), model, pool, candidates, UNITS, **{"batch": 1, **settings})


def test_random_images_until_the_warm_up_is_learned(pool, ranked):
    policy = _policy(pool, ranked, warmup=3, batch=4)
    early = [policy.decide(learned) for learned in range(3)]
    assert {d.strategy for d in early} == {"random"} and ranked.asked == []  # the model is not asked
    assert len({tuple(d.chosen.tolist()) for d in early}) > 1
    after = policy.decide(3)
    assert after.strategy == "max_response" and after.chosen.tolist() == [9, 8, 7, 6]


def test_only_a_strategy_that_needs_the_model_waits_for_learning(pool, ranked):
    policy = _policy(pool, ranked, warmup=2)
    assert [policy.learn_first(n) for n in (0, 1, 2, 50)] == [False, False, True, True]
    assert not _policy(pool, ranked, "random").learn_first(10)
    assert not _policy(pool, None, "gaudy").learn_first(10)


def test_held_out_images_are_never_offered(pool, ranked):
    heldout = [9, 8, 3]  # among them the two the model ranks highest
    candidates = np.setdiff1d(np.arange(K), heldout)
    for strategy in ("max_response", "random"):
        policy = _policy(pool, ranked, strategy, candidates, batch=3)
        for n in range(12):
            decision = policy.decide(n)
            assert not set(decision.chosen.tolist()) & set(heldout)
            assert not set(decision.context.allowed.tolist()) & set(heldout)
            policy.observe(int(decision.chosen[0]), np.array([1.0]))


def test_the_last_images_learned_are_not_offered_again(pool, ranked):
    policy = _policy(pool, ranked, no_repeat=3)
    chosen = []
    for n in range(3):
        chosen += policy.decide(n).chosen.tolist()
        policy.observe(chosen[-1], np.array([2.0]))
    assert chosen == [9, 8, 7]
    policy.observe(5, np.array([2.0]))  # a fourth response: 9 drops out of the last three
    assert policy.allowed().tolist() == [0, 1, 2, 3, 4, 6, 9]  # 7 is also in flight
    assert policy.decide(4).chosen.tolist() == [9]


def test_images_in_flight_are_not_offered_until_the_next_decision(pool, ranked):
    policy = _policy(pool, ranked, batch=2)  # no_repeat 0: only the images of the last decision
    assert policy.decide(0).chosen.tolist() == [9, 8]
    assert policy.decide(0).chosen.tolist() == [7, 6]  # 9 and 8 may be on screen or in flight
    assert policy.decide(0).chosen.tolist() == [9, 8]


def test_the_strategy_sees_every_response_and_the_history(pool, ranked):
    policy = SelectionPolicy(make_strategy("fixed", {"order": [4, 2, 7]}), ranked, pool, np.arange(K), UNITS, 2)
    assert policy.decide(0).chosen.tolist() == [4, 2]
    policy.observe(4, np.array([3.0]))
    decision = policy.decide(1)
    assert decision.chosen.tolist() == [2, 7]  # the fixed list moved on by the response to 4
    assert decision.context.shown.tolist() == [4] and decision.context.counts.tolist() == [[3.0]]


class Growing:
    """A model over the pool that images are appended to (``extend``), as the learner is."""

    def __init__(self, size, offset=0):
        self.size, self.offset, self.extended = size, offset, []

    def extend(self, images):
        self.extended.append(images)
        start, self.size = self.size, self.size + len(images)
        return np.arange(start, self.size) + self.offset


def test_images_a_strategy_makes_join_the_pool_and_the_model_in_step(pool):
    model, told = Growing(K), []
    policy = _policy(pool, model, "gaudy", batch=2, on_added=told.append)
    decision = policy.decide(0)
    assert len(pool) == K + 2 and decision.chosen.tolist() == [K, K + 1] and decision.added.tolist() == [K, K + 1]
    assert told == [K] and np.array_equal(model.extended[0], pool.images[K:])
    assert all(pool.params[i]["gaudy"] for i in decision.chosen)
    assert not set(decision.chosen.tolist()) & set(range(K))
    second = policy.decide(0)
    assert second.added.tolist() == [K + 2, K + 3] and told == [K, K + 2]  # each decision's own
    assert K + 2 not in policy.candidates  # made images are chosen, not candidates for the others


def test_a_model_out_of_step_with_the_pool_is_an_error(pool):
    policy = _policy(pool, Growing(K, offset=1), "gaudy")
    with pytest.raises(RuntimeError, match="out of step"):
        policy.decide(0)
