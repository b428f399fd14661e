"""Selection efficiency on digital twins: how many trials each strategy needs.

A simulated session here is the closed loop without the rig: each trial the
strategy picks images from the pool, the digital twins (compact models of
real V4 neurons, :class:`closedloop.simulate.neurons.Population`) give each a
Poisson spike count in the 100 ms window, the learner refits, and every
``every`` trials its prediction of the twins' true rates on held-out images
is scored (Pearson r, median over twins). Strategies are the protocol's
plug-ins (:mod:`closedloop.select.registry`), given the same
:class:`~closedloop.select.strategies.SelectionContext` as in the live loop.

The learner is a readout on a fixed core (:class:`FeatureCore`: the layer-4
features of other compact models, averaged over 4 x 4 pixel blocks,
standardised and reduced by PCA over the pool) with a Bayesian linear-Gaussian
readout per twin (:class:`BayesianReadout`); its posterior samples are the
ensemble members the strategies see. The twins never share a model with the
core: by default the core comes from models in the twin folder that are not
evaluated.

Figures: trials to reach a target r (linear interpolation between scored
points), the ratio of random's trials to each strategy's, and the mean true
response of the shown images relative to random's (the drive).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from closedloop.config import NeuronSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.model.compact import CompactModel, find_published, load_published
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext
from closedloop.simulate.neurons import CompactNeuron, Population
from closedloop.stimuli import StimulusPool

WINDOW = 0.1  # s: response window, so expected counts are rates x 0.1
POOLING = 4  # px blocks over which core features are averaged (28 x 28 -> 7 x 7)


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
    np.save(path, value)
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


# ------------------------------------------------------------------ learner --
class FeatureCore:
    """A fixed core: layer-4 features of compact models, block-averaged, standardised, PCA.

    Parameters
    ----------
    models : list of CompactModel
        Their cores make the features (their readouts are not used).
    fit_images : ndarray
        (K, 112, 112, 3) uint8 images that fix the standardisation and the PCA.
    dims : int
        Principal components kept.
    """

    def __init__(self, models: list[CompactModel], fit_images: np.ndarray, dims: int = 300,
                 cache: Path | None = None):
        self.models = models
        raw = _cached(cache, f"core-{_digest(fit_images, text=str(len(models)) + str([m.nums_filters for m in models]))}",
                      lambda: self._raw_numpy(fit_images))
        self.mean, self.std = raw.mean(0), raw.std(0) + 1e-6
        z = (raw - self.mean) / self.std
        _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        self.components = vt[:dims].T.astype(np.float32)  # (raw features, dims)
        self.offset = (z.mean(0) @ self.components).astype(np.float32)
        self.fitted = self.transform(raw)

    def _raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, raw features) from float pixels (B, 112, 112, 3), 0-255, differentiably."""
        parts = []
        for model in self.models:
            f = model.features(pixels)
            side = int(round((f.shape[1] // model.nums_filters[-1]) ** 0.5))
            f = f.view(len(pixels), side, side, -1).permute(0, 3, 1, 2)
            parts.append(F.avg_pool2d(f, POOLING).flatten(1))
        return torch.cat(parts, 1)

    def _raw_numpy(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([self._raw(torch.from_numpy(images[i:i + 128]).float()).numpy()
                                   for i in range(0, len(images), 128)])

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) / self.std).astype(np.float32) @ self.components - self.offset

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features (B, dims) of (B, 112, 112, 3) uint8 images."""
        return self.transform(self._raw_numpy(images))

    def torch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable features (B, dims) of float pixels (B, 112, 112, 3), 0-255."""
        z = (self._raw(pixels) - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)
        return z.float() @ torch.from_numpy(self.components) - torch.from_numpy(self.offset)


class BayesianReadout:
    """Linear-Gaussian readouts, one per unit, on shared features.

    For unit ``u``: counts ~ N(b_u + w_u . z, s_u^2) with prior w_u ~ N(0, s_u^2 / alpha I);
    ``alpha`` (shared) is chosen by leave-one-out cross-validation at every fit.
    The posterior of ``w_u`` is N(m_u, s_u^2 A^-1), A = Z'Z + alpha I.

    Parameters
    ----------
    members : int
        Posterior samples drawn as the ensemble members strategies see.
    """

    ALPHAS = np.logspace(-1, 5, 25)

    def __init__(self, dims: int, units: int, members: int = 16, seed: int = 0):
        self.dims, self.units, self.members = dims, units, members
        self.rng = np.random.default_rng(seed)
        self.weights = np.zeros((dims, units))
        self.bias = np.zeros(units)
        self.cov = np.eye(dims) * 1e3  # A^-1
        self.noise = np.ones(units)  # s_u^2
        self.alpha = 1.0
        self.samples = np.zeros((members, dims, units))

    def fit(self, z: np.ndarray, counts: np.ndarray) -> None:
        """Refit on features (n, dims) and counts (n, units)."""
        zc, yc = z - z.mean(0), counts - counts.mean(0)
        n = len(z)
        # The singular vectors of zc from the smaller Gram matrix. With n <= dims one of them is
        # the constant vector (zc is centred): the intercept's direction, fitted, never shrunk.
        if n <= self.dims:
            eigenvalues, u = np.linalg.eigh(zc @ zc.T)
            s2 = np.maximum(eigenvalues, 0.0)
            intercept = np.abs(u.sum(0)) / np.sqrt(n) > 0.9
        else:
            eigenvalues, v = np.linalg.eigh(zc.T @ zc)
            keep = eigenvalues > 1e-9 * eigenvalues.max()
            s2 = eigenvalues[keep]
            u = zc @ v[:, keep] / np.sqrt(s2)
            intercept = np.zeros(len(s2), bool)
        uty = u.T @ yc
        best = None
        for alpha in self.ALPHAS:  # leave-one-out error from the hat matrix, summed over units
            shrink = np.where(intercept, 1.0, s2 / (s2 + alpha))
            fitted = u @ (shrink[:, None] * uty)
            remain = np.maximum((u ** 2) @ (1 - shrink) + (1 - (u ** 2).sum(1)), 1e-12)  # 1 - leverage
            loo = (((yc - fitted) / remain[:, None]) ** 2).sum()
            if best is None or loo < best[0]:
                best = (loo, alpha, fitted, shrink.sum())
        _, alpha, fitted, dof = best
        self.alpha = alpha
        a = zc.T @ zc + alpha * np.eye(self.dims)
        self.cov = np.linalg.inv(a)
        self.weights = self.cov @ zc.T @ yc
        self.center = z.mean(0)
        self.bias = counts.mean(0) - self.center @ self.weights
        self.noise = np.maximum(((yc - fitted) ** 2).sum(0) / max(n - dof, 1.0), 1e-3)
        chol = np.linalg.cholesky(self.cov + 1e-9 * np.eye(self.dims))
        eps = self.rng.standard_normal((self.members, self.dims, self.units))
        self.samples = self.weights + np.einsum("ij,mju->miu", chol, eps) * np.sqrt(self.noise)

    def mean(self, z: np.ndarray) -> np.ndarray:
        """Posterior mean prediction (units, B), counts per window."""
        return (z @ self.weights + self.bias).T

    def draws(self, z: np.ndarray) -> np.ndarray:
        """Predictions of the posterior samples (members, units, B), floored at 0.01 spikes."""
        return np.maximum(np.einsum("bi,miu->mub", z, self.samples) + self.bias[None, :, None], 0.01)


class LearnerModel:
    """What ``SelectionContext.model`` offers strategies in a simulated session: the core,
    the readout's posterior samples as members (same contract as ``OnlineEnsemble``), and
    the features the readout is linear in (``embedding``, with its ``ridge``)."""

    def __init__(self, core: FeatureCore, readout: BayesianReadout, features: np.ndarray):
        self.core, self.readout, self.features = core, readout, features

    @property
    def ridge(self) -> float:
        return self.readout.alpha

    def embedding(self, pool_index: np.ndarray) -> np.ndarray:
        """Features (images, dims) of pool images."""
        return self.features[pool_index]

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Expected counts (members, units, B) for (B, N, N, 3) uint8 images."""
        return self.readout.draws(self.core(images))

    def torch_predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable expected counts (members, units, B) for float pixels, 0-255."""
        z = self.core.torch_features(pixels)
        samples = torch.from_numpy(self.readout.samples).float()
        out = torch.einsum("bi,miu->mub", z, samples) + torch.from_numpy(self.readout.bias).float()[None, :, None]
        return out.clamp(min=0.01)


# ----------------------------------------------------------------- sessions --
@dataclass
class SessionResult:
    """One simulated session: held-out r after each scored trial count, and what was shown."""

    strategy: str
    seed: int
    trials: list[int] = field(default_factory=list)
    r: list[float] = field(default_factory=list)  # median over twins
    drive: float = 0.0  # mean true expected count of the shown images (spikes per window)
    distinct: int = 0  # distinct images shown
    seconds: float = 0.0  # wall time of the strategy's choices

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


def simulate_session(world: TwinWorld, core: FeatureCore, pool_features: np.ndarray,
                     heldout_features: np.ndarray, strategy: str, params: dict | None = None,
                     budget: int = 400, batch: int = 4, warmup: int = 32, every: int = 16,
                     no_repeat: int = 10_000, members: int = 16, seed: int = 0) -> SessionResult:
    """Run one simulated session of ``budget`` trials (one image per trial).

    The first ``warmup`` trials are random (as in the live loop); then the
    strategy chooses ``batch`` images per decision from the pool, minus the
    last ``no_repeat`` shown. The readout refits after every decision.
    """
    rng = np.random.default_rng(seed)
    chooser, warm = make_strategy(strategy, params), make_strategy("random")
    pool = StimulusPool(world.pool.images, world.pool.families, world.pool.params)
    rates = world.pool_rates
    readout = BayesianReadout(core.components.shape[1], len(world.names), members, seed)
    model = LearnerModel(core, readout, pool_features)
    result = SessionResult(strategy, seed)
    shown: list[int] = []
    counts: list[np.ndarray] = []

    def add_images(images, families, params_list):
        nonlocal rates
        index = pool.append(images, families, params_list)
        rates = np.concatenate([rates, world.rates(images)])
        model.features = np.concatenate([model.features, core(images)])
        return index

    while len(shown) < budget:
        allowed = np.setdiff1d(np.arange(len(pool)), shown[-no_repeat:])
        use = warm if len(shown) < warmup else chooser
        context = SelectionContext(allowed, pool, readout.draws(model.features[allowed]) if use.needs_model else None,
                                   model, tuple(world.names), np.array(shown, int),
                                   np.array(counts).reshape(len(shown), len(world.names)), add_images)
        started = time.perf_counter()
        chosen, _ = use.choose(context, min(batch, budget - len(shown)), rng)
        result.seconds += time.perf_counter() - started
        for index in chosen:
            count = rng.poisson(rates[index]).astype(float)
            shown.append(int(index))
            counts.append(count)
            chooser.observe(int(index), count)
        readout.fit(model.features[shown], np.array(counts))
        if len(shown) // every > (len(shown) - len(chosen)) // every or len(shown) == budget:
            result.trials.append(len(shown))
            result.r.append(heldout_r(readout.mean(heldout_features), world.heldout_rates))
    result.drive = float(rates[shown].mean())
    result.distinct = len(set(shown))
    return result


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

    sessions: dict[str, list[SessionResult]]
    target: float
    twins: int

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

    def write_json(self, path: Path) -> None:
        """Rows, curves and every session's figures as JSON."""
        import json

        data = {"target": self.target, "twins": self.twins, "rows": self.rows(),
                "sessions": {name: [vars(s) for s in runs] for name, runs in self.sessions.items()}}
        Path(path).write_text(json.dumps(data, indent=1, default=float))


def run_efficiency(world: TwinWorld, core: FeatureCore, strategies: dict[str, dict], budget: int = 400,
                   seeds: int = 3, target: float | None = None, log=print, **session) -> EfficiencyReport:
    """Simulated sessions for each strategy (``{name: params}``, random always included) and seed.

    ``target`` defaults to the r random reaches at the full budget (median over seeds), so
    random needs about ``budget`` trials and a strategy's ratio says how many fewer it needs.
    """
    pool_features, heldout_features = core.fitted, core(world.heldout)
    names = {"random": {}, **strategies}
    sessions: dict[str, list[SessionResult]] = {}
    for name, params in names.items():
        make_strategy(name, params)  # a bad name or setting fails before any session runs
    for name, params in names.items():
        sessions[name] = []
        with threadpool_limits(1):  # a multi-threaded BLAS on a shared machine is many times slower
            for seed in range(seeds):
                started = time.perf_counter()
                run = simulate_session(world, core, pool_features, heldout_features, name, params,
                                       budget=budget, seed=seed, **session)
                sessions[name].append(run)
                log(f"{name} seed {seed}: r {run.r[-1]:.3f} after {budget} trials "
                    f"({time.perf_counter() - started:.0f} s)")
    if target is None:
        target = float(np.median([s.r[-1] for s in sessions["random"]]))
    return EfficiencyReport(sessions, target, len(world.names))


def efficiency_from_paths(twins_dir: Path, pool_paths: list[Path], heldout_path: Path, features_dir: Path | None = None,
                          limit: int = 12, core_models: int = 4, heldout_limit: int = 300,
                          strategies: dict[str, dict] | None = None, budget: int = 400, batch: int = 4,
                          seeds: int = 3, target: float | None = None, cache: Path | None = None,
                          seed: int = 0, log=print) -> EfficiencyReport:
    """:func:`run_efficiency` from files: twins, pool and held-out images, the feature models."""
    from closedloop.stimuli.load import load_pool

    twins, rest = twin_paths(Path(twins_dir), limit, seed)
    if features_dir is not None:
        rest = find_published(Path(features_dir))
        if not rest:
            raise ClosedLoopError(f"features {features_dir}: no compact models")
    chosen = np.random.default_rng(seed + 1).permutation(len(rest))[:core_models]
    core_paths = [rest[i] for i in sorted(chosen)]
    pool = distinct(load_pool(path, 112)[0] for path in pool_paths)
    heldout, _ = load_pool(heldout_path, 112)
    log(f"pool: {len(pool)} images; held-out: {min(heldout_limit, len(heldout))}; twins: {len(twins)}; "
        f"core: {', '.join(p.stem for p in core_paths)}")
    world = build_world(twins, pool, heldout.images[:heldout_limit], seed, cache, log)
    core = FeatureCore([load_published(p) for p in core_paths], pool.images, cache=cache)
    return run_efficiency(world, core, strategies or {}, budget, seeds, target, log, batch=batch)
