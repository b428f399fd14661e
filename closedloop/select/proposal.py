"""Hypotheses from the model, tested in the same session: the ``propose`` strategy.

Cowley et al. proposed what a V4 unit is from its compact model and tested the
proposal in a later session; ``propose`` does both in one session, for one
named unit::

    [selection]
    strategy = "propose"
    [selection.params]
    neuron = "dot"
    learn = "random"        # phase 1: any other strategy (with learn_params)
    propose_after = 300     # responses of the unit before the proposal
    narrow = 0.15           # the proposal's prior: +-15% around its preferred stimulus
    test = {threshold = 0.95, budget = 300}

Phase 1, learning
    The ``learn`` strategy chooses (the live learner learns every response)
    until the unit has given ``propose_after`` responses or, with ``settle``,
    until the posterior variance of the unit's expected count relative to that
    count (``variance / mean``, averaged over the allowed images) has fallen to
    ``settle`` of its value at the first decision.

Proposal
    The learner predicts the unit's expected counts (spikes per window) for
    probes of each tuned model's family, rendered at the pool's image size on
    ``background``: the 366 standard contours (size 0.3, centred), single light
    dots of 9 diameters (0.04 .. 0.3 of the image side) at 5 x 5 positions
    (-0.3 .. 0.3), and gratings at 12 orientations (0 .. 165 degrees) and 5
    frequencies (2 .. 8 cycles per image). Each response model of ``models``
    (:data:`closedloop.select.hypotheses.MODELS`) is fitted to those predictions
    by maximum expected Poisson likelihood, ``sum_k n_k (m_k log r_k - r_k) /
    sum_k n_k`` with ``m`` the predictions, ``r`` the model's rates and ``n``
    the responses each prediction is worth (:func:`pseudo_counts`: mean over
    posterior variance, so guesses about images unlike any the learner has
    seen count for little): the best of ``SAMPLES``
    draws from its prior, refined by bounded L-BFGS-B in the prior's coordinates
    from the ``STARTS`` best draws. The best-fitting model, with its
    parameters, is the proposal ("a dot detector, diameter d at (x, y)").

Phase 2, test
    The ``hypothesis`` strategy (:class:`~closedloop.select.hypotheses.HypothesisStrategy`,
    settings ``test``) pits the proposal against the other models with their
    default priors. The proposal's prior is narrowed around its preferred
    stimulus: each parameter but the rates (``baseline``, ``gain``, ``rate``)
    and the tuning widths (``*_width``), which a learner's shrunk predictions
    flatten, is uniform within ``narrow`` of its default range on either side
    (in the prior's coordinate), clipped to that range; the rates and widths
    keep their default priors. The test sees only the responses that come
    after the proposal, not those the proposal was made from; it ends the
    session when it decides or its budget is spent.

State
    Logged with each decision: ``phase`` (``learning`` or ``testing``) and
    ``learned`` (the unit's responses so far); while testing also ``proposal``
    (``model``, ``params``, ``explained``: the fraction of the predictions'
    variance over the probes that the fit explains, ``after``: the unit's
    responses it was made from, ``scores``: every model's fit score), the
    test's ``posterior``, ``responses`` (the test's) and ``decided``, and
    ``verdict``: ``confirmed`` (the test decided for the proposal),
    ``rejected`` (for another outcome, "none fits" included) or ``undecided``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError, field_validator
from scipy.optimize import minimize

from closedloop.config import MANY, Seed
from closedloop.errors import ClosedLoopError
from closedloop.select.hypotheses import (MODELS, Features, HypothesisParams, HypothesisStrategy, ResponseModel,
                                          plot_posterior)
from closedloop.select.strategies import NoParams, Part, SelectionContext, Strategy, unit_index
from closedloop.stimuli import StimulusPool, get_family
from closedloop.stimuli.contours import standard_set

SAMPLES = 4000  # prior draws per model in the fit
STARTS = 4  # best draws refined by L-BFGS-B
CHUNK = 500  # parameter sets whose rates are computed at once (bounds memory)
MAX_COUNT = 100.0  # the most responses one prediction counts as in the fit
COUNT_FLOOR = 1e-3  # expected counts below this are taken as this when dividing by them
RATES = ("baseline", "gain", "rate")  # parameters of scale, never narrowed (nor widths, "*_width")
DOT_DIAMETERS = (0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3)  # fractions of the image side
DOT_POSITIONS = (-0.3, -0.15, 0.0, 0.15, 0.3)  # dot centres in x and in y, fractions of the side
GRATING_ORIENTATIONS = tuple(range(0, 180, 15))  # degrees
GRATING_FREQUENCIES = (2.0, 3.0, 4.0, 6.0, 8.0)  # cycles per image side


# ------------------------------------------------------------------- probes --
def _dots() -> list[dict]:
    return [{"diameter": d, "positions": [[x, y]]}
            for d, x, y in itertools.product(DOT_DIAMETERS, DOT_POSITIONS, DOT_POSITIONS)]


def _gratings() -> list[dict]:
    return [{"orientation": float(o), "frequency": f}
            for o, f in itertools.product(GRATING_ORIENTATIONS, GRATING_FREQUENCIES)]


PROBES: dict[str, Callable[[], list[dict]]] = {"contour": standard_set, "dot": _dots, "grating": _gratings}


def render_probes(families: Sequence[str], size_px: int, background: float) -> StimulusPool:
    """The probes of ``families`` rendered at ``size_px`` on a ``background`` grey (0-1)."""
    names, params, images = [], [], []
    for name in families:
        family = get_family(name)
        for p in PROBES[name]():
            checked = family.check(p)
            names.append(name)
            params.append(checked)
            images.append(family.render(checked, size_px, background))
    return StimulusPool(np.stack(images), names, params)


# --------------------------------------------------------------------- fit --
@dataclass(frozen=True)
class Fit:
    """A response model fitted to predicted counts.

    Attributes
    ----------
    model : str
        The response model's name.
    params : dict of float
        Its parameters (units as in :mod:`closedloop.select.hypotheses`).
    score : float
        Expected Poisson log-likelihood per probe (weighted mean over the probes), nats, less the
        terms without the rates.
    explained : float
        Fraction of the predictions' variance over the probes the fitted rates explain.
    """

    model: str
    params: dict[str, float]
    score: float
    explained: float


def pseudo_counts(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """How many responses each prediction is worth: ``mean / variance`` (a mean of n Poisson counts
    of rate ``mean`` has that variance when n is this), at most ``MAX_COUNT``."""
    mean = np.maximum(mean, COUNT_FLOOR)
    return mean / (variance + mean / MAX_COUNT)


def _score(rates: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Expected Poisson log-likelihood per probe of rates (P, K) for predicted counts ``target`` (K,),
    each probe weighted by ``weights`` (K,)."""
    return (target * np.log(rates) - rates) @ weights / weights.sum()


def fit_model(model: ResponseModel, features: Features, target: np.ndarray, weights: np.ndarray,
              rng: np.random.Generator) -> Fit:
    """``model`` fitted to predicted counts ``target`` (K,) of the probes ``features`` describes,
    weighted by ``weights`` (K,): the best of ``SAMPLES`` prior draws, refined from the ``STARTS``
    best (module docstring)."""
    prior = model.prior()
    keys = list(prior)
    draws = model.sample(rng, SAMPLES)
    scores = np.concatenate([_score(model.rates({k: v[s:s + CHUNK] for k, v in draws.items()}, features), target,
                                    weights) for s in range(0, SAMPLES, CHUNK)])
    bounds = [prior[k].box for k in keys]

    def loss(z: np.ndarray) -> float:
        theta = {k: prior[k].value(np.array([value])) for k, value in zip(keys, z)}
        return -float(_score(model.rates(theta, features), target, weights)[0])

    best = None
    for start in np.argsort(-scores)[:STARTS]:
        z0 = np.array([prior[k].coordinate(draws[k][start]) for k in keys])
        result = minimize(loss, z0, method="L-BFGS-B", bounds=bounds)
        if best is None or result.fun < best.fun:
            best = result
    params = {k: float(prior[k].value(z)) for k, z in zip(keys, best.x)}
    rates = model.rates({k: np.array([v]) for k, v in params.items()}, features)[0]
    centred = target - np.average(target, weights=weights)
    spread = np.average(centred**2, weights=weights)
    explained = 1.0 - np.average((target - rates) ** 2, weights=weights) / spread if spread > 0 else 0.0
    return Fit(model.name, params, -float(best.fun), float(explained))


def propose(mean: np.ndarray, variance: np.ndarray, probes: StimulusPool, models: Sequence[str],
            seed: int = 0) -> list[Fit]:
    """Each of ``models`` fitted to a unit's predicted counts for ``probes`` (posterior ``mean``
    and ``variance``, (K,) each; spikes per window), best (highest score) first: the first is the
    proposal."""
    mean = np.asarray(mean, np.float64)
    weights = pseudo_counts(mean, np.asarray(variance, np.float64))
    streams = np.random.SeedSequence(seed).spawn(len(models))
    fits = []
    for name, stream in zip(models, streams):
        model = MODELS[name]
        features = Features(model.describe(probes.families, probes.params))
        fits.append(fit_model(model, features, mean, weights, np.random.default_rng(stream)))
    return sorted(fits, key=lambda f: -f.score)


def narrowed(fit: Fit, narrow: float) -> dict[str, tuple[float, float]]:
    """The proposal's prior: each parameter of the preferred stimulus (not the rates nor the tuning
    widths) within ``narrow`` of its default range (in the prior's coordinate) on either side of
    the fitted value, clipped to that range."""
    out = {}
    for key, prior in MODELS[fit.model].prior().items():
        if key in RATES or key.endswith("_width"):
            continue
        low, high = prior.box
        centre, half = float(prior.coordinate(np.float64(fit.params[key]))), narrow * (high - low)
        bounds = (max(low, centre - half), min(high, centre + half))
        out[key] = tuple(round(float(prior.value(np.float64(b))), 6) for b in bounds)
    return out


# ------------------------------------------------------------------- params --
class ProposeParams(NoParams):
    """Settings of the ``propose`` strategy."""

    neuron: str = Field(min_length=1, description="the unit a proposal is made for and tested on")
    models: list[str] = Field(default_factory=lambda: list(MODELS), min_length=2,
                              description="response models in play: the best-fitting is proposed, the "
                                          "others are its alternatives in the test")
    learn: str = Field("random", description="the strategy that chooses until the proposal")
    learn_params: dict[str, Any] = Field({}, description="its settings")
    propose_after: int = Field(300, ge=1, le=MANY, description="responses of the unit before the proposal")
    settle: float | None = Field(None, gt=0, lt=1, description="propose sooner, once the unit's posterior variance "
                                 "relative to its expected count, averaged over the allowed images, falls to this "
                                 "fraction of the first decision's")
    narrow: float = Field(0.15, gt=0, le=0.5, description="half-width of the proposal's prior, fraction of each "
                                                          "tuning parameter's default range")
    background: float = Field(0.5, ge=0, le=1, description="grey the probes are rendered on (0-1): the "
                                                           "protocol's [stimulus] background")
    test: dict[str, Any] = Field({}, description="settings of the hypothesis test: threshold, budget, particles, "
                                                  "seed (closedloop.select.hypotheses.HypothesisParams)")
    seed: Seed = Field(0, description="seed of the fit's prior draws")

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        for name in models:
            if name not in MODELS:
                raise ValueError(f"unknown response model {name!r} (known: {', '.join(MODELS)})")
        if len(set(models)) < len(models):
            raise ValueError("a response model is named twice")
        unprobed = [name for name in models if MODELS[name].family not in (None, *PROBES)]
        if unprobed:
            raise ValueError(f"no probes for {MODELS[unprobed[0]].family} stimuli (model {unprobed[0]!r})")
        if all(MODELS[name].family is None for name in models):
            raise ValueError("no tuned response model to propose")
        return models

    @field_validator("test")
    @classmethod
    def _test_settings(cls, test: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted({"neuron", "hypotheses"} & set(test))
        if fixed:
            raise ValueError(f"{fixed[0]} is set by the proposal")
        placeholder = [{"name": "a", "model": "untuned"}, {"name": "b", "model": "untuned"}]
        try:
            HypothesisParams(neuron="x", hypotheses=placeholder, **test)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise ValueError(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}") from None
        return test


# ----------------------------------------------------------------- strategy --
class ProposeStrategy(Strategy):
    """Learn, propose what the unit is from the learner, then test the proposal (module docstring)."""

    name = "propose"
    Params = ProposeParams

    @classmethod
    def made_of(cls, params):
        return [Part("learn", "learn_params", params.learn, params.learn_params)]

    def __init__(self, params: ProposeParams | None = None, parts: dict[str, Strategy] | None = None):
        super().__init__(params)
        if parts is None:
            raise ValueError("the 'propose' strategy is built with its learning strategy: "
                             "closedloop.select.registry.make_strategy")
        self.learning = parts["learn"]
        self.test: HypothesisStrategy | None = None
        self.proposal: dict | None = None
        self.responses = 0  # the unit's responses
        self._unit: int | None = None
        self._first_variance: float | None = None

    def check(self, units, pool):
        unit_index(units, self.params.neuron, self.name)
        present = set(pool.families)
        for name in self.params.models:
            family = MODELS[name].family
            if family is not None and family not in present:
                raise ClosedLoopError(f"strategy 'propose': models: {name!r} needs {family} stimuli and the pool "
                                      f"has none (families: {', '.join(sorted(present))})")
        self.learning.check(units, pool)

    def observe(self, pool_index, counts):
        if self._unit is not None and np.isfinite(counts[self._unit]):
            self.responses += 1
        (self.test or self.learning).observe(pool_index, counts)

    @property
    def finished(self):
        return self.test is not None and self.test.finished

    def choose(self, context, k, rng):
        self.check_context(context)
        if self._unit is None:
            self._unit = unit_index(context.units, self.params.neuron, self.name)
            self.responses = int(np.isfinite(context.counts[:, self._unit]).sum()) if context.counts.size else 0
        if self.test is None and self._ready(context):
            self._propose(context)
        return (self.test or self.learning).choose(context, k, rng)

    def _ready(self, context: SelectionContext) -> bool:
        """Whether phase 1 is over: enough responses, or (with ``settle``) the variance fell."""
        if self.responses >= self.params.propose_after:
            return True
        if self.params.settle is None:
            return False
        mean, variance = context.predictive()
        variance = float((variance[self._unit] / np.maximum(mean[self._unit], COUNT_FLOOR)).mean())
        if self._first_variance is None:
            self._first_variance = variance
        return variance <= self.params.settle * self._first_variance

    def _propose(self, context: SelectionContext) -> None:
        """Fit the models to the learner's predictions for the probes; start the test."""
        p = self.params
        families = [MODELS[m].family for m in p.models if MODELS[m].family is not None]
        probes = render_probes(families, context.pool.images.shape[1], p.background)
        mean, variance = context.model.predictive_images(probes.images)
        fits = propose(mean[self._unit], variance[self._unit], probes, p.models, p.seed)
        best = fits[0]
        self.proposal = {"model": best.model, "params": {k: round(v, 4) for k, v in best.params.items()},
                         "explained": round(best.explained, 4), "after": self.responses,
                         "scores": {f.model: round(f.score, 4) for f in fits}}
        hypotheses = [{"name": best.model, "model": best.model, "prior": narrowed(best, p.narrow)}]
        hypotheses += [{"name": m, "model": m} for m in p.models if m != best.model]
        self.test = HypothesisStrategy(HypothesisParams(neuron=p.neuron, hypotheses=hypotheses, **p.test))

    def state(self):
        if self.test is None:
            return {"phase": "learning", "learned": self.responses}
        tested = self.test.state()  # posterior, responses (the test's), decided
        decided = tested["decided"]
        verdict = "undecided" if decided is None else "confirmed" if decided == self.proposal["model"] else "rejected"
        return {"phase": "testing", "learned": self.responses, "proposal": self.proposal, **tested,
                "verdict": verdict}

    def results(self, states, folder):
        tested = [s for s in states if s and s.get("phase") == "testing"]
        if not tested:
            return []
        threshold = self.params.test.get("threshold", HypothesisParams.model_fields["threshold"].default)
        return [plot_posterior(tested, Path(folder) / "hypothesis-posterior.png", threshold)]
