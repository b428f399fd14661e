"""Synthesis strategies: new images that a real (small) online learner predicts higher, and
evolution's guarantees against a stand-in model whose tuning is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from closedloop.config import CoreSpec, ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn import OnlineLearner
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext
from closedloop.select.synthesis import ascend, mutate
from closedloop.stimuli import generate_pool, render_stimulus
from closedloop.stimuli.contours import ContourParams

SPEC = ModelSpec(core=CoreSpec(dims=16, grid=2), members=8, input_px=16, channels=(4, 4, 4, 4, 4),
                 finetune_every=0)
UNITS = ("a", "b")
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _pool():
    return generate_pool({"contour": 30, "dot": 15, "grating": 15}, SIZE, seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The learner's feature cache in a temporary folder, for the module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("features")
        patch.setenv("CLOSEDLOOP_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """A checkpoint of a learner that learned Poisson responses of two units: one grows with
    contrast energy, one fires for contours."""
    pool = _pool()
    energy = np.abs(pool.images.astype(float) - 128).mean(axis=(1, 2, 3)) / 127
    contour = np.array([family == "contour" for family in pool.families], float)
    rates = np.stack([1 + 8 * energy, 1 + 4 * contour], axis=1)
    learner = OnlineLearner(pool.images, len(UNITS), SPEC, seed=0, background=False)
    learner.learn(np.arange(len(pool)), np.random.default_rng(0).poisson(rates))
    learner.sync()
    path = tmp_path_factory.mktemp("learner") / "learner-final.pt"
    learner.save(path)
    return path


@pytest.fixture
def live(trained):
    """A fresh pool and the trained learner over it, as the model worker holds them."""
    pool = _pool()
    return pool, OnlineLearner.from_checkpoint(trained, pool.images)


def _context(pool, learner, allowed):
    """The worker's context: the learner, and add_images growing pool and learner in step."""
    def add_images(images, families, params):
        index = pool.append(images, families, params)
        assert np.array_equal(learner.extend(images), index)
        return index

    return SelectionContext(allowed, pool, None, learner, UNITS, add_images=add_images)


def _target(learner, index, unit):
    """The learner's expected count (posterior mean) of the target for pool images ``index``."""
    mean, _ = learner.predictive(np.asarray(index))
    return mean.mean(axis=0) if unit is None else mean[UNITS.index(unit)]


# --------------------------------------------------------------------- synthesis --
@pytest.mark.parametrize("unit", ["b", None])
def test_synthesis_raises_the_prediction_above_the_best_start(live, unit):
    pool, learner = live
    size, allowed = len(pool), np.arange(len(pool))
    best_start = _target(learner, allowed, unit).max()
    strategy = make_strategy("synthesis", {"unit": unit, "steps": 16})
    chosen, scores = strategy.choose(_context(pool, learner, allowed), 2, np.random.default_rng(0))
    assert sorted(chosen.tolist()) == [size, size + 1] and len(pool) == size + 2
    predicted = _target(learner, chosen, unit)
    np.testing.assert_allclose(scores, predicted, rtol=1e-6)  # the learner's own mean, once in the pool
    assert np.all(predicted > best_start), (predicted, best_start)
    assert np.all(np.diff(scores) <= 0)
    for index in chosen:
        assert pool.families[index] == "synthesized" and pool.params[index]["unit"] == unit
        start = pool.images[pool.index(pool.params[index]["start"])].astype(int)
        assert np.abs(pool.images[index].astype(int) - start).max() <= 64  # the trust region
        assert not np.array_equal(pool.images[index], start)


def test_ascent_keeps_to_the_pixel_range_and_the_trust_region():
    start = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3))).float()
    brightness = lambda x: x.mean(dim=(1, 2, 3))  # noqa: E731 - maximised by pushing every pixel up
    pixels, trace = ascend(brightness, start, 40, torch.Generator().manual_seed(0), learning_rate=4.0,
                           jitter=0, decay=0.0, blur_sigma=0.0, max_change=20.0)
    torch.testing.assert_close(pixels, (start + 20).clamp(max=255))
    assert trace.shape == (40, 2) and np.all(np.diff(trace, axis=0) >= 0)
    pixels, _ = ascend(brightness, start, 20, torch.Generator().manual_seed(0), learning_rate=50.0)
    assert pixels.min() >= 0 and pixels.max() == 255 and pixels.mean() > start.mean() + 50


def test_ascent_of_one_image_is_the_inspect_synthesis():
    from closedloop.model.ensemble import CompactEnsemble
    from closedloop.model.inspect import GREY, synthesize
    from closedloop.model.models import as_image_model

    model = as_image_model(CompactEnsemble(2, members=2, input_px=16, channels=(4, 4, 4, 4, 4), seed=0).eval())
    expected = synthesize(model, output=1, steps=12, seed=3, size=16)
    generator = torch.Generator().manual_seed(3)
    start = (GREY + 2.0 * torch.randn((1, 16, 16, 3), generator=generator)).clamp(0, 255).round()
    module = model.torch_module()
    pixels, trace = ascend(lambda x: module(x).reshape(len(x), -1)[:, 1], start, 12, generator)
    assert np.array_equal(pixels.round().to(torch.uint8).numpy()[0], expected.image)
    np.testing.assert_allclose(trace[:, 0], expected.trace, rtol=1e-6)


# --------------------------------------------------------------------- evolution --
class _KnownTuning:
    """A stand-in for the live model whose responses are known exactly (one member, units a
    and b), so what evolution must find follows from its guarantees, not from a trained model.

    Unit a is tuned to one image, ``favourite``: minus the mean absolute pixel difference from it
    (0 at the favourite, below 0 anywhere else). Unit b is tuned to novelty: the mean absolute pixel
    difference from the nearest of ``known`` (0 for every known image, above 0 for any other).
    """

    def __init__(self, favourite: np.ndarray, known: np.ndarray):
        self.favourite = favourite.astype(float)
        self.known = known.astype(float)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Expected counts (1, 2, B) for (B, N, N, 3) uint8 images: one member."""
        x = images.astype(float)
        a = -np.abs(x - self.favourite).mean(axis=(1, 2, 3))
        b = np.array([np.abs(image - self.known).mean(axis=(1, 2, 3)).min() for image in x])
        return np.stack([a, b])[None]

    def predictive_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (2, B) and variance (zero: one member), as OnlineLearner.predictive_images."""
        mean = self.predict_images(images)[0]
        return mean, np.zeros_like(mean)


def _known_context(favourite_index: int = 0):
    """A fresh pool, a :class:`_KnownTuning` over it (unit a tuned to pool image
    ``favourite_index``, unit b to images not in the pool) and the worker's context for it."""
    pool = _pool()
    model = _KnownTuning(pool.images[favourite_index], pool.images)
    allowed = np.arange(len(pool))
    return pool, model, SelectionContext(allowed, pool, model.predict_images(pool.images), model, UNITS,
                                         add_images=pool.append)


def _assert_renderable_contours(pool, chosen):
    for index in chosen:
        assert pool.families[index] == "contour"
        params = ContourParams.model_validate(pool.params[index]).model_dump(mode="json")
        assert params == pool.params[index]
        assert np.array_equal(render_stimulus("contour", params, SIZE), pool.images[index])


def test_evolution_returns_contours_at_least_as_good_as_the_first_population(live):
    pool, learner = live
    allowed = np.arange(len(pool))
    strategy = make_strategy("evolution", {"unit": "b", "population": 8, "generations": 3})
    chosen, scores = strategy.choose(_context(pool, learner, allowed), 3, np.random.default_rng(0))
    assert len(chosen) == 3 and np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, _target(learner, chosen, "b"), rtol=1e-5)  # the closed form
    assert scores[0] >= strategy.state()["first_best"]  # elitism: the first population's best survives
    assert strategy.state()["best"] == pytest.approx(scores[0])
    _assert_renderable_contours(pool, chosen)


def test_evolution_finds_new_contours_for_a_unit_tuned_to_what_the_pool_lacks():
    # Unit b gives 0 to every pool image, so to the whole first population, and more to any image
    # not in the pool: every child (a mutated contour) that renders to new pixels beats them all,
    # so the winners are children, added to the pool once each.
    pool, model, context = _known_context()
    size = len(pool)
    strategy = make_strategy("evolution", {"unit": "b", "population": 8, "generations": 3})
    chosen, scores = strategy.choose(context, 3, np.random.default_rng(0))
    assert strategy.state()["first_best"] == 0
    assert chosen.tolist() == [size, size + 1, size + 2] and len(pool) == size + 3
    assert np.all(scores > 0) and np.all(np.diff(scores) <= 0)
    np.testing.assert_array_equal(scores, model.predict_images(pool.images[chosen])[0, 1])
    assert strategy.state()["best"] == scores[0]
    _assert_renderable_contours(pool, chosen)


def test_evolution_keeps_a_first_population_member_that_no_child_beats():
    # Unit a is tuned to one pool contour exactly: every child (a changed contour) scores below it,
    # so only elitism returns it, and it is found in the pool rather than added again.
    favourite = 3
    pool, _, context = _known_context(favourite)
    assert pool.families[favourite] == "contour"
    strategy = make_strategy("evolution", {"unit": "a", "population": 8, "generations": 3})
    chosen, scores = strategy.choose(context, 3, np.random.default_rng(0))
    assert chosen[0] == favourite and scores[0] == 0 and np.all(scores[1:] < 0)
    assert strategy.state() == {"first_best": 0, "best": 0}


def test_evolution_never_loses_its_best_over_generations():
    # The same seed draws the same first population and the same mutations, so a run of g + 1
    # generations continues the run of g; the best after each generation can only rise.
    bests = []
    for generations in range(1, 6):
        _, _, context = _known_context()
        strategy = make_strategy("evolution", {"unit": "b", "population": 4, "generations": generations})
        _, scores = strategy.choose(context, 1, np.random.default_rng(2))
        bests.append(scores[0])
    assert np.all(np.diff(bests) >= 0), bests


def test_evolution_starts_from_random_contours_when_none_are_allowed(live):
    pool, learner = live
    size = len(pool)
    dots = np.array([i for i, f in enumerate(pool.families) if f == "dot"])
    strategy = make_strategy("evolution", {"population": 4, "generations": 2})
    chosen, scores = strategy.choose(_context(pool, learner, dots), 2, np.random.default_rng(1))
    assert chosen.tolist() == [size, size + 1]
    assert scores[0] >= strategy.state()["first_best"]
    assert all(pool.families[i] == "contour" for i in chosen)


def test_mutations_change_contours_within_their_ranges():
    parent = ContourParams(shape=9, rotation=90, size=0.3, x=0.1, y=-0.1).model_dump(mode="json")
    rng = np.random.default_rng(0)
    children = [mutate(parent, rng) for _ in range(200)]
    again = np.random.default_rng(0)
    assert children == [mutate(parent, again) for _ in range(200)]  # reproducible
    for child in children:
        assert ContourParams.model_validate(child).model_dump(mode="json") == child
        assert child != parent
        assert 0.05 <= child["size"] <= 0.5 and abs(child["x"]) <= 0.3 and abs(child["y"]) <= 0.3
        assert child["shape"] == parent["shape"] and child["rotation"] in (45, 90, 135)
    for key in ("curvatures", "rotation", "size", "x"):
        assert any(child[key] != parent[key] for child in children), key


def test_a_target_unit_that_is_not_recorded_is_refused():
    with pytest.raises(ClosedLoopError, match="strategy 'evolution': unit 'z' is not recorded \\(units: a, b\\)"):
        make_strategy("evolution", {"unit": "z"}).check(list(UNITS), _pool())
