import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext
from closedloop.select.validation import ValidationStrategy, mixture_e_value
from closedloop.stimuli import StimulusPool

UNITS = ("other", "v4")
K_NATURAL, K_DOT = 80, 40


@pytest.fixture(scope="module")
def pool() -> StimulusPool:
    """80 'natural' images (noise stands in for photographs: the test reads only families) and 40 dots."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (K_NATURAL + K_DOT, 8, 8, 3), dtype=np.uint8)
    families = ["natural"] * K_NATURAL + ["dot"] * K_DOT
    return StimulusPool(images, families, [{"index": i} for i in range(len(families))])


def run_session(pool: StimulusPool, predicted: np.ndarray, rates: np.ndarray, seed: int,
                budget: int = 200, alpha: float = 0.05) -> ValidationStrategy:
    """Decisions of 4 images from the whole pool; unit v4 answers with Poisson(rates) counts.

    ``predicted`` (K,) is what the model's 3 posterior draws predict for v4 (with draw noise).
    """
    rng = np.random.default_rng(seed)
    strategy = make_strategy("validation", {"neuron": "v4", "top": 10, "alpha": alpha, "budget": budget})
    allowed = np.arange(len(pool))
    while not strategy.finished:
        members = predicted + rng.normal(0, 0.1, (3, len(pool)))
        predictions = np.stack([np.zeros_like(members), members], axis=1)  # (members, units, K)
        chosen, scores = strategy.choose(SelectionContext(allowed, pool, predictions, units=UNITS), 4, rng)
        assert len(chosen) == 4 and len(set(chosen.tolist())) == 4
        for index in chosen:
            strategy.observe(index, np.array([50.0, rng.poisson(rates[index])]))
    return strategy


def test_e_value_is_the_mixture_likelihood_ratio():
    theta = np.linspace(0.5, 1.0, 200_001)
    for wins, losses in [(0, 0), (1, 0), (0, 1), (7, 3), (3, 7), (20, 5)]:
        integrand = theta ** wins * (1 - theta) ** losses
        integral = np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(theta))
        assert mixture_e_value(wins, losses) == pytest.approx(2 * integral * 2.0 ** (wins + losses), rel=1e-6)


def test_rejects_when_the_neuron_prefers_the_top_images(pool):
    rng = np.random.default_rng(1)
    rates = rng.uniform(1.0, 8.0, len(pool))  # the model has learned the neuron: it predicts these
    strategy = run_session(pool, rates, rates, seed=2)
    state = strategy.state()
    assert strategy.rejected and state["decision"] == "top images drive the neuron more"
    assert state["e_value"] >= 20 and state["p_value"] <= 0.05
    assert state["responses"] < 200 and state["difference"] > 2
    assert abs(state["counts"]["top"] - state["counts"]["random"]) <= 1
    assert state["wins"] > state["losses"]


def test_false_positives_are_controlled_on_a_seeded_null(pool):
    # Null: every image drives the neuron alike, so a top image's count beats a random one's as
    # often as the reverse, however the model ranks them.
    sessions, rejections = 200, 0
    for seed in range(sessions):
        predicted = np.random.default_rng(1000 + seed).uniform(1.0, 8.0, len(pool))
        strategy = run_session(pool, predicted, np.full(len(pool), 4.0), seed=seed, budget=200)
        rejections += strategy.rejected
        assert strategy.rejected or strategy.state()["responses"] == 200
    # alpha = 0.05 bounds the chance of ever rejecting in a session (Ville's inequality): 10 of 200
    # expected at most, plus two standard deviations of sampling noise.
    assert rejections <= 16


def test_does_not_reject_when_the_top_images_drive_the_neuron_less(pool):
    rng = np.random.default_rng(5)
    predicted = rng.uniform(1.0, 8.0, len(pool))
    strategy = run_session(pool, predicted, 9.0 - predicted, seed=6, budget=200)  # the model has it backwards
    state = strategy.state()
    assert not strategy.rejected and state["decision"] is None and state["responses"] == 200
    assert state["p_value"] == 1.0 and state["losses"] > state["wins"]


def test_arms_alternate_and_only_chosen_images_count(pool, closed_form):
    strategy = make_strategy("validation", {"neuron": "v4", "top": 5})
    rng = np.random.default_rng(0)
    predicted = np.arange(len(pool), dtype=float)  # the top five: the last five dots
    model = closed_form(np.stack([np.zeros(len(pool)), predicted]))  # the model's expected counts
    strategy.observe(0, np.array([0.0, 9.0]))  # a warm-up response: not the test's
    chosen, scores = strategy.choose(SelectionContext(np.arange(len(pool)), pool, model=model, units=UNITS), 4, rng)
    top, random = chosen[::2], chosen[1::2]
    assert all(i >= len(pool) - 5 for i in top) and all(pool.families[i] == "natural" for i in random)
    np.testing.assert_array_equal(scores, predicted[chosen])
    for index, count in zip(chosen, [5.0, 1.0, 6.0, 2.0]):
        strategy.observe(index, np.array([0.0, count]))
    state = strategy.state()
    assert state["counts"] == {"top": 2, "random": 2} and state["wins"] == 2 and state["losses"] == 0
    assert state["means"] == {"top": 5.5, "random": 1.5} and state["difference"] == 4.0
    assert state["e_value"] == pytest.approx(mixture_e_value(2, 0))


def test_bad_settings_and_a_pool_without_the_family(pool):
    with pytest.raises(ClosedLoopError, match=r"strategy 'validation': params\.alpha: Input should be less than 1"):
        make_strategy("validation", {"neuron": "v4", "alpha": 1.5})
    with pytest.raises(ClosedLoopError, match=r"params\.neuron: Field required"):
        make_strategy("validation", {})
    strategy = make_strategy("validation", {"neuron": "v1"})
    with pytest.raises(ClosedLoopError, match=r"strategy 'validation': unit 'v1' is not recorded \(units: other, v4\)"):
        strategy.check(list(UNITS), pool)
    strategy = make_strategy("validation", {"neuron": "v4", "family": "texture"})
    with pytest.raises(ClosedLoopError, match=r"the pool has no texture images for the random arm "
                                              r"\(families: dot, natural\)") as error:
        strategy.check(list(UNITS), pool)
    assert "\n" not in str(error.value)
