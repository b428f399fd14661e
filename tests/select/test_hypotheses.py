import math

import numpy as np
import pytest
from PIL import Image

from closedloop.errors import ClosedLoopError
from closedloop.select.hypotheses import MODELS, Features, HypothesisStrategy, plot_posterior
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.contours import Contour, standard_set
from closedloop.stimuli.families import Dot

UNITS = ("v4a", "v4b")
THREE = [{"name": "curvature", "model": "curvature"}, {"name": "dot", "model": "dot"},
         {"name": "untuned", "model": "untuned"}]


def make_pool(contours: list[dict], dots: list[dict], size_px: int = 16) -> StimulusPool:
    families = ["contour"] * len(contours) + ["dot"] * len(dots)
    params = [Contour().check(p) for p in contours] + [Dot().check(p) for p in dots]
    images = np.stack([(Contour() if f == "contour" else Dot()).render(p, size_px)
                       for f, p in zip(families, params)])
    return StimulusPool(images, families, params)


def dot_grid() -> list[dict]:
    return [{"diameter": d, "positions": [[x, y]]} for d in (0.05, 0.1, 0.2, 0.3)
            for x in (-0.3, 0.0, 0.3) for y in (-0.3, 0.0, 0.3)]


@pytest.fixture(scope="module")
def pool() -> StimulusPool:
    """Every third standard shape and 36 single dots."""
    return make_pool(standard_set()[::3], dot_grid())


def true_rates(model: str, pool: StimulusPool, **theta) -> np.ndarray:
    """Expected counts per window of a synthetic neuron of ``model`` with parameters ``theta``."""
    response = MODELS[model]
    return response.rates({k: np.array([v], float) for k, v in theta.items()},
                          Features(response.describe(pool.families, pool.params)))[0]


NEURONS = {  # a synthetic neuron of each hypothesis (parameters inside the default priors)
    "curvature": dict(baseline=1.5, gain=6.0, angle=90.0, angle_width=40.0, curvature=0.9, curvature_width=0.2),
    "dot": dict(baseline=2.0, gain=5.0, diameter=0.1, diameter_width=0.05, x=0.0, y=0.0, position_width=0.15),
    "untuned": dict(rate=3.0),
}


def run_test(strategy: HypothesisStrategy, pool: StimulusPool, rates: np.ndarray, seed: int,
             batch: int = 4) -> list[dict]:
    """Show what the strategy chooses, answer with Poisson counts of unit 0; its states, one per response."""
    rng = np.random.default_rng(seed)
    context = SelectionContext(np.arange(len(pool)), pool, units=UNITS)
    states = []
    while not strategy.finished:
        chosen, _ = strategy.choose(context, batch, rng)
        for index in chosen:
            strategy.observe(index, np.array([rng.poisson(rates[index]), 0.0]))
            states.append(strategy.state())
    return states


@pytest.mark.parametrize("truth", ["curvature", "dot", "untuned"])
def test_the_test_picks_the_true_hypothesis(pool, truth):
    rates = true_rates(truth, pool, **NEURONS[truth])
    for seed in (1, 2):
        strategy = make_strategy("hypothesis", {"neuron": "v4a", "hypotheses": THREE, "budget": 400,
                                                "particles": 200, "seed": seed})
        states = run_test(strategy, pool, rates, seed)
        assert states[-1]["decided"] == truth, (seed, states[-1])
        assert states[-1]["posterior"][truth] >= 0.95
        assert states[-1]["responses"] == len(states) < 400


def test_posterior_sums_to_one_and_moves_toward_the_truth(pool):
    rates = true_rates("dot", pool, **NEURONS["dot"])
    strategy = make_strategy("hypothesis", {"neuron": "v4a", "hypotheses": THREE, "threshold": 0.999,
                                            "budget": 60, "particles": 200})
    states = run_test(strategy, pool, rates, seed=3)
    truth = np.array([s["posterior"]["dot"] for s in states])
    totals = [sum(s["posterior"].values()) for s in states]
    np.testing.assert_allclose(totals, 1.0, atol=1e-5)
    assert np.mean(truth[-10:]) > np.mean(truth[:10])
    assert truth[-1] > 0.9 > 1 / 3


def test_information_ranks_the_discriminating_stimulus_first():
    # Two point hypotheses: a dot detector centred on the middle, and a neuron that always fires 2.
    centre, far = {"diameter": 0.1}, {"diameter": 0.1, "positions": [[0.3, 0.3]]}
    test_pool = make_pool([{"shape": 3}], [centre, far])
    detector = {"baseline": 2.0, "gain": 8.0, "diameter": 0.1, "diameter_width": 0.05, "x": 0.0, "y": 0.0,
                "position_width": 0.1}
    strategy = make_strategy("hypothesis", {"neuron": "v4a", "particles": 10, "hypotheses": [
        {"name": "dot", "model": "dot", "prior": detector},
        {"name": "flat", "model": "untuned", "prior": {"rate": 2.0}},
    ]})
    chosen, scores = strategy.choose(SelectionContext(np.arange(3), test_pool, units=UNITS), 3,
                                     np.random.default_rng(0))
    assert chosen.tolist() == [1, 2, 0]  # the centre dot, the far dot, the contour (both predict 2)
    assert scores[2] == pytest.approx(0.0, abs=1e-9)

    def poisson(k, rate):
        return math.exp(k * math.log(rate) - rate - math.lgamma(k + 1))

    def mutual_information(a, b):  # two equally likely hypotheses predicting Poisson(a) and Poisson(b)
        total = 0.0
        for k in range(80):
            p, q = poisson(k, a), poisson(k, b)
            total += sum(0.5 * x * math.log(x / (0.5 * (p + q))) for x in (p, q) if x > 0)
        return total

    far_rate = 2.0 + 8.0 * math.exp(-0.5 * (0.3 * math.sqrt(2) / 0.1) ** 2)
    assert scores[0] == pytest.approx(mutual_information(10.0, 2.0), rel=1e-9)
    assert scores[1] == pytest.approx(mutual_information(far_rate, 2.0), rel=1e-9)


def test_responses_before_the_first_decision_count_and_the_pool_may_grow(pool):
    strategy = make_strategy("hypothesis", {"neuron": "v4b", "hypotheses": THREE, "particles": 50})
    for index in range(5):  # a warm-up chose these: only unit v4b's counts matter
        strategy.observe(index, np.array([100.0, 1.0]))
    grown = StimulusPool(pool.images, pool.families, pool.params)
    context = SelectionContext(np.arange(len(grown)), grown, units=UNITS)
    strategy.choose(context, 4, np.random.default_rng(0))
    assert strategy.state()["responses"] == 5
    before = strategy.state()["posterior"]
    added = grown.append(make_pool([], [{"diameter": 0.3}]).images, ["dot"], [Dot().check({"diameter": 0.3})])
    chosen, _ = strategy.choose(SelectionContext(added, grown, units=UNITS), 1, np.random.default_rng(0))
    assert chosen.tolist() == added.tolist()
    strategy.observe(int(added[0]), np.array([0.0, 9.0]))
    after = strategy.state()
    assert after["responses"] == 6 and after["posterior"]["dot"] > before["dot"]


def test_the_budget_ends_an_undecided_test(pool):
    rates = true_rates("untuned", pool, rate=3.0)
    strategy = make_strategy("hypothesis", {"neuron": "v4a", "hypotheses": THREE, "threshold": 0.999999,
                                            "budget": 12, "particles": 50})
    states = run_test(strategy, pool, rates, seed=0)
    assert strategy.finished and states[-1]["decided"] is None and states[-1]["responses"] == 12


def test_plot_posterior_writes_a_png(tmp_path, pool):
    rates = true_rates("curvature", pool, **NEURONS["curvature"])
    strategy = make_strategy("hypothesis", {"neuron": "v4a", "hypotheses": THREE, "particles": 50, "budget": 40})
    states = run_test(strategy, pool, rates, seed=4)
    path = plot_posterior(states, tmp_path / "posterior.png", threshold=0.95)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 360)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # lines drawn, not a blank canvas
    with pytest.raises(ValueError, match="no hypothesis-test states"):
        plot_posterior([], tmp_path / "empty.png")


@pytest.mark.parametrize("params, message", [
    ({"neuron": "v4a", "hypotheses": [{"name": "a", "model": "edge"}, {"name": "b", "model": "dot"}]},
     r"params\.hypotheses\.0\.model: Input should be 'curvature', 'dot' or 'untuned'"),
    ({"neuron": "v4a", "hypotheses": [{"name": "a", "model": "dot", "prior": {"size": [1, 2]}},
                                      {"name": "b", "model": "untuned"}]},
     r"hypothesis 'a': a dot model has no parameter 'size' \(known: baseline, gain, diameter"),
    ({"neuron": "v4a", "hypotheses": [{"name": "a", "model": "dot", "prior": {"gain": [5, 1]}},
                                      {"name": "b", "model": "untuned"}]},
     r"prior gain = \[5\.0, 1\.0\] has low > high"),
    ({"neuron": "v4a", "hypotheses": [{"name": "a", "model": "untuned", "prior": {"rate": 0}},
                                      {"name": "b", "model": "dot"}]},
     r"prior rate must be positive"),
    ({"neuron": "v4a", "hypotheses": [{"name": "a", "model": "dot"}, {"name": "a", "model": "untuned"}]},
     r"hypothesis name 'a' is used twice"),
    ({"neuron": "v4a", "hypotheses": [{"name": "a", "model": "dot"}]}, r"params\.hypotheses: List should have"),
    ({"hypotheses": THREE}, r"params\.neuron: Field required"),
    ({"neuron": "v4a", "hypotheses": THREE, "shuffle": True}, r"params\.shuffle: Extra inputs"),
])
def test_bad_params_give_one_line_errors(params, message):
    with pytest.raises(ClosedLoopError, match=message) as error:
        make_strategy("hypothesis", params)
    assert "\n" not in str(error.value) and str(error.value).startswith("strategy 'hypothesis': params.")


def test_check_names_a_missing_neuron_or_family():
    dots_only = make_pool([], dot_grid()[:3])
    strategy = make_strategy("hypothesis", {"neuron": "v4c", "hypotheses": THREE})
    with pytest.raises(ClosedLoopError, match=r"strategy 'hypothesis': unit 'v4c' is not recorded \(units: v4a, v4b\)"):
        strategy.check(list(UNITS), dots_only)
    strategy = make_strategy("hypothesis", {"neuron": "v4a", "hypotheses": THREE})
    with pytest.raises(ClosedLoopError, match=r"hypothesis 'curvature' \(curvature\) needs contour stimuli and "
                                              r"the pool has none \(families: dot\)") as error:
        strategy.check(list(UNITS), dots_only)
    assert "\n" not in str(error.value)
    strategy.check(list(UNITS), make_pool([{"shape": 1}], dot_grid()[:1]))  # both families: fine


def test_a_stopped_test_keeps_its_result_whatever_arrives_after():
    strategy = make_strategy("hypothesis", {"neuron": "u", "budget": 3, "hypotheses": [
        {"name": "dot", "model": "dot"}, {"name": "untuned", "model": "untuned"}]})
    pool = StimulusPool(np.zeros((2, 8, 8, 3), np.uint8) + np.array([[[[0]]], [[[1]]]], np.uint8),
                        ["dot", "dot"], [{"diameter": 0.1}, {"diameter": 0.2}])
    strategy.attach(["u"], pool)
    for _ in range(3):
        strategy.observe(0, np.array([2.0]))
    assert strategy.finished
    stopped = strategy.state()
    for _ in range(20):  # responses in flight when the session ended
        strategy.observe(1, np.array([30.0]))
    assert strategy.state() == stopped and stopped["responses"] == 3
