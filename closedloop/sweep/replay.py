"""``closedloop sweep replay``: replays of recorded sessions as a grid of Ray tasks.

A **cell** is one source (a session directory, a closedloop NWB export or a recording with its
protocol and pool) x one alternative strategy (or none) x one seed x one combination of the varied
settings: one :func:`~closedloop.replay.session_replay.replay`, the run ``closedloop replay SOURCE
--strategy NAME`` makes. Seed ``k`` replays with the session's seed + ``k``: seed 0 makes the
session's decisions again (recorded pacing), the others make other ones.

A cell's inputs: the source's path and a digest of what was read from it, the strategy, the seed
and the settings (the pacing, ``every``, ``refresh_every``, ``accuracy_every``, ``twin_epochs``, and
the varied ones). Settings that may vary: those four (whole numbers, at least 1), and the protocol's
``model.FIELD`` and ``selection.FIELD`` (checked by :class:`~closedloop.config.Protocol` with each
source's protocol). The replay's ``decisions.jsonl`` is kept in ``OUT/cells/<id>/``.

The table: per strategy and combination of settings, the median held-out r, the decisions made
again, the speed and, with a strategy, the twin's predicted spikes for the online and the
alternative choices; the plot: those as bars.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from closedloop.config import Protocol
from closedloop.errors import ClosedLoopError
from closedloop.replay.session_replay import Cadence, replay
from closedloop.replay.sources import ReplaySource
from closedloop.select.registry import strategy_params
from closedloop.sweep.files import digest
from closedloop.sweep.grid import combinations, label, with_settings
from closedloop.sweep.plot import bars
from closedloop.sweep.runner import FILES, Plan

PACING = ("every", "refresh_every", "accuracy_every", "twin_epochs")
SETTINGS = "every, refresh_every, accuracy_every, twin_epochs, model.FIELD, selection.FIELD"


def check_setting(key: str, value) -> str:
    """``key`` once ``value`` is checked (the protocol's fields with each source, in :func:`plan`)."""
    if key in PACING:
        if type(value) is not int or value < 1:
            raise ClosedLoopError(f"{key}: must be a whole number, at least 1")
    elif not key.startswith(("model.", "selection.")):
        raise ClosedLoopError(f"not a setting of sweep replay (one of {SETTINGS})")
    return key


def protocol_with(protocol: Protocol, settings: dict) -> Protocol:
    """``protocol`` with the ``model.*`` and ``selection.*`` of ``settings``, checked by its schema."""
    fields = {key: value for key, value in settings.items() if key not in PACING}
    if not fields:
        return protocol
    return with_settings(protocol, fields).model_copy(update={"source": protocol.source})


def _digest(source: ReplaySource) -> str:
    """Of what a replay reads: the protocol, presentations, spikes, pool and logs."""
    text = json.dumps([source.protocol.model_dump(mode="json"), source.presentations, source.responses,
                       source.selections, source.gaps, source.lights], default=str, sort_keys=True)
    return digest(text.encode(), np.ascontiguousarray(source.spikes).tobytes(),
                  np.ascontiguousarray(source.pool.images).tobytes())


def plan(sources: dict[str, ReplaySource], strategies: list[str | None], seeds: int, settings: dict,
         varied: dict[str, list]) -> Plan:
    """The grid: each combination of ``varied`` over ``settings`` (the pacing), each source,
    strategy and seed; every combination and strategy is checked with each source's protocol."""
    cells = []
    for name, source in sources.items():
        data = _digest(source)
        for combination in combinations(varied):
            try:
                protocol = protocol_with(source.protocol, combination)
            except ClosedLoopError as exc:
                raise ClosedLoopError(f"--vary {label(combination)}: {name}: {exc}") from None
            for strategy in strategies:
                if strategy is not None:
                    same = strategy == protocol.selection.strategy
                    strategy_params(strategy, protocol.selection.params if same else {})
                for seed in range(seeds):
                    cells.append({"source": name, "data": data, "strategy": strategy, "seed": seed,
                                  "settings": {**settings, **combination}})
    shared = {name: dataclasses.replace(source, pool_path=None) for name, source in sources.items()}
    return Plan("replay", cells, run_cell, shared, part=lambda inputs: inputs["source"], describe=describe)


def describe(inputs: dict) -> str:
    """``SOURCE, strategy NAME, seed 0, every=8``."""
    return f"{inputs['source']}, strategy {inputs['strategy'] or 'none'}, seed {inputs['seed']}, " \
           f"{label(inputs['settings'])}"


def run_cell(source: ReplaySource, inputs: dict) -> dict:
    """One replay (a Ray task): its report, and its decisions as a file to keep."""
    settings = inputs["settings"]
    protocol = protocol_with(source.protocol, settings)
    source = dataclasses.replace(source, protocol=protocol)
    cadence = Cadence.of(source, settings["every"], settings["refresh_every"], settings["accuracy_every"])
    with tempfile.TemporaryDirectory(prefix="closedloop-replay-") as out:
        report = replay(source, Path(out), inputs["strategy"], protocol.protocol.seed + inputs["seed"], cadence,
                        settings["twin_epochs"])
        decisions = (Path(out) / "decisions.jsonl").read_text()
    return {"report": report, FILES: {"decisions.jsonl": decisions}}


def rows(records: list[dict], varied: list[str]) -> list[dict]:
    """One row per strategy and combination of the ``varied`` settings, over its done cells."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        inputs = record["inputs"]
        key = (inputs["strategy"] or "none", label({k: inputs["settings"][k] for k in varied}))
        groups.setdefault(key, []).append(record["outputs"]["report"])
    out = []
    for (strategy, settings), reports in groups.items():
        r = [np.nanmedian([v if v is not None else np.nan for v in report["accuracy"]["r_observed"]])
             for report in reports if report["accuracy"] and report["accuracy"].get("r_observed")]
        logged = sum(report.get("logged_decisions", 0) for report in reports)
        alternative = [report["alternative"] for report in reports
                       if report.get("alternative", {}).get("decisions")]
        out.append({"strategy": strategy, "settings": settings, "cells": len(reports),
                    "heldout_r": float(np.median(r)) if r else None,
                    "reproduced": f"{sum(r.get('reproduced', 0) for r in reports)}/{logged}" if logged else "-",
                    "speed": float(np.median([report["speed"] or np.nan for report in reports])),
                    "online": float(np.mean([a["online"] for a in alternative])) if alternative else None,
                    "alternative": float(np.mean([a["alternative"] for a in alternative])) if alternative else None,
                    "higher": float(np.mean([a["alternative_higher"] for a in alternative])) if alternative else None})
    return out


def table(found: list[dict]) -> str:
    """The printed rows."""
    def number(value, spec: str) -> str:
        return "-" if value is None or value != value else format(value, spec)

    width = max([len("settings"), *(len(row["settings"]) for row in found)]) + 2
    lines = [f"{'strategy':<20}{'settings':<{width}}{'cells':>6}{'held-out r':>11}{'reproduced':>12}"
             f"{'x real time':>12}{'twin: online':>13}{'alternative':>12}{'alt. higher':>12}"]
    for row in found:
        lines.append(f"{row['strategy']:<20}{row['settings']:<{width}}{row['cells']:>6}"
                     f"{number(row['heldout_r'], '.3f'):>11}{row['reproduced']:>12}{number(row['speed'], '.1f'):>12}"
                     f"{number(row['online'], '.2f'):>13}{number(row['alternative'], '.2f'):>12}"
                     f"{number(row['higher'], '.0%'):>12}")
    lines.append("held-out r: median over units, then over cells; twin: its predicted spikes per presentation "
                 "for the online choices and the strategy's, mean over decisions and cells; alt. higher: the "
                 "share of decisions where the strategy's choice drives the twin more")
    return "\n".join(lines)


def plot(found: list[dict], path: Path) -> Path:
    """Held-out r and, with strategies, the twin's predicted spikes, per row; written to ``path``."""
    names = [f"{row['strategy']} | {row['settings']}" for row in found]
    panels = {"held-out r (median)": {"held-out r": [row["heldout_r"] if row["heldout_r"] is not None else np.nan
                                                     for row in found]}}
    if any(row["online"] is not None for row in found):
        panels["twin's predicted spikes"] = {
            what: [row[what] if row[what] is not None else np.nan for row in found]
            for what in ("online", "alternative")}
    return bars(path, names, panels)
