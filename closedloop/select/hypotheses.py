"""Live hypothesis tests on one neuron: which response model explains its spike counts?

A protocol names a recorded unit and two or more competing hypotheses, each a
response model with a prior over its parameters. Every response of the unit
updates the posterior over the hypotheses (and over each one's parameters);
every decision shows the stimuli with the greatest expected information about
which hypothesis holds; the test ends when one hypothesis reaches
``threshold`` or ``budget`` responses are used::

    [selection]
    strategy = "hypothesis"
    warmup = 0
    [selection.params]
    neuron = "curvature"
    hypotheses = [
        {name = "curvature", model = "curvature"},
        {name = "dot", model = "dot", prior = {diameter = [0.05, 0.15]}},
        {name = "untuned", model = "untuned"},
    ]

Response models
    Rates are expected spike counts in the response window (the unit's counts
    are counted in that window). Positions and sizes are fractions of the image
    side (from the centre, y up), angles degrees counter-clockwise.

    - ``curvature`` (Pasupathy & Connor 2001): ``baseline + gain * max`` over
      the contour's boundary elements (:func:`closedloop.stimuli.contours.elements`)
      of ``exp(-d**2 / (2 angle_width**2) - (c - curvature)**2 / (2 curvature_width**2))``,
      ``d`` the circular difference between the element's angular position and
      ``angle``, ``c`` its normalized curvature (-0.3 concave .. 1 sharp).
    - ``dot``: ``baseline + gain * max`` over the dots of
      ``exp(-(D - diameter)**2 / (2 diameter_width**2) - |p - (x, y)|**2 / (2 position_width**2))``,
      ``D`` the dot diameter and ``p`` its centre (polarity and contrast are ignored).
    - ``untuned``: ``rate`` for every stimulus.

    A tuned model says a stimulus outside its family (a dot for the curvature
    model; a contour, grating, texture or natural image for the dot model)
    leaves the neuron at ``baseline``. The gaudy transform is ignored.

Priors
    Each parameter is uniform between two bounds, on a log scale for rates and
    widths (table below); ``prior`` in a hypothesis overrides a bound pair
    (``gain = [2, 10]``) or fixes a parameter (``angle = 90``).

    =================  ===========  =============  ===========================
    parameter          models       default        units
    =================  ===========  =============  ===========================
    baseline           curv., dot   0.5 .. 5, log  spikes per window
    gain               curv., dot   2 .. 15, log   spikes per window
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
    rate               untuned      0.5 .. 10, log spikes per window
    =================  ===========  =============  ===========================

Posterior
    Each hypothesis is a set of ``particles`` parameter draws from its prior
    (seeded by ``seed``), updated by sequential Monte Carlo (Chopin 2002): each
    response of the unit reweights the particles by its Poisson likelihood and
    multiplies the hypothesis's marginal likelihood (evidence) estimate by the
    weighted mean of that likelihood; when the effective number of particles
    falls below half, they are resampled and moved by ``MOVES`` random-walk
    Metropolis steps (in the prior's coordinates: the logarithm for log-scale
    parameters) targeting the posterior given every response so far, so the
    particles follow the posterior instead of thinning out. The hypotheses are
    equally likely a priori; their posterior is the normalised evidence.

Choosing
    The score of a stimulus is the mutual information (nats) between the
    hypothesis index and the Poisson count it would evoke, under the current
    particle mixture (each particle weighted by its hypothesis's probability
    and its weight within it), summed exactly over the counts 0 .. ``top +
    8 sqrt(top) + 8``, ``top`` the largest expected count of any particle
    (the Poisson mass beyond is below 1e-9). A decision's batch is the top
    ``k`` by this score (not a greedy joint design: near-duplicates may share
    a batch).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from closedloop.errors import ClosedLoopError
from closedloop.select.strategies import SelectionContext, Strategy, unit_index
from closedloop.stimuli.contours import elements
from closedloop.stimuli.families import DotParams

MOVES = 5  # Metropolis steps per particle after each resampling
STEP = 0.5  # random-walk step: this fraction of the particles' spread in each coordinate ...
MIN_STEP = 0.01  # ... and at least this fraction of the prior's range
RESAMPLE_BELOW = 0.5  # resample when the effective number of particles falls below this fraction


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
        angle = (rows[None, :, 0] - theta["angle"][:, None] + 180.0) % 360.0 - 180.0
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


class UntunedModel(ResponseModel):
    """One rate for every stimulus."""

    name = "untuned"
    priors = {"rate": Prior(0.5, 10.0, log=True)}

    def rates(self, theta, features):
        return np.repeat(theta["rate"][:, None], features.count, axis=1)


MODELS: dict[str, ResponseModel] = {m.name: m for m in (CurvatureModel(), DotModel(), UntunedModel())}


# ---------------------------------------------------------------- particles --
def _log_mean_exp(x: np.ndarray) -> float:
    top = x.max()
    return float(top + np.log(np.exp(x - top).mean()))


class ParticleHypothesis:
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
        self.log_evidence = 0.0  # log marginal likelihood of the responses so far (less their log k!)
        self.elements: list[np.ndarray] = []  # per pool stimulus
        self.features = Features([])
        self.rates = np.zeros((particles, 0))  # (P, pool) expected counts per window

    @property
    def weights(self) -> np.ndarray:
        w = np.exp(self.log_weights - self.log_weights.max())
        return w / w.sum()

    def extend(self, families: Sequence[str], params: Sequence[dict]) -> None:
        """Add stimuli appended to the pool."""
        added = self.model.describe(families, params)
        self.elements += added
        self.features = Features(self.elements)
        self.rates = np.concatenate([self.rates, self.model.rates(self.theta, Features(added))], axis=1)

    def observe(self, pool_index: int, count: float) -> None:
        """Reweight by the Poisson likelihood of ``count`` spikes to stimulus ``pool_index``."""
        rate = self.rates[:, pool_index]
        step = count * np.log(rate) - rate
        self.log_evidence += _log_mean_exp(self.log_weights + step) - _log_mean_exp(self.log_weights)
        self.log_weights += step
        self.log_weights -= self.log_weights.max()

    def degenerate(self) -> bool:
        """Whether the effective number of particles fell below ``RESAMPLE_BELOW`` of them."""
        return 1.0 / (self.weights ** 2).sum() < RESAMPLE_BELOW * len(self.log_weights)

    def rejuvenate(self, shown: np.ndarray, totals: np.ndarray, repeats: np.ndarray) -> None:
        """Resample, then move each particle by Metropolis steps targeting the posterior given
        ``totals`` spikes in ``repeats`` responses to each of the pool stimuli ``shown``."""
        n = len(self.log_weights)
        keep = np.minimum(np.searchsorted(np.cumsum(self.weights), (self.rng.random() + np.arange(n)) / n), n - 1)
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


# ------------------------------------------------------------------- params --
class HypothesisSpec(BaseModel):
    """One hypothesis: a name, a response model and overrides of its prior."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: Literal["curvature", "dot", "untuned"]
    prior: dict[str, float | tuple[float, float]] = Field(
        {}, description="parameter -> a fixed value or [low, high] (module docstring)")

    @model_validator(mode="after")
    def _known_parameters(self) -> HypothesisSpec:
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


class HypothesisParams(BaseModel):
    """Settings of the ``hypothesis`` strategy."""

    model_config = ConfigDict(extra="forbid")

    neuron: str = Field(min_length=1, description="the unit tested")
    hypotheses: list[HypothesisSpec] = Field(min_length=2)
    threshold: float = Field(0.95, gt=0.5, lt=1, description="posterior probability that decides")
    budget: int | None = Field(None, gt=0, description="most responses of the unit; none: until decided")
    particles: int = Field(300, ge=10, le=100_000, description="draws from each hypothesis's prior")
    seed: int = Field(0, ge=0, description="seed of the particle draws")

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
    """Which hypothesis explains a neuron: a sequential Bayesian test with informative stimuli.

    See the module docstring. Responses seen before the first decision (e.g.
    during a warm-up) are kept and used once the first decision says which
    unit is the neuron and what the pool holds. Once the test has stopped its result is
    kept as it stopped: responses still in flight are not part of it.
    """

    name = "hypothesis"
    needs_model = False
    Params = HypothesisParams

    def __init__(self, params: HypothesisParams | None = None):
        super().__init__(params)
        p = self.params
        self.names = [h.name for h in p.hypotheses]
        streams = np.random.SeedSequence(p.seed).spawn(len(p.hypotheses))
        self.hypotheses = [ParticleHypothesis(MODELS[h.model], MODELS[h.model].prior(h.prior), p.particles,
                                              np.random.default_rng(stream))
                           for h, stream in zip(p.hypotheses, streams)]
        self.responses = 0
        self.totals = np.zeros(0)  # spikes of the neuron to each pool stimulus
        self.repeats = np.zeros(0)  # its responses to each pool stimulus
        self._unit: int | None = None
        self._pool = None
        self._pending: list[tuple[int, np.ndarray]] = []
        self._final: dict | None = None  # the state when the test stopped (decided or out of budget)

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
                hypothesis.observe(pool_index, count)
                if hypothesis.degenerate():
                    shown = np.flatnonzero(self.repeats)
                    hypothesis.rejuvenate(shown, self.totals[shown], self.repeats[shown])
        self._pending = []

    @property
    def posterior(self) -> np.ndarray:
        """(H,) probability of each hypothesis given the responses so far."""
        evidence = np.array([h.log_evidence for h in self.hypotheses])
        p = np.exp(evidence - evidence.max())
        return p / p.sum()

    @property
    def decided(self) -> str | None:
        """The hypothesis whose probability reached ``threshold``, or None."""
        posterior = self.posterior
        best = int(np.argmax(posterior))
        return self.names[best] if posterior[best] >= self.params.threshold else None

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
        return {"posterior": dict(zip(self.names, self.posterior.round(6).tolist())),
                "responses": self.responses, "decided": self.decided}

    def results(self, states, folder):
        if not states:
            return []
        return [plot_posterior(states, Path(folder) / "hypothesis-posterior.png", self.params.threshold)]

    # ------------------------------------------------------------- choosing --
    def information(self, pool_index: np.ndarray) -> np.ndarray:
        """Expected information (nats) about the hypothesis from one count to each stimulus."""
        self._extend()
        prior = self.posterior
        weights = prior[:, None] * np.stack([h.weights for h in self.hypotheses])  # (H, P), sums to 1
        rates = np.stack([h.rates[:, pool_index] for h in self.hypotheses])  # (H, P, C)
        top = float(rates.max())
        pmf = np.exp(-rates)  # P(count = 0), then by the recursion P(k) = P(k - 1) * rate / k
        log_prior = np.log(np.maximum(prior, 1e-300))[:, None]
        out = np.zeros(len(pool_index))
        for k in range(math.ceil(top + 8 * math.sqrt(top) + 8) + 1):
            if k:
                pmf *= rates
                pmf *= 1.0 / k
            joint = np.einsum("hp,hpc->hc", weights, pmf)  # P(hypothesis, count = k)
            with np.errstate(divide="ignore", invalid="ignore"):
                out += np.nansum(joint * (np.log(joint) - log_prior - np.log(joint.sum(axis=0))), axis=0)
        return np.maximum(out, 0.0)

    def scores(self, context: SelectionContext, rng: np.random.Generator) -> np.ndarray:
        if context.pool is None:
            raise ValueError("the hypothesis strategy needs the stimulus pool")
        self.attach(context.units, context.pool)
        return self.information(np.asarray(context.allowed))


# --------------------------------------------------------------------- plot --
def plot_posterior(states: Sequence[dict], path: Path | str, threshold: float | None = None) -> Path:
    """Write a PNG of each hypothesis's probability against responses used.

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
        ``path``.
    """
    from matplotlib.figure import Figure  # the Agg canvas; no pyplot, no display

    if not states:
        raise ValueError("no hypothesis-test states to plot")
    responses = [s["responses"] for s in states]
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    for name in states[0]["posterior"]:
        ax.step(responses, [s["posterior"][name] for s in states], where="post", label=name)
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
