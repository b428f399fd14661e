"""``closedloop sweep hypotheses``: the hypothesis-test benchmark as a grid of Ray tasks.

A **cell** is, on synthetic neurons, one seed x one combination of the varied settings: one
:func:`~closedloop.benchmarks.hypotheses.run_hypothesis_bench` (its neurons of every group, each
tested with the adaptive and the fixed design); with ``--twins``, one twin x one seed x one
combination: one :func:`~closedloop.benchmarks.hypotheses.twin_run` (the full fixed design and the
adaptive test), the run ``closedloop bench hypotheses --twins`` makes for that twin (twins drawn
with seed 0, as the bench draws them at ``--seed 0``).

A cell's inputs: a digest of the pool (and the twin's name, place among the twins and a digest of
its file), the seed and the settings (``threshold``, ``budget``, ``neurons`` on synthetic neurons,
and the varied ones). Settings that may vary: the ``hypothesis`` strategy's own (``threshold``,
``budget``, ``particles``, ``cover``, ``level``, ``check``, ``none_fits``; checked by the strategy),
``batch`` (checked by :class:`~closedloop.config.SelectionSpec`) and, on synthetic neurons,
``neurons``.

The table: per combination, the bench's table of all the combination's finished runs together;
the plot: correct and false decisions and trials to decision per design (synthetic neurons), or
agreement with the full design and the adaptive test's share of its trials (twins).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from closedloop.benchmarks.hypotheses import (DEFAULT_HYPOTHESES, DESIGNS, FULL_REPEATS, UNIT, BenchRun,
                                              HypothesisBenchResult, TwinBenchResult, TwinRun, adaptive_budget,
                                              format_hypothesis_bench, format_twin_bench, outcomes,
                                              run_hypothesis_bench, twin_models, twin_run)
from closedloop.benchmarks.efficiency import model_files
from closedloop.config import SelectionSpec
from closedloop.errors import ClosedLoopError
from closedloop.select.registry import strategy_params
from closedloop.simulate.neurons import CompactNeuron
from closedloop.stimuli import StimulusPool
from closedloop.sweep.files import Files, digest
from closedloop.sweep.grid import by_settings, combinations, label, with_settings
from closedloop.sweep.plot import bars
from closedloop.sweep.runner import Plan

TEST = ("threshold", "budget", "particles", "cover", "level", "check", "none_fits")  # the strategy's settings
ARGUMENTS = ("threshold", "budget", "particles", "batch", "neurons")  # the bench's own arguments


@dataclass(frozen=True)
class Shared:
    """What every cell reads: the pool, the twins' files (None on synthetic neurons), where each
    machine keeps them."""

    pool: StimulusPool
    files: Files | None
    cache: Path


def check_setting(key: str, value, twins: bool = False) -> str:
    """``key`` once ``value`` is checked by the real spec; a :class:`ClosedLoopError` says what is wrong."""
    key = key.removeprefix("selection.")
    if key in TEST:
        strategy_params("hypothesis", {"neuron": UNIT, "hypotheses": list(DEFAULT_HYPOTHESES), key: value})
    elif key == "batch":
        with_settings(SelectionSpec(), {key: value})
    elif key == "neurons" and not twins:
        if type(value) is not int or value < 1:
            raise ClosedLoopError("neurons: must be a whole number, at least 1")
    else:
        known = ", ".join(TEST + ("batch",) + (() if twins else ("neurons",)))
        raise ClosedLoopError(f"not a setting of sweep hypotheses{' --twins' * twins} (one of {known})")
    return key


def plan(pool: StimulusPool, seeds: int, settings: dict, varied: dict[str, list], twins_dir: Path | None = None,
         limit: int = 6, cache: Path | None = None) -> Plan:
    """The grid: each combination of ``varied`` over ``settings`` (``threshold``, ``budget``, and
    ``neurons``), each seed (and each of ``limit`` twins of ``twins_dir``)."""
    import tempfile

    images = digest(np.ascontiguousarray(pool.images).tobytes(), repr((pool.families, pool.params)).encode())
    files, twins = None, []
    if twins_dir is not None:
        twins = twin_models(Path(twins_dir), limit, 0)
        if not twins:
            raise ClosedLoopError(f"--twins {twins_dir}: no compact models")
        files = Files.read({f"twins/{p.name}": p for twin in twins for p in model_files(twin)})
        settings = {**settings, "budget": adaptive_budget(pool, settings.get("budget"))}
    cells = []
    for combination in combinations(varied):
        for seed in range(seeds):
            base = {"images": images, "seed": seed, "settings": {**settings, **combination}}
            if twins_dir is None:
                cells.append(base)
            for index, twin in enumerate(twins):
                cells.append({"twin": twin.name, "index": index, **base,
                              "twin_files": files.digest(*(f"twins/{p.name}" for p in model_files(twin)))})
    cache = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "closedloop-sweep"
    return Plan("hypotheses", cells, run_cell, {"": Shared(pool, files, cache)}, describe=describe)


def describe(inputs: dict) -> str:
    """``twin compact_model_x, seed 0, threshold=0.9``."""
    where = f"twin {Path(inputs['twin']).stem}, " if "twin" in inputs else ""
    return f"{where}seed {inputs['seed']}, {label(inputs['settings'])}"


def run_cell(shared: Shared, inputs: dict) -> dict:
    """One seed's synthetic neurons, or one twin (a Ray task): the runs and the test's outcomes."""
    settings = dict(inputs["settings"])
    arguments = {key: settings.pop(key) for key in ARGUMENTS if key in settings}
    hypotheses = [dict(h) for h in DEFAULT_HYPOTHESES]
    if "twin" not in inputs:
        result = run_hypothesis_bench(shared.pool, seed=inputs["seed"], test=settings, **arguments)
        return {"runs": [asdict(run) for run in result.runs], "hypotheses": result.hypotheses,
                "pool_size": result.pool_size, "seconds": result.seconds}
    twin = CompactNeuron(shared.files.materialise(shared.cache / "files") / "twins" / inputs["twin"])
    run = twin_run(twin, inputs["index"], shared.pool, hypotheses, seed=inputs["seed"], test=settings, **arguments)
    return {"run": asdict(run), "outcomes": outcomes(hypotheses, settings), "pool_size": len(shared.pool)}


def results(records: list[dict], varied: list[str]) -> list[tuple[str, HypothesisBenchResult | TwinBenchResult]]:
    """Per combination of the ``varied`` settings, the bench's result of its done cells' runs."""
    out = []
    for name, group in by_settings(records, varied).items():
        settings, outputs = group[0]["inputs"]["settings"], [record["outputs"] for record in group]
        threshold, budget = settings["threshold"], settings["budget"]
        seconds = sum(record["provenance"].get("seconds", 0.0) for record in group)
        if "run" in outputs[0]:
            runs = [TwinRun(**o["run"]) for o in outputs]
            size = outputs[0]["pool_size"]
            result = TwinBenchResult(runs, outputs[0]["outcomes"], size, FULL_REPEATS * size, threshold, budget,
                                     seconds)
        else:
            runs = [BenchRun(**run) for o in outputs for run in o["runs"]]
            result = HypothesisBenchResult(runs, outputs[0]["hypotheses"], outputs[0]["pool_size"], threshold,
                                           budget, seconds)
        out.append((name, result))
    return out


def table(named: list[tuple[str, HypothesisBenchResult | TwinBenchResult]]) -> str:
    """The bench's table for each combination of settings."""
    return "\n\n".join(f"settings: {name}\n" + (format_twin_bench(result) if isinstance(result, TwinBenchResult)
                                                else format_hypothesis_bench(result)) for name, result in named)


def plot(named: list[tuple[str, HypothesisBenchResult | TwinBenchResult]], path: Path) -> Path:
    """Bars per combination of settings (module docstring), written to ``path``."""
    rows = [name for name, _ in named]
    results_ = [result for _, result in named]
    if isinstance(results_[0], TwinBenchResult):
        panels = {"fraction": {"agreement with the full design": [r.agreement for r in results_],
                               "adaptive trials / full design's": [r.trial_fraction for r in results_]}}
    else:
        panels = {"fraction of runs": {f"{d} {what}": [getattr(r, f)(d) for r in results_] for d in DESIGNS
                                       for what, f in (("correct", "accuracy"), ("false", "false_rate"))},
                  "median trials": {d: [r.median_trials(d) for r in results_] for d in DESIGNS}}
    return bars(path, rows, panels)
