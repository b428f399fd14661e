"""Hypothesis tests on synthetic neurons and on real-neuron twins: the adaptive design against fixed ones.

No rig or LSL: each response is a Poisson count (spikes per window) drawn in-process with the
neuron's expected count, so this measures the design and the test alone.

Synthetic neurons (:func:`run_hypothesis_bench`), ``neurons`` of each kind:

- **of a hypothesis** — parameters drawn from each tested hypothesis's prior (the test's own
  prior, so the test is well specified); the truth is that hypothesis;
- **left out** — neurons of each tuned hypothesis (drawn from its prior) tested with the
  other hypotheses only: no tested hypothesis is true, so the right verdict is "none fits";
- **rig units** — the simulated rig's built-in units (:mod:`closedloop.simulate.neurons`:
  a curvature, dot or orientation unit with a random receptive-field centre and preference),
  rated as :mod:`closedloop.benchmarks.efficiency` rates twins (:func:`population_counts`).
  They are of a kind but not of the hypothesis's exact form: the truth is the hypothesis of
  their kind, and "none fits" is a miss, not a false decision.

Every neuron is tested twice, with fresh counts:

- **adaptive** — the ``hypothesis`` strategy chooses ``batch`` stimuli per decision from the
  whole pool, through the live loop's selection policy (every stimulus but those of the
  decision before);
- **fixed** — the pool's stimuli in random order (each once, then a new order), the
  posterior updated in the same way; the confirmation repeats the test's predictive check asks
  for (:mod:`closedloop.select.hypotheses`, "Deciding") are shown when due, so both designs are
  decided by the same rule.

A run ends when one outcome reaches ``threshold`` (the decision) or after ``budget`` responses
(undecided). Figures, per group of neurons and design: correct decisions (for the truth),
false decisions (for a hypothesis that is not true; "none fits" and undecided are not), "none
fits" verdicts, and the median responses to the end of the run (a run without a decision
counts as ``budget``, so a median with undecided runs is a lower bound); the fixed design's
median over the adaptive one's.

Twins (:func:`run_twin_bench`): published compact models of real V4 neurons (Cowley et al.
2026) have no known truth, so the adaptive decision is compared with the decision of the
**full** fixed design: every pool stimulus shown ``FULL_REPEATS`` times in random order and the
verdict read after all of them and any confirmation repeats its check asks for (None when no
outcome is decided). Figures: the
fraction of twins where the adaptive verdict equals the full design's, and the adaptive
design's responses as a fraction of the full design's.

The default pool (:func:`bench_pool`) is the standard 366 Pasupathy & Connor shapes (size
0.3, filled, white), 125 single light dots (the 5 ``DOT_DIAMETERS`` at each of 5 x 5
positions, ``DOT_POSITIONS`` in x and y) and 108 gratings (the 12 ``GRATING_ORIENTATIONS`` at
each of the 9 ``GRATING_FREQUENCIES``, full contrast, phase 0, aperture radius 0.45): the
366-shape set of the paper with the dots a dot hypothesis needs and the gratings an
orientation hypothesis needs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from closedloop.benchmarks.efficiency import WINDOW
from closedloop.config import NeuronSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.select.hypotheses import MODELS, NONE_FITS, Features, HypothesisStrategy
from closedloop.select.policy import SelectionPolicy
from closedloop.select.registry import make_strategy
from closedloop.simulate.neurons import BUILTIN, CompactNeuron, Neuron, Population
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.contours import Contour, standard_set
from closedloop.stimuli.families import Dot, Grating

DOT_DIAMETERS = (0.05, 0.1, 0.15, 0.2, 0.3)  # fractions of the image side
DOT_POSITIONS = (-0.3, -0.15, 0.0, 0.15, 0.3)  # dot centres in x and in y, fractions of the side
GRATING_ORIENTATIONS = tuple(float(o) for o in range(0, 180, 15))  # degrees
GRATING_FREQUENCIES = tuple(round(2 ** (k / 2), 3) for k in range(9))  # cycles per image side, 1 .. 16
UNIT = "synthetic"  # the unit name the neuron is recorded as
DEFAULT_HYPOTHESES = ({"name": "curvature", "model": "curvature"}, {"name": "dot", "model": "dot"},
                      {"name": "orientation", "model": "orientation"}, {"name": "untuned", "model": "untuned"})
DESIGNS = ("adaptive", "fixed")
FULL_REPEATS = 5  # the full design shows every stimulus this many times
RIG_CENTRE = 0.1  # rig units' receptive-field centres: uniform in -0.1 .. 0.1 in x and y


def bench_pool(size_px: int = 64) -> StimulusPool:
    """The default pool: 366 standard shapes, 125 dots and 108 gratings at ``size_px`` (module docstring)."""
    params, families = standard_set(), ["contour"] * 366
    for diameter in DOT_DIAMETERS:
        for x in DOT_POSITIONS:
            for y in DOT_POSITIONS:
                params.append(Dot().check({"diameter": diameter, "positions": [[x, y]]}))
                families.append("dot")
    for orientation in GRATING_ORIENTATIONS:
        for frequency in GRATING_FREQUENCIES:
            params.append(Grating().check({"orientation": orientation, "frequency": frequency}))
            families.append("grating")
    renderers = {"contour": Contour(), "dot": Dot(), "grating": Grating()}
    images = np.stack([renderers[f].render(p, size_px) for f, p in zip(families, params)])
    return StimulusPool(images, families, params)


def population_counts(neurons: Sequence[Neuron], pool: StimulusPool, seed: int) -> np.ndarray:
    """(K, neurons) expected counts per ``WINDOW`` of image-computable neurons for the pool's images.

    As :mod:`closedloop.benchmarks.efficiency` rates twins: a :class:`Population` with the
    simulation defaults (mean driven rate 24 spikes/s, gain 1, cap 200 spikes/s) calibrated on
    the pool, its rates (spikes/s) times ``WINDOW`` (s).
    """
    sim = SimulationSpec(seed=seed, latency=0.0, neurons=[NeuronSpec(kind="dot")])
    return Population(list(neurons), sim, pool.images).rates(pool.images) * WINDOW


# ------------------------------------------------------------------ neurons --
@dataclass(frozen=True)
class BenchNeuron:
    """A neuron of the bench and the test it gets."""

    group: str  # its row in the table
    truth: str  # the hypothesis it is of; NONE_FITS when no tested hypothesis is
    rates: np.ndarray  # (K,) expected counts per window for the pool's stimuli
    hypotheses: tuple[dict, ...]  # the hypotheses tested


def _drawn(spec: dict, pool: StimulusPool, rng: np.random.Generator) -> np.ndarray:
    """(K,) expected counts of a neuron of hypothesis ``spec`` with parameters drawn from its prior."""
    model = MODELS[spec["model"]]
    theta = model.sample(rng, 1, spec.get("prior"))
    return model.rates(theta, Features(model.describe(pool.families, pool.params)))[0]


def synthetic_neurons(pool: StimulusPool, hypotheses: Sequence[dict], neurons: int,
                      seed: int) -> list[BenchNeuron]:
    """``neurons`` of each hypothesis, tested with all of them, then ``neurons`` of each tuned
    one tested with the others ("left out", truth ``NONE_FITS``)."""
    out = []
    for h, spec in enumerate(hypotheses):
        for n in range(neurons):
            out.append(BenchNeuron(spec["name"], spec["name"], _drawn(spec, pool, np.random.default_rng([seed, h, n])),
                                   tuple(hypotheses)))
    for h, spec in enumerate(hypotheses):
        others = tuple(other for other in hypotheses if other is not spec)
        if MODELS[spec["model"]].family is None or len(others) < 2:
            continue
        for n in range(neurons):
            rates = _drawn(spec, pool, np.random.default_rng([seed, h, n, 1]))
            out.append(BenchNeuron(f"{spec['name']}, left out", NONE_FITS, rates, others))
    return out


def _rig_unit(kind: str, rng: np.random.Generator) -> Neuron:
    """A built-in rig unit of ``kind`` with a random centre and preference (fractions of the side,
    degrees, cycles per image side)."""
    x, y = rng.uniform(-RIG_CENTRE, RIG_CENTRE, 2)
    preference = {"curvature": lambda: {"orientation": rng.uniform(0, 360)},
                  "dot": lambda: {"radius": float(np.exp(rng.uniform(np.log(0.025), np.log(0.15))))},
                  "orientation": lambda: {"orientation": rng.uniform(0, 180),
                                          "frequency": float(np.exp(rng.uniform(np.log(1.5), np.log(12))))}}[kind]()
    return BUILTIN[kind](kind, x=float(x), y=float(y), **preference)


def rig_neurons(pool: StimulusPool, hypotheses: Sequence[dict], neurons: int, seed: int) -> list[BenchNeuron]:
    """``neurons`` rig units of each built-in kind a tested hypothesis's model is named after."""
    kinds = [spec for spec in hypotheses if spec["model"] in BUILTIN]
    units = [(spec, _rig_unit(spec["model"], np.random.default_rng([seed, k, n, 2])))
             for k, spec in enumerate(kinds) for n in range(neurons)]
    if not units:
        return []
    counts = population_counts([unit for _, unit in units], pool, seed)
    return [BenchNeuron(f"rig {spec['model']} unit", spec["name"], counts[:, i], tuple(hypotheses))
            for i, (spec, _) in enumerate(units)]


# --------------------------------------------------------------------- runs --
def _strategy(hypotheses: Sequence[dict], pool: StimulusPool, threshold: float, budget: int | None,
              particles: int, seed: int, test: dict | None = None) -> HypothesisStrategy:
    strategy: HypothesisStrategy = make_strategy("hypothesis", {
        "neuron": UNIT, "hypotheses": list(hypotheses), "threshold": threshold, "budget": budget,
        "particles": particles, "seed": seed, **(test or {})})
    strategy.check([UNIT], pool)
    strategy.attach((UNIT,), pool)
    return strategy


def _test(strategy: HypothesisStrategy, rates: np.ndarray, design: str, pool: StimulusPool, batch: int,
          rng: np.random.Generator) -> tuple[str | None, int]:
    """One run to a decision or the budget: the verdict (or None) and the responses used.
    ``rates`` are (K,) expected counts per window. The adaptive design chooses through the live
    loop's :class:`SelectionPolicy` (so, as live, not the images of the decision before)."""
    budget = strategy.params.budget
    policy = SelectionPolicy(strategy, None, pool, np.arange(len(pool)), (UNIT,), batch,
                             seed=int(rng.integers(2**32)))
    order: list[int] = []
    while not strategy.finished:
        if design == "adaptive":
            policy.batch = min(batch, budget - strategy.responses)
            chosen = policy.decide(strategy.responses).chosen
        else:  # the confirmation repeats the test's check asks for, else the next in the order
            due = strategy.due()
            order = order or rng.permutation(len(pool)).tolist()
            chosen = due[:1] or [order.pop()]
        for index in chosen:
            policy.observe(index, rng.poisson(rates[index], size=1).astype(float))
            if strategy.finished:
                break
    return strategy.decided, strategy.responses


@dataclass(frozen=True)
class BenchRun:
    """One test of one neuron."""

    group: str  # the neuron's row in the table
    truth: str  # the hypothesis it is of (NONE_FITS: none tested)
    design: str  # "adaptive" or "fixed"
    decided: str | None  # the outcome that reached the threshold, None at the budget
    trials: int  # responses used

    @property
    def correct(self) -> bool:
        return self.decided == self.truth

    @property
    def false(self) -> bool:
        """Decided for a hypothesis that is not true."""
        return self.decided not in (None, NONE_FITS, self.truth)


@dataclass
class HypothesisBenchResult:
    """Every run of :func:`run_hypothesis_bench`, with its settings."""

    runs: list[BenchRun]
    hypotheses: list[str]
    pool_size: int
    threshold: float
    budget: int
    seconds: float

    def groups(self) -> list[str]:
        """The neurons' groups in run order."""
        return list(dict.fromkeys(r.group for r in self.runs))

    def select(self, design: str, group: str | None = None) -> list[BenchRun]:
        """The runs of ``design`` (on neurons of ``group``; all when None)."""
        return [r for r in self.runs if r.design == design and group in (None, r.group)]

    def accuracy(self, design: str, group: str | None = None) -> float:
        """Fraction of runs that decided for the truth."""
        return float(np.mean([r.correct for r in self.select(design, group)]))

    def false_rate(self, design: str, group: str | None = None) -> float:
        """Fraction of runs that decided for a hypothesis that is not true."""
        return float(np.mean([r.false for r in self.select(design, group)]))

    def median_trials(self, design: str, group: str | None = None) -> float:
        """Median responses per run (an undecided run counts as the budget)."""
        return float(np.median([r.trials for r in self.select(design, group)]))

    def ratio(self, group: str | None = None) -> float:
        """Median trials of the fixed design over the adaptive design's."""
        return self.median_trials("fixed", group) / self.median_trials("adaptive", group)

    def to_json(self) -> dict:
        """Settings, every run, and per design the overall rates."""
        return {"hypotheses": self.hypotheses, "pool_size": self.pool_size, "threshold": self.threshold,
                "budget": self.budget, "seconds": round(self.seconds, 1),
                "designs": {d: {"correct_rate": self.accuracy(d), "false_decision_rate": self.false_rate(d),
                                "median_trials": self.median_trials(d)} for d in DESIGNS},
                "runs": [asdict(r) for r in self.runs]}


def run_hypothesis_bench(pool: StimulusPool | None = None, neurons: int = 10, threshold: float = 0.95,
                         budget: int = 500, batch: int = 4, particles: int = 300, seed: int = 0,
                         hypotheses: list[dict] | None = None, rig: bool = True, test: dict | None = None,
                         progress: Callable[[BenchRun], None] | None = None) -> HypothesisBenchResult:
    """Test synthetic neurons (module docstring) with the adaptive and the fixed design.

    Parameters
    ----------
    pool : StimulusPool, optional
        Stimuli both designs show; :func:`bench_pool` by default.
    neurons : int
        Neurons per group (per hypothesis, per left-out hypothesis, per rig kind).
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
        The competing hypotheses (``hypothesis`` strategy tables); ``DEFAULT_HYPOTHESES`` by default.
    rig : bool
        Include the rig units.
    test : dict, optional
        Other settings of the ``hypothesis`` strategy (e.g. ``cover``, ``level``, ``check``;
        its defaults when not given).
    progress : callable, optional
        Called with each finished run.

    Returns
    -------
    HypothesisBenchResult
    """
    started = time.perf_counter()
    pool = bench_pool() if pool is None else pool
    hypotheses = [dict(h) for h in hypotheses or DEFAULT_HYPOTHESES]
    names = [h.name for h in _strategy(hypotheses, pool, threshold, budget, particles, seed, test).params.hypotheses]
    cases = synthetic_neurons(pool, hypotheses, neurons, seed)
    cases += rig_neurons(pool, hypotheses, neurons, seed) if rig else []
    runs = []
    for n, case in enumerate(cases):
        for d, design in enumerate(DESIGNS):
            strategy = _strategy(case.hypotheses, pool, threshold, budget, particles, seed, test)
            decided, trials = _test(strategy, case.rates, design, pool, batch, np.random.default_rng([seed, n, d, 3]))
            runs.append(BenchRun(case.group, case.truth, design, decided, trials))
            if progress is not None:
                progress(runs[-1])
    return HypothesisBenchResult(runs, names, len(pool), threshold, budget, time.perf_counter() - started)


def format_hypothesis_bench(result: HypothesisBenchResult) -> str:
    """The printed table: per group of neurons and design, the verdicts and trials to decision."""
    lines = [f"hypothesis tests: {result.pool_size} stimuli, threshold {result.threshold:g}, "
             f"budget {result.budget} responses, {result.seconds:.0f} s",
             f"{'neurons':<24} {'design':<9} {'correct':>8} {'false':>8} {'none fits':>10} {'undecided':>10} "
             f"{'median trials':>14} {'fixed/adaptive':>15}"]
    for group in [*result.groups(), None]:
        for design in DESIGNS:
            runs = result.select(design, group)
            n = len(runs)
            counts = [sum(r.correct for r in runs), sum(r.false for r in runs),
                      sum(r.decided == NONE_FITS for r in runs), sum(r.decided is None for r in runs)]
            ratio = f"{result.ratio(group):.2f}" if design == "fixed" else ""
            lines.append(f"{group or 'all':<24} {design:<9} " + " ".join(
                f"{f'{c}/{n}':>{w}}" for c, w in zip(counts, (8, 8, 10, 10)))
                + f" {result.median_trials(design, group):>14.0f} {ratio:>15}")
    lines.append("false-decision rate (decided for a hypothesis that is not true): " + ", ".join(
        f"{design} {result.false_rate(design):.1%}" for design in DESIGNS))
    return "\n".join(lines)


# -------------------------------------------------------------------- twins --
@dataclass(frozen=True)
class TwinRun:
    """One twin: the full fixed design's verdict and the adaptive test's."""

    twin: str
    full: str | None  # verdict after every stimulus FULL_REPEATS times (None: no outcome reached threshold)
    full_posterior: dict[str, float]
    adaptive: str | None  # verdict of the adaptive test (None: undecided at its budget)
    trials: int  # the adaptive test's responses


@dataclass
class TwinBenchResult:
    """Every twin of :func:`run_twin_bench`, with its settings."""

    runs: list[TwinRun]
    hypotheses: list[str]
    pool_size: int
    full_trials: int  # responses of the full design per twin
    threshold: float
    budget: int
    seconds: float

    @property
    def agreement(self) -> float:
        """Fraction of twins whose adaptive verdict equals the full design's."""
        return float(np.mean([r.adaptive == r.full for r in self.runs]))

    @property
    def trial_fraction(self) -> float:
        """The adaptive design's responses over the full design's, all twins together."""
        return sum(r.trials for r in self.runs) / (self.full_trials * len(self.runs))

    def to_json(self) -> dict:
        return {"hypotheses": self.hypotheses, "pool_size": self.pool_size, "full_trials": self.full_trials,
                "threshold": self.threshold, "budget": self.budget, "seconds": round(self.seconds, 1),
                "agreement": self.agreement, "trial_fraction": self.trial_fraction,
                "runs": [asdict(r) for r in self.runs]}


def _full_design(strategy: HypothesisStrategy, rates: np.ndarray, rng: np.random.Generator) -> None:
    """Every stimulus ``FULL_REPEATS`` times in random order, the test never stopping early."""
    order = np.concatenate([rng.permutation(len(rates)) for _ in range(FULL_REPEATS)])
    for index in order:
        strategy.observe(int(index), rng.poisson(rates[index], size=1).astype(float))
    while due := strategy.due():  # the confirmation repeats of a leading hypothesis's check
        strategy.observe(due[0], rng.poisson(rates[due[0]], size=1).astype(float))


def twin_models(folder: Path, limit: int | None, seed: int) -> list[Path]:
    """``limit`` compact models of ``folder`` drawn with ``seed`` (all when None), in name order."""
    from closedloop.model.compact import find_published

    paths = find_published(folder)
    chosen = np.random.default_rng(seed).permutation(len(paths))[:limit]
    return [paths[i] for i in sorted(chosen)]


def adaptive_budget(pool: StimulusPool, budget: int | None) -> int:
    """An adaptive test's most responses on a twin: ``budget``, else the full design's over 5."""
    return budget or FULL_REPEATS * len(pool) // 5


def twin_run(twin: CompactNeuron, index: int, pool: StimulusPool, hypotheses: list[dict], threshold: float = 0.95,
              budget: int = 100, batch: int = 4, particles: int = 300, seed: int = 0,
              test: dict | None = None) -> TwinRun:
    """The full fixed design and the adaptive test on one twin, the ``index``-th of its bench (the
    index keys the twin's random streams, so a sweep's cell makes the bench's run); the arguments
    are :func:`run_twin_bench`'s. A cell of ``closedloop sweep hypotheses --twins``."""
    counts = population_counts([twin], pool, seed)[:, 0]  # each twin is calibrated on its own
    full = _strategy(hypotheses, pool, threshold, None, particles, seed, test)
    _full_design(full, counts, np.random.default_rng([seed, index, 4]))
    adaptive = _strategy(hypotheses, pool, threshold, budget, particles, seed, test)
    decided, trials = _test(adaptive, counts, "adaptive", pool, batch, np.random.default_rng([seed, index, 5]))
    return TwinRun(twin.names[0], full.decided, full.state()["posterior"], decided, trials)


def outcomes(hypotheses: Sequence[dict], test: dict | None = None) -> list[str]:
    """The test's outcomes: the hypotheses' names, then "none fits" unless ``test`` turns it off."""
    return make_strategy("hypothesis", {"neuron": UNIT, "hypotheses": list(hypotheses), **(test or {})}).names


def run_twin_bench(folder: Path, pool: StimulusPool | None = None, limit: int | None = 6,
                   threshold: float = 0.95, budget: int | None = None, batch: int = 4, particles: int = 300,
                   seed: int = 0, hypotheses: list[dict] | None = None, test: dict | None = None,
                   progress: Callable[[TwinRun], None] | None = None) -> TwinBenchResult:
    """The adaptive test against the full fixed design on compact-model twins (module docstring).

    Parameters
    ----------
    folder : Path
        A folder of published compact models (``compact_model_*.pt``).
    pool : StimulusPool, optional
        :func:`bench_pool` at 112 px (the models' input) by default.
    limit : int, optional
        Twins drawn from the folder with ``seed``; all when None.
    threshold : float
        Posterior probability that decides.
    budget : int, optional
        Most responses of an adaptive test; the full design's over 5 by default.
    batch, particles, seed, hypotheses, test
        As :func:`run_hypothesis_bench` (``test`` applies to both designs).
    progress : callable, optional
        Called with each finished twin.

    Returns
    -------
    TwinBenchResult
    """
    started = time.perf_counter()
    paths = twin_models(folder, limit, seed)
    pool = bench_pool(112) if pool is None else pool
    hypotheses = [dict(h) for h in hypotheses or DEFAULT_HYPOTHESES]
    budget = adaptive_budget(pool, budget)
    runs = []
    for n, path in enumerate(paths):
        runs.append(twin_run(CompactNeuron(path), n, pool, hypotheses, threshold, budget, batch, particles, seed,
                              test))
        if progress is not None:
            progress(runs[-1])
    return TwinBenchResult(runs, outcomes(hypotheses, test), len(pool), FULL_REPEATS * len(pool), threshold,
                           budget, time.perf_counter() - started)


def format_twin_bench(result: TwinBenchResult) -> str:
    """The printed table: per twin both verdicts, then the agreement and the trial fraction."""
    lines = [f"hypothesis tests on {len(result.runs)} twins: {result.pool_size} stimuli, full design "
             f"{result.full_trials} responses ({FULL_REPEATS} repeats), adaptive budget {result.budget}, "
             f"threshold {result.threshold:g}, {result.seconds:.0f} s",
             f"{'twin':<16} {'full design':<14} {'adaptive':<14} {'trials':>7}"]
    for r in result.runs:
        lines.append(f"{r.twin:<16} {r.full or 'undecided':<14} {r.adaptive or 'undecided':<14} {r.trials:>7}")
    agree = sum(r.adaptive == r.full for r in result.runs)
    lines.append(f"agreement with the full design: {agree}/{len(result.runs)} ({result.agreement:.0%}); "
                 f"adaptive trials {result.trial_fraction:.3f} of the full design's "
                 f"(1/{1 / result.trial_fraction:.1f})")
    return "\n".join(lines)


def write_json(result: HypothesisBenchResult | TwinBenchResult, path: Path) -> None:
    """Write ``result.to_json()`` to ``path``."""
    try:
        Path(path).write_text(json.dumps(result.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise ClosedLoopError(f"--json {path}: cannot write ({exc.strerror or exc})") from None


def load_bench_pool(path: Path | None, twins: bool) -> StimulusPool:
    """The pool of a bench: ``path`` (a stimulus set, saved pool or image folder) or :func:`bench_pool`,
    at 112 px for twins (the models' input), else 64 px."""
    from closedloop.stimuli.load import load_pool

    size = 112 if twins else 64
    return bench_pool(size) if path is None else load_pool(path, size)[0]
