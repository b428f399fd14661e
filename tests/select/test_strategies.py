"""Selection strategies rank constructed pools whose answer is known."""

import json
import math

import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import (DisagreementStrategy, RandomStrategy, SelectionContext,
                                          poisson_information)
from closedloop.stimuli import gaudy, generate_pool, render_stimulus


def test_disagreement_picks_the_candidates_members_disagree_on():
    rng = np.random.default_rng(0)
    members, neurons, candidates = 5, 3, 40
    predictions = np.full((members, neurons, candidates), 2.0)
    predictions += rng.normal(0, 0.01, predictions.shape)
    contested = [7, 21, 33]
    predictions[:, :, contested] += rng.normal(0, 1.0, (members, neurons, 3))
    predictions = np.abs(predictions)
    pool_index = np.arange(100, 140)
    chosen, scores = DisagreementStrategy().choose(SelectionContext(pool_index, predictions=predictions), 3, rng)
    assert sorted(chosen.tolist()) == [107, 121, 133]
    assert np.all(np.diff(scores) <= 0)


def test_disagreement_is_relative_to_the_predicted_rate():
    # The same spread matters less on a high predicted count (Poisson scale).
    predictions = np.zeros((2, 1, 2))
    predictions[:, 0, 0] = [1.0, 2.0]
    predictions[:, 0, 1] = [20.0, 21.0]
    chosen, _ = DisagreementStrategy().choose(SelectionContext(np.array([0, 1]), predictions=predictions), 1,
                                             np.random.default_rng(0))
    assert chosen.tolist() == [0]


def test_disagreement_ranks_by_the_closed_form_posterior_without_draws(closed_form):
    # image 1: the most posterior variance, but at a high rate; image 2: less variance, low rate
    mean = np.array([[2.0, 20.0, 1.0, 5.0], [2.0, 20.0, 1.0, 5.0]])
    variance = np.array([[0.1, 4.0, 0.5, 0.0], [0.1, 4.0, 0.5, 0.0]])
    model = closed_form(mean, variance)
    allowed = np.array([10, 11, 12, 13])  # pool indices: the model is asked for these
    model.mean = np.concatenate([np.zeros((2, 10)), mean], axis=1)
    model.variance = np.concatenate([np.zeros((2, 10)), variance], axis=1)
    chosen, scores = DisagreementStrategy().choose(SelectionContext(allowed, model=model), 4, np.random.default_rng(0))
    assert chosen.tolist() == [12, 11, 10, 13] and model.asked == [allowed.tolist()]
    np.testing.assert_allclose(scores, [0.5 / 1.001, 4.0 / 20.001, 0.1 / 2.001, 0.0])


def test_disagreement_on_the_learner_is_its_posterior_variance_over_mean(tmp_path):
    """The learner's closed form, computed here from its readouts' posterior: the latent mean
    ``mu = x M`` and variance ``tau^2 = s^2 x S x'`` give the expected count's mean
    ``(mu^2 + tau^2 + s^2) / 4 - 3/8`` and variance ``mu^2 tau^2 / 4 + tau^4 / 8``."""
    from closedloop.config import CoreSpec, ModelSpec
    from closedloop.learn import OnlineLearner

    spec = ModelSpec(core=CoreSpec(dims=6, grid=2), input_px=16, channels=(4, 4, 4, 4, 4), finetune_every=0)
    images = np.random.default_rng(0).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    learner = OnlineLearner(images, 2, spec, seed=0, background=False, cache=tmp_path)
    rng = np.random.default_rng(1)
    learner.learn(np.arange(8), rng.poisson(3.0, (8, 2)))
    learner.sync()  # the evidence's ridge and noise
    learner.learn(np.arange(8, 12), rng.poisson(3.0, (4, 2)))  # and a Woodbury step after it
    allowed = np.arange(5, 30)
    scores = DisagreementStrategy().scores(SelectionContext(allowed, model=learner, units=("a", "b")),
                                           np.random.default_rng(0))
    q = learner.posterior
    x = np.concatenate([np.ones((len(allowed), 1)), learner.embedding(allowed)], axis=1).astype(np.float64)
    mu = x @ q.M  # (B, units)
    tau2 = q.noise[None, :] * ((x @ q.S) * x).sum(axis=1)[:, None]
    mean = np.maximum((mu ** 2 + tau2 + q.noise[None, :]) / 4 - 0.375, 0.01)
    variance = mu ** 2 * tau2 / 4 + tau2 ** 2 / 8
    assert np.ptp(scores) > 0
    np.testing.assert_allclose(scores, (variance / (mean + 1e-3)).mean(axis=1), rtol=2e-3)


def test_strategies_ranking_by_the_mean_ask_the_closed_form_once_and_never_draw(closed_form):
    mean = np.array([[1.0, 5.0, 2.0, 0.5], [4.0, 0.5, 2.0, 9.0]])  # (units, images)
    for name, params, expected in (("max_response", {"unit": "a"}, [1, 2, 0, 3]), ("max_response", {}, [3, 1, 0, 2]),
                                   ("adept", {"weight": 0.0}, [3, 1, 0, 2])):
        model = closed_form(mean)
        context = SelectionContext(np.arange(4), model=model, units=("a", "b"))
        chosen, scores = make_strategy(name, params).choose(context, 4, np.random.default_rng(0))
        assert chosen.tolist() == expected and len(model.asked) == 1, name
    assert scores.tolist() == [4.75, 2.75, 2.5, 2.0]  # adept without history: the population mean


def test_info_gain_draws_once_per_decision_for_the_allowed_images():
    class Draws:
        def __init__(self):
            self.asked = []

        def predictions(self, index=None):
            self.asked.append(np.asarray(index).tolist())
            return np.stack([np.full((1, len(index)), 1.0), np.array([[1.0, 1.0, 9.0]])])  # (members, units, B)

        def predictive(self, index=None):
            raise AssertionError("info_gain's mean is the draws' mean")

    model = Draws()
    chosen, scores = make_strategy("info_gain", {"diversity": 0}).choose(
        SelectionContext(np.array([4, 7, 9]), model=model), 1, np.random.default_rng(0))
    assert chosen.tolist() == [9] and model.asked == [[4, 7, 9]] and scores[0] > 0


def test_random_is_reproducible_and_covers_the_pool():
    pool_index = np.arange(50)
    a, _ = RandomStrategy().choose(SelectionContext(pool_index), 10, np.random.default_rng(3))
    b, _ = RandomStrategy().choose(SelectionContext(pool_index), 10, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10
    seen = set()
    rng = np.random.default_rng(4)
    for _ in range(60):
        seen.update(RandomStrategy().choose(SelectionContext(pool_index), 5, rng)[0].tolist())
    assert seen == set(range(50))


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ClosedLoopError, match="unknown strategy 'best'; known: adept, disagreement, evolution, "
                                              "fixed, gaudy, .*info_gain, max_response, .*random, synthesis"):
        make_strategy("best")


def test_bad_settings_are_one_line_errors_naming_the_setting():
    with pytest.raises(ClosedLoopError, match=r"^strategy 'info_gain': params.diversity: .*less than or equal to 1$"):
        make_strategy("info_gain", {"diversity": 2})
    with pytest.raises(ClosedLoopError, match=r"^strategy 'adept': params.wieght: Extra inputs are not permitted$"):
        make_strategy("adept", {"wieght": 1})
    assert make_strategy("adept", {"weight": 0.5}).params.weight == 0.5


def _choose(name, predictions, k=1, params=None, **context):
    """Pool indices and scores a strategy picks from candidates 0..n-1 with these predictions."""
    allowed = np.arange(predictions.shape[-1])
    return make_strategy(name, params).choose(SelectionContext(allowed, predictions=predictions, **context), k,
                                              np.random.default_rng(0))


# ------------------------------------------------------------------ max_response --
def test_max_response_picks_the_highest_predicted_unit_or_population():
    predictions = np.array([[[1.0, 5.0, 2.0, 0.5], [4.0, 0.0, 2.0, 9.0]],
                            [[1.0, 7.0, 2.0, 0.5], [4.0, 0.0, 2.0, 7.0]]])  # (members, units, images)
    units = ("a", "b")
    assert _choose("max_response", predictions, 4, units=units)[0].tolist() == [3, 1, 0, 2]
    chosen, scores = _choose("max_response", predictions, 2, {"unit": "a"}, units=units)
    assert chosen.tolist() == [1, 2] and scores.tolist() == [6.0, 2.0]
    assert _choose("max_response", predictions, 1, {"unit": "b"}, units=units)[0].tolist() == [3]


def test_a_target_unit_that_is_not_recorded_is_refused_before_the_session():
    pool = generate_pool({"dot": 3}, 16, seed=0)
    with pytest.raises(ClosedLoopError, match="strategy 'max_response': unit 'v9' is not recorded \\(units: a, b\\)"):
        make_strategy("max_response", {"unit": "v9"}).check(["a", "b"], pool)


# --------------------------------------------------------------------- info_gain --
def _information_by_enumeration(rates, top=400):
    """H[mixture] - mean H[Poisson], term by term with math.lgamma (an independent computation)."""
    pmfs = [[math.exp(y * math.log(r) - r - math.lgamma(y + 1)) for y in range(top)] for r in rates]
    mixture = np.mean(pmfs, axis=0)

    def entropy(p):
        return -sum(q * math.log(q) for q in p if q > 0)

    return entropy(mixture) - np.mean([entropy(p) for p in pmfs])


@pytest.mark.parametrize("rates", [(1.0, 2.0), (20.0, 21.0), (0.5, 3.0, 7.0), (1.0, 1.2), (0.05, 0.1, 0.2, 0.4)])
def test_information_is_exact_for_poisson_mixtures(rates):
    computed = poisson_information(np.array(rates)[:, None])[0]
    assert computed == pytest.approx(_information_by_enumeration(rates), rel=1e-9, abs=1e-12)


def test_information_is_zero_when_members_agree_and_log_m_when_they_are_told_apart():
    information = poisson_information(np.array([[30.0, 0.01], [30.0, 60.0]]))
    assert information[0] < 1e-12
    assert information[1] == pytest.approx(math.log(2), abs=1e-6)


def test_info_gain_ignores_poisson_noise_and_prefers_disagreement_at_a_low_rate():
    predictions = np.zeros((2, 1, 3))  # (members, units, images)
    predictions[:, 0, 0] = [30.0, 30.0]  # members agree at a high rate: only Poisson noise
    predictions[:, 0, 1] = [20.0, 21.0]  # a spread of 1 at a high rate
    predictions[:, 0, 2] = [1.0, 2.0]  # the same spread at a low rate
    chosen, scores = _choose("info_gain", predictions, 3, {"diversity": 0})
    assert chosen.tolist() == [2, 1, 0]
    assert scores[2] < 1e-12 < scores[1] < scores[0]
    total_variance = predictions.var(axis=0) + predictions.mean(axis=0)  # predictive variance of the count
    assert np.argmax(total_variance[0]) == 0  # which a variance criterion would have chosen


def test_info_gain_adds_the_units():
    member_a = np.array([[1.0, 1.0], [1.0, 2.0]])  # (units, images)
    member_b = np.array([[2.0, 2.0], [1.0, 1.0]])  # image 0: unit 0 told apart; image 1: both units
    chosen, scores = _choose("info_gain", np.stack([member_a, member_b]), 2, {"diversity": 0})
    one = float(poisson_information(np.array([1.0, 2.0])))
    assert chosen.tolist() == [1, 0] and scores.tolist() == pytest.approx([2 * one, one])


def test_info_gain_batches_avoid_candidates_predicted_alike():
    members = np.array([[1.0, 3.0], [1.0, 3.0], [6.0, 9.0]])  # (images, members): 0 and 1 are twins
    predictions = members.T[:, None, :]
    assert sorted(_choose("info_gain", predictions, 2, {"diversity": 0})[0].tolist()) == [0, 1]
    assert sorted(_choose("info_gain", predictions, 2, {"diversity": 1})[0].tolist()) == [0, 2]


# ------------------------------------------------------------------------- adept --
def test_adept_prefers_a_high_response_far_from_what_was_shown():
    shown = np.array([[5.0, 5.0], [5.0, 5.2], [4.8, 5.0]])  # responses observed so far (images, units)
    predictions = np.array([[[5.1, 9.0], [5.3, 1.2]]])  # image 0 repeats them; image 1 is far, a little lower
    context = {"shown": np.arange(3), "counts": shown}
    assert _choose("adept", predictions, 1, {"weight": 1.0}, **context)[0].tolist() == [1]
    assert _choose("adept", predictions, 1, {"weight": 0.0}, **context)[0].tolist() == [0]


def test_adept_batches_are_diverse_and_start_from_the_largest_response():
    predictions = np.array([[[9.0, 9.0, 1.0, 5.0], [1.0, 1.0, 9.0, 5.0]]])  # images 0 and 1 are twins
    chosen, scores = _choose("adept", predictions, 2, {"weight": 1.0})
    assert chosen.tolist() in ([0, 2], [1, 2])
    assert scores[0] == pytest.approx(5.0)  # no history: the mean response alone
    assert scores[1] == pytest.approx(5.0 + 8.0)  # plus the RMS distance to the first pick


# ------------------------------------------------------------------------- fixed --
@pytest.fixture(scope="module")
def small_pool():
    return generate_pool({"dot": 6, "grating": 6}, 16, seed=0)


def _run_fixed(strategy, pool, decisions, k=2):
    """What a fixed strategy offers at each decision, every offered image answered in order."""
    offered = []
    for _ in range(decisions):
        chosen, _ = strategy.choose(SelectionContext(np.arange(len(pool)), pool), k, np.random.default_rng(0))
        offered.append(chosen.tolist())
        for index in chosen:
            strategy.observe(int(index), np.zeros(2))
    return offered


def test_fixed_follows_the_list_and_finishes(small_pool):
    strategy = make_strategy("fixed", {"order": [4, small_pool.ids[7], 0]})
    strategy.check(["a", "b"], small_pool)
    assert not strategy.finished
    assert _run_fixed(strategy, small_pool, 1) == [[4, 7]]
    assert not strategy.finished and strategy.state() == {"answered": 2, "length": 3}
    assert _run_fixed(strategy, small_pool, 1) == [[0]]
    assert strategy.finished


def test_fixed_offers_again_what_was_not_answered_and_cycles_when_repeating(small_pool):
    strategy = make_strategy("fixed", {"order": [3, 1, 2], "repeat": True})
    context = SelectionContext(np.arange(len(small_pool)), small_pool)
    assert strategy.choose(context, 2, np.random.default_rng(0))[0].tolist() == [3, 1]
    strategy.observe(3, np.zeros(2))  # image 1's response was lost
    assert strategy.choose(context, 2, np.random.default_rng(0))[0].tolist() == [1, 2]
    assert _run_fixed(strategy, small_pool, 2, k=3) == [[1, 2, 3], [1, 2, 3]]
    assert not strategy.finished


def test_fixed_reads_its_list_from_a_file(small_pool, tmp_path):
    text = tmp_path / "order.txt"
    text.write_text(f"# my order\n5\n\n{small_pool.ids[2]}  # the third\n")
    listed = tmp_path / "order.json"
    listed.write_text(json.dumps([small_pool.ids[2], 5]))
    assert _run_fixed(make_strategy("fixed", {"order": str(text)}), small_pool, 1) == [[5, 2]]
    assert _run_fixed(make_strategy("fixed", {"order": str(listed)}), small_pool, 1) == [[2, 5]]
    with pytest.raises(ClosedLoopError, match=r"strategy 'fixed': params.order: .*order file .*nothing.txt: not found"):
        make_strategy("fixed", {"order": str(tmp_path / "nothing.txt")})


def test_fixed_refuses_entries_not_in_the_pool(small_pool):
    strategy = make_strategy("fixed", {"order": [0, 12, "0123456789abcdef"]})
    with pytest.raises(ClosedLoopError, match=r"^strategy 'fixed': 2 order entries are not in the pool of 12 "
                                              r"stimuli: 12, '0123456789abcdef'$"):
        strategy.check(["a"], small_pool)


# ------------------------------------------------------------------------- gaudy --
def _growing(pool):
    """A context's ``add_images`` that appends to ``pool``, counting the calls."""
    calls = []

    def add_images(images, families, params):
        calls.append(len(images))
        return pool.append(images, families, params)

    return add_images, calls


def test_gaudy_adds_gaudy_versions_of_allowed_images_to_the_pool():
    pool = generate_pool({"dot": 4, "grating": 4}, 24, seed=1)
    size = len(pool)
    add_images, calls = _growing(pool)
    strategy = make_strategy("gaudy", {"family": "grating"})
    strategy.check(["a"], pool)
    allowed = np.arange(size)
    chosen, scores = strategy.choose(SelectionContext(allowed, pool, add_images=add_images), 3,
                                     np.random.default_rng(0))
    assert chosen.tolist() == list(range(size, size + 3)) and calls == [3]
    assert np.all(scores >= 1)  # sources not made gaudy before
    for index in chosen:
        params = dict(pool.params[index])
        assert params.pop("gaudy") is True and pool.families[index] == "grating"
        source = pool.params.index(params)
        assert np.array_equal(pool.images[index], gaudy(pool.images[source]))
        assert np.array_equal(render_stimulus("grating", pool.params[index], 24), pool.images[index])
        assert pool.label(int(index)).endswith("gaudy")
    again, _ = strategy.choose(SelectionContext(allowed, pool, add_images=add_images), 2, np.random.default_rng(0))
    sources = {pool.params.index({k: v for k, v in pool.params[i].items() if k != "gaudy"}) for i in [*chosen, *again]}
    assert len(sources) == 4  # the fourth grating first, then one made before (found in the pool, not added again)
    assert calls == [3, 1] and len(pool) == size + 4


def test_gaudy_refuses_a_family_the_pool_lacks(small_pool):
    with pytest.raises(ClosedLoopError, match="strategy 'gaudy': family 'natural' has no images in the pool "
                                              "\\(families: dot, grating\\)"):
        make_strategy("gaudy", {"family": "natural"}).check(["a"], small_pool)
