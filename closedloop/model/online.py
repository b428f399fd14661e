"""Online learning of a compact-CNN ensemble over a fixed candidate pool.

Two time scales keep every update cheap:

* after each response the readouts are refitted on cached core features of
  the pool (milliseconds), and the whole pool is rescored by a readout product;
* the cores are retrained on a snapshot of all responses so far in a
  background thread; when the retrained ensemble and its pool features are
  ready they are swapped in, and the next retraining starts from a new
  snapshot. Snapshots and swaps happen only when the caller asks, so the
  sequence of models is a function of the sequence of calls.

Members differ by initialisation and by online bootstrap weights (each
response counts Poisson(1) times for each member, Oza & Russell 2001).

An ensemble can start from a checkpoint (``warm_start``, e.g. the previous
session's final model) and saves checkpoints in closedloop's model format
(:func:`closedloop.model.models.save_model`), so any of them can be loaded,
exported to ONNX or inspected like every other model.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from closedloop.config import ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.model.ensemble import CompactEnsemble, pixels_to_input, to_model_input
from closedloop.model.models import load_model, save_model

READOUT_STEPS = 5
READOUT_BATCH = 256
FEATURE_CHUNK = 256
EMBEDDING_DIMS = 256  # dimensions of :meth:`OnlineEnsemble.embedding`


def poisson_loss(predicted: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Bootstrap-weighted Poisson negative log likelihood.

    ``predicted`` is (B, members, neurons) expected counts, ``counts`` is
    (B, neurons) spikes, ``weights`` is (B, members).
    """
    nll = predicted - counts[:, None, :] * torch.log(predicted + 1e-6)
    return (nll.sum(-1) * weights).sum() / weights.sum().clamp(min=1.0)


class OnlineEnsemble:
    """An ensemble that learns from (pool image, spike counts) pairs as they arrive.

    Learning is three explicit steps, so that a caller decides when each
    happens (the model worker does, at fixed points of its sequence, which is
    what makes a session replayable: see ``closedloop.model.worker``):

    * :meth:`refit`: readout steps on cached core features (milliseconds);
    * :meth:`retrain`: start retraining the cores on a snapshot, taken now, of
      the model, every response so far and the pool's size;
    * :meth:`swap`: put the retrained cores and their pool features in.

    :meth:`update` does all three, for callers that do not need the pacing.

    Parameters
    ----------
    images : ndarray, (K, N, N, 3) uint8
        The candidate pool; training images and predictions refer to it by index.
    neurons : int
        Number of recorded units.
    spec : ModelSpec
        Architecture and training settings.
    seed : int
        Seed for initialisation, bootstrap weights and minibatches.
    background : bool
        Retrain the cores in a background thread (the live loop). Without it
        a retraining runs in the calling thread when :meth:`swap` waits for
        it (or :meth:`sync`), so offline fits, tests and replays are exactly
        reproducible; the results are identical either way.

    Raises
    ------
    ClosedLoopError
        When ``spec.warm_start`` is unreadable or another architecture.
    """

    def __init__(self, images: np.ndarray, neurons: int, spec: ModelSpec, seed: int = 0,
                 background: bool = True):
        self.spec = spec
        self._rng = np.random.default_rng(seed)
        self._core_rng = np.random.default_rng(seed + 1)  # used only by core retraining, in order
        self._x = to_model_input(images, spec.input_px)
        self.model = CompactEnsemble(neurons, spec.members, spec.input_px, spec.channels, seed)
        if spec.warm_start is not None:
            self.model.load_state_dict(_checkpoint_state(spec.warm_start, self.model))
        self._features = _pool_features(self.model, self._x)
        self._seed = seed
        self._projection: torch.Tensor | None = None  # of the embedding, made on first use
        self._optimizer = self._readout_optimizer()
        self._index: list[int] = []
        self._counts: list[np.ndarray] = []
        self._boot: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._snapshot: tuple | None = None  # a retraining's inputs, not yet handed over or run
        self._ready: tuple[CompactEnsemble, torch.Tensor, int] | None = None  # model, features, responses
        self._retrained = threading.Event()
        self.retraining = False  # a retraining was started and its cores are not swapped in yet
        self.trained_on = 0  # responses the current cores were trained on
        self.core_version = 0  # retrained cores swapped in so far
        self.retrain_seconds = 0.0  # spent retraining cores, in whichever thread
        self._last_snapshot = 0  # responses in the latest retraining's snapshot
        self._background = background
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._retrain_cores, name="core-retrain", daemon=True)
        if background:
            self._thread.start()

    @property
    def n_responses(self) -> int:
        return len(self._index)

    def add(self, index: int, counts: np.ndarray) -> None:
        """Record one response: pool image ``index`` evoked ``counts`` spikes per unit."""
        with self._lock:
            self._index.append(int(index))
            self._counts.append(np.asarray(counts, dtype=np.float32))
            self._boot.append(self._rng.poisson(1.0, self.spec.members).astype(np.float32))

    def refit(self) -> None:
        """``READOUT_STEPS`` minibatches on the readouts, over cached core features (fast)."""
        with self._lock:
            index, counts, boot = self._training_arrays()
        if not len(index):
            return
        feats = self._features[index]
        for _ in range(READOUT_STEPS):
            batch = self._rng.choice(len(index), min(len(index), READOUT_BATCH), replace=False)
            loss = poisson_loss(self.model.readout(feats[batch]), counts[batch], boot[batch])
            self._optimizer.zero_grad()
            loss.backward()
            self._optimizer.step()

    def retrain(self) -> bool:
        """Start retraining the cores on a snapshot taken now: a copy of the model, every
        response so far and the pool as it is. Nothing starts while a retraining is not
        swapped in yet, or when no response came since the last snapshot; returns whether
        one started."""
        with self._lock:
            if self.retraining or len(self._index) <= self._last_snapshot:
                return False
            snapshot = (copy.deepcopy(self.model), self._x, *self._training_arrays())
            self.retraining, self._last_snapshot = True, len(self._index)
        if self._background:
            self._jobs.put(snapshot)
        else:
            self._snapshot = snapshot
        return True

    def swap(self, wait: bool = False, timeout: float = 300.0) -> bool:
        """Put in the retrained cores and their pool features, if a retraining is done
        (``wait``: wait for it, or run it here without a background thread); returns
        whether cores were swapped in. The readout optimiser starts afresh."""
        if not self.retraining:
            return False
        if wait and not self._background:
            snapshot, self._snapshot = self._snapshot, None
            self._ready = self._retrain(*snapshot)
        elif wait and not self._retrained.wait(timeout):
            raise TimeoutError(f"cores not retrained within {timeout:g} s")
        with self._lock:
            if self._ready is None:
                return False
            self.model, self._features, self.trained_on = self._ready
            self._ready = None
            self._retrained.clear()
            if len(self._features) < len(self._x):  # images added while the cores retrained
                self._features = torch.cat([self._features,
                                            _pool_features(self.model, self._x[len(self._features):])])
            self._optimizer = self._readout_optimizer()
            self.core_version += 1
            self.retraining = False
        return True

    def wait_retrained(self, timeout: float = 300.0) -> bool:
        """Wait (at most ``timeout`` s) until the background retraining in flight is done, without
        swapping it in; returns whether retrained cores are ready to swap."""
        return self.retraining and self._background and self._retrained.wait(timeout)

    def update(self) -> None:
        """Swap in retrained cores if ready, refit the readouts, start the next retraining."""
        self.swap()
        self.refit()
        self.retrain()

    def sync(self, timeout: float = 300.0) -> None:
        """Bring the cores up to date with every response so far, swap them in, refit the
        readouts. The live loop never calls this; offline fitting and tests do."""
        while self.trained_on < self.n_responses:
            self.retrain()
            self.swap(wait=True, timeout=timeout)
        self.refit()

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Every response so far: pool indices (n,) and spike counts (n, neurons), oldest first."""
        with self._lock:
            if not self._index:
                return np.zeros(0, int), np.zeros((0, self.model.neurons), np.float32)
            return np.array(self._index), np.stack(self._counts)

    def extend(self, images: np.ndarray) -> np.ndarray:
        """Append (B, N, N, 3) uint8 images (e.g. synthesised ones) to the pool; their indices."""
        x = to_model_input(images, self.spec.input_px)
        with self._lock:
            start = len(self._x)
            self._x = torch.cat([self._x, x])
            self._features = torch.cat([self._features, _pool_features(self.model, x)])
        return np.arange(start, start + len(x))

    def embedding(self, index: np.ndarray) -> np.ndarray:
        """Core features of pool images ``index``, every member's, randomly projected (fixed
        seed) to ``EMBEDDING_DIMS`` dimensions: (images, dims), for strategies that design
        in feature space (``variance_reduction``)."""
        with self._lock:
            feats = self._features[np.asarray(index)].flatten(1)
        if self._projection is None or self._projection.shape[0] != feats.shape[1]:
            g = torch.Generator().manual_seed(self._seed)
            self._projection = torch.randn(feats.shape[1], EMBEDDING_DIMS, generator=g) / EMBEDDING_DIMS ** 0.5
        return (feats @ self._projection).numpy()

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Expected counts (members, neurons, B) for (B, N, N, 3) uint8 images outside the pool."""
        x = to_model_input(images, self.spec.input_px)
        with self._lock:
            model = self.model
        with torch.no_grad():
            return model.readout(_pool_features(model, x)).permute(1, 2, 0).numpy()

    def torch_predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable expected counts (members, neurons, B) for float pixels (B, N, N, 3), 0-255."""
        model = self.model
        model.eval()
        return model.readout(model.features(pixels_to_input(pixels, self.spec.input_px))).permute(1, 2, 0)

    def predictions(self, index: np.ndarray | None = None) -> np.ndarray:
        """Expected counts (members, neurons, images) for pool images ``index`` (all if None)."""
        feats = self._features if index is None else self._features[index]
        with torch.no_grad():
            return self.model.readout(feats).permute(1, 2, 0).numpy()

    def save(self, path: Path) -> None:
        """Write the current ensemble as a checkpoint (a closedloop model file), atomically."""
        with self._lock:
            model, responses, version = copy.deepcopy(self.model), len(self._index), self.core_version
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        save_model(model, partial, name=path.stem, metadata={"responses": responses, "core_version": version})
        partial.replace(path)

    def close(self) -> None:
        """Stop the background core retraining."""
        self._stop.set()
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join()

    # ------------------------------------------------------------ internals --
    def _readout_optimizer(self) -> torch.optim.Optimizer:
        params = [self.model.mask, self.model.weights, self.model.bias]
        return torch.optim.Adam(params, lr=self.spec.learning_rate * 3)

    def _training_arrays(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Current training data (call with the lock held)."""
        if not self._index:
            return np.zeros(0, int), torch.zeros(0), torch.zeros(0)
        return (np.array(self._index), torch.from_numpy(np.stack(self._counts)),
                torch.from_numpy(np.stack(self._boot)))

    def _retrain_cores(self) -> None:
        """The background thread: run each snapshot handed over, in order; keep the result."""
        torch.set_num_threads(self.spec.threads)
        while (snapshot := self._jobs.get()) is not None:
            retrained = self._retrain(*snapshot)
            if retrained is None:
                return
            with self._lock:
                self._ready = retrained
            self._retrained.set()

    def _retrain(self, model: CompactEnsemble, x: torch.Tensor, index: np.ndarray, counts: torch.Tensor,
                 boot: torch.Tensor) -> tuple[CompactEnsemble, torch.Tensor, int] | None:
        """``steps_per_update`` minibatches on a snapshot's cores; the model, its features of the
        snapshot's pool ``x`` and the responses trained on (None if stopped)."""
        started = time.perf_counter()
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.spec.learning_rate)
        for _ in range(self.spec.steps_per_update):
            batch = self._core_rng.choice(len(index), min(len(index), self.spec.batch_size), replace=False)
            loss = poisson_loss(model(x[index[batch]]), counts[batch], boot[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if self._stop.is_set():
                return None
        features = _pool_features(model, x)
        self.retrain_seconds += time.perf_counter() - started
        return model, features, len(index)


def _pool_features(model: CompactEnsemble, x: torch.Tensor) -> torch.Tensor:
    """Core features of every pool image, in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(x[i:i + FEATURE_CHUNK]) for i in range(0, len(x), FEATURE_CHUNK)])


def _checkpoint_state(path: Path, model: CompactEnsemble) -> dict:
    """The weights of the ensemble checkpoint at ``path``, checked against ``model``'s architecture."""
    saved = getattr(load_model(path), "source", None)
    if not isinstance(saved, CompactEnsemble):
        raise ClosedLoopError(f"{path}: not an ensemble checkpoint (a {type(saved).__name__})")
    for what in ("neurons", "members", "input_px"):
        if getattr(saved, what) != getattr(model, what):
            raise ClosedLoopError(f"{path}: the checkpoint has {what} {getattr(saved, what)}, "
                                  f"this session needs {getattr(model, what)}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in saved.state_dict().items():
        if tuple(value.shape) != shapes[key]:
            raise ClosedLoopError(f"{path}: the checkpoint's {key} has shape {tuple(value.shape)}, "
                                  f"[model] channels need {shapes[key]}")
    return saved.state_dict()
