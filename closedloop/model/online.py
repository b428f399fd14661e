"""Online learning of a compact-CNN ensemble over a fixed candidate pool.

Two time scales keep every update cheap:

* after each response the readouts are refitted on cached core features of
  the pool (milliseconds), and the whole pool is rescored by a readout product;
* the cores are retrained on all responses so far in a background thread;
  when a retrained ensemble and its pool features are ready they are swapped
  in at the next update.

Members differ by initialisation and by online bootstrap weights (each
response counts Poisson(1) times for each member, Oza & Russell 2001).

An ensemble can start from a checkpoint (``warm_start``, e.g. the previous
session's final model) and saves checkpoints in closedloop's model format
(:func:`closedloop.model.models.save_model`), so any of them can be loaded,
exported to ONNX or inspected like every other model.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np
import torch

from closedloop.config import ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.model.ensemble import CompactEnsemble, to_model_input
from closedloop.model.models import load_model, save_model

READOUT_STEPS = 5
READOUT_BATCH = 256
FEATURE_CHUNK = 256


def poisson_loss(predicted: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Bootstrap-weighted Poisson negative log likelihood.

    ``predicted`` is (B, members, neurons) expected counts, ``counts`` is
    (B, neurons) spikes, ``weights`` is (B, members).
    """
    nll = predicted - counts[:, None, :] * torch.log(predicted + 1e-6)
    return (nll.sum(-1) * weights).sum() / weights.sum().clamp(min=1.0)


class OnlineEnsemble:
    """An ensemble that learns from (pool image, spike counts) pairs as they arrive.

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
        the cores are retrained only by :meth:`sync`, in the calling thread,
        so offline fits and tests are exactly reproducible.

    Raises
    ------
    ClosedLoopError
        When ``spec.warm_start`` is unreadable or another architecture.
    """

    def __init__(self, images: np.ndarray, neurons: int, spec: ModelSpec, seed: int = 0,
                 background: bool = True):
        self.spec = spec
        self._rng = np.random.default_rng(seed)
        self._core_rng = np.random.default_rng(seed + 1)  # used only by the retraining thread
        self._x = to_model_input(images, spec.input_px)
        self.model = CompactEnsemble(neurons, spec.members, spec.input_px, spec.channels, seed)
        if spec.warm_start is not None:
            self.model.load_state_dict(_checkpoint_state(spec.warm_start, self.model))
        self._features = _pool_features(self.model, self._x)
        self._optimizer = self._readout_optimizer()
        self._index: list[int] = []
        self._counts: list[np.ndarray] = []
        self._boot: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._new_data = threading.Event()
        self._stop = threading.Event()
        self._ready: tuple[CompactEnsemble, torch.Tensor, int] | None = None  # model, features, responses
        self._retrained = threading.Event()
        self.trained_on = 0  # responses the current cores were trained on
        self._thread = threading.Thread(target=self._retrain_cores, name="core-retrain", daemon=True)
        self._background = background
        if background:
            self._thread.start()
        self.core_version = 0

    @property
    def n_responses(self) -> int:
        return len(self._index)

    def add(self, index: int, counts: np.ndarray) -> None:
        """Record one response: pool image ``index`` evoked ``counts`` spikes per unit."""
        with self._lock:
            self._index.append(int(index))
            self._counts.append(np.asarray(counts, dtype=np.float32))
            self._boot.append(self._rng.poisson(1.0, self.spec.members).astype(np.float32))
        self._new_data.set()

    def update(self) -> None:
        """Swap in retrained cores if ready, then refit the readouts (fast)."""
        with self._lock:
            if self._ready is not None:
                self.model, self._features, self.trained_on = self._ready
                self._ready = None
                self._optimizer = self._readout_optimizer()
                self.core_version += 1
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

    def sync(self, timeout: float = 300.0) -> None:
        """Bring the cores up to date with every response so far, and swap them in.

        Without a background thread the retraining runs here; with one, this
        waits for it. The live loop never calls this (it takes retrained cores
        when they are ready); offline fitting and tests do.
        """
        if not self._background:
            with self._lock:
                data = self._training_arrays()
                model = copy.deepcopy(self.model)
            if len(data[0]) > self.trained_on:
                with self._lock:
                    self._ready = (*self._retrain(model, *data), len(data[0]))
            self.update()
            return
        with self._lock:
            target = len(self._index)
        deadline = time.monotonic() + timeout
        self.update()
        while self.trained_on < target:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"cores not retrained on {target} responses within {timeout:g} s")
            self._retrained.wait(0.05)
            self._retrained.clear()
            self.update()

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
        self._new_data.set()
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
        """The background thread: retrain on every new batch of responses, hand the result over."""
        torch.set_num_threads(self.spec.threads)
        trained_on = 0
        while not self._stop.is_set():
            self._new_data.wait()
            self._new_data.clear()
            with self._lock:
                if self._stop.is_set() or len(self._index) <= trained_on:
                    continue
                model = copy.deepcopy(self.model)
                data = self._training_arrays()
            trained_on = len(data[0])
            retrained = self._retrain(model, *data)
            if retrained is None:
                return
            with self._lock:
                self._ready = (*retrained, trained_on)
            self._retrained.set()

    def _retrain(self, model: CompactEnsemble, index: np.ndarray, counts: torch.Tensor,
                 boot: torch.Tensor) -> tuple[CompactEnsemble, torch.Tensor] | None:
        """``steps_per_update`` minibatches on the cores; the model and its pool features (None if stopped)."""
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.spec.learning_rate)
        for _ in range(self.spec.steps_per_update):
            batch = self._core_rng.choice(len(index), min(len(index), self.spec.batch_size), replace=False)
            loss = poisson_loss(model(self._x[index[batch]]), counts[batch], boot[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if self._stop.is_set():
                return None
        return model, _pool_features(model, self._x)


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
