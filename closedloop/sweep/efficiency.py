"""``closedloop sweep efficiency``: the efficiency benchmark's sessions as a grid of Ray tasks.

A **cell** is one strategy (an :class:`~closedloop.benchmarks.efficiency.Arm`) x one twin x one
seed x one combination of the varied settings: one simulated session
(:func:`~closedloop.benchmarks.efficiency.run_arm`, the function ``closedloop bench efficiency``
runs for each of its sessions) whose learner learns that one twin. ``closedloop bench efficiency``
runs each strategy and seed on all its twins together; here the twins are an axis of the grid, so a
cluster runs them at once. The twins, the core's models, the pool and the held-out images are
chosen as the bench chooses them (:meth:`~closedloop.benchmarks.efficiency.EfficiencyData.load`,
twins drawn with seed 0).

A cell's inputs: the twin (name and a digest of its files), digests of the pool and held-out images
and of the core's models, the strategy (label, name, params, control fraction), the seed and the
settings (``budget``, ``batch`` and the varied ones). Settings that may vary (``--vary``):
``model.FIELD`` (the learner, checked by :class:`~closedloop.config.ModelSpec`: ``model.members``,
``model.core.dims``, ...), ``batch``, ``warmup``, ``no_repeat`` (the protocol's ``[selection]``,
checked by :class:`~closedloop.config.SelectionSpec`; ``selection.batch`` is ``batch``) and
``budget`` (as ``--budget``).

The table: per combination of the varied settings, the bench's
:class:`~closedloop.benchmarks.efficiency.EfficiencyReport` over the finished cells (trials to the
target and the ratio to random, medians over twins and seeds); the plot: the held-out r of each
strategy against trials.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from closedloop.benchmarks.efficiency import (Arm, EfficiencyData, EfficiencyReport, SessionResult, build_world,
                                              learner_spec, model_files, run_arm)
from closedloop.config import CoreSpec, ModelSpec, SelectionSpec
from closedloop.errors import ClosedLoopError
from closedloop.stimuli import StimulusPool
from closedloop.sweep.files import Files, digest
from closedloop.sweep.grid import by_settings, combinations, label, with_settings
from closedloop.sweep.runner import Plan

SELECTION = ("batch", "warmup", "no_repeat")  # the [selection] fields a simulated session uses
SETTINGS = "model.FIELD (e.g. model.members, model.core.dims), batch, warmup, no_repeat, budget"
CORE = CoreSpec(kind="compact", path=Path("core"), layer="4")  # the core every cell's learner has


@dataclass(frozen=True)
class Shared:
    """What every cell reads: the twins' and the core's model files, the pool, the held-out images,
    and the folder each machine caches the twins' rates and the core's features in."""

    files: Files  # twins/<name>, core/<name>
    pool: StimulusPool
    heldout: np.ndarray
    cache: Path


def check_setting(key: str, value) -> str:
    """The canonical name of setting ``key`` once ``value`` is checked by the real spec; a
    :class:`ClosedLoopError` says what is wrong."""
    key = key.removeprefix("selection.")
    if key.startswith("model."):
        with_settings(learner_spec(CORE), {key.removeprefix("model."): value})
    elif key in SELECTION:
        with_settings(SelectionSpec(), {key: value})
    elif key == "budget":
        if type(value) is not int or value < 8:
            raise ClosedLoopError("budget: must be a whole number of trials, at least 8")
    else:
        raise ClosedLoopError(f"not a setting of sweep efficiency (one of {SETTINGS})")
    return key


def plan(data: EfficiencyData, arms: list[Arm], seeds: int, settings: dict, varied: dict[str, list],
         cache: Path | None = None) -> Plan:
    """The grid: each combination of ``varied`` over ``settings`` (``budget``, ``batch``), each seed,
    twin and arm (in that order, so the first cells to finish cover every strategy).

    ``cache`` (default: a folder in each machine's temporary directory) keeps the model files, the
    twins' rates and the core's features on each machine between cells and runs.
    """
    cache = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "closedloop-sweep"
    paths = {f"twins/{p.name}": p for twin in data.twins for p in model_files(twin)}
    paths |= {f"core/{p.name}": p for model in data.core_models for p in model_files(model)}
    files = Files.read(paths)
    core = files.digest(*(name for name in paths if name.startswith("core/")))
    images = digest(np.ascontiguousarray(data.pool.images).tobytes(), np.ascontiguousarray(data.heldout).tobytes())
    cells = []
    for combination in combinations(varied):
        for seed in range(seeds):
            for twin in data.twins:
                twin_files = files.digest(*(f"twins/{p.name}" for p in model_files(twin)))
                for arm in arms:
                    cells.append({"twin": twin.name, "twin_files": twin_files, "images": images, "core": core,
                                  "strategy": asdict(arm), "seed": seed, "settings": {**settings, **combination}})
    return Plan("efficiency", cells, run_cell, {"": Shared(files, data.pool, data.heldout, cache)},
                describe=describe)


def describe(inputs: dict) -> str:
    """``random, twin compact_model_x, seed 0, model.members=8``."""
    return f"{inputs['strategy']['label']}, twin {Path(inputs['twin']).stem}, seed {inputs['seed']}, " \
           f"{label(inputs['settings'])}"


def run_cell(shared: Shared, inputs: dict) -> dict:
    """One simulated session (a Ray task): the session's figures and its twin."""
    folder = shared.files.materialise(shared.cache / "files")
    world = build_world([folder / "twins" / inputs["twin"]], shared.pool, shared.heldout, 0, shared.cache,
                        log=lambda message: None)
    settings = dict(inputs["settings"])
    model = {key.removeprefix("model."): settings.pop(key) for key in list(settings) if key.startswith("model.")}
    spec: ModelSpec = with_settings(learner_spec(CORE.model_copy(update={"path": folder / "core"})), model)
    run = run_arm(world, spec, Arm(**inputs["strategy"]), inputs["seed"], cache=shared.cache / "features",
                  **settings)
    return {"twin": world.names[0], "session": asdict(run)}


def reports(records: list[dict], varied: list[str],
            target: float | None = None) -> list[tuple[str, EfficiencyReport | None]]:
    """Per combination of the ``varied`` settings, the :class:`EfficiencyReport` of its done cells'
    sessions (by strategy label); None for a combination without a finished random cell (no
    baseline for the ratios)."""
    out = []
    for name, group in by_settings(records, varied).items():
        sessions: dict[str, list[SessionResult]] = {}
        arms: dict[str, Arm] = {}
        for record in group:
            arm = Arm(**record["inputs"]["strategy"])
            arms[arm.label] = arm
            sessions.setdefault(arm.label, []).append(SessionResult(**record["outputs"]["session"]))
        if "random" not in sessions:
            out.append((name, None))
            continue
        ordered = {"random": sessions.pop("random"), **sessions}
        twins = len({record["inputs"]["twin"] for record in group})
        out.append((name, EfficiencyReport.of(ordered, [arms[key] for key in ordered], twins, target)))
    return out


def table(named: list[tuple[str, EfficiencyReport | None]]) -> str:
    """The bench's table for each combination of settings."""
    return "\n\n".join(f"settings: {name}\n" + (report.table() if report is not None else
                                                  "no finished random cell: no baseline for the ratios")
                        for name, report in named)


def write_json(named: list[tuple[str, EfficiencyReport | None]], path: Path) -> None:
    """The reports (``--json``): a list of ``{"settings", ...EfficiencyReport.to_json()}``."""
    data = [{"settings": name, **report.to_json()} for name, report in named if report is not None]
    try:
        Path(path).write_text(json.dumps(data, indent=1, default=float))
    except OSError as exc:
        raise ClosedLoopError(f"--json {path}: cannot write ({exc.strerror or exc})") from None


def plot(named: list[tuple[str, EfficiencyReport | None]], path: Path) -> Path:
    """Held-out r (median over sessions) against trials, a line per strategy and a panel per
    combination of settings with a report, the target dashed; written to ``path`` (PNG, matplotlib's
    Agg)."""
    from matplotlib.figure import Figure

    named = [(name, report) for name, report in named if report is not None] or [("no report", None)]
    figure = Figure(figsize=(5.5 * len(named), 4), layout="constrained")
    for axes, (name, report) in zip(np.atleast_1d(figure.subplots(1, len(named), squeeze=False)).ravel(), named):
        for strategy in report.sessions if report is not None else []:
            trials, r = report.curve(strategy)
            axes.plot(trials, r, label=f"{strategy} ({len(report.sessions[strategy])})",
                      lw=2 if strategy == "random" else 1)
        if report is not None:
            axes.axhline(report.target, color="grey", ls="--", lw=1)
            axes.legend(fontsize="small")
        axes.set(title=name, xlabel="trials", ylabel="held-out r (median over sessions)")
    figure.savefig(path, dpi=100)
    return Path(path)
