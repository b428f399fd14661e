"""Model-guided synthesis: strategies that make new images for the live model.

- ``synthesis``: gradient ascent in pixel space (:func:`ascend`), starting from the allowed
  images the model predicts highest for the target; the results join the pool as family
  ``synthesized`` (params: the start image's id, the unit, the steps).
- ``evolution``: evolutionary search over curved-contour parameters
  (:mod:`closedloop.stimuli.contours`), scored by the model; the winners join the pool as
  family ``contour`` with their parameters, so they stay parametric and render again.

Both drive ``unit`` (a recorded unit's name) or, by default, the mean over units, as the
model's expected count (:func:`closedloop.select.strategies.target_response`), and both return
the new images, best first, scored by that prediction. Images outside the pool are predicted
by the model's closed form (``model.predictive_images``; ``model.torch_mean`` to differentiate),
the images in the pool by ``model.predictive``.
An image already in the pool (the same pixels) is reused, not added twice. torch is imported
only when a strategy runs, so validating a protocol stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from closedloop.select.strategies import TargetedStrategy, TargetParams, add_to_pool, is_gaudy, top_k
from closedloop.stimuli.contours import CURVATURE_MAX, CURVATURE_MIN, Contour, ContourParams, variant

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------- pixel ascent --
def ascend(objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int,
           generator: torch.Generator, learning_rate: float = 4.0, jitter: int = 2, decay: float = 0.002,
           blur_sigma: float = 0.5, blur_every: int = 4,
           max_change: float | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Gradient ascent in pixel space on a batch of images, as
    :func:`closedloop.model.inspect.synthesize` does for one.

    At each step the batch is shifted by one random jitter of up to ``jitter`` pixels
    (circularly), the gradient of ``objective`` (one value per image; the images do not
    interact) is taken with respect to the pixels only, and Adam takes a step of about
    ``learning_rate`` pixel values. Then the images decay towards grey by ``decay`` (an L2
    penalty), are blurred (Gaussian, ``blur_sigma`` pixels) every ``blur_every`` steps but not
    after the last (a smoothness prior), and are clipped to 0-255 and, with ``max_change``, to
    within ``max_change`` pixel values of ``start`` (a trust region around images the model knows).

    Parameters
    ----------
    objective : callable
        Float pixels (B, N, N, 3), 0-255 -> (B,) values to maximise, differentiably.
    start : torch.Tensor
        (B, N, N, 3) float pixels, 0-255.
    steps : int
        Adam steps.
    generator : torch.Generator
        Source of the jitter.

    Returns
    -------
    pixels : torch.Tensor
        (B, N, N, 3) float pixels, 0-255, detached.
    trace : ndarray
        (steps, B) the objective (on the jittered images) at each step.
    """
    import torch

    from closedloop.model.inspect import GREY, _blur

    low, high = torch.zeros_like(start), torch.full_like(start, 255.0)
    if max_change is not None:
        low, high = (start - max_change).clamp(min=0), (start + max_change).clamp(max=255)
    x = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=learning_rate)
    trace = np.empty((steps, len(start)))
    for step in range(steps):
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
        value = objective(torch.roll(x, (dy, dx), (1, 2)))
        (gradient,) = torch.autograd.grad(-value.sum(), x)
        x.grad = gradient
        optimiser.step()
        trace[step] = value.detach().numpy()
        with torch.no_grad():
            if decay:
                x.sub_(GREY).mul_(1 - decay).add_(GREY)
            if blur_sigma and blur_every and (step + 1) % blur_every == 0 and step < steps - 1:
                x.copy_(_blur(x, blur_sigma))
            x.copy_(torch.clamp(x, low, high))
    return x.detach(), trace


class SynthesisParams(TargetParams):
    steps: int = Field(16, ge=1, le=1000, description="Adam steps per batch")
    learning_rate: float = Field(4.0, gt=0, le=255, description="step size, pixel values, at most 255")
    jitter: int = Field(2, ge=0, le=64, description="largest random shift per step, pixels, at most 64")
    blur_sigma: float = Field(0.5, ge=0, le=16, description="Gaussian blur every blur_every steps, pixels "
                              "(0: none), at most 16")
    blur_every: int = Field(4, ge=1)
    decay: float = Field(0.002, ge=0, lt=1, description="pull towards grey per step, fraction")
    max_change: float | None = Field(64.0, gt=0, le=255, description="how far a pixel may move from its start "
                                     "image, pixel values (none: anywhere in 0-255)")


class SynthesisStrategy(TargetedStrategy):
    """Gradient ascent in pixel space on the model's prediction.

    Objective, for each of the ``k`` start images (the allowed images with the highest expected
    count of the target): maximise the expected count under the posterior mean
    (``model.torch_mean``) over the pixels ``x`` by :func:`ascend`, with jitter, blur, decay
    towards grey and a ``max_change`` trust region around the start image. The results are
    appended to the pool (family ``synthesized``) and scored by their expected counts there
    (``model.predictive``).
    """

    name = "synthesis"
    Params = SynthesisParams

    def choose(self, context, k, rng):
        import torch

        self.check_context(context)
        if context.model is None:
            raise ValueError("strategy 'synthesis' needs the live model (context.model)")
        p, model = self.params, context.model
        starts, _ = top_k(context.allowed, self.target(context.mean(), context.units), k)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pixels, _ = ascend(lambda x: self.target(model.torch_mean(x), context.units),
                           torch.from_numpy(context.pool.images[starts]).float(), p.steps, generator,
                           p.learning_rate, p.jitter, p.decay, p.blur_sigma, p.blur_every, p.max_change)
        images = pixels.round().to(torch.uint8).numpy()
        params = [{"start": context.pool.ids[s], "unit": p.unit, "steps": p.steps} for s in starts]
        index = add_to_pool(context, images, ["synthesized"] * len(images), params)
        values = self.target(model.predictive(index)[0], context.units)
        best = np.argsort(-values, kind="stable")
        return index[best], values[best]


# -------------------------------------------------------------- contour evolution --
MUTATIONS = ("curvature", "rotation", "size", "position")
CURVATURE_STEP = 0.25  # sd of a curvature change (normalised curvature)
SIZE_STEP = 0.15  # sd of the change of log size
SIZE_RANGE = (0.05, 0.5)  # fraction of the image side
POSITION_STEP = 0.04  # sd of a change of x and of y, fraction of the side
POSITION_LIMIT = 0.3  # centres stay within this of the image centre (fraction of the side)
MUTATION_TRIES = 10  # draws of mutations until the child differs from its parent


def mutate(params: dict, rng: np.random.Generator) -> dict:
    """A contour stimulus like ``params`` with some of its features changed.

    Each of the four mutations happens with probability 1/2 (one of them, at random, when none
    would): one element's curvature moves by ``N(0, 0.25)`` within -0.3 ... 1.0 (through
    :func:`variant`, the rest of the outline unchanged; a curvature out of reach leaves it as it
    was), the rotation turns by 45 degrees either way, the size is scaled by ``exp(N(0, 0.15))``
    within 0.05 ... 0.5 of the side, and the centre moves by ``N(0, 0.04)`` of the side in x and
    in y, within 0.3 of the image centre. When nothing changed, the mutations are drawn again
    (up to 10 times). Returns validated parameters.
    """
    parent = ContourParams.model_validate(params).model_dump(mode="json")
    for _ in range(MUTATION_TRIES):
        child = _mutated(parent, rng)
        if child != parent:
            break
    return child


def _mutated(parent: dict, rng: np.random.Generator) -> dict:
    child = dict(parent)
    chosen = [m for m in MUTATIONS if rng.random() < 0.5] or [MUTATIONS[int(rng.integers(len(MUTATIONS)))]]
    for what in chosen:
        if what == "curvature":
            element = int(rng.integers(len(child["curvatures"])))
            wanted = child["curvatures"][element] + rng.normal(0, CURVATURE_STEP)
            try:
                child = variant(child, element, round(float(np.clip(wanted, CURVATURE_MIN, CURVATURE_MAX)), 3))
            except ValueError:
                pass  # out of reach (the outline would cross itself or reach too far)
        elif what == "rotation":
            child["rotation"] = (child["rotation"] + 45 * int(rng.choice([-1, 1]))) % 360
        elif what == "size":
            child["size"] = round(float(np.clip(child["size"] * np.exp(rng.normal(0, SIZE_STEP)), *SIZE_RANGE)), 3)
        else:
            for axis in ("x", "y"):
                moved = child[axis] + rng.normal(0, POSITION_STEP)
                child[axis] = round(float(np.clip(moved, -POSITION_LIMIT, POSITION_LIMIT)), 3)
    return ContourParams.model_validate(child).model_dump(mode="json")


class EvolutionParams(TargetParams):
    population: int = Field(12, ge=2, le=512, description="contours kept each generation")
    generations: int = Field(3, ge=1, le=100, description="rounds of mutation and selection per batch")
    background: float = Field(0.5, ge=0, le=1, description="grey the contours are rendered on (0-1): "
                              "the protocol's [stimulus] background")


class EvolutionStrategy(TargetedStrategy):
    """Evolutionary search over curved-contour parameters for the model's prediction.

    Objective: maximise ``mean_m lambda_m(render(theta))`` of the target over contour parameters
    ``theta`` (:class:`ContourParams`), the mean over posterior draws. The first population is the
    allowed contour images with the highest expected counts (topped up with random standard
    contours); each generation every member gets one child (:func:`mutate`), rendered at the
    pool's image size on ``background`` and scored with ``model.predictive_images``, and the best
    ``population`` distinct images of parents and children survive, so the best score never
    falls. The ``k`` best survivors join the pool as family ``contour`` with their parameters (a
    pool image that survived unchanged is chosen where it is). ``state()`` gives the best
    predicted response of the first population and of the last.
    """

    name = "evolution"
    Params = EvolutionParams

    def __init__(self, params=None):
        super().__init__(params)
        self._last: dict | None = None

    def choose(self, context, k, rng):
        self.check_context(context)
        if context.model is None:
            raise ValueError("strategy 'evolution' needs the live model (context.model)")
        p, pool, family = self.params, context.pool, Contour()
        size = pool.images.shape[1]
        contours = np.array([pool.families[i] == family.name and not is_gaudy(pool.params[i])
                             for i in context.allowed], dtype=bool)
        seeds = np.zeros(0, int)
        if contours.any():
            predicted = self.target(context.mean()[:, contours], context.units)
            seeds = top_k(context.allowed[contours], predicted, p.population)[0]
        members = [ContourParams.model_validate(pool.params[i]).model_dump(mode="json") for i in seeds]
        members += [family.sample(rng) for _ in range(p.population - len(members))]
        images = np.stack([pool.images[i] for i in seeds] +
                          [family.render(m, size, p.background) for m in members[len(seeds):]])
        values = self._score(context, images)
        first_best = float(values.max())
        for _ in range(p.generations):
            children = [mutate(m, rng) for m in members]
            child_images = np.stack([family.render(c, size, p.background) for c in children])
            members, images, values = _survivors(members + children, np.concatenate([images, child_images]),
                                                 np.concatenate([values, self._score(context, child_images)]),
                                                 p.population)
        best = np.arange(min(k, len(members)))
        self._last = {"first_best": first_best, "best": float(values[0])}
        index = add_to_pool(context, images[best], [family.name] * len(best), [members[i] for i in best])
        return index, values[best]

    def _score(self, context, images: np.ndarray) -> np.ndarray:
        return self.target(context.model.predictive_images(images)[0], context.units)

    def state(self):
        return self._last


def _survivors(members: list[dict], images: np.ndarray, values: np.ndarray,
               count: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The ``count`` best distinct images (by pixels), best first, with their params and values."""
    keep, seen = [], set()
    for i in np.argsort(-values, kind="stable"):
        key = images[i].tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
        if len(keep) == count:
            break
    return [members[i] for i in keep], images[keep], values[keep]

