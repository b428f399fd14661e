"""``closedloop teacher train``: fit a :class:`~closedloop.model.teacher.Teacher` to recorded sessions.

What it trains on
-----------------
Every session in the data folder (:func:`closedloop.model.recorded.find_sessions`), all at once:
the trunk is shared, each session's neurons have their own readouts. Per session a seeded
fraction of the distinct images (:func:`~closedloop.model.recorded.heldout_split`) is held out:
never trained on, never used to choose anything, only to report accuracy at the end (and, for
watching, after every epoch). The file records these images, so students distilled later never
train on them either.

Targets are each neuron's repeat-averaged spike counts, z-scored over its session's training
images (every neuron weighs the same in the loss). Where a session kept single trials, each
minibatch draws a bootstrap resample of each image's repeats and averages it, so the teacher
sees the trial-to-trial spread instead of one fixed mean. Images are shifted by up to ``shift``
pixels (reflected at the border), a different shift per image and epoch.

Optimisation: AdamW on mean squared error, minibatches from one session at a time in a seeded
order, the step size rising linearly over the first epoch and then falling on a cosine to zero
at the last epoch; a fixed number of epochs (no early stopping, which would choose on held-out
images). Epoch ``e``'s randomness comes from ``(seed, e)`` alone.

Checkpoints and resume
----------------------
After every epoch the model, the optimiser and the history are written atomically to
``OUT.checkpoint``. Running the same command again continues from the epoch after the
checkpoint's, with the same result as an uninterrupted run; a checkpoint made with other
settings or other data is refused (one line naming what differs) unless ``fresh``. The finished
teacher is written to ``OUT`` (:func:`closedloop.model.models.save_model`, kind ``teacher``) and
the checkpoint removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError, one_line
from closedloop.model.recorded import Session, correlations, find_sessions, heldout_split, noise_ceiling
from closedloop.model.teacher import Teacher

CHECKPOINT_FORMAT = "closedloop-teacher-checkpoint"
EVAL_BATCH = 64
MIN_WIDTH = 16
"""Fewest channels a stage may have (torch 2.13's CPU convolution backward crashes on narrower trunks)."""


@dataclass(frozen=True)
class TeacherSettings:
    """How :func:`train_teacher` trains (see the module docstring).

    Attributes
    ----------
    widths, blocks : 4 ints
        Channels (at least :data:`MIN_WIDTH`) and residual blocks of the four stages (ResNet-18:
        64-128-256-512, 2-2-2-2).
    epochs : int
        Passes over the training images.
    batch : int
        Images per minibatch.
    lr, weight_decay : float
        AdamW's peak step size and decoupled weight decay.
    heldout : float
        Fraction of each session's distinct images held out.
    shift : int
        Largest shift of an image, pixels.
    seed : int
        Seeds the weights, the splits, the minibatches and the augmentation.
    """

    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    heldout: float = 0.1
    shift: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [("widths", len(self.widths) == 4 and min(self.widths) >= MIN_WIDTH),
                  ("blocks", len(self.blocks) == 4 and min(self.blocks) >= 1), ("epochs", self.epochs >= 1),
                  ("batch", self.batch >= 2), ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
                  ("heldout", 0 < self.heldout < 1), ("shift", 0 <= self.shift <= 16)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ClosedLoopError("teacher settings: invalid " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class _Part:
    """One session as training sees it."""

    session: Session
    first: int  # the teacher output of its first neuron
    train: np.ndarray
    test: np.ndarray
    pixels: torch.Tensor  # (K, 112, 112, 3) uint8
    mean: np.ndarray  # (neurons,) over the training images
    std: np.ndarray

    @property
    def outputs(self) -> slice:
        return slice(self.first, self.first + self.session.neurons)

    def targets(self, index: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        """z-scored targets (B, neurons): averages, or with ``rng`` bootstrap means of single trials."""
        y = self.session.responses[:, index].T
        trials = self.session.trials
        if rng is not None and trials is not None:
            y = y.copy()
            for row, i in enumerate(index):
                shown = np.flatnonzero(np.isfinite(trials[:, i]).any(0))
                if len(shown) > 1:
                    with np.errstate(all="ignore"):
                        drawn = np.nanmean(trials[:, i, rng.choice(shown, len(shown))], axis=1)
                    y[row] = np.where(np.isfinite(drawn), drawn, y[row])
        return torch.from_numpy(((y - self.mean) / self.std).astype(np.float32))


def fingerprint(sessions: Sequence[Session]) -> list[dict]:
    """What identifies the data: each session's name, size and a digest of its images and counts."""
    out = []
    for s in sessions:
        digest = hashlib.sha1(s.images.tobytes())
        digest.update(np.ascontiguousarray(s.responses).tobytes())
        if s.trials is not None:
            digest.update(np.ascontiguousarray(s.trials).tobytes())
        out.append({"name": s.name, "neurons": s.neurons, "images": len(s.images), "sha1": digest.hexdigest()})
    return out


def shifted(pixels: torch.Tensor, shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Float pixels (B, N, N, 3), each image shifted by up to ``shift`` px (reflected at the border)."""
    x = pixels.float()
    if shift == 0:
        return x
    side = x.shape[1]
    padded = F.pad(x.permute(0, 3, 1, 2), (shift,) * 4, mode="reflect").permute(0, 2, 3, 1)
    offsets = rng.integers(0, 2 * shift + 1, size=(len(x), 2))
    return torch.stack([padded[b, dy:dy + side, dx:dx + side] for b, (dy, dx) in enumerate(offsets)])


def learning_rate(settings: TeacherSettings, step: int, steps_per_epoch: int) -> float:
    """The step size at global minibatch ``step``: linear warm-up over the first epoch, then a cosine to 0."""
    warm, total = steps_per_epoch, settings.epochs * steps_per_epoch
    if step < warm:
        return settings.lr * (step + 1) / warm
    return settings.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def predict_counts(model: Teacher, pixels: torch.Tensor, outputs: slice | None = None) -> np.ndarray:
    """The teacher's predicted counts (B, outputs) for uint8 pixels (B, 112, 112, 3), in eval mode."""
    model.eval()
    with torch.inference_mode():
        parts = [model(pixels[i:i + EVAL_BATCH].float()) for i in range(0, len(pixels), EVAL_BATCH)]
    y = torch.cat(parts).double().numpy()
    return y if outputs is None else y[:, outputs]


def _mean(values) -> float | None:
    values = np.asarray(values, float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint")


def _resume(path: Path, model: Teacher, optimiser, settings: TeacherSettings, data: list[dict],
            log: Callable[[str], None]) -> tuple[int, list[dict]]:
    """Load a checkpoint into the model and optimiser; returns (epochs done, history)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a torn or foreign file is one line naming it
        raise ClosedLoopError(f"{path}: unreadable teacher checkpoint ({one_line(error)}); delete it or pass "
                              "--fresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ClosedLoopError(f"{path}: not a teacher checkpoint; delete it or pass --fresh")
    saved = json.loads(state["settings"])
    for key, value in settings.as_dict().items():
        if saved.get(key) != value:
            raise ClosedLoopError(f"{path}: the checkpoint was made with {key}={saved.get(key)!r}, not {value!r}; "
                                  "pass --fresh to start over")
    if json.loads(state["data"]) != data:
        raise ClosedLoopError(f"{path}: the checkpoint was made on other data "
                              f"({', '.join(d['name'] for d in json.loads(state['data']))}); pass --fresh to start over")
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    epoch = int(state["epoch"])
    log(f"resuming from {path} after epoch {epoch}/{settings.epochs}")
    return epoch, json.loads(state["history"])


def _save_checkpoint(path: Path, model: Teacher, optimiser, settings: TeacherSettings, data: list[dict],
                     epoch: int, history: list[dict]) -> None:
    from closedloop.record.atomic import replacing

    state = {"format": CHECKPOINT_FORMAT, "settings": json.dumps(settings.as_dict()), "data": json.dumps(data),
             "epoch": epoch, "history": json.dumps(history), "model": model.state_dict(),
             "optimiser": optimiser.state_dict()}
    with replacing(path) as temporary:
        torch.save(state, temporary)


def train_teacher(data: Path | str, out: Path | str, settings: TeacherSettings | None = None,
                  names: list[str] | None = None, published: Path | str | None = None, fresh: bool = False,
                  log: Callable[[str], None] = print) -> dict:
    """Train a teacher on every session in ``data`` and write it to ``out``.

    Parameters
    ----------
    data : Path
        A folder of sessions (:func:`~closedloop.model.recorded.find_sessions`).
    out : Path
        The teacher file to write; ``OUT.checkpoint`` holds the run until it finishes.
    settings : TeacherSettings, optional
        How to train (default :class:`TeacherSettings`).
    names : list of str, optional
        Only these sessions.
    published : Path, optional
        A folder of published compact models (``compact_model_<session>_neuron<i>.pt``) to compare
        with on the same held-out images; default ``data/compact_models`` when it exists.
    fresh : bool
        Ignore (and replace) an existing checkpoint or teacher file.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        The metadata written into the teacher file (per session and per neuron held-out accuracy).
    """
    from closedloop.model.models import save_model
    from closedloop.record.atomic import replacing

    settings = settings or TeacherSettings()
    out = Path(out)
    if out.exists() and not fresh:
        raise ClosedLoopError(f"{out}: already exists (a trained teacher); pass --fresh to train again")
    sessions = find_sessions(data, names)
    started = time.perf_counter()
    parts, first = [], 0
    for s in sessions:
        test = heldout_split(s.name, len(s.images), settings.heldout, settings.seed)
        train = np.setdiff1d(np.arange(len(s.images)), test)
        y = s.responses[:, train]
        std = y.std(1)
        parts.append(_Part(s, first, train, test, torch.from_numpy(s.images), y.mean(1),
                           np.where(std > 1e-9, std, 1.0)))
        first += s.neurons
        log(f"session {s.name}: {s.neurons} neurons, {len(s.images)} images ({len(test)} held out)"
            + (", single trials" if s.trials is not None else ""))
    torch.manual_seed(settings.seed)
    model = Teacher(first, settings.widths, settings.blocks)
    with torch.no_grad():
        model.response_mean.copy_(torch.from_numpy(np.concatenate([p.mean for p in parts])))
        model.response_std.copy_(torch.from_numpy(np.concatenate([p.std for p in parts])))
    parameters = sum(p.numel() for p in model.parameters())
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    data_id = fingerprint(sessions)
    checkpoint = _checkpoint_path(out)
    done, history = 0, []
    if checkpoint.exists() and not fresh:
        done, history = _resume(checkpoint, model, optimiser, settings, data_id, log)
    steps_per_epoch = sum(max(1, len(p.train) // settings.batch) for p in parts)
    log(f"teacher: {parameters:,} parameters ({'-'.join(map(str, settings.widths))} channels, "
        f"{'-'.join(map(str, settings.blocks))} blocks), {first} neurons, {steps_per_epoch} minibatches per epoch")
    for epoch in range(done + 1, settings.epochs + 1):
        epoch_started = time.perf_counter()
        rng = np.random.default_rng([settings.seed, epoch])
        batches = [(i, chunk) for i, p in enumerate(parts)
                   for chunk in np.array_split(rng.permutation(p.train), max(1, len(p.train) // settings.batch))]
        model.train()
        losses = []
        for step, b in enumerate(rng.permutation(len(batches))):
            i, chunk = batches[b]
            if len(chunk) < 2:  # BatchNorm needs two images
                continue
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(settings, (epoch - 1) * steps_per_epoch + step, steps_per_epoch)
            index = np.sort(chunk)
            p = parts[i]
            predicted = model.standardised(shifted(p.pixels[index], settings.shift, rng))[:, p.outputs]
            loss = F.mse_loss(predicted, p.targets(index, rng))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        r = np.concatenate([correlations(predict_counts(model, p.pixels[p.test], p.outputs),
                                         p.session.responses[:, p.test].T) for p in parts])
        seconds = time.perf_counter() - epoch_started
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "heldout_r": _mean(r),
                        "seconds": round(seconds, 1)})
        _save_checkpoint(checkpoint, model, optimiser, settings, data_id, epoch, history)
        left = (settings.epochs - epoch) * float(np.median([h["seconds"] for h in history[-5:]]))
        log(f"epoch {epoch}/{settings.epochs}: loss {np.mean(losses):.3f}, held-out r {_mean(r) or float('nan'):.3f}, "
            f"{seconds:.0f} s, about {left / 60:.0f} min left")
    metadata = _accuracy(model, parts, settings, published, data)
    metadata.update({"settings": settings.as_dict(), "data": data_id, "history": history,
                     "parameters": parameters, "epochs": settings.epochs,
                     "train_seconds": round(sum(h["seconds"] for h in history), 1)})
    model.eval()
    with replacing(out) as temporary:
        save_model(model, temporary, name="teacher", metadata=metadata)
    checkpoint.unlink(missing_ok=True)
    log(f"teacher written to {out}: held-out r {metadata['heldout_r']:.3f} over {first} neurons "
        f"({time.perf_counter() - started:.0f} s this run)")
    return metadata


def _accuracy(model: Teacher, parts: list[_Part], settings: TeacherSettings, published: Path | str | None,
              data: Path | str) -> dict:
    """Held-out accuracy per neuron and per session, with the published compact models' where there are."""
    folder = Path(published) if published is not None else Path(data) / "compact_models"
    neurons, sessions = [], []
    for p in parts:
        s = p.session
        observed = s.responses[:, p.test].T
        predicted = predict_counts(model, p.pixels[p.test], p.outputs)
        r = correlations(predicted, observed)
        ceiling = noise_ceiling(s.trials[:, p.test]) if s.trials is not None else np.full(s.neurons, np.nan)
        theirs = published_r(folder, s.name, s.images[p.test], observed)
        for n in range(s.neurons):
            neurons.append({"name": f"{s.name}_n{n}", "session": s.name, "output": p.first + n,
                            "heldout_r": float(r[n]), "published_r": None if theirs is None else float(theirs[n]),
                            "noise_ceiling": None if not np.isfinite(ceiling[n]) else float(ceiling[n])})
        corrected = r ** 2 / ceiling
        sessions.append({"name": s.name, "neurons": s.neurons, "first_output": p.first, "images": len(s.images),
                         "image_files": s.files, "files": list(s.sources), "heldout": p.test.tolist(),
                         "heldout_r": _mean(r), "published_r": None if theirs is None else _mean(theirs),
                         "noise_corrected_r2": _mean(np.where(ceiling > 0.1, corrected, np.nan))})
    return {"neurons": neurons, "sessions": sessions, "heldout_r": _mean([n["heldout_r"] for n in neurons]),
            "heldout_fraction": settings.heldout, "units": "spike counts in the response window"}


def published_r(folder: Path, session: str, images: np.ndarray, observed: np.ndarray) -> np.ndarray | None:
    """Per-neuron r of the published compact models of ``session`` (in ``folder``) against ``observed``
    (B, neurons) on ``images``; None unless the folder has a model for every neuron."""
    from closedloop.model.compact import load_published

    paths = [folder / f"compact_model_{session}_neuron{n}.pt" for n in range(observed.shape[1])]
    if not folder.is_dir() or not all(p.is_file() for p in paths):
        return None
    predicted = np.stack([load_published(p).predict(images) for p in paths], 1)
    return correlations(predicted, observed)
