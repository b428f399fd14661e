"""Hypothesis tests on synthetic neurons: the adaptive design against a fixed one.

Synthetic neurons are built from each hypothesis: ``neurons`` parameter sets
drawn from its prior (the test's own prior, so the test is well specified),
each response a Poisson count with the model's expected count per window. No
rig or LSL: counts are drawn in-process, so this measures the design alone.
Every neuron is tested twice, with fresh counts:

- **adaptive** — the ``hypothesis`` strategy chooses ``batch`` stimuli per
  decision from the whole pool, through the live loop's selection policy
  (every stimulus but those of the decision before);
- **fixed** — the pool's stimuli in random order (each once, then a new
  order), the posterior updated in the same way.

A run ends when one hypothesis reaches ``threshold`` (the decision) or after
``budget`` responses (undecided, counted as wrong). The default pool
(:func:`bench_pool`) is the standard 366 Pasupathy & Connor shapes (size 0.3,
filled, white) plus 125 single light dots (the 5 ``DOT_DIAMETERS`` at each
of 5 x 5 positions, ``DOT_POSITIONS`` in x and y): the fixed design is the
366-shape set of the paper with the dots a dot hypothesis needs.

Figures, per true hypothesis and design: correct decisions, decisions made,
and the median responses to the end of the run (a run without a decision
counts as ``budget``, so a median with undecided runs is a lower bound);
overall, the ratio of the fixed design's median to the adaptive one's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from closedloop.select.hypotheses import MODELS, Features, HypothesisStrategy
from closedloop.select.policy import SelectionPolicy
from closedloop.select.registry import make_strategy
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.contours import Contour, standard_set
from closedloop.stimuli.families import Dot

DOT_DIAMETERS = (0.05, 0.1, 0.15, 0.2, 0.3)  # fractions of the image side
DOT_POSITIONS = (-0.3, -0.15, 0.0, 0.15, 0.3)  # dot centres in x and in y, fractions of the side
UNIT = "synthetic"  # the unit name the synthetic neuron is recorded as
DEFAULT_HYPOTHESES = ({"name": "curvature", "model": "curvature"}, {"name": "dot", "model": "dot"},
                      {"name": "untuned", "model": "untuned"})
DESIGNS = ("adaptive", "fixed")


def bench_pool(size_px: int = 32) -> StimulusPool:
    """The default pool: the 366 standard shapes and 125 dots, rendered at ``size_px`` (module docstring)."""
    contour, dot = Contour(), Dot()
    params = standard_set()
    families = ["contour"] * len(params)
    for diameter in DOT_DIAMETERS:
        for x in DOT_POSITIONS:
            for y in DOT_POSITIONS:
                params.append(dot.check({"diameter": diameter, "positions": [[x, y]]}))
                families.append("dot")
    images = np.stack([(contour if f == "contour" else dot).render(p, size_px) for f, p in zip(families, params)])
    return StimulusPool(images, families, params)


@dataclass(frozen=True)
class BenchRun:
    """One test of one synthetic neuron."""

    truth: str  # the hypothesis the neuron was built from
    design: str  # "adaptive" or "fixed"
    decided: str | None  # the hypothesis that reached the threshold, None at the budget
    trials: int  # responses used


@dataclass
class HypothesisBenchResult:
    """Every run of :func:`run_hypothesis_bench`, with its settings."""

    runs: list[BenchRun]
    hypotheses: list[str]
    pool_size: int
    threshold: float
    budget: int
    seconds: float

    def select(self, design: str, truth: str | None = None) -> list[BenchRun]:
        """The runs of ``design`` (on neurons of hypothesis ``truth``; all when None)."""
        return [r for r in self.runs if r.design == design and truth in (None, r.truth)]

    def accuracy(self, design: str, truth: str | None = None) -> float:
        """Fraction of runs that decided for the true hypothesis."""
        runs = self.select(design, truth)
        return float(np.mean([r.decided == r.truth for r in runs]))

    def median_trials(self, design: str, truth: str | None = None) -> float:
        """Median responses per run (an undecided run counts as the budget)."""
        return float(np.median([r.trials for r in self.select(design, truth)]))

    def ratio(self, truth: str | None = None) -> float:
        """Median trials of the fixed design over the adaptive design's."""
        return self.median_trials("fixed", truth) / self.median_trials("adaptive", truth)


def _test(neuron: np.ndarray, design: str, pool: StimulusPool, params: dict, batch: int,
          rng: np.random.Generator) -> tuple[str | None, int]:
    """One run: the decision (or None) and the responses used; ``neuron`` is (K,) expected counts.
    The adaptive design chooses through the live loop's :class:`SelectionPolicy` (so, as live, not
    the images of the decision before)."""
    strategy: HypothesisStrategy = make_strategy("hypothesis", params)
    strategy.attach((UNIT,), pool)
    budget = params["budget"]
    policy = SelectionPolicy(strategy, None, pool, np.arange(len(pool)), (UNIT,), batch,
                             seed=int(rng.integers(2**32)))
    order: list[int] = []
    while not strategy.finished:
        if design == "adaptive":
            policy.batch = min(batch, budget - strategy.responses)
            chosen = policy.decide(strategy.responses).chosen
        else:
            order = order or rng.permutation(len(pool)).tolist()
            chosen = [order.pop()]
        for index in chosen:
            policy.observe(index, rng.poisson(neuron[index], size=1).astype(float))
            if strategy.finished:
                break
    return strategy.decided, strategy.responses


def run_hypothesis_bench(pool: StimulusPool | None = None, neurons: int = 10, threshold: float = 0.95,
                         budget: int = 500, batch: int = 4, particles: int = 300, seed: int = 0,
                         hypotheses: list[dict] | None = None,
                         progress: Callable[[BenchRun], None] | None = None) -> HypothesisBenchResult:
    """Test synthetic neurons of every hypothesis with the adaptive and the fixed design.

    Parameters
    ----------
    pool : StimulusPool, optional
        Stimuli both designs show; :func:`bench_pool` by default.
    neurons : int
        Synthetic neurons per hypothesis.
    threshold : float
        Posterior probability that decides.
    budget : int
        Most responses per run.
    batch : int
        Stimuli per adaptive decision.
    particles : int
        Prior draws per hypothesis in the test.
    seed : int
        Seeds the neurons, their counts, the fixed orders and the test's particles.
    hypotheses : list of dict, optional
        The competing hypotheses (``hypothesis`` strategy tables); curvature, dot, untuned by default.
    progress : callable, optional
        Called with each finished run.

    Returns
    -------
    HypothesisBenchResult
    """
    started = time.perf_counter()
    pool = bench_pool() if pool is None else pool
    hypotheses = list(hypotheses or DEFAULT_HYPOTHESES)
    params = {"neuron": UNIT, "hypotheses": hypotheses, "threshold": threshold, "budget": budget,
              "particles": particles, "seed": seed}
    checked = make_strategy("hypothesis", params)
    checked.check([UNIT], pool)
    runs = []
    for h, spec in enumerate(checked.params.hypotheses):
        model = MODELS[spec.model]
        for n in range(neurons):
            theta = model.sample(np.random.default_rng([seed, h, n]), 1, spec.prior)
            neuron = model.rates(theta, Features(model.describe(pool.families, pool.params)))[0]
            for d, design in enumerate(DESIGNS):
                decided, trials = _test(neuron, design, pool, params, batch,
                                        np.random.default_rng([seed, h, n, d + 1]))
                runs.append(BenchRun(spec.name, design, decided, trials))
                if progress is not None:
                    progress(runs[-1])
    return HypothesisBenchResult(runs, [h.name for h in checked.params.hypotheses], len(pool), threshold,
                                 budget, time.perf_counter() - started)


def format_hypothesis_bench(result: HypothesisBenchResult) -> str:
    """The printed table: per true hypothesis and design, accuracy and trials to decision."""
    lines = [f"hypothesis tests: {result.pool_size} stimuli, threshold {result.threshold:g}, "
             f"budget {result.budget} responses, {result.seconds:.0f} s",
             f"{'truth':<12} {'design':<9} {'correct':>8} {'decided':>8} {'median trials':>14} {'fixed/adaptive':>15}"]
    for truth in [*result.hypotheses, None]:
        for design in DESIGNS:
            runs = result.select(design, truth)
            correct = sum(r.decided == r.truth for r in runs)
            decided = sum(r.decided is not None for r in runs)
            ratio = f"{result.ratio(truth):.2f}" if design == "fixed" else ""
            lines.append(f"{truth or 'all':<12} {design:<9} {correct:>4}/{len(runs):<3} {decided:>4}/{len(runs):<3} "
                         f"{result.median_trials(design, truth):>14.0f} {ratio:>15}")
    return "\n".join(lines)
