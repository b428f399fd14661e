"""Fault injection: real sessions killed, interrupted and disturbed, and what they kept.

Every session runs as a subprocess (``python -m closedloop run``, each in its own process group)
with a small protocol on a headless simulated rig written to a folder of its own, on streams no
other trial uses. With a seeded generator the benchmark

1. kills the run (kill -9 of its own process) at ``--kills`` random moments — just after the
   session directory appears, during the simulator's start, during the model worker's start, or
   after a drawn number of presentations — then resumes it (``closedloop resume``) to
   completion: presentations recorded before the kill, lost (missing or duplicated) after the
   resume, resume completed (summary ``complete``, every index presented once), orphans
   (processes the run started still alive a few seconds after its death);
2. kills the simulator child alone, and the model worker alone, a third of the way through;
3. kills and restarts an external spike outlet (``closedloop simulate``) ``--restarts`` times
   during one run of a non-simulated rig;
4. steps the acquisition clock 5 s ahead and back during a run, with LSL and with event sync;
5. sends SIGINT to the run's process group half-way;

and counts hangs (a run or resume over ``--timeout``). ``--soak SECONDS`` instead runs one long
session at about 5 presentations/s with 96 simulated units and reports memory and deadline
misses over time (:mod:`closedloop.benchmarks.faults_soak`).

    closedloop bench faults --kills 20 --restarts 10 --json faults.json
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console

from closedloop.benchmarks.faults_kills import run_kills
from closedloop.benchmarks.faults_report import (kill_table, scenario_notes, scenario_table, totals,
                                                  totals_table)
from closedloop.benchmarks.faults_runs import Bench
from closedloop.benchmarks.faults_scenarios import SCENARIOS, run_scenarios
from closedloop.benchmarks.faults_soak import soak

PARTS = ("kills", *SCENARIOS)
WIDTH = 160  # columns of the tables when the output is not a terminal


def run_faults(bench: Bench, kills: int, restarts: int, parts: list[str], log) -> dict:
    """The kill trials and the single-run scenarios in ``parts``; rows and totals."""
    started = time.monotonic()
    kill_rows = run_kills(bench, kills, log) if "kills" in parts else []
    scenario_rows = run_scenarios(bench, [p for p in parts if p != "kills"], restarts, log)
    return {"kills": kill_rows, "scenarios": scenario_rows, "totals": totals(kill_rows, scenario_rows),
            "wall_s": round(time.monotonic() - started, 1)}


def _parts(ctx, param, value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise click.BadParameter(f"unknown {unknown[0]!r} (known: {', '.join(PARTS)})")
    return names


@click.command("faults")
@click.option("--kills", default=20, show_default=True, type=click.IntRange(0),
              help="kill -9 of the run at this many random moments, each then resumed.")
@click.option("--restarts", default=10, show_default=True, type=click.IntRange(1),
              help="Restarts of the spike outlet during one run.")
@click.option("--presentations", default=60, show_default=True, type=click.IntRange(12),
              help="Per session (the restart and clock runs take more).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random moments.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(10),
              help="s a run or resume may take before it counts as a hang (and is killed).")
@click.option("--only", "parts", default=",".join(PARTS), show_default=True, callback=_parts,
              help="Comma-separated parts to run.")
@click.option("--soak", "soak_seconds", default=None, type=click.FloatRange(30),
              help="Instead: one soak run of about this many seconds (5 presentations/s, 96 units).")
@click.option("--work", default=None, type=click.Path(path_type=Path),
              help="Keep every trial's files and sessions in this new folder (default: a temporary one).")
@click.option("--source", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Run the sessions with the closedloop package in this project folder (e.g. an "
                   "exported older commit).")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path), help="Also write the results.")
def faults_command(kills: int, restarts: int, presentations: int, seed: int, timeout: float, parts: list[str],
                   soak_seconds: float | None, work: Path | None, source: Path | None, json_path: Path | None) -> None:
    """Fault injection on real sessions: kill -9 and resume, children killed, the spike outlet
    restarted, the clock stepped, SIGINT; or a soak run (--soak)."""
    results, notes = Console(width=WIDTH if not sys.stdout.isatty() else None), Console(stderr=True)
    folder = Path(tempfile.mkdtemp(prefix="closedloop-faults-")) if work is None else work
    folder.mkdir(parents=True, exist_ok=work is None)
    bench = Bench(folder.resolve(), presentations, timeout, np.random.default_rng(seed),
                  source=None if source is None else source.resolve())

    def log(line: str) -> None:
        notes.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        if soak_seconds is not None:
            report = soak(bench, soak_seconds, log)
            results.print_json(data={k: v for k, v in report.items() if k != "samples"})
        else:
            report = run_faults(bench, kills, restarts, parts, log)
            if report["kills"]:
                results.print(kill_table(report["kills"]))
            if report["scenarios"]:
                results.print(scenario_table(report["scenarios"]))
                for line in scenario_notes(report["scenarios"]):
                    results.print(line, markup=False, highlight=False)
            results.print(totals_table(report["totals"]))
            results.print(f"wall time {report['wall_s']} s")
        if json_path is not None:
            json_path.write_text(json.dumps({"settings": {"kills": kills, "restarts": restarts, "seed": seed,
                                                          "presentations": presentations, "timeout": timeout,
                                                          "parts": parts, "soak": soak_seconds,
                                                          "source": str(source) if source else None},
                                             **report}, indent=2))
    finally:
        if work is None:
            shutil.rmtree(folder, ignore_errors=True)
