"""Design the next session's stimulus set with a model (the paper's between-session loop).

``closedloop design --model M --pool P -n N --strategy S`` loads any model
:func:`closedloop.model.models.load_model` reads and any pool
:func:`closedloop.stimuli.load.load_pool` reads, lets a selection strategy choose
``N`` images in batches (no image twice), mixes in control images (random pool
images, or gaudy versions of them) at a chosen fraction, and writes to the output
folder:

``set.toml``          a stimulus set :func:`closedloop.stimuli.load_stimulus_set` reads:
                      parametric stimuli as ``params`` entries (one per family, and
                      gaudy or not), every other image (natural, synthesised, gaudy
                      natural) as a PNG file in ``images/`` under one natural-image
                      entry; rendered at the pool's size it gives back exactly the
                      chosen pixels
``images/``           those PNG files, named in set order
``gallery.png``       the set as rendered, captioned with set indices
``provenance.json``   model, pool, strategy and its settings, seed, every decision
                      (pool indices, scores, strategy state) and every stimulus in set
                      order (role, score, pool index, family, params)

The strategy sees the model through the interface of the live learner
(:class:`closedloop.select.strategies.Predictor`): a learner checkpoint (a session's
``checkpoints/learner-final.pt``) as the :class:`closedloop.learn.OnlineLearner` it was, over the
pool, with its posterior (so ``disagreement`` and ``info_gain`` rank by its uncertainty); any other
model as a :class:`FixedModel`. Choices go through :class:`closedloop.select.policy.SelectionPolicy`,
as in a session: no warm-up, and no image offered twice. Each chosen image then counts as shown,
with the model's expected counts as its response, so strategies that look at what was shown
(``adept``, ``variance_reduction``, ``fixed``, the tests) carry on from the earlier decisions.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from closedloop.errors import ClosedLoopError
from closedloop.model.models import ImageModel, resize_pixels
from closedloop.select.policy import SelectionPolicy
from closedloop.select.strategies import Predictor, SelectionContext, Strategy
from closedloop.stimuli import FAMILIES, StimulusPool, gaudy, load_stimulus_set, render_stimulus, stimulus_id

CONTROLS = ("random", "gaudy")
SET_FILE, IMAGES, GALLERY, PROVENANCE = "set.toml", "images", "gallery.png", "provenance.json"


class FixedModel:
    """A plain image model (one that only predicts) as the :class:`Predictor` strategies see.

    A model whose per-image output is 2-D is read as (members, units), as closedloop's
    ensembles are; any other output is one member predicting every output as a unit.
    Predictions are the model's outputs as they are: expected spike counts for closedloop's
    ensembles, the model's own units for others (e.g. a published compact model). The members'
    mean and variance stand for the posterior's (:meth:`predictive`). A pool image is predicted
    once, when a strategy first asks.

    Parameters
    ----------
    model : ImageModel
        What :func:`closedloop.model.models.load_model` returned.
    images : ndarray, (K, N, N, 3) uint8
        The pool; grows with :meth:`extend`.

    Attributes
    ----------
    members, units : int
        Predictions per image and unit, and units (outputs) per member.
    """

    def __init__(self, model: ImageModel, images: np.ndarray):
        self.image_model = model
        self.name = model.name
        shape = model.output_shape
        self.members, self.units = (shape[0], shape[1]) if len(shape) == 2 else (1, model.outputs)
        self._images = np.asarray(images)
        self._predicted = np.zeros((self.members, self.units, len(self._images)))
        self._done = np.zeros(len(self._images), bool)
        self._module = None

    def predictions(self, index: np.ndarray | None = None) -> np.ndarray:
        """Predictions (members, units, B) of pool images ``index`` (all if None)."""
        index = np.arange(len(self._images)) if index is None else np.asarray(index, int)
        missing = np.unique(index[~self._done[index]])
        if len(missing):
            self._predicted[:, :, missing] = self.predict_images(self._images[missing])
            self._done[missing] = True
        return self._predicted[:, :, index]

    def predictive(self, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance over the members of the predictions of pool images ``index``: two (units, B)."""
        predictions = self.predictions(index)
        return predictions.mean(axis=0), predictions.var(axis=0)

    def extend(self, images: np.ndarray) -> np.ndarray:
        """Append (B, N, N, 3) uint8 images (e.g. synthesised ones) to the pool; their indices."""
        start = len(self._images)
        self._images = np.concatenate([self._images, images])
        self._predicted = np.concatenate([self._predicted, np.zeros((self.members, self.units, len(images)))], 2)
        self._done = np.concatenate([self._done, np.zeros(len(images), bool)])
        return np.arange(start, len(self._images))

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Predictions (members, units, B) for (B, N, N, 3) uint8 images."""
        out = self.image_model.predict(images)
        return out.reshape(len(images), self.members, self.units).transpose(1, 2, 0)

    def predictive_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance over the members for (B, N, N, 3) uint8 images: two (units, B)."""
        predictions = self.predict_images(images)
        return predictions.mean(axis=0), predictions.var(axis=0)

    def torch_mean(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable mean over the members (units, B) for float pixels (B, N, N, 3), 0-255.

        Raises
        ------
        ClosedLoopError
            For a model without a torch module (ONNX).
        """
        if self._module is None:
            self._module = self.image_model.torch_module()
            if self._module is None:
                raise ClosedLoopError(f"model {self.image_model.path or self.name}: has no torch module "
                                      f"to differentiate (an ONNX model); choose a strategy that does not "
                                      f"synthesise images")
        px = self.image_model.input_px
        x = resize_pixels(pixels, (px, px)) if px else pixels
        return self._module(x).reshape(len(pixels), self.members, self.units).mean(1).T

    def embedding(self, index: np.ndarray) -> np.ndarray:
        """Not available: a plain image model has no readout features (:class:`ClosedLoopError`)."""
        raise self._no_readout()

    @property
    def ridge(self) -> float:
        """Not available: a plain image model has no readout (:class:`ClosedLoopError`)."""
        raise self._no_readout()

    def _no_readout(self) -> ClosedLoopError:
        return ClosedLoopError(f"model {self.name!r} is a plain image model without readout features: this "
                               f"strategy needs a learner checkpoint (a session's checkpoints/learner-final.pt)")


def unit_names(model: str, units: int) -> tuple[str, ...]:
    """Names of a model's ``units`` outputs, as strategies' ``unit`` settings name them: the model's
    name for a single output, else ``name:0``, ``name:1``, ..."""
    return (model,) if units == 1 else tuple(f"{model}:{u}" for u in range(units))


@dataclass
class Designed:
    """One stimulus of a design: where it came from and why."""

    family: str
    params: dict
    image: np.ndarray
    role: str  # "chosen" (by the strategy) or "control"
    pool_index: int  # in the (grown) pool; a gaudy control: the image it was made from
    score: float | None = None
    batch: int | None = None  # decision number of a chosen image


@dataclass
class Design:
    """The stimuli (chosen first, in choice order, then controls) and each decision's record."""

    stimuli: list[Designed]
    decisions: list[dict]


def parse_params(texts: tuple[str, ...] | list[str]) -> dict:
    """Strategy settings from ``--params`` options: JSON objects or ``key=value`` (value JSON, else text)."""
    params: dict = {}
    for text in texts:
        if text.lstrip().startswith("{"):
            try:
                params.update(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ClosedLoopError(f"--params {text!r}: not a JSON object ({exc.msg})") from None
            continue
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise ClosedLoopError(f"--params {text!r}: give a JSON object or key=value")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def design(model: Predictor, units: tuple[str, ...], pool: StimulusPool, n: int, strategy: Strategy,
           control_fraction: float = 0.0, control: str = "random", batch: int = 16, seed: int = 0) -> Design:
    """Choose ``n`` stimuli: ``round(n * control_fraction)`` controls, the rest by ``strategy``.

    Parameters
    ----------
    model : Predictor
        The model the strategy ranks with, over ``pool``'s images in their order (a
        :class:`FixedModel` or a :class:`closedloop.learn.OnlineLearner`); images a strategy
        makes are appended to it.
    units : tuple of str
        Names of the model's units (:func:`unit_names`), for strategies aimed at one.
    pool : StimulusPool
        The candidates (not modified; images a strategy synthesises go to a copy).
    n : int
        Stimuli in the design.
    strategy : Strategy
        From :func:`closedloop.select.registry.make_strategy`.
    control_fraction : float
        Share of control images, 0-1.
    control : str
        ``random`` (pool images the strategy did not choose) or ``gaudy`` (gaudy versions of them).
    batch : int
        Images per decision of the strategy.
    seed : int
        Seed of the strategy's and the controls' random draws.

    Raises
    ------
    ClosedLoopError
        ``n`` larger than the pool, an unknown control kind, a strategy that cannot rank with this
        model (every image the same score, e.g. disagreement with a single-member model), or one
        that stops choosing.
    """
    if not 1 <= n <= len(pool):
        raise ClosedLoopError(f"-n {n}: the pool holds {len(pool)} images; ask for 1 to {len(pool)}")
    if control not in CONTROLS:
        raise ClosedLoopError(f"--control {control!r}: known: {', '.join(CONTROLS)}")
    if not 0 <= control_fraction <= 1 or batch < 1:
        raise ClosedLoopError(f"--control-fraction {control_fraction} and --batch {batch}: need 0-1 and >= 1")
    original = len(pool)
    pool = StimulusPool(pool.images, pool.families, pool.params)
    strategy.check(list(units), pool)
    n_controls = round(n * control_fraction)
    chosen, decisions = _choose(model, units, pool, strategy, n - n_controls, batch, seed)
    controls = _controls(pool, n_controls, control, chosen, np.random.default_rng([seed, 1]), original)
    return Design(chosen + controls, decisions)


def _choose(model: Predictor, units: tuple[str, ...], pool: StimulusPool, strategy: Strategy, count: int,
            batch: int, seed: int) -> tuple[list[Designed], list[dict]]:
    """``count`` images chosen by ``strategy`` in decisions of ``batch``, through a
    :class:`SelectionPolicy` over the whole pool (no warm-up; no image offered twice), each chosen
    image observed with the model's expected counts as its response; and each decision's record."""
    policy = SelectionPolicy(strategy, model, pool, np.arange(len(pool)), units, batch, warmup=0,
                             no_repeat=count, seed=seed)
    chosen: list[Designed] = []
    taken: set[str] = set()  # ids chosen: a made image may repeat the pixels of one already chosen
    decisions: list[dict] = []
    while len(chosen) < count:
        if strategy.finished:
            raise ClosedLoopError(f"strategy {strategy.name!r} finished after choosing {len(chosen)} of "
                                  f"{count} images")
        policy.batch = min(batch, count - len(chosen))
        decision = policy.decide(len(chosen))
        if not decisions:
            _check_ranks(strategy, decision.context)
        new = [(int(i), float(s)) for i, s in zip(decision.chosen, decision.scores) if pool.ids[i] not in taken]
        if not new:
            raise ClosedLoopError(f"strategy {strategy.name!r} chose no new image after {len(chosen)} of {count}")
        new = new[:count - len(chosen)]
        index = np.array([i for i, _ in new])
        for pool_index, score in new:
            taken.add(pool.ids[pool_index])
            stimulus = pool[pool_index]
            chosen.append(Designed(stimulus.family, stimulus.params, stimulus.image, "chosen", pool_index, score,
                                   len(decisions)))
        for pool_index, counts in zip(index, model.predictive(index)[0].T):
            policy.observe(pool_index, counts)
        record = {"chosen": index.tolist(), "scores": [s for _, s in new]}
        if decision.state is not None:
            record["state"] = decision.state
        decisions.append(record)
    return chosen, decisions


def _check_ranks(strategy: Strategy, context: SelectionContext) -> None:
    """A strategy that ranks by the model's uncertainty gets nothing to rank from a model without any
    (a single member): say so. Strategies that choose without scoring the pool (e.g. synthesis) are
    not checked."""
    if not strategy.needs_model:
        return
    try:
        scores = strategy.scores(context, np.random.default_rng(0))
    except NotImplementedError:
        return
    if np.ptp(scores) == 0:
        raise ClosedLoopError(
            f"strategy {strategy.name!r} gives every image the same score with this model: it needs one whose "
            f"predictions are uncertain, not a single model (one member), e.g. a session's "
            f"checkpoints/learner-final.pt")


def _controls(pool: StimulusPool, count: int, control: str, chosen: list[Designed], rng: np.random.Generator,
              candidates: int) -> list[Designed]:
    """``count`` controls made from the first ``candidates`` pool images that were not ``chosen``,
    none repeating the pixels of another stimulus of the design."""
    controls: list[Designed] = []
    taken = {stimulus_id(d.image) for d in chosen}
    excluded = {d.pool_index for d in chosen}
    for i in rng.permutation(candidates):
        if len(controls) == count:
            break
        if int(i) in excluded:
            continue
        stimulus = pool[int(i)]
        params, image = stimulus.params, stimulus.image
        if control == "gaudy":
            if params.get("gaudy"):
                continue
            params, image = {**params, "gaudy": True}, gaudy(image)
        sid = stimulus_id(image)
        if sid in taken:
            continue
        taken.add(sid)
        controls.append(Designed(stimulus.family, params, image, "control", int(i)))
    if len(controls) < count:
        raise ClosedLoopError(f"--control {control}: only {len(controls)} of {count} control images are "
                              f"left in the pool; ask for a smaller -n or --control-fraction")
    return controls


# ----------------------------------------------------------------- writing --
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(value) -> str:
    """A TOML value (inline); ``TypeError`` for what TOML cannot hold (None in a list)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return repr(value) if np.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML value for {type(value).__name__}")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _as_entry_params(stimulus: Designed, background: float) -> tuple[str, dict] | None:
    """``(toml, params)`` of a parametric stimulus whose params render its pixels again, else None."""
    if stimulus.family not in FAMILIES or not isinstance(stimulus.params, dict):
        return None
    params = {k: v for k, v in stimulus.params.items() if k != "gaudy" and v is not None}
    try:
        text = _toml(params)
        image = render_stimulus(stimulus.family, {**params, "gaudy": bool(stimulus.params.get("gaudy"))},
                                stimulus.image.shape[0], background)
    except (TypeError, ValueError, ValidationError, ClosedLoopError):
        return None
    return (text, params) if np.array_equal(image, stimulus.image) else None


def write_set(stimuli: list[Designed], folder: Path, name: str, description: str, seed: int,
              background: float = 0.5) -> list[Designed]:
    """Write ``folder/set.toml`` (and ``folder/images/``) holding ``stimuli``; returns them in set order.

    Parametric stimuli whose params render their pixels (at their size on ``background``)
    become one ``params`` entry per (family, gaudy); every other image is saved as a PNG
    file in ``images/`` (named in set order) under one natural-image entry, last.
    """
    groups: dict[tuple[str, bool], list[tuple[Designed, str]]] = {}
    files: list[Designed] = []
    for stimulus in stimuli:
        entry = _as_entry_params(stimulus, background)
        if entry is None:
            files.append(stimulus)
        else:
            groups.setdefault((stimulus.family, bool(stimulus.params.get("gaudy"))), []).append((stimulus, entry[0]))
    lines = ["[set]", f"name = {_toml(name)}", f"seed = {seed}", f"description = {_toml(description)}"]
    for (family, is_gaudy), members in groups.items():
        lines += ["", "[[entry]]", f"family = {_toml(family)}"] + (["gaudy = true"] if is_gaudy else [])
        lines += ["params = ["] + [f"    {text}," for _, text in members] + ["]"]
    if files:
        (folder / IMAGES).mkdir()
        width = len(str(len(files) - 1))
        for k, stimulus in enumerate(files):
            Image.fromarray(stimulus.image).save(folder / IMAGES / f"{k:0{width}d}.png")
        lines += ["", "[[entry]]", f"natural = {_toml(IMAGES)}"]
    (folder / SET_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [s for members in groups.values() for s, _ in members] + files


def write_design(result: Design, folder: Path, provenance: dict, background: float = 0.5) -> StimulusPool:
    """Write the set, its images, its gallery and the provenance to ``folder``; the set as rendered.

    Raises
    ------
    ClosedLoopError
        When ``folder`` already holds a design, or cannot be written.
    """
    if (folder / SET_FILE).exists() or (folder / IMAGES).exists():
        raise ClosedLoopError(f"design folder {folder}: already holds a design (choose another --out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        strategy = provenance["strategy"]["name"]
        chosen = sum(s.role == "chosen" for s in result.stimuli)
        description = (f"{chosen} images chosen by {strategy} with {provenance['model']['name']}, "
                       f"{len(result.stimuli) - chosen} {provenance['control']['kind']} controls")
        ordered = write_set(result.stimuli, folder, folder.resolve().name, description, provenance["seed"],
                            background)
        rendered = load_stimulus_set(folder / SET_FILE).render(result.stimuli[0].image.shape[0], background)
        rendered.gallery(title=f"{folder.name}: {description}").save(folder / GALLERY)
        provenance = {**provenance, "decisions": result.decisions, "stimuli": [
            {"index": k, "id": rendered.ids[k], "role": s.role, "score": s.score, "batch": s.batch,
             "pool_index": s.pool_index, "family": s.family, "params": s.params}
            for k, s in enumerate(ordered)]}
        (folder / PROVENANCE).write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    except OSError as exc:
        raise ClosedLoopError(f"design folder {folder}: cannot write ({exc.strerror or exc})") from None
    return rendered


def run_design(model_path: Path, pool_path: Path, n: int, strategy_name: str, params: dict, out: Path,
               control_fraction: float = 0.0, control: str = "random", batch: int = 16, seed: int = 0,
               size_px: int = 112, background: float = 0.5) -> tuple[Design, StimulusPool]:
    """``closedloop design``: load the model, pool and strategy, design, write ``out``.

    Parameters
    ----------
    model_path : Path
        Any file :func:`closedloop.model.models.load_model` reads; a learner checkpoint is used as the
        learner it was (:meth:`closedloop.learn.OnlineLearner.from_checkpoint`), with its posterior.
    pool_path : Path
        Any pool :func:`closedloop.stimuli.load.load_pool` reads (sets and image files rendered at
        ``size_px`` pixels on a ``background`` grey, 0-1).
    n, control_fraction, control, batch, seed
        As for :func:`design`.
    strategy_name, params : str, dict
        The strategy and its settings (:func:`closedloop.select.registry.make_strategy`).
    out : Path
        Folder to write (see the module docstring).

    Returns
    -------
    (Design, StimulusPool)
        The design (choice order) and the written set as it renders.
    """
    from closedloop.learn import OnlineLearner, open_image_model
    from closedloop.learn.learner import CHECKPOINT_FORMAT
    from closedloop.select.registry import make_strategy
    from closedloop.stimuli.load import load_pool

    strategy = make_strategy(strategy_name, params)
    image_model = open_image_model(model_path)
    pool, pool_what = load_pool(pool_path, size_px, background)
    if image_model.metadata.get("format") == CHECKPOINT_FORMAT:
        model = OnlineLearner.from_checkpoint(model_path, pool.images)
        kind, members = "learner", model.spec.members
    else:
        model = FixedModel(image_model, pool.images)
        kind, members = "image model", model.members
    units = unit_names(image_model.name, model.units)
    result = design(model, units, pool, n, strategy, control_fraction, control, batch, seed)
    provenance = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(model_path), "name": image_model.name, "kind": kind, "members": members,
                  "units": list(units)},
        "pool": {"path": str(pool_path), "description": pool_what},
        "strategy": {"name": strategy.name, "params": strategy.params.model_dump(mode="json")},
        "n": n, "batch": batch, "seed": seed, "background": background,
        "control": {"kind": control, "fraction": control_fraction},
    }
    return result, write_design(result, out, provenance, background)
