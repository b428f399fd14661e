"""``closedloop core build``: one shared compact core trained on a lab's recorded sessions.

A *core file* (:func:`closedloop.learn.cores.save_core`, read by a ``[model.core] kind = "file"``
protocol) holds a compact CNN of the paper's architecture (:class:`CompactModel`, five layers,
``channels`` filters) that every later session's online learner starts from. It is trained here
on every session given at once:

* **data**: per session the images shown (a zip or folder, in the order of the responses) and the
  responses, (neurons, images) spike counts in the response window, averaged over repeats; or, for
  a folder of compact students (:func:`students_session`), their predicted counts on an image pool
  (a teacher's knowledge, distilled per neuron, passed on to the shared core). Images
  whose pixels are identical (a session that showed the same file under two names, e.g. 190925's
  0901-1200) are one image: their responses are averaged;
* **targets**: counts are variance-stabilised (:func:`closedloop.learn.readout.stabilise`, the
  scale the learner's readouts work on) and then z-scored per neuron on the training images, so
  every neuron weighs the same in the loss whatever its rate;
* **model**: pixels are resized to ``input_px`` (area averaging, as :class:`MapsCore` does when the
  learner runs the core), the core's layer-4 maps are averaged over blocks, about ``grid`` per side
  (by :class:`MapsCore` itself: the features the learner's readouts see) and a linear head per
  session maps them to that session's neurons. Loss: mean squared error; Adam; BatchNorm learns batch
  statistics while training and runs on its running statistics afterwards;
* **held out**: a seeded fraction of each session's images is never trained on; after every epoch
  the held-out r (Pearson r of prediction and stabilised response per neuron, mean over neurons)
  is computed, training stops when it has not improved for ``patience`` epochs and the weights of
  the best epoch are kept.

The file's provenance records the sessions (files, neurons, images, held-out r each), the
settings, the epochs and a summary line.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.errors import ClosedLoopError
from closedloop.learn.readout import stabilise
from closedloop.model.compact import CompactModel
from closedloop.model.recorded import Session, correlations

DEFAULT_CHANNELS = (48, 57, 32, 32, 32)


def students_session(folder: Path | str, images: np.ndarray, name: str | None = None) -> Session:
    """A session made of models instead of recordings: the predicted spike counts of every compact
    model in ``folder`` (students of ``closedloop teacher distil``, or published models), one
    neuron each, on ``images`` (K, 112, 112, 3) uint8; negative predictions count as 0."""
    from closedloop.model.compact import find_published, load_published, published_name

    paths = find_published(folder)
    responses = np.stack([np.maximum(load_published(p).predict(images), 0.0) for p in paths])
    label = name or f"students {Path(folder).name}"
    return Session(label, np.asarray(images, np.uint8), responses,
                   (f"{len(images)} images", f"{Path(folder)} ({', '.join(published_name(p) for p in paths[:3])}"
                    f"{', ...' if len(paths) > 3 else ''})"), len(images))


def parse_channels(text: str) -> tuple[int, ...]:
    """``"48,57,32,32,32"`` -> five positive filter counts; ValueError otherwise."""
    try:
        channels = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"expected five comma-separated filter counts, got {text!r}") from None
    if len(channels) != 5 or min(channels) < 1:
        raise ValueError(f"expected five positive filter counts, got {text!r}")
    return channels


class _Shared(nn.Module):
    """The core as the learner runs it (:class:`MapsCore`: layer-4 maps averaged over blocks, on
    pixels already at input_px) and one linear head per session."""

    def __init__(self, channels, input_px: int, grid: int, neurons: list[int]):
        from closedloop.learn.cores import CompactLayer, MapsCore

        super().__init__()
        self.core = CompactModel(channels)
        self.maps = MapsCore([CompactLayer(self.core)], None, grid)
        with torch.no_grad():
            features = self.maps(torch.zeros(1, input_px, input_px, 3)).shape[1]
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in neurons)

    def forward(self, pixels: torch.Tensor, session: int) -> torch.Tensor:
        return self.heads[session](self.maps(pixels))


def _resize(images: np.ndarray, px: int) -> torch.Tensor:
    """(K, N, N, 3) uint8 -> float pixels (K, px, px, 3), area-averaged as MapsCore does."""
    out = []
    for start in range(0, len(images), 256):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + 256])).float()
        if x.shape[1] != px:
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(px, px), mode="area").permute(0, 2, 3, 1)
        out.append(x.contiguous())
    return torch.cat(out)


def _mean_r(predicted: np.ndarray, observed: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-neuron Pearson r of (B, neurons) arrays (nan where either is constant) and their mean."""
    r = correlations(predicted, observed)
    return (float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")), r


def build_core(sessions: list[Session], out: Path | str, channels=DEFAULT_CHANNELS, input_px: int = 56,
               grid: int = 7, epochs: int = 40, patience: int = 5, heldout: float = 0.1, batch_size: int = 64,
               learning_rate: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
               log: Callable[[str], None] = print) -> dict:
    """Train one shared compact core on ``sessions`` and write it to ``out`` as a core file.

    Parameters
    ----------
    sessions : list of Session
        From :func:`read_session`.
    out : Path
        The core file to write (atomically).
    channels : 5 ints
        Filters of the core's five layers.
    input_px : int
        Side pixels are resized to before the core.
    grid : int
        Blocks per side the layer-4 maps are averaged to for the heads (use the same ``grid`` in
        the protocol's ``[model.core]``, 7 by default).
    epochs, patience : int
        At most ``epochs`` passes over the training images; stop after ``patience`` epochs
        without a better held-out r.
    heldout : float
        Fraction of each session's images held out (at least 3 images, at most all but 3).
    batch_size, learning_rate, weight_decay : Adam's minibatches (within one session), step size
        and weight decay.
    seed : int
        Seeds the initialisation, the held-out split and the minibatch order.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        The provenance written to the file (``heldout_r``: mean over all neurons).
    """
    from closedloop.learn.cores import save_core

    if not sessions:
        raise ClosedLoopError("core build: no sessions given (--session IMAGES RESPONSES or --v4 FOLDER --name N)")
    channels = tuple(int(c) for c in channels)
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = []
    for s in sessions:
        k = len(s.images)
        if k < 8:
            raise ClosedLoopError(f"{s.sources[1]}: {k} distinct images; a core needs at least 8 per session")
        held = int(min(max(3, round(heldout * k)), k - 3))
        order = rng.permutation(k)
        test, train = np.sort(order[:held]), np.sort(order[held:])
        y = stabilise(s.responses.T)  # (K, neurons)
        mean, std = y[train].mean(0), y[train].std(0)
        std = np.where(std > 1e-9, std, 1.0)
        data.append({"pixels": _resize(s.images, input_px), "y": torch.from_numpy((y - mean) / std).float(),
                     "train": train, "test": test})
    model = _Shared(channels, input_px, grid, [s.neurons for s in sessions])
    parameters = [p for name, p in model.named_parameters() if ".Beta." not in name]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    neurons, images = sum(s.neurons for s in sessions), sum(len(s.images) for s in sessions)
    log(f"training a {'-'.join(map(str, channels))} core at {input_px} px on {len(sessions)} sessions "
        f"({neurons} neurons, {images} images; {sum(len(d['test']) for d in data)} held out)")

    def evaluate() -> tuple[float, list[float]]:
        model.eval()
        all_r, per_session = [], []
        with torch.inference_mode():
            for i, d in enumerate(data):
                predicted = torch.cat([model(d["pixels"][d["test"][j:j + 256]], i)
                                       for j in range(0, len(d["test"]), 256)]).numpy()
                mean, r = _mean_r(predicted, d["y"][d["test"]].numpy())
                per_session.append(mean)
                all_r.append(r)
        r = np.concatenate(all_r)
        return (float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")), per_session

    best = (-np.inf, 0, None, None)
    trained = 0
    for epoch in range(1, epochs + 1):
        model.train()
        batches = [(i, chunk) for i, d in enumerate(data)
                   for chunk in np.array_split(rng.permutation(d["train"]), max(1, len(d["train"]) // batch_size))]
        losses = []
        for b in rng.permutation(len(batches)):
            i, chunk = batches[b]
            if len(chunk) < 2:  # BatchNorm needs two images
                continue
            index = torch.from_numpy(np.sort(chunk))
            loss = F.mse_loss(model(data[i]["pixels"][index], i), data[i]["y"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        trained = epoch
        r, per_session = evaluate()
        improved = r > best[0]
        if improved:
            best = (r, epoch, copy.deepcopy(model.state_dict()), per_session)
        log(f"epoch {epoch:3d}: training loss {np.mean(losses):.3f}, held-out r {r:.3f}"
            f"{' (best)' if improved else ''}  [{time.perf_counter() - started:.0f} s]")
        if epoch - best[1] >= patience:
            log(f"no better held-out r for {patience} epochs: stopping")
            break
    r, best_epoch, state, per_session = best
    if state is None:
        raise ClosedLoopError("core build: held-out r could not be computed (constant responses or predictions)")
    model.load_state_dict(state)
    model.eval()
    seconds = time.perf_counter() - started
    summary = (f"{len(sessions)} sessions ({', '.join(s.name for s in sessions)}), {neurons} neurons, "
               f"{images} images, held-out r {r:.3f}")
    provenance = {
        "summary": summary,
        "sessions": [{"name": s.name, "images_file": s.sources[0], "responses_file": s.sources[1],
                      "neurons": s.neurons, "images": len(s.images), "image_files": s.files,
                      "heldout_images": len(d["test"]), "heldout_r": float(pr)}
                     for s, d, pr in zip(sessions, data, per_session)],
        "neurons": neurons, "images": images, "heldout_r": float(r), "epochs": trained, "best_epoch": best_epoch,
        "channels": list(channels), "input_px": int(input_px), "grid": int(grid), "heldout_fraction": float(heldout),
        "batch_size": int(batch_size), "learning_rate": float(learning_rate), "weight_decay": float(weight_decay),
        "seed": int(seed), "targets": "stabilised counts 2 sqrt(c + 3/8), z-scored per neuron",
        "seconds": round(seconds, 1),
    }
    save_core(model.core, input_px, Path(out), provenance)
    log(f"held-out r {r:.3f} (epoch {best_epoch}; "
        + ", ".join(f"{s.name} {pr:.3f}" for s, pr in zip(sessions, per_session)) + f"); {seconds:.0f} s")
    return provenance


def describe(path: Path | str) -> list[tuple[str, str]]:
    """What a core file, or the ``[model.core]`` of a protocol file, is: (field, value) rows."""
    from closedloop.learn.cores import load_core, read_core_file

    path = Path(path)
    if path.suffix.lower() == ".toml":
        from closedloop.config import load_protocol

        model = load_protocol(path).model
        core = load_core(model)
        spec = model.core
        rows = [("core", core.name), ("kind", spec.kind)]
        rows += [(key, str(value)) for key, value in (("path", spec.path), ("layer", spec.layer),
                                                     ("limit", spec.limit)) if value is not None]
        rows += [("grid", str(spec.grid)), ("dims", str(spec.dims)), ("trainable", "yes" if core.trainable else "no")]
        if core.network is not None:
            rows.append(("parameters", f"{sum(p.numel() for p in core.network.parameters()):,}"))
        return rows
    core, header = read_core_file(path)  # validates (one-line errors)
    network = core.network.networks[0].model
    trained = sum(p.numel() for name, p in network.named_parameters() if not name.startswith("layers.Beta"))
    provenance = header["provenance"]
    rows = [("core", core.name), ("filters", "-".join(map(str, header["nums_filters"]))),
            ("input", f"{header['input_px']} px"), ("parameters", f"{trained:,}")]
    sessions = provenance.get("sessions")
    for s in sessions if isinstance(sessions, list) else []:
        s = s if isinstance(s, dict) else {}
        rows.append((f"session {s.get('name')}", f"{s.get('neurons')} neurons, {s.get('images')} images "
                     f"({s.get('heldout_images')} held out, r {_number(s.get('heldout_r'))})"))
    for key in ("neurons", "images", "epochs", "best_epoch", "heldout_r", "grid", "seed", "targets", "seconds"):
        if key in provenance:
            value = provenance[key]
            rows.append((key.replace("_", " "), _number(value) if key == "heldout_r" else str(value)))
    return rows


def _number(value: object) -> str:
    """A provenance number to 3 decimals (anything else as it is)."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
