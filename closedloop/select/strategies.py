"""Selection strategies: plug-ins that choose the next images.

A strategy is named in the protocol (``[selection] strategy``) with its
settings in ``[selection.params]``, which its ``Params`` model validates on
load. Each decision it gets a :class:`SelectionContext` (the images it may
choose, the model's predictions for them, the pool and the live model)
and returns the pool indices to show next with a score for each (higher is
better). Stateful strategies (hypothesis tests, fixed lists) also see every
response through :meth:`Strategy.observe` and may say they are finished.

What each scores (lambda: a unit's expected count; its mean and variance over the model's
posterior, lambda_m: its value under posterior draw m):

- ``random``: uniform over the allowed candidates.
- ``fixed``: a given list, in order.
- ``gaudy``: gaudy versions of random allowed images (Cowley & Pillow 2020).
- ``disagreement``: mean over units of var(lambda) / mean(lambda).
- ``info_gain``: sum over units of the information I(count; draw) under Poisson counts.
- ``max_response``: mean(lambda) of one unit, or its mean over units.
- ``adept``: population mean response plus the mean distance to earlier responses (Adept).
- ``synthesis``, ``evolution`` (:mod:`closedloop.select.synthesis`): new images made for the
  model, by gradient ascent in pixel space or evolution of curved-contour parameters.
- ``variance_reduction`` (:mod:`closedloop.select.variance`): the images that most lower the
  predictive variance of expected counts over a target (the pool, or one family of it such as
  natural images or a held-out set), greedily per batch.
- ``hypothesis`` (:mod:`closedloop.select.hypotheses`): a live test of which tuning hypothesis
  explains one neuron; ``validation`` (:mod:`closedloop.select.validation`): the model's top
  images against random natural images, with a sequential one-sided test.

Mixing with random control images is the loop's job, for every strategy: ``[selection]
control_fraction = 0.2`` shows a uniformly random candidate instead of the strategy's next image
on each presentation with probability 0.2 (logged with role ``control``). A strategy never mixes
in random images itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, Field, field_validator

from closedloop.config import Settings
from closedloop.errors import ClosedLoopError
from closedloop.stimuli import gaudy, stimulus_id

if TYPE_CHECKING:
    import torch

    from closedloop.stimuli import StimulusPool


class NoParams(Settings):
    """A strategy without settings, and the base of those with them (unknown keys are errors, every
    float is finite)."""


class Predictor(Protocol):
    """What ``SelectionContext.model`` offers strategies: the interface every learner meets
    (:class:`closedloop.learn.OnlineLearner`, and :class:`closedloop.design.FixedModel` for a
    plain image model). Counts are expected spikes per presentation."""

    ridge: float  # the readouts' ridge on :meth:`embedding` features

    def predictive(self, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and posterior variance of the expected counts of pool images: two (units, B)."""

    def predictions(self, index: np.ndarray | None = None) -> np.ndarray:
        """Expected counts (members, units, B) of pool images under posterior draws."""

    def predictive_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predictive` for (B, N, N, 3) uint8 images outside the pool."""

    def torch_mean(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable expected counts (units, B) of float pixels (B, N, N, 3), 0-255."""

    def extend(self, images: np.ndarray) -> np.ndarray:
        """Append (B, N, N, 3) uint8 images to the pool the model predicts; their pool indices."""

    def embedding(self, index: np.ndarray) -> np.ndarray:
        """Features (B, dims) of pool images that the readouts are linear in."""


@dataclass
class SelectionContext:
    """What a strategy may look at when it chooses.

    Attributes
    ----------
    allowed : ndarray of int
        Pool indices it may choose (candidates not shown recently).
    pool : StimulusPool or None
        Every image with its family and parameters.
    predictions : ndarray or None
        (members, units, len(allowed)) expected spike counts per presentation, when given;
        otherwise :meth:`members` asks the model (only strategies that need draws pay for them).
    model : Predictor or None
        The live learner (to predict, or differentiate, any image).
    units : tuple of str
        Unit names, in the order of the predictions' second axis.
    shown, counts : ndarray
        The trained-on history: pool indices (n,) and their spike counts
        (n, units), oldest first.
    add_images : callable or None
        ``add_images(images, families, params) -> pool indices``: appends new
        (synthesised) images to the pool so they can be shown and learned.
    """

    allowed: np.ndarray
    pool: StimulusPool | None = None
    predictions: np.ndarray | None = None
    model: Predictor | None = None
    units: tuple[str, ...] = ()
    shown: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    add_images: Callable[[np.ndarray, list[str], list[dict]], np.ndarray] | None = None
    _predictive: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def members(self) -> np.ndarray:
        """Expected counts (members, units, allowed) under posterior draws (asked once)."""
        if self.predictions is None:
            if self.model is None:
                raise ValueError("no predictions and no model in the selection context")
            self.predictions = self.model.predictions(np.asarray(self.allowed))
        return self.predictions

    def predictive(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and posterior variance of the expected counts of the allowed images, (units, allowed)
        each: the model's closed form, or over the members when predictions were given."""
        if self._predictive is None:
            if self.predictions is not None:
                self._predictive = (self.predictions.mean(axis=0), self.predictions.var(axis=0))
            elif self.model is not None:
                self._predictive = self.model.predictive(np.asarray(self.allowed))
            else:
                raise ValueError("no predictions and no model in the selection context")
        return self._predictive

    def mean(self) -> np.ndarray:
        """Expected counts (units, allowed)."""
        return self.predictive()[0]


@dataclass(frozen=True)
class Part:
    """A strategy another one is made of, as the other's settings name it: the setting naming it
    (``name_field``), the setting holding its own settings (``params_field``), and their values."""

    name_field: str
    params_field: str
    name: str
    params: dict


class Strategy:
    """Chooses ``k`` images; ``needs_model`` says whether predictions are used.

    Subclasses set ``name`` and, if they take settings, ``Params`` (a pydantic
    model); the validated settings are ``self.params``. Most score the allowed
    images (:meth:`scores`); those that keep a list or make new images override
    :meth:`choose` instead.
    """

    name: ClassVar[str]
    needs_model: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def made_of(cls, params: BaseModel) -> list[Part]:
        """The strategies this one is made of (none by default). The registry validates them with
        its settings and builds them (:func:`closedloop.select.registry.make_strategy`), passing
        them to the constructor as ``parts``, by ``name_field``."""
        return []

    def scores(self, context: SelectionContext, rng: np.random.Generator) -> np.ndarray:
        """One score per allowed image (higher: show sooner)."""
        raise NotImplementedError(f"strategy {self.name!r} chooses without scoring the allowed images")

    def choose(self, context: SelectionContext, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best allowed images (pool indices) and their scores, best first."""
        self.check_context(context)
        return top_k(context.allowed, self.scores(context, rng), k)

    def check_context(self, context: SelectionContext) -> None:
        """Raise when there is nothing to choose from or the predictions do not fit."""
        if len(context.allowed) == 0:
            raise ClosedLoopError("no candidate images left to choose from")
        if context.predictions is not None and context.predictions.shape[-1] != len(context.allowed):
            raise ValueError("predictions and candidates disagree in length")
        if self.needs_model and context.predictions is None and context.model is None:
            raise ValueError(f"strategy {self.name!r} needs the model's predictions")

    def check(self, units: list[str], pool: StimulusPool) -> None:
        """Raise :class:`ClosedLoopError` when the settings do not fit the rig's units or the
        pool (e.g. a named neuron that is not recorded); called before a session starts."""

    def observe(self, pool_index: int, counts: np.ndarray) -> None:
        """One response (spikes per unit) to pool image ``pool_index``; stateless by default."""

    @property
    def finished(self) -> bool:
        """True when the strategy has nothing more to learn (e.g. a test reached its decision)."""
        return False

    def results(self, states: list[dict], folder: Path) -> list[Path]:
        """Write figures of the states a session logged (:meth:`state`, in decision order) into
        ``folder`` at the end of the session; the files written (none by default)."""
        return []

    def state(self) -> dict | None:
        """What to log with each decision beyond the choice (e.g. a posterior), or None."""
        return None


def top_k(indices: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring ``indices`` and their scores, best first."""
    k = min(k, len(indices))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return indices[best], scores[best]


class RandomStrategy(Strategy):
    """Uniformly random candidates (the control every lab runs)."""

    name = "random"
    needs_model = False

    def scores(self, context, rng):
        return rng.random(len(context.allowed))


class DisagreementStrategy(Strategy):
    """Model disagreement, as in the compact-model paper's active learning.

    Score: the posterior variance of each unit's expected count over its mean (a Fano factor, so
    high-rate units do not dominate), averaged over units. With a learner's closed-form posterior
    the variance is exact, not the spread of a few members.
    """

    name = "disagreement"

    def scores(self, context, rng):
        mean, variance = context.predictive()
        return (variance / (mean + 1e-3)).mean(axis=0)


# ---------------------------------------------------------------------- targets --
class TargetParams(NoParams):
    """Settings of a strategy that drives one unit or the population."""

    unit: str | None = Field(None, description="the unit to drive (a recorded unit's name); "
                                               "default: the mean over all units")


def unit_index(units: Sequence[str], unit: str | None, strategy: str) -> int | None:
    """Position of ``unit`` among ``units``, None for the population; a one-line error naming
    the strategy when the unit is not recorded."""
    if unit is None:
        return None
    if unit not in units:
        raise ClosedLoopError(f"strategy {strategy!r}: unit {unit!r} is not recorded "
                              f"(units: {', '.join(units) or 'none'})")
    return list(units).index(unit)


def target_response(mean, unit: int | None):
    """Expected count of the target, (units, B) -> (B,): unit ``unit``, or the mean over units when
    None. Takes numpy arrays and (differentiably) torch tensors; average members first."""
    return mean.mean(axis=0) if unit is None else mean[unit]


class TargetedStrategy(Strategy):
    """A strategy aimed at ``params.unit``, or at the population mean when it names none."""

    Params = TargetParams

    def check(self, units, pool):
        unit_index(units, self.params.unit, self.name)

    def target(self, mean, units: Sequence[str]):
        """:func:`target_response` of this strategy's target, from expected counts (units, B)."""
        return target_response(mean, unit_index(units, self.params.unit, self.name))


class MaxResponseStrategy(TargetedStrategy):
    """The largest predicted response: score the posterior mean of the expected count of ``unit``,
    or of the mean over units (spikes per presentation)."""

    name = "max_response"

    def scores(self, context, rng):
        return self.target(context.mean(), context.units)


# ------------------------------------------------------------- information gain --
RATE_FLOOR = 1e-6  # expected counts below this are taken as this (the logarithm needs a rate > 0)
TAIL = 8.0  # the count grid runs to r + TAIL sqrt(r) + TAIL, r the largest rate: the Poisson mass beyond is < 1e-9
GRID_CELLS = 1_000_000  # probabilities (members x cells x counts) held at once, bounding memory (8 MB each array)


def _count_grid_top(rate: float) -> int:
    """The largest count on the grid for rates up to ``rate``."""
    return int(np.ceil(rate + TAIL * np.sqrt(rate) + TAIL))


def poisson_information(rates: np.ndarray) -> np.ndarray:
    """Mutual information (nats) between a Poisson count and which ensemble member is right.

    With the M members as equally likely posterior samples of the rate,

        I = H[(1/M) sum_m Poisson(lambda_m)] - (1/M) sum_m H[Poisson(lambda_m)]
          = (1/M) sum_m KL(Poisson(lambda_m) || the mixture),

    summed exactly over the counts 0 ... r + 8 sqrt(r) + 8 (r the largest rate; the mass beyond
    is below 1e-9), not through a Gaussian approximation. It is 0 when the members agree, however
    noisy the count, and at most log M. Cells are taken in order of their largest rate, in chunks
    of a bounded size, each on its own (shorter) grid.

    Parameters
    ----------
    rates : ndarray, (members, ...)
        Expected counts per presentation.

    Returns
    -------
    ndarray, (...)
        The information of each cell, nats.
    """
    rates = np.maximum(np.asarray(rates, dtype=np.float64), RATE_FLOOR)
    members = rates.shape[0]
    flat = rates.reshape(members, -1)
    peaks = flat.max(axis=0)
    order = np.argsort(peaks, kind="stable")
    top = _count_grid_top(float(peaks.max())) if len(peaks) else 0
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1)))])
    chunk = max(1, GRID_CELLS // (members * (top + 1)))
    information = np.empty(flat.shape[1])
    for start in range(0, flat.shape[1], chunk):
        cells = order[start:start + chunk]
        lam = flat[:, cells, None]
        counts = np.arange(_count_grid_top(float(peaks[cells[-1]])) + 1)
        log_pmf = counts * np.log(lam) - lam - log_factorial[:len(counts)]
        pmf = np.exp(log_pmf)
        log_mixture = np.log(np.maximum(pmf.mean(axis=0), np.finfo(np.float64).tiny))
        information[cells] = (pmf * (log_pmf - log_mixture)).sum(axis=(0, 2)) / members
    return np.maximum(information, 0.0).reshape(rates.shape[1:])


def stabilised(mean: np.ndarray) -> np.ndarray:
    """Expected-count vectors in Poisson noise units, (units, B) -> (B, units).

    ``2 sqrt(lambda)``: twice the square root of a Poisson count has a standard deviation
    of about 1 at every rate, so distances between these vectors count noise standard deviations.
    """
    return 2.0 * np.sqrt(np.maximum(mean, 0.0)).T


def diverse_top_k(indices: np.ndarray, gains: np.ndarray, responses: np.ndarray, k: int,
                  diversity: float) -> tuple[np.ndarray, np.ndarray]:
    """A batch picked greedily, each pick maximising ``gain * (1 - diversity * s)``.

    ``s = exp(-d^2 / (2 U))`` is the similarity of a candidate to its nearest pick so far, ``d``
    the Euclidean distance between their ``responses`` (B, U) in noise units (:func:`stabilised`),
    so a candidate whose predicted responses differ from a pick by about one noise standard
    deviation per unit keeps ``1 - 0.61 diversity`` of its gain, and a duplicate ``1 - diversity``.
    Returns the picked ``indices`` and their discounted gains, in the order picked.
    """
    k = min(k, len(indices))
    similarity = np.zeros(len(indices))
    picked, values = [], []
    for _ in range(k):
        value = gains * (1.0 - diversity * similarity)
        value[picked] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        values.append(value[best])
        squared = ((responses - responses[best]) ** 2).sum(axis=1)
        similarity = np.maximum(similarity, np.exp(-squared / (2.0 * responses.shape[1])))
    return indices[picked], np.array(values)


class InfoGainParams(NoParams):
    diversity: float = Field(0.5, ge=0, le=1, description="how much a batch avoids candidates whose "
                             "predicted responses are close to those already in it (0: pure top-k)")


class InfoGainStrategy(Strategy):
    """Expected information gain about the model under Poisson spike counts.

    Score: ``sum_u I(count_u; member)`` (:func:`poisson_information`), the members posterior
    draws (:meth:`SelectionContext.members`) and the units independent given the member (the sum
    bounds the joint information from above). Members that agree give nothing however high the
    rate, so Poisson noise is not taken for model uncertainty; a spread of rates counts more at
    low rates, where counts tell them apart, by the Poisson likelihood rather than by
    ``disagreement``'s division by the mean. The batch is picked by :func:`diverse_top_k` with ``diversity``.
    """

    name = "info_gain"
    Params = InfoGainParams

    def scores(self, context, rng):
        return poisson_information(context.members()).sum(axis=0)

    def choose(self, context, k, rng):
        self.check_context(context)
        return diverse_top_k(context.allowed, self.scores(context, rng), stabilised(context.mean()), k,
                             self.params.diversity)


# ------------------------------------------------------------------------ adept --
def rms_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square difference over units of every row of ``a`` (A, units) and ``b`` (B, units): (A, B)."""
    squared = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0) / a.shape[1])


class AdeptParams(NoParams):
    weight: float = Field(1.0, ge=0, le=1000, description="lambda: weight of the diversity term against the mean "
                          "response (both spikes per unit)")


class AdeptStrategy(Strategy):
    """Adept's population objective (Cowley et al. 2017, NeurIPS): large and diverse responses.

    Each pick of the batch maximises, over the allowed images x,

        f(x) = mean_u r_u(x) + lambda * mean_j ||r(x) - r_j|| / sqrt(U)

    with ``r(x)`` the expected counts (posterior mean) of the population (U units) and ``r_j``
    every response observed so far (``context.counts``) and the predicted response of every image
    already picked for this batch, as in Adept's greedy batches. Both terms are in spikes per
    unit; ``lambda`` is ``weight``. The scores are the objective at each pick, in the order picked.
    """

    name = "adept"
    Params = AdeptParams

    def choose(self, context, k, rng):
        self.check_context(context)
        predicted = context.mean().T  # (candidates, units)
        drive = predicted.mean(axis=1)
        history = context.counts.reshape(-1, predicted.shape[1]) if context.counts.size else predicted[:0]
        total = rms_distances(predicted, history).sum(axis=1)
        seen = len(history)
        picked, values = [], []
        for _ in range(min(k, len(drive))):
            value = drive + self.params.weight * total / max(seen, 1)
            value[picked] = -np.inf
            best = int(np.argmax(value))
            picked.append(best)
            values.append(value[best])
            total += rms_distances(predicted, predicted[best:best + 1])[:, 0]
            seen += 1
        return context.allowed[picked], np.array(values)


# ------------------------------------------------------------------- fixed list --
def read_order(path: Path) -> list[int | str]:
    """A fixed order from a file: a JSON list (``.json``), or text with one pool index or stimulus
    id a line (blank lines and ``#`` comments skipped); ``ValueError`` names the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"order file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"order file {path}: unreadable ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"order file {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [int(line) if line.isdigit() else line for line in lines if line]


class FixedParams(NoParams):
    order: list[int | str] = Field(min_length=1, description="pool indices (from 0) or stimulus ids, or the "
                                   "path of a file holding them (see read_order; relative to the "
                                   "working directory)")
    repeat: bool = Field(False, description="start again at the top when the list is done")

    @field_validator("order", mode="before")
    @classmethod
    def _read_file(cls, order):
        return read_order(Path(order)) if isinstance(order, (str, Path)) else order


class FixedStrategy(Strategy):
    """A fixed list shown in order (e.g. a standard set, or a design made elsewhere).

    Each decision offers the next ``k`` entries after the ones answered so far, so an entry whose
    response was lost (or a queue the loop replaced) is offered again. The list is followed as
    given: recent repeats are not skipped, and a held-out image listed is shown as a chosen one
    and trained on. Without ``repeat`` the strategy is finished once every entry was answered.
    """

    name = "fixed"
    needs_model = False
    Params = FixedParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self._order: np.ndarray | None = None  # pool indices, once resolved against the pool
        self._answered = 0  # entries answered, in order

    def resolve(self, pool: StimulusPool) -> np.ndarray:
        """The list as pool indices; a one-line error names the entries not in ``pool``."""
        index, missing = [], []
        for entry in self.params.order:
            found = (0 <= entry < len(pool)) if isinstance(entry, int) else entry in pool
            if not found:
                missing.append(entry)
            index.append(entry if isinstance(entry, int) else pool.index(entry) if found else -1)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ClosedLoopError(f"strategy 'fixed': {len(missing)} order entries are not in the pool of "
                                  f"{len(pool)} stimuli: {shown}")
        return np.array(index)

    def check(self, units, pool):
        self.resolve(pool)

    def choose(self, context, k, rng):
        if self._order is None:
            self._order = self.resolve(context.pool)
        position = self._answered + np.arange(k)
        if not self.params.repeat:
            position = position[position < len(self._order)]
        return self._order[position % len(self._order)], -position.astype(np.float64)

    def observe(self, pool_index, counts):
        if self._order is not None and not self.finished:
            if pool_index == self._order[self._answered % len(self._order)]:
                self._answered += 1

    @property
    def finished(self) -> bool:
        return not self.params.repeat and self._order is not None and self._answered >= len(self._order)

    def state(self):
        return {"answered": self._answered, "length": len(self.params.order)}


# --------------------------------------------------------- new images, gaudy --
def is_gaudy(params) -> bool:
    """Whether recorded stimulus parameters say the image went through the gaudy transform."""
    return isinstance(params, dict) and bool(params.get("gaudy"))


def add_to_pool(context: SelectionContext, images: np.ndarray, families: list[str],
                params: list[dict]) -> np.ndarray:
    """Pool indices of ``images`` (B, N, N, 3) uint8: images already in the pool (the same pixels)
    keep their place, the others are appended once each with ``context.add_images``."""
    if context.add_images is None:
        raise ValueError("this strategy makes new images and needs context.add_images")
    ids = [stimulus_id(image) for image in images]
    first: dict[str, int] = {}  # each new image's first place in the batch
    for i, sid in enumerate(ids):
        if sid not in context.pool:
            first.setdefault(sid, i)
    if first:
        new = list(first.values())
        context.add_images(images[new], [families[i] for i in new], [params[i] for i in new])
    return np.array([context.pool.index(sid) for sid in ids])


class GaudyParams(NoParams):
    family: str | None = Field(None, description="make gaudy only images of this family (e.g. natural); "
                               "default: any")


class GaudyStrategy(Strategy):
    """Gaudy images (Cowley & Pillow 2020): random allowed images through the gaudy transform.

    Score: uniform in [0, 1), plus 1 for a source this strategy has not yet made gaudy; images
    already gaudy (and, with ``family``, those of other families) are never sources. The gaudy
    image keeps its source's family and parameters plus ``"gaudy": true`` (so
    :func:`closedloop.stimuli.render_stimulus` renders it again and the pool captions it gaudy)
    and is appended to the pool, or found there if it already is.
    """

    name = "gaudy"
    needs_model = False
    Params = GaudyParams

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params)
        self._made: set[int] = set()  # pool indices of sources already made gaudy

    def check(self, units, pool):
        family = self.params.family
        if family is not None and family not in pool.families:
            raise ClosedLoopError(f"strategy 'gaudy': family {family!r} has no images in the pool "
                                  f"(families: {', '.join(sorted(set(pool.families)))})")

    def scores(self, context, rng):
        pool, family = context.pool, self.params.family
        source = np.array([not is_gaudy(pool.params[i]) and (family is None or pool.families[i] == family)
                           for i in context.allowed], dtype=bool)
        if not source.any():
            raise ClosedLoopError(f"strategy 'gaudy': no allowed {family or 'non-gaudy'} images to make gaudy")
        fresh = ~np.isin(context.allowed, list(self._made))
        return np.where(source, rng.random(len(source)) + fresh, -np.inf)

    def choose(self, context, k, rng):
        self.check_context(context)
        scores = self.scores(context, rng)
        sources, scores = top_k(context.allowed, scores, min(k, int(np.isfinite(scores).sum())))
        pool = context.pool
        images = np.stack([gaudy(pool.images[i]) for i in sources])
        index = add_to_pool(context, images, [pool.families[i] for i in sources],
                            [{**pool.params[i], "gaudy": True} for i in sources])
        self._made.update(sources.tolist())
        return index, scores
