"""The online learner: a core, Bayesian readouts per unit, and background refinement.

One learner serves the live model worker, ``closedloop replay``, ``closedloop design`` and every
benchmark. Two time scales:

* **per response** (the choice path, milliseconds): the readouts' posterior takes a rank-``b``
  Woodbury step (:meth:`Posterior.update`), and the latent mean and variance it predicts for every
  pool image are updated in place from the same vectors, so every candidate's predictive mean and
  variance is current when the next choice is made;
* **in the background**: a *refresh* refits the readouts' ridge and noise by the evidence on every
  response so far and, every ``finetune_every`` responses, fine-tunes a torch core on them; the
  fine-tuned core is kept only if it predicts the session's held-out responses better (each
  comparison is kept in :attr:`OnlineLearner.comparisons`). The caller decides when a finished
  refresh is swapped in (:meth:`swap`); the responses that came meanwhile are then learned again by
  Woodbury steps, so the result is the same whenever the swap happens.

A refresh's snapshot is taken when the caller asks (:meth:`refresh`), so the sequence of models is a
function of the sequence of calls (the model worker's replay contract). Fine-tuned cores are written
to ``store`` as they are made and read from ``recorded`` instead of being trained again, so a
faithful replay does not redo the training.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import torch
from scipy.linalg.blas import sgemm

from closedloop.config import ModelSpec
from closedloop.errors import ClosedLoopError, one_line
from closedloop.learn.cores import Core, Projection, load_core, pool_features, read_header
from closedloop.learn.readout import (COUNT_FLOOR, Posterior, count_variance, expected_counts, fit, stabilise,
                                      with_intercept)
from closedloop.model.files import check_finite

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "closedloop-learner", 1
MIN_HELDOUT = 5
CHOICE_SWITCH_INTERVAL = 0.0005  # s: the interpreter's thread switch interval while a choice is made
POOL_BLOCK = 256  # pool images per block of a refresh's matrix products (a few ms each: see choosing())
CATCH_UP_SECONDS = 1.0  # longest a refresh learns again, in the background, what came since its snapshot  # held-out images with responses needed before a fine-tuned core can be compared


@dataclass
class _Refresh:
    """A finished refresh: its posterior and pool state at the snapshot, and a new core if accepted."""

    posterior: Posterior
    x: np.ndarray  # (K0, d+1) pool features with intercept at the snapshot
    mu: np.ndarray  # (K0, units) latent means
    v: np.ndarray  # (K0,) latent variance factors
    trained_on: int
    network: torch.nn.Module | None = None  # the fine-tuned core's network, if accepted
    comparison: dict | None = None
    seconds: float = 0.0
    caught_up: int = 0  # responses after the snapshot learned again in the background, one at a time
    base: tuple[Posterior, np.ndarray, np.ndarray] | None = None  # posterior, mu, v before those


@dataclass
class _Snapshot:
    index: np.ndarray
    y: np.ndarray
    heldout_index: np.ndarray
    heldout_mean: np.ndarray
    x: np.ndarray
    network: torch.nn.Module | None
    finetune: bool
    images: np.ndarray = field(repr=False, default=None)


class OnlineLearner:
    """Learns (pool image, spike counts) pairs as they arrive and predicts every pool image.

    Parameters
    ----------
    images : ndarray, (K, N, N, 3) uint8
        The candidate pool; responses and predictions refer to it by index.
    units : int
        Recorded units.
    spec : ModelSpec
        The core and the learning settings.
    seed : int
        Seed of the core's initialisation, posterior draws and fine-tuning minibatches.
    background : bool
        Run refreshes in a background thread (the live loop); without it a refresh runs when
        :meth:`swap` waits for it, so replays and tests are exactly reproducible.
    store, recorded : Path, optional
        Folder to write each fine-tuned core to / to read them from instead of training.
    cache : Path, optional
        Folder of the pool-feature cache (default :func:`closedloop.learn.cores.cache_folder`).

    Raises
    ------
    ClosedLoopError
        A missing or malformed core or warm-start file (one line naming it).
    """

    def __init__(self, images: np.ndarray, units: int, spec: ModelSpec, seed: int = 0, background: bool = True,
                 store: Path | None = None, recorded: Path | None = None, cache: Path | None = None):
        self.spec, self.units, self.seed = spec, units, seed
        self.core: Core = load_core(spec, seed)
        self._images = np.asarray(images)
        self.posterior: Posterior | None = None
        self._prior_mean: np.ndarray | None = None  # the readouts' prior mean: a warm start's
        if spec.warm_start is not None and is_checkpoint(spec.warm_start):
            features = self._warm_start(spec.warm_start)
        else:
            self.projection, features = pool_features(self.core, images, spec.core.dims, seed, cache)
            self.posterior = Posterior.prior(self.projection.dims, units, ridge=float(self.projection.dims))
            if spec.warm_start is not None:
                self.posterior = self._model_prior(spec.warm_start, features)
                self._prior_mean = self.posterior.M.copy()
        self._x = with_intercept(features)
        self._mu, self._v = self._pool_state(self._x, self.posterior)
        self._draw_rng = np.random.default_rng([seed, 2])
        self._index: list[int] = []
        self._y: list[np.ndarray] = []
        self._heldout: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.store, self.recorded = store, recorded
        self.comparisons: list[dict] = []  # every fine-tuned core against the current one
        self.refreshing = False  # a refresh was started and is not swapped in yet
        self.trained_on = 0  # responses the current hyperparameters and core were fitted on
        self.core_version = 0  # refreshes swapped in so far
        self.refresh_seconds = 0.0  # spent refreshing, in whichever thread
        self._last_snapshot = 0
        self._last_finetune = 0
        self._pending: _Snapshot | None = None
        self._ready: _Refresh | None = None
        self._done = threading.Event()
        self._quiet = threading.Event()  # cleared while a choice is being made: refreshes wait
        self._quiet.set()
        self._background = background
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="learner-refresh", daemon=True)
        if background:
            self._thread.start()
        self.predictive(np.zeros(1, int))  # compiles the kernel (or loads it), so no choice waits on that

    # ------------------------------------------------------------ learning --
    @property
    def n_responses(self) -> int:
        """Responses learned (held-out ones not counted)."""
        return len(self._index)

    def learn(self, index: np.ndarray, counts: np.ndarray) -> None:
        """Learn responses to pool images ``index`` (b,): spike counts (b, units). One Woodbury step."""
        index = np.atleast_1d(np.asarray(index, int))
        y = stabilise(np.asarray(counts, dtype=np.float64).reshape(len(index), self.units))
        with self._lock:
            self._index += index.tolist()
            self._y += list(y)
            self._step(index, y)

    def add(self, index: int, counts: np.ndarray) -> None:
        """Learn one response (see :meth:`learn`)."""
        self.learn(np.array([index]), np.asarray(counts)[None])

    def add_heldout(self, index: int, counts: np.ndarray) -> None:
        """A held-out response: never learned, used to judge fine-tuned cores."""
        with self._lock:
            self._heldout.setdefault(int(index), []).append(np.asarray(counts, dtype=np.float64))

    def _step(self, index: np.ndarray, y: np.ndarray) -> None:
        """The Woodbury step for pool images ``index`` (call with the lock held)."""
        self._mu = _woodbury(self._x, self._mu, self._v, self.posterior, self._x[index], y)

    # ------------------------------------------------------------ predicting --
    @property
    def ridge(self) -> float:
        """The readouts' ridge on :meth:`embedding` features (for ``variance_reduction``)."""
        return self.posterior.ridge

    def latent(self, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Latent (stabilised-count) posterior means and variances, each (units, B)."""
        with self._lock:
            mu = self._mu.copy() if index is None else np.take(self._mu, index, axis=1)
            v = self._v if index is None else self._v[index]
            noise = self.posterior.noise.astype(np.float32)
        return mu, noise[:, None] * v[None, :]

    def predictive(self, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Expected spike counts and their posterior variances for pool images ``index`` (all if
        None): two (units, B) arrays (:func:`expected_counts`, :func:`count_variance`). This is the
        choice path: one compiled pass over the pool's latent means and variances."""
        with self._lock:
            index = np.arange(self._mu.shape[1]) if index is None else np.asarray(index, np.int64)
            mean = np.empty((self.units, len(index)), np.float32)
            variance = np.empty_like(mean)
            _predictive_kernel(self._mu, self._v, self.posterior.noise.astype(np.float32), index,
                               np.float32(COUNT_FLOOR), mean, variance)
        return mean, variance

    def predictions(self, index: np.ndarray | None = None) -> np.ndarray:
        """Expected counts (members, units, B) under ``members`` draws of the readouts' posterior."""
        with self._lock:
            x = self._x if index is None else self._x[index]
            weights = self.posterior.draws(self.spec.members, self._draw_rng).astype(np.float32)
            noise = self.posterior.noise.astype(np.float32)
        latent = np.matmul(x[None], weights).transpose(0, 2, 1)  # (members, units, B)
        return expected_counts(latent, 0.0, noise[None, :, None])

    def embedding(self, index: np.ndarray) -> np.ndarray:
        """Features (B, dims) the readouts are linear in, of pool images ``index``."""
        with self._lock:
            return self._x[np.asarray(index), 1:]

    def features(self, images: np.ndarray) -> np.ndarray:
        """Projected features (B, dims) of new (B, N, N, 3) uint8 images."""
        return self.projection(self.core.raw(images)).astype(np.float32)

    def predictive_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predictive` for (B, N, N, 3) uint8 images outside the pool: two (units, B) arrays."""
        x = with_intercept(self.features(images))
        with self._lock:
            mu, v = self._pool_state(x, self.posterior)
            noise = self.posterior.noise.astype(np.float32)[:, None]
        tau2 = noise * v[None, :]
        return expected_counts(mu, tau2, noise), count_variance(mu, tau2)

    def torch_mean(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable expected counts (units, B) under the posterior mean, for float pixels
        (B, N, N, 3), 0-255 (the posterior variance left out).

        Raises
        ------
        ClosedLoopError
            For a core that is not a torch module (ONNX).
        """
        if self.core.network is None:
            raise ClosedLoopError(f"core {self.core.name}: not differentiable (ONNX); choose a strategy "
                                  "that does not synthesise images")
        with self._lock:
            weights = torch.from_numpy(self.posterior.M).float()
            noise = torch.from_numpy(self.posterior.noise).float()
        self.core.network.eval()
        latent = self.projection.torch(self.core.network(pixels)) @ weights[1:] + weights[0]  # (B, units)
        return expected_counts(latent, 0.0, noise).T

    def extend(self, images: np.ndarray) -> np.ndarray:
        """Append (B, N, N, 3) uint8 images (e.g. synthesised ones) to the pool; their indices."""
        x = with_intercept(self.features(images))
        with self._lock:
            start = len(self._x)
            mu, v = self._pool_state(x, self.posterior)
            self._x, self._mu, self._v = np.concatenate([self._x, x]), np.concatenate([self._mu, mu], axis=1), \
                np.concatenate([self._v, v])
            self._images = np.concatenate([self._images, images])
        return np.arange(start, start + len(x))

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Every learned response: pool indices (n,) and stabilised counts (n, units), oldest first."""
        with self._lock:
            if not self._index:
                return np.zeros(0, int), np.zeros((0, self.units))
            return np.array(self._index), np.stack(self._y)

    @contextlib.contextmanager
    def choosing(self):
        """While inside, the background refresh waits at its next pause point (between minibatches,
        feature batches, blocks of pool images or responses), so a choice never competes with
        learning for the CPU, its caches, the interpreter or the BLAS library (whose calls from two
        threads can wait on each other: the refresh's products come in blocks of a few ms); the
        garbage collector is off and the interpreter switches threads every 0.5 ms, so the refresh
        thread, finishing the step it was in, cannot hold the choice up for long. The worker learns
        and chooses in it."""
        self._quiet.clear()
        collecting, interval = gc.isenabled(), sys.getswitchinterval()
        gc.disable()  # no collection of the refresh thread's garbage holds the interpreter meanwhile
        sys.setswitchinterval(CHOICE_SWITCH_INTERVAL)  # and the refresh thread hands it back quickly
        try:
            yield
        finally:
            sys.setswitchinterval(interval)
            if collecting:
                gc.enable()
            self._quiet.set()

    def _pause(self) -> None:
        """A pause point of the refresh thread: wait while a choice is being made."""
        if self._background:
            self._quiet.wait()

    def _paused(self, function, *args):
        """``function(*args)`` after a pause point."""
        self._pause()
        return function(*args)

    @contextlib.contextmanager
    def draws_kept(self):
        """Posterior draws made inside do not advance the learner's stream of draws (to ask another
        strategy what it would choose without changing what the session's strategy will see)."""
        state = self._draw_rng.bit_generator.state
        try:
            yield
        finally:
            self._draw_rng.bit_generator.state = state

    # ------------------------------------------------------------ refreshing --
    def refresh(self, force: bool = False) -> bool:
        """Start a refresh on a snapshot taken now, when ``refresh_every`` responses came since
        the last (or the responses doubled: early on the ridge matters most; ``force``: any new
        response); not while one is in flight. Returns whether one started."""
        with self._lock:
            n = len(self._index)
            due = n - self._last_snapshot >= (1 if force else min(self.spec.refresh_every, max(self._last_snapshot, 8)))
            if self.refreshing or not due:
                return False
            finetune = (self.core.trainable and self.spec.finetune_every > 0
                        and n - self._last_finetune >= self.spec.finetune_every)
            snapshot = _Snapshot(np.array(self._index), np.stack(self._y), *self._heldout_means(), self._x,
                                 self.core.network if finetune else None, finetune,
                                 self._images if finetune else None)
            self.refreshing, self._last_snapshot = True, n
            if finetune:
                self._last_finetune = n
        if self._background:
            self._jobs.put(snapshot)
        else:
            self._pending = snapshot
        return True

    def swap(self, wait: bool = False, timeout: float = 300.0) -> bool:
        """Put in a finished refresh (``wait``: wait for it, or run it here without a background
        thread) and learn again the responses that came since its snapshot; returns whether one
        was swapped in."""
        if not self.refreshing:
            return False
        if wait and not self._background:
            snapshot, self._pending = self._pending, None
            self._ready = self._run(snapshot)
        elif wait and not self._done.wait(timeout):
            raise TimeoutError(f"learner refresh not done within {timeout:g} s")
        with self._lock:
            ready = self._ready
            if ready is None:
                return False
            self._ready = None
            self._done.clear()
            if ready.network is not None:
                self.core = Core(self.core.name, f"{self.core.identity}+{ready.trained_on}", ready.network,
                                 grid=self.core.grid)
            posterior, x, mu, v, caught_up = ready.posterior, ready.x, ready.mu, ready.v, ready.caught_up
            if len(self._x) > len(x):  # images were added meanwhile: their rows anew, then every response
                if ready.base is not None:
                    (posterior, mu, v), caught_up = ready.base, 0
                extra = self._x[len(x):] if ready.network is None else \
                    with_intercept(self.projection(self.core.raw(self._images[len(x):])).astype(np.float32))
                extra_mu, extra_v = self._pool_state(extra, posterior)
                x, mu, v = np.concatenate([x, extra]), np.concatenate([mu, extra_mu], axis=1), \
                    np.concatenate([v, extra_v])
            self._x, self._mu, self._v, self.posterior = x, mu, v, posterior
            for n in range(ready.trained_on + caught_up, len(self._index)):  # the rest, one at a time
                self._step(np.array([self._index[n]]), self._y[n][None])
            self.trained_on = ready.trained_on
            if ready.comparison is not None:
                self.comparisons.append(ready.comparison)
            self.core_version += 1
            self.refreshing = False
        return True

    def wait_refreshed(self, timeout: float = 300.0) -> bool:
        """Wait (at most ``timeout`` s) for the background refresh in flight, without swapping it in;
        returns whether one is ready."""
        return self.refreshing and self._background and self._done.wait(timeout)

    def update(self) -> None:
        """Swap in a finished refresh if there is one, and start the next if due."""
        self.swap()
        self.refresh()

    def sync(self, timeout: float = 300.0) -> None:
        """Refresh on every response so far and swap it in (offline fitting and tests; the live loop
        never waits on this)."""
        if self.refreshing:
            self.swap(wait=True, timeout=timeout)
        if self.refresh(force=True):
            self.swap(wait=True, timeout=timeout)

    def close(self) -> None:
        """Stop the background refreshes."""
        self._stop.set()
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join()

    # ------------------------------------------------------------ checkpoints --
    def save(self, path: Path) -> None:
        """Write the learner's state (core, projection, readouts) as a checkpoint, atomically."""
        with self._lock:
            state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "core": self.core.name,
                     "spec": json.dumps(self.spec.model_dump(mode="json")), "seed": self.seed,
                     "units": self.units, "responses": len(self._index), "core_version": self.core_version,
                     "network": None if self.core.network is None else
                     {k: v.detach().clone() for k, v in self.core.network.state_dict().items()},
                     "projection": {k: torch.from_numpy(getattr(self.projection, k).copy())
                                    for k in ("mean", "std", "components")},
                     "posterior": {"S": torch.from_numpy(self.posterior.S.copy()),
                                   "M": torch.from_numpy(self.posterior.M.copy()),
                                   "noise": torch.from_numpy(self.posterior.noise.copy()),
                                   "ridge": self.posterior.ridge, "n": self.posterior.n}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        partial.replace(path)

    @classmethod
    def from_checkpoint(cls, path: Path, images: np.ndarray, background: bool = False) -> OnlineLearner:
        """A learner over pool ``images`` in the state checkpoint ``path`` was saved in (its core, as
        it was then, and its readouts); one-line errors name the file."""
        state = read_checkpoint(path)
        spec = state["spec"].model_copy(update={"warm_start": Path(path)})
        return cls(images, state["units"], spec, state.get("seed", 0), background=background)

    def _warm_start(self, path: Path) -> np.ndarray:
        """Start from a checkpoint: its core weights, projection and readouts (their posterior, and
        its mean as the readouts' prior mean at every refit); returns the pool's features."""
        state = read_checkpoint(path)
        if state["units"] != self.units:
            raise ClosedLoopError(f"{path}: the checkpoint has {state['units']} units, this session {self.units}")
        network = state["network"]
        if (network is None) != (self.core.network is None):
            raise ClosedLoopError(f"{path}: the checkpoint's core ({state.get('core')}) is not this session's "
                                  f"({self.core.name})")
        if network is not None:
            from closedloop.model.compact import check_state

            check_state(path, self.core.network, network, self.core.name)
            self.core.network.load_state_dict(network)
        p, q = state["projection"], state["posterior"]
        self.projection = Projection(p["mean"].numpy(), p["std"].numpy(), p["components"].numpy())
        self.posterior = Posterior(q["S"].numpy(), q["M"].numpy(), q["noise"].numpy(), float(q["ridge"]), 0)
        self._prior_mean = self.posterior.M.copy()
        return self.features(self._images)

    def _model_prior(self, path: Path, features: np.ndarray) -> Posterior:
        """The readouts' starting posterior from image models (a student per unit): the evidence fit
        of the pool's features to the models' predicted counts, stabilised, as if they had been
        responses, so the learner starts out predicting what the models predict (as closely as its
        core's features allow); its mean is also the prior mean of every later refit. The noise is
        a real response's (1 on the stabilised scale), not the models' near-zero residual."""
        predicted = warm_start_predictions(path, self._images, self.units)
        posterior = fit(with_intercept(features).astype(np.float64), stabilise(np.maximum(predicted, 0.0)))
        return Posterior(posterior.S, posterior.M, np.ones(self.units), posterior.ridge, 0)

    # ------------------------------------------------------------ internals --
    @staticmethod
    def _pool_state(x: np.ndarray, posterior: Posterior,
                    pause: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Latent means (units, K) and variance factors (K,) of pool features ``x`` under ``posterior``,
        a block of pool images at a time (``pause`` called between blocks)."""
        m, s = posterior.M.astype(np.float32), posterior.S.astype(np.float32)
        mu, v = np.empty((m.shape[1], len(x)), np.float32), np.empty(len(x), np.float32)
        for start in range(0, len(x), POOL_BLOCK):
            if pause is not None:
                pause()
            block = x[start:start + POOL_BLOCK]
            mu[:, start:start + len(block)] = (block @ m).T
            v[start:start + len(block)] = ((block @ s) * block).sum(1)
        return mu, np.maximum(v, 0.0)

    def _heldout_means(self) -> tuple[np.ndarray, np.ndarray]:
        index = np.array(sorted(self._heldout), int)
        means = np.array([np.mean(self._heldout[i], axis=0) for i in index]).reshape(len(index), self.units)
        return index, means

    def _serve(self) -> None:
        """The background thread: run each snapshot handed over, in order; keep the result. (It keeps
        the process's scheduling priority: lowered, it could hold the interpreter lock while other
        jobs on the machine keep it from running, and the choice path would wait for it.)"""
        torch.set_num_threads(self.spec.threads)
        while (snapshot := self._jobs.get()) is not None:
            result = self._run(snapshot)
            if result is None:
                return
            self._catch_up(result)
            with self._lock:
                self._ready = result
            self._done.set()

    def _catch_up(self, result: _Refresh) -> None:
        """Learn again, in the background and one at a time, the responses that came since the
        refresh's snapshot (for at most ``CATCH_UP_SECONDS``: responses may come faster than this
        thread learns them), so that swapping it in is quick; the same steps :meth:`swap` takes (it
        goes back to ``result.base`` when images were added to the pool meanwhile)."""
        result.base = (copy.deepcopy(result.posterior), result.mu.copy(), result.v.copy())
        deadline = time.perf_counter() + CATCH_UP_SECONDS
        while not self._stop.is_set() and time.perf_counter() < deadline:
            self._pause()
            with self._lock:
                n = result.trained_on + result.caught_up
                if n >= len(self._index) or self._index[n] >= len(result.x):
                    return
                index, y = self._index[n], self._y[n]
            result.mu = _woodbury(result.x, result.mu, result.v, result.posterior, result.x[[index]], y[None])
            result.caught_up += 1

    def _run(self, s: _Snapshot) -> _Refresh | None:
        """A refresh: the readouts refitted by the evidence, and a fine-tuned core if it does better."""
        started = time.perf_counter()
        current = fit(s.x[s.index].astype(np.float64), s.y, prior_mean=self._prior_mean, pause=self._pause)
        network, x, posterior, comparison = None, s.x, current, None
        if s.finetune:
            finetuned = self._finetune(s, current)
            if finetuned is None:
                return None
            tuned, tuned_x = finetuned
            candidate = fit(tuned_x[s.index].astype(np.float64), s.y, prior_mean=self._prior_mean, pause=self._pause)
            comparison = {"responses": len(s.index), "heldout_images": len(s.heldout_index),
                          "r_current": _heldout_r(current, s.x, s),
                          "r_finetuned": _heldout_r(candidate, tuned_x, s)}
            better = (len(s.heldout_index) >= MIN_HELDOUT and comparison["r_finetuned"] is not None
                      and (comparison["r_current"] is None or comparison["r_finetuned"] > comparison["r_current"]))
            comparison["accepted"] = bool(better)
            if better:
                network, x, posterior = tuned, tuned_x, candidate
        mu, v = self._pool_state(x, posterior, self._pause)
        seconds = time.perf_counter() - started
        self.refresh_seconds += seconds
        return _Refresh(posterior, x, mu, v, len(s.index), network, comparison, seconds)

    def _finetune(self, s: _Snapshot, start: Posterior) -> tuple[torch.nn.Module, np.ndarray] | None:
        """The snapshot's core network trained on its responses (Gaussian loss on stabilised counts,
        a linear head started at the readouts' posterior mean ``start``; minibatches drawn from a
        stream seeded by the seed and the responses) and its pool features (with intercept), or
        both read from ``recorded``; None when stopped. Written to ``store`` when made."""
        name = f"finetune-{len(s.index):06d}.pt"
        network = copy.deepcopy(s.network)  # the live core is only ever replaced, never changed in place
        if self.recorded is not None and (self.recorded / name).is_file():
            saved = torch.load(self.recorded / name, weights_only=True)
            network.load_state_dict(saved["state_dict"])
            return network.eval(), saved["features"].numpy()
        head = torch.nn.Linear(self.projection.dims, self.units)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(start.M[1:].T).float())
            head.bias.copy_(torch.from_numpy(start.M[0]).float())
        network.eval()  # BatchNorm keeps its statistics; its scale and shift still learn
        parameters = [p for p in network.parameters() if p.requires_grad] + list(head.parameters())
        optimizer = torch.optim.Adam(parameters, lr=self.spec.learning_rate)
        rng = np.random.default_rng([self.seed, 1, len(s.index)])
        y = torch.from_numpy(s.y).float()
        for _ in range(self.spec.steps_per_update):
            self._pause()
            batch = rng.choice(len(s.index), min(len(s.index), self.spec.batch_size), replace=False)
            pixels = torch.from_numpy(s.images[s.index[batch]]).float()
            loss = ((head(self.projection.torch(network(pixels))) - y[batch]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if self._stop.is_set():
                return None
        network.eval()
        raw = Core("", "", network).raw(s.images[:len(s.x)], self._pause)
        x = with_intercept(np.concatenate([self._paused(self.projection, raw[i:i + POOL_BLOCK])
                                           for i in range(0, len(raw), POOL_BLOCK)]).astype(np.float32))
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
            partial = self.store / (name + ".partial")
            torch.save({"state_dict": {k: v.detach().clone() for k, v in network.state_dict().items()},
                        "features": torch.from_numpy(x)}, partial)
            partial.replace(self.store / name)
        return network, x


def _woodbury(x_pool: np.ndarray, mu: np.ndarray, v: np.ndarray, posterior: Posterior, x: np.ndarray,
              y: np.ndarray) -> np.ndarray:
    """Learn responses with features ``x`` (b, d+1) and stabilised counts ``y`` (b, units): the
    posterior's Woodbury step, and in place, by BLAS, the pool's latent means ``mu`` (units, K) and
    variance factors ``v`` (K,): ``mu += ((G C^-1) R)'`` and ``v -= rowsum((G C^-1) * G)``, with
    ``G = X_pool S x'``. Returns ``mu`` (a new array only when BLAS could not write in place)."""
    sx, c_inv, residuals = posterior.update(x.astype(np.float64), y)
    if len(x) == 1:  # a matrix-vector product is faster than a one-column matrix product
        g = (x_pool @ sx[:, 0].astype(np.float32))[:, None]  # (K, 1)
    else:
        g = x_pool @ sx.astype(np.float32)  # (K, b)
    gc = g @ c_inv.astype(np.float32)
    updated = sgemm(1.0, gc, residuals.astype(np.float32), beta=1.0, c=mu.T, overwrite_c=True)
    if not np.shares_memory(updated, mu):
        mu = np.ascontiguousarray(updated.T)
    v -= (gc * g).sum(1) if len(x) > 1 else gc[:, 0] * g[:, 0]
    np.maximum(v, 0.0, out=v)
    return mu


def _heldout_r(posterior: Posterior, x: np.ndarray, s: _Snapshot) -> float | None:
    """Mean over units of Pearson r between predicted expected counts and held-out mean counts."""
    if len(s.heldout_index) < 3:
        return None
    mu, v = OnlineLearner._pool_state(x[s.heldout_index], posterior)
    noise = posterior.noise[:, None]
    predicted = expected_counts(mu, noise * v[None, :], noise)
    rs = [np.corrcoef(p, o)[0, 1] for p, o in zip(predicted, s.heldout_mean.T) if np.std(p) > 0 and np.std(o) > 0]
    return float(np.mean(rs)) if rs else None


def _is(kind: type) -> Callable[[object], bool]:
    """A check: an instance of ``kind``."""
    return lambda value: isinstance(value, kind)


def _whole(low: int) -> Callable[[object], bool]:
    """A check: an ``int`` (not a bool) of at least ``low``."""
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


def _positive(value: object) -> bool:
    """A check: a finite real number above 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _weights(value: object) -> bool:
    """A check: None (an ONNX core) or a state dict of named tensors."""
    return value is None or (isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


CHECKPOINT_FIELDS: dict[str, tuple[Callable[[object], bool], str, bool]] = {
    # field (dotted: inside a dict field listed before it): its check, what it must be, whether required
    "spec": (_is(str), "the model settings as JSON text", True),
    "core": (_is(str), "the core's name", False),
    "units": (_whole(1), "a whole number >= 1", True),
    "seed": (_whole(0), "a whole number >= 0", False),
    "responses": (_whole(0), "a whole number >= 0", False),
    "core_version": (_whole(0), "a whole number >= 0", False),
    "network": (_weights, "None or a dict of named tensors", True),
    "projection": (_is(dict), "a dict of mean, std and components", True),
    "posterior": (_is(dict), "a dict of S, M, noise, ridge and n", True),
    "posterior.ridge": (_positive, "a finite number > 0", True),
    "posterior.n": (_whole(0), "a whole number >= 0", False),
}
CHECKPOINT_TENSORS: dict[str, tuple[str, ...]] = {
    # field: its axes by length; a length named twice must agree, "units" with the units field
    "projection.mean": ("features",),
    "projection.std": ("features",),
    "projection.components": ("features", "dims"),
    "posterior.S": ("dims+1", "dims+1"),
    "posterior.M": ("dims+1", "units"),
    "posterior.noise": ("units",),
}
_MISSING = object()


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a learner checkpoint (else a warm start is read as image models)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() == ".onnx" or path.with_name(path.stem + ".nums_filters.npy").exists():
        return False
    try:
        header = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file of ours: load_model says what it is
        return False
    return isinstance(header, dict) and header.get("format") == CHECKPOINT_FORMAT


def warm_start_predictions(path: Path, images: np.ndarray, units: int) -> np.ndarray:
    """Predicted counts (K, units) of the image models a warm start names: one file with an output
    per unit, or a folder of models (published compact models, students), one per unit in natural
    order. One-line errors name the file or folder."""
    from closedloop.model.compact import find_published
    from closedloop.model.models import load_model

    path = Path(path)
    if not path.exists():
        raise ClosedLoopError(f"{path}: warm-start file not found")
    if path.is_dir():
        models = [load_model(p) for p in find_published(path)]
    else:
        try:
            models = [load_model(path)]
        except ClosedLoopError as error:
            detail = str(error).removeprefix(f"{path}: ")
            raise ClosedLoopError(f"{path}: not a closedloop learner checkpoint, nor an image model to start from "
                                  f"({detail})") from None
    outputs = sum(m.outputs for m in models)
    if outputs != units:
        raise ClosedLoopError(f"{path}: the warm-start models have {outputs} outputs, this session {units} units "
                              "(one output per unit)")
    return np.concatenate([m.predict(images).reshape(len(images), -1) for m in models], axis=1)


def read_checkpoint(path: Path) -> dict:
    """A learner checkpoint's contents, every field checked (:data:`CHECKPOINT_FIELDS`,
    :data:`CHECKPOINT_TENSORS`: types, shapes that agree, finite values), its ``spec`` read as a
    :class:`ModelSpec`.

    Raises
    ------
    ClosedLoopError
        One line naming the file and the first field that is missing or wrong.
    """
    path = Path(path)
    state = read_header(path, "learner checkpoint", CHECKPOINT_FORMAT, CHECKPOINT_VERSION,
                        "a session's checkpoints/learner-*.pt")
    for name, (check, what, required) in CHECKPOINT_FIELDS.items():
        value = _field(state, name)
        if value is _MISSING and required:
            raise _corrupt(path, name, "missing")
        if value is not _MISSING and not check(value):
            raise _corrupt(path, name, f"expected {what}, got {_kind(value)}")
    sizes = {"units": state["units"]}
    for name, axes in CHECKPOINT_TENSORS.items():
        _check_axes(path, name, _field(state, name), axes, sizes)
    check_finite(path, {name: _field(state, name) for name in CHECKPOINT_TENSORS})
    try:
        state["spec"] = ModelSpec.model_validate(json.loads(state["spec"]))
    except ValueError as error:  # bad JSON and pydantic's ValidationError alike
        raise _corrupt(path, "spec", f"not valid model settings ({one_line(error)})") from None
    return state


def _field(state: dict, name: str) -> object:
    """The value of a dotted field (its dicts already checked), or ``_MISSING``."""
    value = state
    for part in name.split("."):
        value = value.get(part, _MISSING)
    return value


def _check_axes(path: Path, name: str, tensor: object, axes: tuple[str, ...], sizes: dict[str, int]) -> None:
    """Check a float tensor field has the ``axes``, each as long as the same axis elsewhere
    (``sizes``, the lengths seen so far, grows by those seen first; an axis ``"dims+1"`` is one
    longer than ``"dims"``)."""
    shape = "(" + ", ".join(axes) + ")"
    if not (isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.float32, torch.float64)):
        raise _corrupt(path, name, f"expected a float32 or float64 tensor {shape}, got {_kind(tensor)}")
    if tensor.ndim != len(axes):
        raise _corrupt(path, name, f"expected a tensor {shape}, got shape {tuple(tensor.shape)}")
    for axis, length in zip(axes, tensor.shape):
        base, _, offset = axis.partition("+")
        expected = sizes.setdefault(base, length - int(offset or 0)) + int(offset or 0)
        if length != expected:
            raise _corrupt(path, name, f"shape {tuple(tensor.shape)} does not agree with the other fields "
                                       f"({axis} = {expected})")


def _kind(value: object) -> str:
    """A value's type for a message (with its dtype when a tensor)."""
    return f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__


def _corrupt(path: Path, name: str, problem: str) -> ClosedLoopError:
    """The one-line error for a learner checkpoint's field ``name``."""
    return ClosedLoopError(f"{path}: corrupt learner checkpoint: field {name!r}: {problem}")


class LearnerPixels(torch.nn.Module):
    """A learner's core and readouts as an image module: (B, N, N, 3) float pixels 0-255 -> (B, units)
    expected spike counts per presentation under the posterior-mean weights (:func:`expected_counts`
    with no posterior variance)."""

    def __init__(self, core: torch.nn.Module, projection: dict[str, torch.Tensor], weights: torch.Tensor,
                 noise: torch.Tensor):
        super().__init__()
        self.core = core
        for name in ("mean", "std", "components"):
            self.register_buffer(name, projection[name].float())
        self.register_buffer("weights", weights.float())  # (dims + 1, units): intercept first
        self.register_buffer("noise", noise.float())  # (units,)
        self.input_px = getattr(core, "input_px", None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        z = ((self.core(pixels) - self.mean) / self.std) @ self.components
        return expected_counts(z @ self.weights[1:] + self.weights[0], 0.0, self.noise)


def checkpoint_model(path: Path):
    """A learner checkpoint as a :class:`closedloop.model.models.ImageModel` of its posterior-mean
    expected counts (:class:`LearnerPixels`), to export, inspect or design with.

    Its core is rebuilt as the checkpoint's settings name it (a compact, network or file core needs
    its files where the session had them) with the checkpoint's weights.
    """
    from closedloop.model.compact import check_state
    from closedloop.model.models import TorchImageModel

    path = Path(path)
    state = read_checkpoint(path)
    projection, weights, noise = state["projection"], state["posterior"]["M"], state["posterior"]["noise"]
    core = load_core(state["spec"], state.get("seed", 0))
    if core.network is None:
        raise ClosedLoopError(f"{path}: the learner's core ({core.name}) is ONNX, not a torch module; "
                              f"export or inspect the core's model itself")
    if state["network"] is not None:
        check_state(path, core.network, state["network"], core.name)
        core.network.load_state_dict(state["network"])
    core.network.eval()
    module = LearnerPixels(core.network, projection, weights, noise)
    model = TorchImageModel(module, path.stem, module.input_px, (int(weights.shape[1]),), path=path)
    model.metadata = {"format": CHECKPOINT_FORMAT, "core": str(state.get("core")),
                      "responses": state.get("responses", 0), "units": state["units"]}
    return model


@numba.njit(cache=True, fastmath=True, boundscheck=False, nogil=True)  # the refresh thread runs meanwhile
def _predictive_kernel(mu, v, noise, index, floor, mean, variance):  # pragma: no cover - compiled
    """:meth:`OnlineLearner.predictive` in one pass: for unit ``u`` and pool image ``k = index[j]``,
    ``mean[u, j] = max((mu^2 + tau2 + s^2) / 4 - 3/8, floor)`` and ``variance[u, j] =
    mu^2 tau2 / 4 + tau2^2 / 8``, with ``tau2 = s^2 v[k]`` and ``s^2 = noise[u]``."""
    for u in range(mu.shape[0]):
        s2 = noise[u]
        row, mean_row, variance_row = mu[u], mean[u], variance[u]
        for j in range(index.shape[0]):
            k = index[j]
            quarter = 0.25 * row[k] * row[k]
            tau2 = s2 * v[k]
            value = quarter + 0.25 * (tau2 + s2) - 0.375
            mean_row[j] = value if value > floor else floor
            variance_row[j] = tau2 * (quarter + 0.125 * tau2)


def open_image_model(path: Path):
    """A learner checkpoint (:func:`checkpoint_model`) or any file
    :func:`closedloop.model.models.load_model` reads, as an image model; one-line errors name the file."""
    from closedloop.model.models import load_model

    try:
        header = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file of a learner: load_model says what it is
        header = None
    if isinstance(header, dict) and header.get("format") == CHECKPOINT_FORMAT:
        return checkpoint_model(path)
    return load_model(path)
