"""Live hypothesis tests on one neuron: which response model explains its spike counts?

A protocol names a recorded unit and two or more competing hypotheses, each a
response model with a prior over its parameters, and the test adds one more
outcome, ``"none fits"``: an unstructured alternative that wins when none of
the hypotheses predicts the unit's counts (below). Every response of the unit
updates the posterior over the outcomes (and over each one's parameters);
every decision shows random stimuli of each family not yet covered, a leading
hypothesis's confirmation stimuli, and the stimuli with the greatest expected
information about which outcome holds; the
test ends when one outcome is decided (its probability reaches ``threshold``,
every family is covered and, for a hypothesis, its posterior predictive check
passes: "Deciding" below) or ``budget`` responses are used::

    [selection]
    strategy = "hypothesis"
    warmup = 0
    [selection.params]
    neuron = "curvature"
    hypotheses = [
        {name = "curvature", model = "curvature"},
        {name = "dot", model = "dot", prior = {diameter = [0.05, 0.15]}},
        {name = "orientation", model = "orientation"},
        {name = "untuned", model = "untuned"},
    ]

Response models
    Rates are expected spike counts in the response window (the unit's counts
    are counted in that window). Positions and sizes are fractions of the image
    side (from the centre, y up), angles degrees counter-clockwise, spatial
    frequencies cycles per image side.

    - ``curvature`` (Pasupathy & Connor 2001): ``baseline + gain * max`` over
      the contour's boundary elements (:func:`closedloop.stimuli.contours.elements`)
      of ``exp(-d**2 / (2 angle_width**2) - (c - curvature)**2 / (2 curvature_width**2))``,
      ``d`` the circular difference between the element's angular position and
      ``angle``, ``c`` its normalized curvature (-0.3 concave .. 1 sharp).
    - ``dot``: ``baseline + gain * max`` over the dots of
      ``exp(-(D - diameter)**2 / (2 diameter_width**2) - |p - (x, y)|**2 / (2 position_width**2))``,
      ``D`` the dot diameter and ``p`` its centre (polarity and contrast are ignored).
    - ``orientation``: ``baseline + gain *
      exp(-d**2 / (2 orientation_width**2) - log2(F / frequency)**2 / (2 frequency_width**2))``
      for a grating of orientation ``o`` and spatial frequency ``F``, ``d`` the
      difference between ``o`` and ``orientation`` on a circle of period 180
      degrees (a grating and its 180-degree rotation are the same bars); phase,
      aperture, contrast and colour are ignored.
    - ``untuned``: ``rate`` for every stimulus.

    A tuned model says a stimulus outside its family (a dot or a grating for the
    curvature model; a contour, grating, texture or natural image for the dot
    model; anything but a grating for the orientation model) leaves the neuron
    at ``baseline``. The gaudy transform is ignored.

Priors
    Each parameter is uniform between two bounds, on a log scale for rates,
    widths and frequencies (table below); ``prior`` in a hypothesis overrides a
    bound pair (``gain = [2, 10]``) or fixes a parameter (``angle = 90``).

    =================  ===========  =============  ===========================
    parameter          models       default        units
    =================  ===========  =============  ===========================
    baseline           tuned        0.5 .. 5, log  spikes per window
    gain               tuned        2 .. 15, log   spikes per window
    angle              curvature    0 .. 360       degrees
    angle_width        curvature    20 .. 90, log  degrees
    curvature          curvature    -0.3 .. 1      normalized curvature
    curvature_width    curvature    0.1 .. 0.6,    normalized curvature
                                    log
    diameter           dot          0.05 .. 0.3    fraction of the image side
    diameter_width     dot          0.03 .. 0.12,  fraction of the image side
                                    log
    x, y               dot          -0.3 .. 0.3    fraction of the image side
    position_width     dot          0.08 .. 0.3,   fraction of the image side
                                    log
    orientation        orientation  0 .. 180       degrees
    orientation_width  orientation  10 .. 60, log  degrees
    frequency          orientation  1 .. 16, log   cycles per image side
    frequency_width    orientation  0.3 .. 1.5,    octaves
                                    log
    rate               untuned      0.5 .. 10, log spikes per window
    =================  ===========  =============  ===========================

    (``tuned``: curvature, dot and orientation.)

None fits
    The alternative to every hypothesis says only that within each family a
    fraction of the stimuli drive the unit, at rates no hypothesis predicts,
    and the rest leave it at one quiet rate: stimulus ``i`` of family ``f`` is
    driven with probability ``p_f``, its Poisson rate then drawn once from a
    Gamma distribution of shape ``FREE_SHAPE`` (2) and mean ``d_f``, else it
    is ``m`` (spikes per window; one quiet rate for every family, as the
    hypotheses have one baseline). Its prior on ``m`` and each family's
    ``(d_f, p_f)`` is log-uniform on ``FREE_QUIET`` (0.3 .. 30 spikes per window),
    ``FREE_DRIVEN`` (0.3 .. 30 spikes per window) and ``FREE_FRACTION``
    (0.01 .. 1), integrated on a grid of ``FREE_GRID`` cell midpoints in the
    logarithms. Given ``(m, d_f, p_f)``, the ``T`` spikes in a stimulus's ``n``
    responses have the likelihood (less the log k! of each count)::

        (1 - p) m**T exp(-n m) + p Gamma(s + T) / Gamma(s) * b**s / (b + n)**(s + T)

    with ``s = FREE_SHAPE`` and ``b = s / d``; the stimuli are independent,
    so its evidence is exact up to the grid. It fits any counts, but spreads
    its prior over every pattern of rates: a hypothesis that predicts the
    counts wins against it (each driven stimulus costs it an Occam factor),
    and it wins when every hypothesis mispredicts them, so the test decides
    ``"none fits"`` instead of the least wrong hypothesis. Because a few
    driven stimuli among many quiet ones stay plausible until most of a
    family has been shown, "untuned", or a tuned hypothesis's claim that a
    family leaves the unit at baseline, needs evidence from much of that
    family; the choosing below shows it, family by family.
    ``none_fits = false`` leaves the outcome out.

Posterior
    Each hypothesis is a set of ``particles`` parameter draws from its prior
    (seeded by ``seed``), updated by sequential Monte Carlo (Chopin 2002): each
    response of the unit reweights the particles by its Poisson likelihood and
    multiplies the hypothesis's marginal likelihood (evidence) estimate by the
    weighted mean of that likelihood; when the effective number of particles
    falls below half, they are resampled and moved by ``MOVES`` random-walk
    Metropolis steps (in the prior's coordinates: the logarithm for log-scale
    parameters) targeting the posterior given every response so far, so the
    particles follow the posterior instead of thinning out. The outcomes (the
    hypotheses and "none fits") are equally likely a priori; their posterior is
    the normalised evidence.

Choosing
    The score of a stimulus is the mutual information (nats) between the
    outcome and the count it would evoke, under each outcome's predictive
    distribution of that count (a hypothesis's: the Poisson mixture over its
    weighted particles; "none fits"'s: at each of ``FREE_PREDICTIVE`` grid
    points drawn from its posterior by systematic resampling, the Poisson count
    of the quiet rate or, with the stimulus's posterior probability of being
    driven, the negative binomial count of its Gamma posterior rate, shape
    ``s + T`` and rate ``b + n``), each weighted by the outcome's probability. The counts 0 ..
    ``top + 8 sqrt(top) + 8`` are summed exactly, ``top`` the largest
    expected count of any particle, and the counts beyond are one more outcome
    (below 1e-9 of a hypothesis's mass; "none fits" may put more there).
    A decision's ``k`` stimuli are first the confirmation stimuli still due
    (below; those the policy allows), then, while a family is not yet covered,
    up to ``ceil(COVER_SHARE * k)`` (3 of 4) coverage draws: each from the family
    with the most stimuli still missing, uniformly at random among its stimuli
    not yet shown. The rest of the batch is the top by this score (not a greedy
    joint design: near-duplicates may share a batch).

Deciding
    The posterior alone is not calibrated when the truth is outside every
    outcome's prior (a real neuron): after a dozen well-chosen responses a
    tuned hypothesis can predict them all and reach 0.95, because the stimuli
    that would refute it were never shown, and "untuned" can win because the few
    stimuli that drive a unit were not found. So an outcome ``H`` is decided only
    when all three hold:

    1. **Evidence**: its posterior probability is at least ``threshold``.
    2. **Coverage**: every family ``f`` of the pool has at least
       ``N_f = min(|f|, ceil(log(level) / log(1 - cover)))`` distinct stimuli
       shown (59 with the defaults ``cover = 0.05``, ``level = 0.05``). If a
       fraction ``q >= cover`` of a family answers unlike ``H`` says (the driving
       stimuli of an untested tuning; a family a tuned hypothesis says leaves
       the unit at baseline), ``N_f`` uniformly random draws from it miss them
       all with probability ``(1 - q)**N_f <= level``. The coverage draws above
       make the draws random; stimuli chosen for their information count too,
       so for them the bound is a guide rather than a guarantee. Set
       ``cover = 0`` to leave coverage out (the posterior alone, for testing).
    3. **Predictive check** (``check``; hypotheses only: "none fits" fits any
       counts): with ``T_i`` spikes in ``n_i`` responses to each shown stimulus
       ``i``, and the Poisson deviance
       ``D_i(theta) = 2 (T_i log(T_i / (n_i mu_i)) - T_i + n_i mu_i)``,
       ``mu_i`` the expected count under parameters ``theta``, the realised
       discrepancies (Gelman, Meng & Stern 1996) ``sum_i D_i`` (a misfit
       spread over many stimuli) and ``max_i D_i`` (a few stimuli far off, e.g.
       one driving dot a hypothesis says is at baseline) are compared with the
       same discrepancies of replicated counts ``T_rep_i ~ Poisson(n_i mu_i)``,
       over ``CHECK_DRAWS`` draws ``theta`` from ``H``'s posterior (one
       replicate each): ``p_sum = P(sum D_rep >= sum D)``,
       ``p_max = P(max D_rep >= max D)``. One response to each of a few driven
       stimuli is rarely enough to tell them from noise, so the check first
       *confirms* (screen, then test on fresh data): when 1 and 2 first hold for
       ``H``, its ``CONFIRM`` (8) shown stimuli with the largest ``D_i`` at its
       posterior-mean rates are shown ``CONFIRM_REPEATS`` (3) more times each
       (they fill the batches first), with ``CHECK_DRAWS`` draws of ``H``'s
       rates for them kept from that moment. The fresh counts, independent of
       the screening given ``theta``, give ``p_conf = P(sum D_rep >= sum D)``
       over those stimuli alone, their expected counts from the kept draws.
       ``H`` passes when ``p = min(1, 3 min(p_sum, p_max, p_conf)) >= level``
       (Bonferroni over the three).
       Posterior predictive p-values are conservative (their null distribution
       is concentrated near 1/2), so a true hypothesis fails less often than
       ``level``. Each hypothesis is checked once, the first time 1 and 2 hold
       for it; a failure stands for the rest of the test (the hypothesis's
       posterior still counts, but it can no longer be decided), so repeated
       looks cannot let a misfit pass by chance, and a true hypothesis is
       rejected with probability about ``level`` or less. A failed check does
       not decide "none fits"; the test goes on (more responses, chosen as
       above) until "none fits", or another hypothesis that passes, wins on the
       evidence, or the budget is spent.

    The price is trials: no decision comes before ``sum_f N_f`` distinct
    stimuli (177 for contours, dots and gratings), and a hypothesis's needs 24
    confirmation responses more, where the posterior alone often decided after
    a few dozen. ``state()`` shows each family's coverage
    ``[shown, needed]`` and the check of the leading hypothesis (with the
    responses it was made at; ``rejected`` keeps every failed one). Not covered: a unit driven by
    fewer than ``cover`` of a family's stimuli, or weakly (a driven count within
    the Poisson noise of one response), can still be decided "untuned" (or for
    a tuned hypothesis that says that family is quiet) with more than ``level``
    probability.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from scipy.special import gammaln

from closedloop.config import MANY, Seed, Settings
from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import NoParams, SelectionContext, Strategy, top_k, unit_index
from closedloop.stimuli.contours import elements
from closedloop.stimuli.families import DotParams, GratingParams

MOVES = 5  # Metropolis steps per particle after each resampling
STEP = 0.5  # random-walk step: this fraction of the particles' spread in each coordinate ...
MIN_STEP = 0.01  # ... and at least this fraction of the prior's range
RESAMPLE_BELOW = 0.5  # resample when the effective number of particles falls below this fraction
NONE_FITS = "none fits"  # the outcome that no hypothesis fits
COVER_SHARE = 0.75  # while a family is under-covered, this share of each batch (rounded up) is coverage draws
CHECK_DRAWS = 400  # posterior draws (each with one replicate of the counts) of a predictive check
CONFIRM = 8  # a hypothesis's check first shows again its this many most surprising stimuli ...
CONFIRM_REPEATS = 3  # ... this many times each


# ------------------------------------------------------------ response models --
@dataclass(frozen=True)
class Prior:
    """A parameter's prior: uniform from ``low`` to ``high``, of the logarithm when ``log``.

    Its *coordinate* (the logarithm, or the value) is uniform on ``box``.
    """

    low: float
    high: float
    log: bool = False

    @property
    def box(self) -> tuple[float, float]:
        return (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)

    def coordinate(self, value: np.ndarray) -> np.ndarray:
        return np.log(value) if self.log else value

    def value(self, coordinate: np.ndarray) -> np.ndarray:
        return np.exp(coordinate) if self.log else coordinate

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws."""
        return self.value(rng.uniform(*self.box, n))

    def grid(self, n: int) -> np.ndarray:
        """The midpoints of ``n`` equal cells of the coordinate's box, as values."""
        low, high = self.box
        return self.value(low + (np.arange(n) + 0.5) * (high - low) / n)


RATE_PRIORS = {"baseline": Prior(0.5, 5.0, log=True), "gain": Prior(2.0, 15.0, log=True)}


class Features:
    """What a response model reads of K stimuli: each one's elements, (E_k, d) rows, stacked."""

    def __init__(self, per_stimulus: Sequence[np.ndarray]):
        sizes = np.array([len(f) for f in per_stimulus], dtype=int)
        self.count = len(per_stimulus)
        self.stimuli = np.flatnonzero(sizes)  # the stimuli with elements ...
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[self.stimuli]  # ... and their first rows
        self.rows = np.concatenate([f for f in per_stimulus if len(f)]) if len(self.stimuli) else np.zeros((0, 0))


def _without_gaudy(params: dict) -> dict:
    return {key: value for key, value in params.items() if key != "gaudy"}


class ResponseModel(ABC):
    """A hypothesis's response model: expected counts per window from stimulus parameters."""

    name: ClassVar[str]
    family: ClassVar[str | None] = None  # the family it is tuned to (None: every family alike)
    priors: ClassVar[dict[str, Prior]]

    def prior(self, overrides: dict | None = None) -> dict[str, Prior]:
        """The priors with ``overrides`` (a parameter's number, or ``(low, high)``) applied."""
        out = dict(self.priors)
        for key, given in (overrides or {}).items():
            low, high = (given, given) if np.isscalar(given) else given
            out[key] = Prior(float(low), float(high), self.priors[key].log)
        return out

    def sample(self, rng: np.random.Generator, n: int, overrides: dict | None = None) -> dict[str, np.ndarray]:
        """``n`` parameter sets drawn from the prior, one (n,) array per parameter."""
        return {key: prior.sample(rng, n) for key, prior in self.prior(overrides).items()}

    def describe(self, families: Sequence[str], params: Sequence[dict]) -> list[np.ndarray]:
        """Each stimulus's elements as (E, d) rows; none by default (the rate ignores the stimulus)."""
        return [np.zeros((0, 0))] * len(families)

    @abstractmethod
    def rates(self, theta: dict[str, np.ndarray], features: Features) -> np.ndarray:
        """Expected counts per window, (P, K), of P parameter sets for K stimuli."""


class TunedModel(ResponseModel):
    """``baseline + gain * peak``: ``peak`` the stimulus's best element under a Gaussian tuning
    (0 for stimuli of other families)."""

    @abstractmethod
    def features(self, params: dict) -> np.ndarray:
        """(E, d) features of the elements of a stimulus of the model's family."""

    @abstractmethod
    def tuning(self, theta: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """(P, E) tuning, 0..1, of P parameter sets to E elements."""

    def describe(self, families, params):
        return [self.features(_without_gaudy(p)) if f == self.family else np.zeros((0, 0))
                for f, p in zip(families, params)]

    def rates(self, theta, features):
        peak = np.zeros((len(theta["gain"]), features.count))
        if len(features.stimuli):
            peak[:, features.stimuli] = np.maximum.reduceat(self.tuning(theta, features.rows), features.starts,
                                                            axis=1)
        return theta["baseline"][:, None] + theta["gain"][:, None] * peak


def _gaussian(offsets: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """exp(-sum of (offset / width)**2 / 2) for (offset, width) pairs."""
    return np.exp(-0.5 * sum((offset / width) ** 2 for offset, width in offsets))


def _circular(difference: np.ndarray, period: float) -> np.ndarray:
    """``difference`` wrapped into [-period / 2, period / 2)."""
    return (difference + period / 2) % period - period / 2


class CurvatureModel(TunedModel):
    """Gaussian tuning in angular position (circular, degrees) and normalized curvature of
    boundary elements (Pasupathy & Connor 2001)."""

    name = "curvature"
    family = "contour"
    priors = {**RATE_PRIORS, "angle": Prior(0.0, 360.0), "angle_width": Prior(20.0, 90.0, log=True),
              "curvature": Prior(-0.3, 1.0), "curvature_width": Prior(0.1, 0.6, log=True)}

    def features(self, params):
        return np.array([[e["angle"], e["curvature"]] for e in elements(params)]).reshape(-1, 2)

    def tuning(self, theta, rows):
        angle = _circular(rows[None, :, 0] - theta["angle"][:, None], 360.0)
        return _gaussian([(angle, theta["angle_width"][:, None]),
                          (rows[None, :, 1] - theta["curvature"][:, None], theta["curvature_width"][:, None])])


class DotModel(TunedModel):
    """Gaussian tuning to dot diameter and position (fractions of the image side)."""

    name = "dot"
    family = "dot"
    priors = {**RATE_PRIORS, "diameter": Prior(0.05, 0.3), "diameter_width": Prior(0.03, 0.12, log=True),
              "x": Prior(-0.3, 0.3), "y": Prior(-0.3, 0.3), "position_width": Prior(0.08, 0.3, log=True)}

    def features(self, params):
        dots = DotParams.model_validate(params)
        return np.array([[dots.diameter, x, y] for x, y in dots.positions])

    def tuning(self, theta, rows):
        distance = np.hypot(rows[None, :, 1] - theta["x"][:, None], rows[None, :, 2] - theta["y"][:, None])
        return _gaussian([(rows[None, :, 0] - theta["diameter"][:, None], theta["diameter_width"][:, None]),
                          (distance, theta["position_width"][:, None])])


class OrientationModel(TunedModel):
    """Gaussian tuning to grating orientation (degrees, circular with period 180) and spatial
    frequency (octaves: the logarithm base 2 of cycles per image side)."""

    name = "orientation"
    family = "grating"
    priors = {**RATE_PRIORS, "orientation": Prior(0.0, 180.0), "orientation_width": Prior(10.0, 60.0, log=True),
              "frequency": Prior(1.0, 16.0, log=True), "frequency_width": Prior(0.3, 1.5, log=True)}

    def features(self, params):
        grating = GratingParams.model_validate(params)
        return np.array([[grating.orientation, math.log2(grating.frequency)]])

    def tuning(self, theta, rows):
        angle = _circular(rows[None, :, 0] - theta["orientation"][:, None], 180.0)
        octaves = rows[None, :, 1] - np.log2(theta["frequency"])[:, None]
        return _gaussian([(angle, theta["orientation_width"][:, None]), (octaves, theta["frequency_width"][:, None])])


class UntunedModel(ResponseModel):
    """One rate for every stimulus."""

    name = "untuned"
    priors = {"rate": Prior(0.5, 10.0, log=True)}

    def rates(self, theta, features):
        return np.repeat(theta["rate"][:, None], features.count, axis=1)


MODELS: dict[str, ResponseModel] = {m.name: m for m in (CurvatureModel(), DotModel(), OrientationModel(),
                                                          UntunedModel())}


# ---------------------------------------------------------------- outcomes --
def _log_mean_exp(x: np.ndarray) -> float:
    top = x.max()
    return float(top + np.log(np.exp(x - top).mean()))


def _normalised(log_weights: np.ndarray) -> np.ndarray:
    w = np.exp(log_weights - log_weights.max())
    return w / w.sum()


def _systematic(weights: np.ndarray, n: int, offset: float) -> np.ndarray:
    """``n`` indices drawn in proportion to ``weights`` (summing to 1) by systematic resampling
    at ``offset`` (0..1) within each of ``n`` equal strata."""
    return np.minimum(np.searchsorted(np.cumsum(weights), (offset + np.arange(n)) / n), len(weights) - 1)


class Outcome(ABC):
    """One outcome of the test (a hypothesis, or "none fits"): its evidence and predictive counts.

    ``totals`` and ``repeats`` passed to the methods are the unit's spikes and responses so far to
    every pool stimulus, kept by :class:`HypothesisStrategy`.
    """

    log_evidence: float  # log marginal likelihood of the responses so far (less their log k!)

    @abstractmethod
    def extend(self, families: Sequence[str], params: Sequence[dict]) -> None:
        """Add stimuli appended to the pool."""

    @abstractmethod
    def observe(self, pool_index: int, count: float, totals: np.ndarray, repeats: np.ndarray) -> None:
        """Take in ``count`` spikes to stimulus ``pool_index``; ``totals`` and ``repeats`` include it."""

    @abstractmethod
    def predictive(self, pool_index: np.ndarray, top: int, totals: np.ndarray,
                   repeats: np.ndarray) -> np.ndarray:
        """(C, top + 1) probability of 0 .. ``top`` spikes in the next response to each stimulus."""


class ParticleHypothesis(Outcome):
    """One hypothesis as weighted particles: its parameter posterior and evidence (module docstring).

    Parameters
    ----------
    model : ResponseModel
    prior : dict of Prior
        ``model.prior(overrides)``.
    particles : int
    rng : numpy.random.Generator
        Draws the particles, and later resamples and moves them.
    """

    def __init__(self, model: ResponseModel, prior: dict[str, Prior], particles: int, rng: np.random.Generator):
        self.model, self.prior, self.rng = model, prior, rng
        self.theta = {key: p.sample(rng, particles) for key, p in prior.items()}
        self.log_weights = np.zeros(particles)
        self.log_evidence = 0.0
        self.elements: list[np.ndarray] = []  # per pool stimulus
        self.features = Features([])
        self.rates = np.zeros((particles, 0))  # (P, pool) expected counts per window

    @property
    def weights(self) -> np.ndarray:
        return _normalised(self.log_weights)

    def extend(self, families, params):
        added = self.model.describe(families, params)
        self.elements += added
        self.features = Features(self.elements)
        self.rates = np.concatenate([self.rates, self.model.rates(self.theta, Features(added))], axis=1)

    def observe(self, pool_index, count, totals, repeats):
        """Reweight by the Poisson likelihood of ``count``; resample and move the particles when
        too few carry the weight."""
        rate = self.rates[:, pool_index]
        step = count * np.log(rate) - rate
        self.log_evidence += _log_mean_exp(self.log_weights + step) - _log_mean_exp(self.log_weights)
        self.log_weights += step
        self.log_weights -= self.log_weights.max()
        if self.degenerate():
            shown = np.flatnonzero(repeats)
            self.rejuvenate(shown, totals[shown], repeats[shown])

    def predictive(self, pool_index, top, totals, repeats):
        rates = self.rates[:, pool_index]  # (P, C)
        weights = self.weights
        pmf = np.exp(-rates)  # P(count = 0), then by the recursion P(k) = P(k - 1) * rate / k
        out = np.empty((len(pool_index), top + 1))
        for k in range(top + 1):
            if k:
                pmf *= rates
                pmf *= 1.0 / k
            out[:, k] = weights @ pmf
        return out

    def degenerate(self) -> bool:
        """Whether the effective number of particles fell below ``RESAMPLE_BELOW`` of them."""
        return 1.0 / (self.weights ** 2).sum() < RESAMPLE_BELOW * len(self.log_weights)

    def rejuvenate(self, shown: np.ndarray, totals: np.ndarray, repeats: np.ndarray) -> None:
        """Resample, then move each particle by Metropolis steps targeting the posterior given
        ``totals`` spikes in ``repeats`` responses to each of the pool stimuli ``shown``."""
        n = len(self.log_weights)
        keep = _systematic(self.weights, n, self.rng.random())
        priors = list(self.prior.values())
        z = np.stack([p.coordinate(self.theta[key][keep]) for key, p in self.prior.items()], axis=1)
        low, high = np.array([p.box for p in priors]).T
        free = high > low  # a parameter the prior fixes does not move
        step = np.where(free, np.maximum(STEP * z.std(axis=0), MIN_STEP * (high - low)), 0.0)
        seen = Features([self.elements[i] for i in shown])

        def log_likelihood(z: np.ndarray) -> np.ndarray:
            rates = self.model.rates(self._theta(z), seen)
            return (totals * np.log(rates) - repeats * rates).sum(axis=1)

        current = log_likelihood(z)
        for _ in range(MOVES):
            proposal = z + step * self.rng.standard_normal(z.shape)
            inside = np.all(((proposal >= low) & (proposal <= high)) | ~free, axis=1)
            proposal[~inside] = z[~inside]
            proposed = log_likelihood(proposal)
            accept = inside & (np.log(self.rng.random(n)) < proposed - current)
            z[accept], current[accept] = proposal[accept], proposed[accept]
        self.theta = self._theta(z)
        self.log_weights = np.zeros(n)
        self.rates = self.model.rates(self.theta, self.features)

    def _theta(self, z: np.ndarray) -> dict[str, np.ndarray]:
        return {key: p.value(z[:, k]) for k, (key, p) in enumerate(self.prior.items())}


FREE_QUIET = Prior(0.3, 30.0, log=True)  # m: the quiet rate, spikes per window
FREE_DRIVEN = Prior(0.3, 30.0, log=True)  # d_f: the mean rate of its driven stimuli, spikes per window
FREE_FRACTION = Prior(0.01, 1.0, log=True)  # p_f: the fraction of its stimuli that are driven
FREE_SHAPE = 2.0  # Gamma shape of driven rates (their coefficient of variation 1 / sqrt(2))
FREE_GRID = (100, 24, 10)  # grid cells in log m, log d_f and log p_f
FREE_PREDICTIVE = 256  # grid points of a choice's predictive (systematic draws from the posterior)


class FreeRates(Outcome):
    """"None fits": within each family a fraction of the stimuli drives the unit, at rates no
    hypothesis predicts, and the rest leave it at one quiet rate (module docstring).

    The posterior lives on a fixed grid of ``(m, d_f, p_f)`` per family. A stimulus's log
    likelihood (less log k!) at a grid point depends on its ``T`` spikes in ``n`` responses
    alone, so a response replaces its stimulus's term at every grid point of its family; the
    evidence is the grid mean over ``m`` of the product over families of each one's grid mean
    over ``(d_f, p_f)``, exact up to the grid.
    """

    def __init__(self):
        quiet, driven, fraction = (g.ravel() for g in np.meshgrid(
            *(prior.grid(n) for prior, n in zip((FREE_QUIET, FREE_DRIVEN, FREE_FRACTION), FREE_GRID)),
            indexing="ij"))
        self.quiet = quiet  # m, per grid point
        self.gamma_rate = FREE_SHAPE / driven  # b = shape / d: the driven rates' Gamma rate
        self.log_driven, self.log_quiet = np.log(fraction), np.log1p(-fraction)
        self.families: list[str] = []
        self.family_of = np.zeros(0, dtype=int)  # per pool stimulus, its row in log_likelihood
        self.log_likelihood = np.zeros((0, len(quiet)))  # (families, grid): m-major, FREE_GRID's order
        self.log_evidence = 0.0

    def extend(self, families, params):
        for family in dict.fromkeys(families):
            if family not in self.families:
                self.families.append(family)
                self.log_likelihood = np.vstack([self.log_likelihood, np.zeros(len(self.quiet))])
        self.family_of = np.concatenate([self.family_of, [self.families.index(f) for f in families]]).astype(int)

    def _terms(self, grid: np.ndarray | slice, total: np.ndarray | float,
               repeats: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Log likelihood (less log k!) of ``total`` spikes in ``repeats`` responses to a stimulus,
        quiet and driven (each with the log of its prior probability), at the ``grid`` points."""
        quiet = self.log_quiet[grid] + total * np.log(self.quiet[grid]) - repeats * self.quiet[grid]
        b = self.gamma_rate[grid]
        driven = (self.log_driven[grid] + gammaln(FREE_SHAPE + total) - gammaln(FREE_SHAPE)
                  + FREE_SHAPE * np.log(b) - (FREE_SHAPE + total) * np.log(b + repeats))
        return quiet, driven

    def observe(self, pool_index, count, totals, repeats):
        """Replace the stimulus's log likelihood at every grid point of its family by the one with ``count``."""
        row = self.family_of[pool_index]
        total, n = totals[pool_index], repeats[pool_index]
        self.log_likelihood[row] += np.logaddexp(*self._terms(slice(None), total, n))
        if n > 1:
            self.log_likelihood[row] -= np.logaddexp(*self._terms(slice(None), total - count, n - 1))
        self.log_evidence = _log_mean_exp(self._per_quiet_rate().sum(axis=0))

    def _per_quiet_rate(self) -> np.ndarray:
        """(families, FREE_GRID[0]) log likelihood of each family's responses given the quiet rate."""
        by_quiet = self.log_likelihood.reshape(len(self.families), FREE_GRID[0], -1)
        top = by_quiet.max(axis=2, keepdims=True)
        return (top + np.log(np.exp(by_quiet - top).mean(axis=2, keepdims=True)))[..., 0]

    def predictive(self, pool_index, top, totals, repeats):
        """Per family, the mixture over grid points drawn from the posterior; stimuli with the same
        responses so far (e.g. every one not yet shown) share one predictive."""
        rows = self.family_of[pool_index]
        out = np.empty((len(pool_index), top + 1))
        per_quiet = self._per_quiet_rate()
        for row in np.unique(rows):
            mine = rows == row
            seen, inverse = np.unique(np.stack([totals[pool_index[mine]], repeats[pool_index[mine]]]), axis=1,
                                      return_inverse=True)
            others = per_quiet.sum(axis=0) - per_quiet[row]  # what the other families say of m
            posterior = self.log_likelihood[row].reshape(FREE_GRID[0], -1) + others[:, None]
            grid = _systematic(_normalised(posterior.ravel()), FREE_PREDICTIVE, 0.5)[:, None]
            quiet, driven = self._terms(grid, *seen)  # (G, U) for the U distinct (T, n)
            p_driven = 1.0 / (1.0 + np.exp(quiet - driven))  # each stimulus's posterior probability of driving
            pmf = (np.einsum("gu,gk->uk", 1 - p_driven, _poisson(self.quiet[grid[:, 0]], top))
                   + np.einsum("gu,guk->uk", p_driven,
                               _negative_binomial(FREE_SHAPE + seen[0], self.gamma_rate[grid] + seen[1], top)))
            out[mine] = pmf[inverse.ravel()] / len(grid)
        return out


def _deviance(total: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Poisson deviance ``2 (T log(T / mu) - T + mu)`` of ``total`` spikes against ``mean`` expected."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(total > 0, np.log(np.maximum(total, 1e-300) / mean), 0.0)
    return 2.0 * (total * log_ratio - total + mean)


def _poisson(rate: np.ndarray, top: int) -> np.ndarray:
    """(..., top + 1) Poisson probability of 0 .. ``top`` counts."""
    out = np.empty((*rate.shape, top + 1))
    out[..., 0] = np.exp(-rate)
    for k in range(1, top + 1):
        out[..., k] = out[..., k - 1] * rate / k
    return out


def _negative_binomial(shape: np.ndarray, rate: np.ndarray, top: int) -> np.ndarray:
    """(..., top + 1) probability of 0 .. ``top`` Poisson counts whose rate is Gamma(``shape``, ``rate``)."""
    shape, rate = np.broadcast_arrays(shape, rate)
    out = np.empty((*shape.shape, top + 1))
    out[..., 0] = np.exp(shape * (np.log(rate) - np.log1p(rate)))
    for k in range(1, top + 1):
        out[..., k] = out[..., k - 1] * (shape + k - 1) / (k * (rate + 1))
    return out


# ------------------------------------------------------------------- params --
class HypothesisSpec(Settings):
    """One hypothesis: a name, a response model and overrides of its prior."""

    name: str = Field(min_length=1)
    model: Literal["curvature", "dot", "orientation", "untuned"]
    prior: dict[str, float | tuple[float, float]] = Field(
        {}, description="parameter -> a fixed value or [low, high] (module docstring)")

    @model_validator(mode="after")
    def _known_parameters(self) -> HypothesisSpec:
        if self.name == NONE_FITS:
            raise ValueError(f"hypothesis name {NONE_FITS!r} is the test's own outcome; choose another")
        priors = MODELS[self.model].priors
        for key, given in self.prior.items():
            if key not in priors:
                raise ValueError(f"hypothesis {self.name!r}: a {self.model} model has no parameter {key!r} "
                                 f"(known: {', '.join(priors)})")
            low, high = (given, given) if isinstance(given, float | int) else given
            if low > high:
                raise ValueError(f"hypothesis {self.name!r}: prior {key} = [{low}, {high}] has low > high")
            if priors[key].log and low <= 0:
                raise ValueError(f"hypothesis {self.name!r}: prior {key} must be positive, got {low}")
        return self


class HypothesisParams(NoParams):
    """Settings of the ``hypothesis`` strategy."""

    neuron: str = Field(min_length=1, description="the unit tested")
    hypotheses: list[HypothesisSpec] = Field(min_length=2)
    none_fits: bool = Field(True, description="add the outcome 'none fits' (module docstring)")
    threshold: float = Field(0.95, gt=0.5, lt=1, description="posterior probability that decides")
    cover: float = Field(0.05, ge=0, lt=1, description="coverage: the smallest fraction of a family whose "
                         "unexpected responses a decision must have had 1 - level chance to see (0: no coverage)")
    level: float = Field(0.05, gt=0, lt=0.5, description="the coverage's miss probability and the level of the "
                         "posterior predictive check")
    check: bool = Field(True, description="a hypothesis is decided only if it passes its posterior predictive check")
    budget: int | None = Field(None, gt=0, le=MANY, description="most responses of the unit; none: until decided")
    particles: int = Field(300, ge=10, le=100_000, description="draws from each hypothesis's prior")
    seed: Seed = Field(0, description="seed of the particle draws")

    @field_validator("hypotheses")
    @classmethod
    def _distinct_names(cls, hypotheses: list[HypothesisSpec]) -> list[HypothesisSpec]:
        names = [h.name for h in hypotheses]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"hypothesis name {twice[0]!r} is used twice")
        return hypotheses


# ----------------------------------------------------------------- strategy --
class HypothesisStrategy(Strategy):
    """Which hypothesis explains a neuron, if any: a sequential Bayesian test with informative stimuli.

    See the module docstring. ``names`` and ``hypotheses`` list the outcomes: the protocol's
    hypotheses in order, then ``NONE_FITS`` (a :class:`FreeRates`) unless ``none_fits`` is false.
    Responses seen before the first decision (e.g. during a warm-up) are kept and used once the
    first decision says which unit is the neuron and what the pool holds. Once the test has
    stopped its result is kept as it stopped: responses still in flight are not part of it.
    """

    name = "hypothesis"
    needs_model = False
    Params = HypothesisParams

    def __init__(self, params: HypothesisParams | None = None):
        super().__init__(params)
        p = self.params
        streams = np.random.SeedSequence(p.seed).spawn(len(p.hypotheses))
        self.hypotheses: list[Outcome] = [
            ParticleHypothesis(MODELS[h.model], MODELS[h.model].prior(h.prior), p.particles,
                               np.random.default_rng(stream)) for h, stream in zip(p.hypotheses, streams)]
        self.names = [h.name for h in p.hypotheses]
        if p.none_fits:
            self.hypotheses.append(FreeRates())
            self.names.append(NONE_FITS)
        self.responses = 0
        self.totals = np.zeros(0)  # spikes of the neuron to each pool stimulus
        self.repeats = np.zeros(0)  # its responses to each pool stimulus
        self._unit: int | None = None
        self._pool = None
        self._pending: list[tuple[int, np.ndarray]] = []
        self._final: dict | None = None  # the state when the test stopped (decided or out of budget)
        self.family_of = np.zeros(0, dtype=int)  # per pool stimulus, its family's index in ``families``
        self.families: list[str] = []
        self._checked: tuple[int, dict] | None = None  # (responses, the decision check at that count)
        self.rejected: dict[str, dict] = {}  # hypotheses that failed their predictive check: that check
        self.confirming: dict[str, dict] = {}  # per hypothesis checked: its confirmation stimuli (below)

    # --------------------------------------------------------------- checks --
    def _unit_index(self, units: Sequence[str]) -> int:
        return unit_index(units, self.params.neuron, self.name)

    def check(self, units, pool):
        self._unit_index(units)
        present = set(pool.families)
        for h in self.params.hypotheses:
            family = MODELS[h.model].family
            if family is not None and family not in present:
                raise ClosedLoopError(f"strategy 'hypothesis': hypothesis {h.name!r} ({h.model}) needs {family} "
                                      f"stimuli and the pool has none (families: {', '.join(sorted(present))})")

    # ------------------------------------------------------------ posterior --
    def attach(self, units: Sequence[str], pool) -> None:
        """Bind to the session's units and pool (the first decision does it) and take in the
        responses seen so far."""
        self._unit = self._unit_index(units)
        self._pool = pool
        self._flush()

    def _extend(self) -> None:
        """Take in stimuli added to the pool since the last call."""
        start, end = len(self.totals), len(self._pool)
        if end > start:
            for hypothesis in self.hypotheses:
                hypothesis.extend(self._pool.families[start:end], self._pool.params[start:end])
            added = self._pool.families[start:end]
            self.families += [f for f in dict.fromkeys(added) if f not in self.families]
            self.family_of = np.concatenate([self.family_of, [self.families.index(f) for f in added]]).astype(int)
            self.totals = np.concatenate([self.totals, np.zeros(end - start)])
            self.repeats = np.concatenate([self.repeats, np.zeros(end - start)])

    def observe(self, pool_index, counts):
        if self._final is not None:  # the test has stopped: responses still in flight are not part of it
            return
        self._pending.append((int(pool_index), np.asarray(counts, dtype=float)))
        if self._pool is not None:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        self._extend()
        for pool_index, counts in self._pending:
            count = counts[self._unit]
            if not np.isfinite(count):
                continue
            self.responses += 1
            self.totals[pool_index] += count
            self.repeats[pool_index] += 1
            for hypothesis in self.hypotheses:
                hypothesis.observe(pool_index, count, self.totals, self.repeats)
        self._pending = []

    @property
    def posterior(self) -> np.ndarray:
        """(outcomes,) probability of each outcome (``names``) given the responses so far."""
        return _normalised(np.array([h.log_evidence for h in self.hypotheses]))

    # ------------------------------------------------------------- deciding --
    @property
    def needed(self) -> int:
        """Distinct stimuli of a family a decision needs (before the cap at the family's size):
        the smallest ``n`` with ``(1 - cover)**n <= level``."""
        cover, level = self.params.cover, self.params.level
        return 0 if cover <= 0 else math.ceil(math.log(level) / math.log1p(-cover))

    def coverage(self) -> dict[str, tuple[int, int]]:
        """Per family of the pool: (distinct stimuli shown, distinct stimuli a decision needs)."""
        if self._pool is None:
            return {}
        self._extend()
        shown = np.bincount(self.family_of[self.repeats > 0], minlength=len(self.families))
        size = np.bincount(self.family_of, minlength=len(self.families))
        return {f: (int(shown[i]), int(min(size[i], self.needed))) for i, f in enumerate(self.families)}

    def start_confirmation(self, outcome: int) -> None:
        """Choose the ``CONFIRM`` shown stimuli whose counts hypothesis ``outcome`` finds most
        surprising (largest deviance at its posterior-mean rate) to be shown ``CONFIRM_REPEATS``
        more times, and keep draws of its posterior's rates for them (module docstring)."""
        hypothesis = self.hypotheses[outcome]
        shown = np.flatnonzero(self.repeats)
        mean = hypothesis.weights @ hypothesis.rates[:, shown] * self.repeats[shown]
        stimuli = shown[np.argsort(-_deviance(self.totals[shown], mean), kind="stable")[:CONFIRM]]
        rng = np.random.default_rng([self.params.seed, self.responses, outcome, 1])
        draws = _systematic(hypothesis.weights, CHECK_DRAWS, rng.random())
        self.confirming[self.names[outcome]] = {
            "stimuli": stimuli, "rates": hypothesis.rates[np.ix_(draws, stimuli)],
            "totals": self.totals[stimuli].copy(), "repeats": self.repeats[stimuli].copy(),
            "responses": self.responses}

    def to_confirm(self, name: str) -> np.ndarray:
        """(m,) more responses each confirmation stimulus of hypothesis ``name`` needs."""
        c = self.confirming[name]
        return np.maximum(CONFIRM_REPEATS - (self.repeats[c["stimuli"]] - c["repeats"]), 0)

    def due(self) -> list[int]:
        """The confirmation stimuli still due (module docstring), the least repeated first; a fixed
        design that honours the check shows these before its own order."""
        self.decision()  # may start a confirmation
        out: list[int] = []
        for name in self.confirming:
            need, stimuli = self.to_confirm(name), self.confirming[name]["stimuli"]
            out += [int(stimuli[i]) for i in np.argsort(-need, kind="stable") if need[i] > 0]
        return out

    def predictive_check(self, outcome: int) -> dict:
        """The posterior predictive check of hypothesis ``outcome`` (module docstring): the p-values
        of the total and the largest per-stimulus deviance, of the confirmation responses' deviance
        (once they are in) and their Bonferroni combination."""
        hypothesis = self.hypotheses[outcome]
        shown = np.flatnonzero(self.repeats)
        rng = np.random.default_rng([self.params.seed, self.responses, outcome])
        draws = _systematic(hypothesis.weights, CHECK_DRAWS, rng.random())
        mean = hypothesis.rates[np.ix_(draws, shown)] * self.repeats[shown]  # (D, S) expected spikes
        observed = _deviance(self.totals[shown][None, :], mean)
        replicated = _deviance(rng.poisson(mean).astype(float), mean)
        out = {"p_total": float(np.mean(replicated.sum(axis=1) >= observed.sum(axis=1))),
               "p_largest": float(np.mean(replicated.max(axis=1) >= observed.max(axis=1)))}
        confirm = self.confirming.get(self.names[outcome])
        if confirm is not None and not self.to_confirm(self.names[outcome]).any():
            stimuli = confirm["stimuli"]
            new = (self.totals[stimuli] - confirm["totals"])[None, :]
            mean = confirm["rates"] * (self.repeats[stimuli] - confirm["repeats"])  # (D, m), at the screening
            observed = _deviance(new, mean).sum(axis=1)
            out["p_confirm"] = float(np.mean(_deviance(rng.poisson(mean).astype(float), mean).sum(axis=1)
                                             >= observed))
        out["p"] = min(1.0, len(out) * min(out.values()))
        return out

    def decision(self) -> dict:
        """Where the decision stands: the leading outcome, its probability, the coverage, its
        predictive check (hypotheses only, once the coverage is met) and the verdict (module docstring)."""
        if self._checked is not None and self._checked[0] == self.responses:
            return self._checked[1]
        posterior = self.posterior
        best = int(np.argmax(posterior))
        coverage = self.coverage()
        covered = self._pool is not None and all(shown >= need for shown, need in coverage.values())
        out = {"leading": self.names[best], "probability": float(posterior[best]), "covered": covered,
               "coverage": {f: list(c) for f, c in coverage.items()}, "check": None, "decided": None}
        if posterior[best] >= self.params.threshold and covered:
            fits = True
            if self.names[best] in self.rejected:  # one check per hypothesis: a failure stands
                out["check"], fits = self.rejected[self.names[best]], False
            elif self.params.check and isinstance(self.hypotheses[best], ParticleHypothesis):
                name = self.names[best]
                if name not in self.confirming:
                    self.start_confirmation(best)
                if self.to_confirm(name).any():  # the confirmation responses are not all in
                    out["check"] = {"confirming": self.confirming[name]["stimuli"].tolist(),
                                    "to_confirm": int(self.to_confirm(name).sum())}
                    fits = False
                else:
                    out["check"] = {**{k: round(v, 4) for k, v in self.predictive_check(best).items()},
                                    "responses": self.responses}
                    fits = out["check"]["p"] >= self.params.level
                    if not fits:
                        self.rejected[name] = out["check"]
            out["decided"] = self.names[best] if fits else None
        self._checked = (self.responses, out)
        return out

    @property
    def decided(self) -> str | None:
        """The outcome (a hypothesis's name, or ``NONE_FITS``) that has been decided, or None: its
        probability reached ``threshold``, every family was covered and, for a hypothesis, it
        passed its posterior predictive check (module docstring)."""
        return self.decision()["decided"]

    @property
    def finished(self):
        if self._final is None:
            budget = self.params.budget
            if self.decided is not None or (budget is not None and self.responses >= budget):
                self._final = self._state()  # the test's result, kept as it stopped
        return self._final is not None

    def state(self):
        return self._final if self._final is not None else self._state()

    def _state(self) -> dict:
        decision = self.decision()
        return {"posterior": dict(zip(self.names, self.posterior.round(6).tolist())),
                "responses": self.responses, "decided": decision["decided"],
                "coverage": decision["coverage"], "check": decision["check"]}

    def results(self, states, folder):
        if not states:
            return []
        return [plot_posterior(states, Path(folder) / "hypothesis-posterior.png", self.params.threshold)]

    # ------------------------------------------------------------- choosing --
    def information(self, pool_index: np.ndarray) -> np.ndarray:
        """Expected information (nats) about the outcome from one count to each stimulus."""
        self._extend()
        prior = self.posterior
        rates = [h.rates[:, pool_index] for h in self.hypotheses if isinstance(h, ParticleHypothesis)]
        top = max(float(r.max()) for r in rates)
        top = math.ceil(top + 8 * math.sqrt(top) + 8)
        pmf = np.stack([h.predictive(pool_index, top, self.totals, self.repeats) for h in self.hypotheses])
        beyond = np.maximum(1.0 - pmf.sum(axis=2, keepdims=True), 0.0)
        pmf = np.concatenate([pmf, beyond], axis=2)  # (outcomes, C, top + 2): the counts beyond as one
        mixture = np.einsum("h,hck->ck", prior, pmf)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pmf > 0, pmf * (np.log(pmf) - np.log(mixture)), 0.0)
        return np.maximum(np.einsum("h,hck->c", prior, terms), 0.0)

    def choose(self, context, k, rng):
        """The coverage draws (module docstring), then the most informative of the rest."""
        self.check_context(context)
        allowed = np.asarray(context.allowed)
        scores = self.scores(context, rng)
        picks: list[int] = []
        for index in self.due():  # confirmation stimuli first
            if len(picks) < k and index in allowed and index not in picks:
                picks.append(index)
        missing = {self.families.index(f): need - shown for f, (shown, need) in self.coverage().items()
                   if shown < need}
        unshown = allowed[self.repeats[allowed] == 0]
        for _ in range(min(math.ceil(k * COVER_SHARE), k - len(picks)) if missing else 0):
            open_ = [f for f in missing if missing[f] > 0 and np.any(self.family_of[unshown] == f)]
            if not open_:
                break
            family = max(open_, key=lambda f: (missing[f], -f))  # the most under-covered family first
            candidates = unshown[self.family_of[unshown] == family]
            pick = int(rng.choice(candidates))  # uniformly at random: the coverage's guarantee needs it
            picks.append(pick)
            missing[family] -= 1
            unshown = unshown[unshown != pick]
        if not picks:
            return top_k(allowed, scores, k)
        position = {int(index): i for i, index in enumerate(allowed)}
        taken = np.isin(allowed, picks)
        rest, rest_scores = (top_k(allowed[~taken], scores[~taken], k - len(picks)) if k > len(picks)
                             else (allowed[:0], scores[:0]))
        chosen = np.concatenate([np.array(picks, dtype=allowed.dtype), rest])
        return chosen, np.concatenate([scores[[position[i] for i in picks]], rest_scores])

    def scores(self, context: SelectionContext, rng: np.random.Generator) -> np.ndarray:
        if context.pool is None:
            raise ValueError("the hypothesis strategy needs the stimulus pool")
        self.attach(context.units, context.pool)
        return self.information(np.asarray(context.allowed))


# --------------------------------------------------------------------- plot --
def plot_posterior(states: Sequence[dict], path: Path | str, threshold: float | None = None) -> Path:
    """Write a PNG of each outcome's probability against responses used.

    Parameters
    ----------
    states : sequence of dict
        :meth:`HypothesisStrategy.state` dicts in decision order (as logged with each decision).
    path : path
        The PNG to write.
    threshold : float, optional
        Drawn as a dashed line (the probability that decides).

    Returns
    -------
    Path
        ``path``. The title says the decision ("decided: none fits" when no hypothesis fits);
        "none fits" is drawn dotted.
    """
    from matplotlib.figure import Figure  # the Agg canvas; no pyplot, no display

    if not states:
        raise ValueError("no hypothesis-test states to plot")
    responses = [s["responses"] for s in states]
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    for name in states[0]["posterior"]:
        ax.step(responses, [s["posterior"][name] for s in states], where="post", label=name,
                linestyle=":" if name == NONE_FITS else "-")
    if threshold is not None:
        ax.axhline(threshold, color="0.5", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    decided = states[-1].get("decided")
    ax.set_title(f"decided: {decided}" if decided else "undecided", loc="left", fontsize=10)
    ax.set_xlabel("responses of the neuron")
    ax.set_ylabel("posterior probability")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise ClosedLoopError(f"posterior plot {path}: cannot write ({exc.strerror or exc})") from None
    return path
