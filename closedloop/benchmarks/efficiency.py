"""Selection efficiency on digital twins: how many trials each strategy needs.

A simulated session here is the closed loop without the rig, run by the loop's own parts: each
decision the :class:`~closedloop.select.policy.SelectionPolicy` (random during the warm-up, no
repeats, held-out images never offered) asks the strategy for images; the digital twins (compact
models of real V4 neurons, :class:`closedloop.simulate.neurons.Population`) give each a Poisson
spike count in the 100 ms window; the :class:`~closedloop.learn.OnlineLearner` learns them (one
Woodbury step per decision) and ``update()`` runs its refreshes (the readouts' ridge and noise by
the evidence), swapped in at once so every session is exactly reproducible. Every ``every``
trials its prediction (:meth:`~closedloop.learn.OnlineLearner.predictive`) of the twins' true
rates on held-out images is scored (Pearson r, median over twins). Strategies are the protocol's
plug-ins (:mod:`closedloop.select.registry`).

The learner's core is ``compact`` (:mod:`closedloop.learn.cores`): the layer-4 features of other
compact models, averaged to 7 x 7 blocks, reduced by PCA over the pool (the held-out images are
part of the learner's pool, as in the live loop, but never candidates). The twins never share a
model with the core: by default the core comes from models in the twin folder that are not
evaluated. The core is not fine-tuned here (``finetune_every = 0``: no held-out responses to
judge a fine-tuned core by).

Each strategy runs as an :class:`Arm`: a label, the strategy and its params, and optionally a
fraction of trials given to uniformly random control images (as the live loop's ``[selection]
control_fraction`` does), so mixtures with random controls are measured like any strategy.

Figures: trials to reach a target r (linear interpolation between scored points), the ratio of
random's trials to each strategy's, and the mean true response of the shown images relative to
random's (the drive).

A session is :func:`run_arm`; ``closedloop sweep efficiency`` (:mod:`closedloop.sweep.efficiency`)
runs the same function as one Ray task per strategy, twin, seed and setting, on the same
:class:`EfficiencyData`, and reports through the same :class:`EfficiencyReport`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from closedloop.config import CoreSpec, ModelSpec, NeuronSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn import OnlineLearner
from closedloop.model.compact import find_published
from closedloop.record.atomic import replacing
from closedloop.select.policy import SelectionPolicy
from closedloop.select.registry import make_strategy, strategy_params
from closedloop.simulate.neurons import CompactNeuron, Population
from closedloop.stimuli import StimulusPool

WINDOW = 0.1  # s: response window, so expected counts are rates x 0.1


# ----------------------------------------------------------------- the world --
@dataclass
class TwinWorld:
    """The ground truth of a simulated session.

    Attributes
    ----------
    names : list of str
        One per twin.
    pool : StimulusPool
        Images strategies may choose (grows when a strategy adds images).
    pool_rates : ndarray
        (K, twins) expected spike counts per 100 ms window for every pool image.
    heldout : ndarray
        (H, N, N, 3) uint8 held-out images, never shown.
    heldout_rates : ndarray
        (H, twins) their expected counts.
    population : Population
        The twins, to rate images added during a session.
    """

    names: list[str]
    pool: StimulusPool
    pool_rates: np.ndarray
    heldout: np.ndarray
    heldout_rates: np.ndarray
    population: Population

    def rates(self, images: np.ndarray) -> np.ndarray:
        """Expected counts (B, twins) per window for new images."""
        return self.population.rates(images) * WINDOW


def _cached(cache: Path | None, key: str, compute) -> np.ndarray:
    """``compute()``, stored as ``cache/<key>.npy`` and read back next time."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{key}.npy"
    if path.exists():
        return np.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary:  # cells on one machine share the cache: never half a file
        np.save(temporary, value)
    return value


def _digest(*arrays: np.ndarray, text: str = "") -> str:
    h = hashlib.sha1(text.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def twin_paths(folder: Path, limit: int | None, seed: int) -> tuple[list[Path], list[Path]]:
    """(twins, the rest) of the compact models in ``folder``: ``limit`` twins drawn with ``seed``."""
    paths = find_published(folder)
    if len(paths) < 2:
        raise ClosedLoopError(f"twins {folder}: need at least 2 compact models, found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    count = len(paths) if limit is None else min(limit, len(paths) - 1)
    return [paths[i] for i in sorted(order[:count])], [paths[i] for i in sorted(order[count:])]


def build_world(twins: list[Path], pool: StimulusPool, heldout: np.ndarray, seed: int = 0,
                cache: Path | None = None, log=print) -> TwinWorld:
    """Load the twins and rate the pool and the held-out images (cached by content)."""
    sim = SimulationSpec(seed=seed, latency=0.0, neurons=[NeuronSpec(kind="compact", path=twins[0])])
    neurons = [CompactNeuron(path) for path in twins]  # an unreadable one: a one-line error naming it
    started = time.perf_counter()
    population = Population(neurons, sim, pool.images)
    names = [n for neuron in neurons for n in neuron.names]
    key = _digest(pool.images, text="|".join(names) + f"|{seed}")

    def rate(images):
        return lambda: population.rates(images) * WINDOW

    pool_rates = _cached(cache, f"pool-{key}", rate(pool.images))
    heldout_rates = _cached(cache, f"heldout-{_digest(heldout, text=key)}", rate(heldout))
    log(f"{len(names)} twins rated {len(pool) + len(heldout)} images in {time.perf_counter() - started:.0f} s")
    return TwinWorld(names, pool, pool_rates, heldout, heldout_rates, population)


# ----------------------------------------------------------------- sessions --
@dataclass(frozen=True)
class Arm:
    """One row of the benchmark: ``strategy`` with ``params``, under ``label``; each chosen image is
    replaced by a random unshown candidate with probability ``control`` (random controls). Checked
    when made: an unknown strategy, a bad setting or a control fraction outside [0, 1) is a
    one-line error."""

    label: str
    strategy: str
    params: dict = field(default_factory=dict)
    control: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.control < 1.0:
            raise ClosedLoopError(f"strategy {self.label!r}: the control fraction must be in [0, 1)")
        strategy_params(self.strategy, self.params)

    @classmethod
    def parse(cls, text: str) -> Arm:
        """``[LABEL=]NAME[+CONTROL][:JSON params]``, e.g. ``vr=variance_reduction+0.25:{"target": "heldout"}``."""
        head, _, params = text.strip().partition(":")
        label, _, name = head.rpartition("=")
        name, _, control = name.partition("+")
        try:
            settings = json.loads(params) if params else {}
            fraction = float(control) if control else 0.0
        except ValueError as exc:
            raise ClosedLoopError(f"strategy {text!r}: params are not JSON or the control fraction is "
                                  f"not a number ({exc})") from None
        if not isinstance(settings, dict):
            raise ClosedLoopError(f"strategy {text!r}: params must be a JSON object")
        name = name.strip()
        return cls(label.strip() or (f"{name}+{control}" if control else name), name, settings, fraction)


@dataclass
class SessionResult:
    """One simulated session: held-out r after each scored trial count, and what was shown."""

    strategy: str
    seed: int
    trials: list[int] = field(default_factory=list)
    r: list[float] = field(default_factory=list)  # median over twins
    drive: float = 0.0  # mean true expected count of the shown images (spikes per window)
    distinct: int = 0  # distinct images shown
    seconds: float = 0.0  # wall time of the policy's decisions (strategy and predictions)
    refreshes: int = 0  # learner refreshes swapped in

    def trials_to(self, target: float) -> float:
        """First trial count at which r reaches ``target`` (interpolated); inf if never."""
        r, n = np.array(self.r), np.array(self.trials)
        above = np.flatnonzero(r >= target)
        if not len(above):
            return np.inf
        i = above[0]
        if i == 0:
            return float(n[0])
        return float(n[i - 1] + (target - r[i - 1]) / (r[i] - r[i - 1]) * (n[i] - n[i - 1]))


def heldout_r(predicted: np.ndarray, true: np.ndarray) -> float:
    """Median over units of Pearson r between (units, H) predictions and (H, units) true rates."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = (true - true.mean(0)).T
    r = (p * t).sum(1) / np.sqrt((p ** 2).sum(1) * (t ** 2).sum(1) + 1e-12)
    return float(np.median(r))


def model_files(path: Path) -> tuple[Path, Path]:
    """A published compact model's two files: the ``.pt`` and its ``.nums_filters.npy``."""
    path = Path(path)
    return path, path.with_name(path.stem + ".nums_filters.npy")


def core_folder(models: list[Path], folder: Path) -> Path:
    """A folder of links to the chosen compact models (each ``.pt`` and its ``.nums_filters.npy``),
    so a ``compact`` core (:class:`~closedloop.config.CoreSpec`) reads exactly those."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in models:
        for source in model_files(Path(path).resolve()):
            link = folder / source.name
            if not link.exists():
                link.symlink_to(source)
    return folder


def learner_spec(core: CoreSpec, members: int = 16) -> ModelSpec:
    """The learner's settings in a simulated session: the loop's defaults, ``core``, and no
    fine-tuning (see the module docstring)."""
    return ModelSpec(core=core, members=members, finetune_every=0)


def simulate_session(world: TwinWorld, spec: ModelSpec, strategy: str, params: dict | None = None,
                     budget: int = 400, batch: int = 4, warmup: int = 32, every: int = 16,
                     no_repeat: int = 10_000, seed: int = 0, cache: Path | None = None,
                     control: float = 0.0) -> SessionResult:
    """Run one simulated session of ``budget`` trials (one image per trial).

    The learner's pool is the world's pool followed by its held-out images; the policy's
    candidates are the pool alone. The first ``warmup`` trials are random; then the strategy
    chooses ``batch`` images per decision, less the last ``no_repeat`` shown and the last
    decision's; with ``control``, each chosen image is replaced by a random allowed one with that
    probability. After each decision the learner learns its counts and updates; a refresh that
    became due is run and swapped in at once.
    """
    rng, control_rng = np.random.default_rng([seed, 7]), np.random.default_rng([seed, 11])
    units, held = tuple(world.names), len(world.heldout)
    pool = StimulusPool(world.pool.images, world.pool.families, world.pool.params)
    candidates = np.arange(len(pool))
    heldout = pool.append(world.heldout, ["heldout"] * held, [{} for _ in range(held)])
    rates = np.concatenate([world.pool_rates, world.heldout_rates])
    learner = OnlineLearner(pool.images, len(units), spec, seed=seed, background=False, cache=cache)
    policy = SelectionPolicy(make_strategy(strategy, params), learner, pool, candidates, units, batch,
                             warmup=warmup, no_repeat=no_repeat, seed=seed)
    result = SessionResult(strategy, seed)
    shown: list[int] = []
    try:
        while len(shown) < budget:
            policy.batch = min(batch, budget - len(shown))
            started = time.perf_counter()
            decision = policy.decide(len(shown))
            result.seconds += time.perf_counter() - started
            if len(decision.added):  # images the strategy made: the twins rate them too
                rates = np.concatenate([rates, world.rates(pool.images[len(rates):])])
            chosen = decision.chosen[:budget - len(shown)].copy()
            if control:
                _mix_controls(chosen, policy.allowed(), control, control_rng)
            counts = rng.poisson(rates[chosen]).astype(float)
            learner.learn(chosen, counts)
            for index, count in zip(chosen, counts):
                policy.observe(int(index), count)
            shown += [int(i) for i in chosen]
            learner.update()
            if learner.refreshing:
                learner.swap(wait=True)
            if len(shown) // every > (len(shown) - len(chosen)) // every or len(shown) == budget:
                result.trials.append(len(shown))
                result.r.append(heldout_r(learner.predictive(heldout)[0], world.heldout_rates))
    finally:
        learner.close()
    result.drive = float(rates[shown].mean())
    result.distinct = len(set(shown))
    result.refreshes = learner.core_version
    return result


def _mix_controls(chosen: np.ndarray, allowed: np.ndarray, fraction: float, rng: np.random.Generator) -> None:
    """Replace each of ``chosen`` (in place) with probability ``fraction`` by a random ``allowed`` image."""
    swap = rng.random(len(chosen)) < fraction
    spare = np.setdiff1d(allowed, chosen)
    if swap.any() and len(spare) >= swap.sum():
        chosen[swap] = rng.choice(spare, int(swap.sum()), replace=False)


# ---------------------------------------------------------------- the bench --
def distinct(pools) -> StimulusPool:
    """The pools combined, each image once (the first time it appears)."""
    images, families, params, seen = [], [], [], set()
    for pool in pools:
        for i, sid in enumerate(pool.ids):
            if sid not in seen:
                seen.add(sid)
                images.append(pool.images[i])
                families.append(pool.families[i])
                params.append(pool.params[i])
    return StimulusPool(np.stack(images), families, params)


@dataclass
class EfficiencyReport:
    """Sessions per strategy and the figures derived from them."""

    sessions: dict[str, list[SessionResult]]  # by arm label
    target: float
    twins: int
    arms: list[Arm] = field(default_factory=list)

    def trials_to(self, strategy: str, target: float) -> float:
        """Trials the strategy's median curve (over sessions) needs to reach ``target``."""
        trials, r = self.curve(strategy)
        return SessionResult(strategy, -1, list(trials), r.tolist()).trials_to(target)

    def trials_to_target(self, strategy: str) -> float:
        return self.trials_to(strategy, self.target)

    def curve(self, strategy: str) -> tuple[list[int], np.ndarray]:
        """Scored trial counts and the median r over seeds at each."""
        runs = self.sessions[strategy]
        return runs[0].trials, np.median([s.r for s in runs], axis=0)

    def milestones(self) -> list[tuple[int, float]]:
        """(trials, random's median r there) at about a quarter, half and all of the budget."""
        trials, r = self.curve("random")
        picks = sorted({int(np.searchsorted(trials, trials[-1] * f)) for f in (0.25, 0.5, 1.0)})
        return [(trials[i], float(r[i])) for i in picks]

    def rows(self) -> list[dict]:
        """One row per strategy: trials to target, ratio to random, drive ratio, final r."""
        base_trials = self.trials_to_target("random")
        base_drive = np.mean([s.drive for s in self.sessions["random"]])
        rows = []
        for name, runs in self.sessions.items():
            trials = self.trials_to_target(name)
            rows.append({
                "strategy": name,
                "trials_to_target": trials,
                "fewer_trials_than_random": base_trials / trials if np.isfinite(trials) else 0.0,
                "drive_vs_random": float(np.mean([s.drive for s in runs]) / base_drive),
                "final_r": float(self.curve(name)[1][-1]),
                "distinct_images": int(np.median([s.distinct for s in runs])),
                "ms_per_decision": 1e3 * float(np.mean([s.seconds for s in runs])) / max(1, len(runs[0].trials)),
            })
        return rows

    def table(self) -> str:
        """The printed figures."""
        lines = [f"{self.twins} twins; target: held-out r {self.target:.3f} (median over twins); "
                 f"{len(next(iter(self.sessions.values())))} sessions per strategy, medians over them",
                 f"{'strategy':<20}{'trials to target':>17}{'x fewer than random':>21}{'drive vs random':>17}"
                 f"{'final r':>9}{'distinct':>10}{'ms/decision':>13}"]
        for row in self.rows():
            trials = f"{row['trials_to_target']:.0f}" if np.isfinite(row["trials_to_target"]) else "not reached"
            ratio = f"{row['fewer_trials_than_random']:.2f}" if row["fewer_trials_than_random"] else "-"
            lines.append(f"{row['strategy']:<20}{trials:>17}{ratio:>21}{row['drive_vs_random']:>17.2f}"
                         f"{row['final_r']:>9.3f}{row['distinct_images']:>10}{row['ms_per_decision']:>13.1f}")
        lines.append("x fewer trials than random to reach the r random reaches after " +
                     ", ".join(f"{n}" for n, _ in self.milestones()) + " trials:")
        for name in self.sessions:
            ratios = []
            for _, r in self.milestones():
                needed = self.trials_to(name, r)
                ratios.append(f"{self.trials_to('random', r) / needed:.2f}" if np.isfinite(needed) else "-")
            lines.append(f"  {name:<18}" + " ".join(f"{x:>6}" for x in ratios))
        trials, _ = self.curve("random")
        marks = sorted({trials[i] for i in np.linspace(0, len(trials) - 1, min(6, len(trials))).astype(int)})
        lines.append("held-out r (median over sessions) after " + ", ".join(map(str, marks)) + " trials:")
        for name in self.sessions:
            n, r = self.curve(name)
            lines.append(f"  {name:<18}" + " ".join(f"{r[n.index(m)]:>6.3f}" for m in marks))
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Rows, curves and every session's figures."""
        return {"target": self.target, "twins": self.twins, "rows": self.rows(),
                "arms": [vars(arm) for arm in self.arms],
                "sessions": {name: [vars(s) for s in runs] for name, runs in self.sessions.items()}}

    def write_json(self, path: Path) -> None:
        """:meth:`to_json` written to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1, default=float))

    @classmethod
    def of(cls, sessions: dict[str, list[SessionResult]], arms: list[Arm], twins: int,
           target: float | None = None) -> EfficiencyReport:
        """The report of ``sessions`` (by arm label, random's among them); ``target`` defaults to the
        r random reaches at the full budget (median over its sessions)."""
        if target is None:
            target = float(np.median([s.r[-1] for s in sessions["random"]]))
        return cls(sessions, target, twins, arms)


def with_random(arms: list[Arm]) -> list[Arm]:
    """``arms`` after random (always measured, first: the baseline of every ratio); a one-line error
    when two share a label."""
    arms = [Arm("random", "random")] + [arm for arm in arms if arm.label != "random"]
    if len({arm.label for arm in arms}) < len(arms):
        raise ClosedLoopError("strategies: two rows share a label (name them LABEL=NAME)")
    return arms


def run_arm(world: TwinWorld, spec: ModelSpec, arm: Arm, seed: int, budget: int = 400,
            cache: Path | None = None, **session) -> SessionResult:
    """One simulated session of ``arm`` with ``seed`` (:func:`simulate_session`, ``session`` its
    other settings) on one BLAS thread: a multi-threaded BLAS on a shared machine is many times
    slower. The unit of work of a benchmark, and a cell of ``closedloop sweep efficiency``."""
    with threadpool_limits(1):
        return simulate_session(world, spec, arm.strategy, arm.params, budget=budget, seed=seed, cache=cache,
                                control=arm.control, **session)


def run_efficiency(world: TwinWorld, core: CoreSpec, arms: list[Arm], budget: int = 400,
                   seeds: int = 3, target: float | None = None, log=print, members: int = 16,
                   cache: Path | None = None, **session) -> EfficiencyReport:
    """Simulated sessions for each :class:`Arm` (random always included, first) and seed, each with
    a fresh :class:`~closedloop.learn.OnlineLearner` on ``core`` (features cached in ``cache``,
    default the learner's own cache folder).

    ``target`` defaults to the r random reaches at the full budget (median over seeds), so
    random needs about ``budget`` trials and a strategy's ratio says how many fewer it needs.
    """
    spec = learner_spec(core, members)
    arms = with_random(arms)
    sessions: dict[str, list[SessionResult]] = {}
    for arm in arms:
        sessions[arm.label] = []
        for seed in range(seeds):
            started = time.perf_counter()
            run = run_arm(world, spec, arm, seed, budget, cache, **session)
            sessions[arm.label].append(run)
            log(f"{arm.label} seed {seed}: r {run.r[-1]:.3f} after {budget} trials "
                f"({time.perf_counter() - started:.0f} s)")
    return EfficiencyReport.of(sessions, arms, len(world.names), target)


@dataclass
class EfficiencyData:
    """What every simulated session of a benchmark reads: the twins, the compact models whose cores
    make the learner's features (never a twin), the pool and the held-out images."""

    twins: list[Path]
    core_models: list[Path]
    pool: StimulusPool
    heldout: np.ndarray  # (H, 112, 112, 3) uint8

    @classmethod
    def load(cls, twins_dir: Path, pool_paths: list[Path], heldout_path: Path, features_dir: Path | None = None,
             limit: int = 12, core_models: int = 4, heldout_limit: int = 300, seed: int = 0,
             log=print) -> EfficiencyData:
        """``limit`` twins of ``twins_dir`` and ``core_models`` of the other models (of
        ``features_dir`` when given) drawn with ``seed``; the pools combined (each image once) and
        the first ``heldout_limit`` held-out images, all at 112 px (the models' input)."""
        from closedloop.stimuli.load import load_pool

        twins, rest = twin_paths(Path(twins_dir), limit, seed)
        if features_dir is not None:
            rest = find_published(Path(features_dir))
            if not rest:
                raise ClosedLoopError(f"features {features_dir}: no compact models")
            twin_names = {p.name for p in twins}
            rest = [p for p in rest if p.name not in twin_names]  # a twin never makes the features
            if not rest:
                raise ClosedLoopError(f"features {features_dir}: every compact model in it is a twin")
        chosen = np.random.default_rng(seed + 1).permutation(len(rest))[:core_models]
        core_paths = [rest[i] for i in sorted(chosen)]
        pool = distinct(load_pool(path, 112)[0] for path in pool_paths)
        heldout, _ = load_pool(heldout_path, 112)
        log(f"pool: {len(pool)} images; held-out: {min(heldout_limit, len(heldout))}; twins: {len(twins)}; "
            f"core: {', '.join(p.stem for p in core_paths)}")
        return cls(twins, core_paths, pool, heldout.images[:heldout_limit])


def efficiency_from_paths(twins_dir: Path, pool_paths: list[Path], heldout_path: Path, features_dir: Path | None = None,
                          limit: int = 12, core_models: int = 4, heldout_limit: int = 300,
                          arms: list[Arm] | None = None, budget: int = 400, batch: int = 4,
                          seeds: int = 3, target: float | None = None, cache: Path | None = None,
                          seed: int = 0, log=print) -> EfficiencyReport:
    """:func:`run_efficiency` from files: twins, pool and held-out images, the core's models."""
    data = EfficiencyData.load(twins_dir, pool_paths, heldout_path, features_dir, limit, core_models,
                               heldout_limit, seed, log)
    world = build_world(data.twins, data.pool, data.heldout, seed, cache, log)
    with tempfile.TemporaryDirectory(prefix="closedloop-core-") as folder:
        core = CoreSpec(kind="compact", path=core_folder(data.core_models, Path(folder)), layer="4")
        return run_efficiency(world, core, arms or [], budget, seeds, target, log, batch=batch,
                              cache=None if cache is None else Path(cache) / "features")


def parse_arms(text: str) -> list[Arm]:
    """The ``--strategies`` text: ``;``-separated :meth:`Arm.parse` items."""
    return [Arm.parse(item) for item in text.split(";") if item.strip()]
