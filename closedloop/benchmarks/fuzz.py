"""Fuzz harness: thousands of bad inputs through the commands users run, and what each did.

Corpora (see the ``fuzz_*`` modules): the repository's rig, protocol and stimulus-set files
mutated (special values in every field, keys removed and added, files that are not TOML tables,
hypothesis's edits); a complete and a killed session recorded by the real loop on the simulated
rig, corrupted and fed to ``resume``, ``replay``, ``report`` and ``export``; garbage and altered
model files, NWB exports and XDF recordings; bad command lines. Each input runs as the CLI would,
in a child forked from this process, with a timeout. Outcomes:

* clean: exit status 2 and the last stderr line ``closedloop: error: ...`` (or click's usage error);
* accepted: exit status 0;
* nonsensical: accepted although an oracle independent of the validators says it should not have been;
* traceback: anything else (another status, a signal, a traceback, a message of several lines);
* hang: still running after the timeout (its process group is killed).

Run ``closedloop bench fuzz --inputs 3500`` (or, before it is registered,
``python -c "from closedloop.benchmarks.fuzz import fuzz_command; fuzz_command()" --inputs 300``).
"""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from closedloop.benchmarks.fuzz_configs import check_config, config_cases, stimulus_set_cases
from closedloop.benchmarks.fuzz_files import cli_cases, model_cases, recording_cases
from closedloop.benchmarks.fuzz_run import HANG, NONSENSICAL, OUTCOMES, TRACEBACK, Case, Outcome, run_cases
from closedloop.benchmarks.fuzz_sessions import COMMANDS, check_resume, session_cases

CHECKS: dict[str, Callable[..., None]] = {"check-config": check_config, "check-resume": check_resume}
SHARES = {  # corpus: share of the inputs
    "rig": 0.12, "protocol": 0.14, "stimulus set": 0.07, "session/resume": 0.09, "session/replay": 0.05,
    "session/report": 0.08, "session/export": 0.08, "model": 0.12, "nwb": 0.07, "xdf": 0.08, "cli args": 0.10,
}
# Imported before forking, so that each child starts with them loaded.
PRELOAD = ("numpy", "torch", "h5py", "pynwb", "onnx", "onnxruntime", "matplotlib.pyplot", "closedloop.cli",
           "closedloop.checks", "closedloop.session", "closedloop.record", "closedloop.record.nwb", "closedloop.replay",
           "closedloop.replay.sources", "closedloop.replay.session_replay", "closedloop.report", "closedloop.learn",
           "closedloop.learn.build", "closedloop.model.models", "closedloop.model.inspect", "closedloop.design",
           "closedloop.stimuli", "closedloop.stimuli.load")
FAILURES = (NONSENSICAL, TRACEBACK, HANG)


def quotas(inputs: int) -> dict[str, int]:
    """Inputs per corpus: ``inputs`` split by :data:`SHARES`, at least one each."""
    return {corpus: max(1, round(inputs * share)) for corpus, share in SHARES.items()}


def make_cases(seeds: Path, inputs: int, seed: int) -> list[Case]:
    """Every corpus's inputs, about ``inputs`` in all, the same for the same seed."""
    n = quotas(inputs)
    return [*config_cases("rig", n["rig"], seed), *config_cases("protocol", n["protocol"], seed + 1),
            *stimulus_set_cases(n["stimulus set"], seed + 2),
            *session_cases(seeds, {c: n[c] for c in COMMANDS}, seed + 3),
            *model_cases(seeds, n["model"], seed + 4), *recording_cases("nwb", seeds, n["nwb"], seed + 5),
            *recording_cases("xdf", seeds, n["xdf"], seed + 6), *cli_cases(seeds, n["cli args"], seed + 7)]


def preload() -> None:
    """Import what the commands use, so forked children need not (a module that fails to import
    fails again in each child, where it is reported)."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - reported by the children
            pass


def build_seeds(folder: Path) -> None:
    """Make the seed files (a real session, its exports, model files) in a separate process."""
    done = subprocess.run([sys.executable, "-m", "closedloop.benchmarks.fuzz_seeds", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise click.ClickException(f"fuzz seeds could not be made in {folder}:\n{done.stderr[-3000:]}")


@dataclass
class FuzzReport:
    """Every outcome of a run and how long it took (s)."""

    outcomes: list[Outcome]
    seconds: float

    def counts(self) -> dict[str, Counter]:
        table: dict[str, Counter] = {corpus: Counter() for corpus in SHARES}
        for o in self.outcomes:
            table[o.case.corpus][o.kind] += 1
        return table

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind in FAILURES]

    def table(self) -> Table:
        table = Table(title=f"fuzz: {len(self.outcomes)} inputs in {self.seconds:.0f} s")
        for column in ("corpus", "inputs", *OUTCOMES):
            table.add_column(column, justify="left" if column == "corpus" else "right")
        total: Counter = Counter()
        for corpus, counts in self.counts().items():
            total.update(counts)
            table.add_row(corpus, str(sum(counts.values())), *(str(counts[k]) for k in OUTCOMES))
        table.add_row("total", str(sum(total.values())), *(str(total[k]) for k in OUTCOMES), style="bold")
        return table

    def groups(self) -> dict[str, list[Outcome]]:
        """Failures grouped by cause: the traceback's signature, the nonsensical accept's corpus and
        first words of its reason, or the hung command."""
        groups: dict[str, list[Outcome]] = {}
        for o in self.failures:
            key = {TRACEBACK: o.signature, HANG: f"hang: {' '.join(o.case.args[:2])}",
                   NONSENSICAL: f"nonsensical {o.case.corpus}: {o.reason.split(':')[0][:60]}"}[o.kind]
            groups.setdefault(key, []).append(o)
        return groups

    def to_json(self) -> dict:
        return {"inputs": len(self.outcomes), "seconds": self.seconds,
                "corpora": {c: {"inputs": sum(n.values()), **{k: n[k] for k in OUTCOMES}} for c, n in self.counts().items()},
                "failures": [{"corpus": o.case.corpus, "input": o.case.name, "kind": o.kind, "command": command_line(o.case),
                              "status": o.status, "signature": o.signature, "reason": o.reason,
                              "stderr_tail": o.stderr[-2000:]} for o in self.failures]}


def command_line(case: Case) -> str:
    """How to repeat ``case`` by hand, in its saved folder."""
    if case.args and case.args[0] in CHECKS:
        function = CHECKS[case.args[0]]
        return (f"python -c 'from {function.__module__} import {function.__name__}; "
                f"{function.__name__}(*{case.args[1:]!r})'")
    return "python -m closedloop " + shlex.join(case.args)


def describe(outcome: Outcome) -> str:
    """A failure as the report lists it: corpus, input, command, and the end of its stderr."""
    tail = "\n".join(outcome.stderr.strip().splitlines()[-6:])
    why = outcome.reason if outcome.kind == NONSENSICAL else outcome.signature
    return (f"[{outcome.kind}] {outcome.case.corpus}: {outcome.case.name}\n  $ {command_line(outcome.case)}\n"
            f"  {why}\n" + "".join(f"    | {line}\n" for line in tail.splitlines()))


def run_fuzz(seeds: Path, inputs: int = 3500, seed: int = 0, timeout: float = 30.0, jobs: int = 1,
             failures: Path | None = None, progress: Callable[[Outcome], None] | None = None) -> FuzzReport:
    """Run about ``inputs`` inputs made from the seed files in ``seeds`` (see :func:`build_seeds`).

    Parameters
    ----------
    seeds : Path
        Folder of seed files.
    inputs : int
        Inputs in all, split over the corpora by :data:`SHARES`.
    seed : int
        Seed of the mutations and of hypothesis.
    timeout : float
        s an input may run before it counts as a hang.
    jobs : int
        Inputs run at once.
    failures : Path, optional
        Folder that receives each failing input (its files, command, stdout and stderr).
    progress : callable, optional
        Called with each outcome.
    """
    preload()
    cases = make_cases(seeds, inputs, seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="closedloop-fuzz-") as work:
        numbered = []
        for k, case in enumerate(cases):
            folder = Path(work) / f"{k:05d}"
            folder.mkdir()
            numbered.append((case, folder))
        folders = {id(case): folder for case, folder in numbered}

        def done(outcome: Outcome) -> None:
            folder = folders[id(outcome.case)]
            if failures is not None and outcome.kind in FAILURES:
                kept = failures / outcome.case.corpus.replace("/", "-") / f"{folder.name}-{outcome.kind}"
                shutil.copytree(folder, kept, symlinks=True, dirs_exist_ok=True)
                (kept / "FUZZ.txt").write_text(describe(outcome) + f"\nfull stderr:\n{outcome.stderr}")
            shutil.rmtree(folder, ignore_errors=True)
            if progress is not None:
                progress(outcome)

        outcomes = run_cases(numbered, CHECKS, timeout, jobs, done)
    return FuzzReport(outcomes, time.monotonic() - started)


@click.command("fuzz")
@click.option("--inputs", default=3500, show_default=True, type=click.IntRange(len(SHARES)),
              help="Inputs in all, split over the corpora.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds an input may run before it counts as a hang.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the mutations and of hypothesis.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1), help="Inputs run at once.")
@click.option("--seeds", "seeds_dir", default=None, type=click.Path(path_type=Path),
              help="Folder of seed files (a recorded session, exports, models), made there if absent; "
                   "give one to reuse it between runs  [default: a temporary folder]")
@click.option("--failures", "failures_dir", default=Path("fuzz-failures"), show_default=True,
              type=click.Path(path_type=Path), help="Folder that receives each failing input, to reproduce it.")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path), help="Also write the results.")
@click.option("--show", default=5, show_default=True, type=click.IntRange(0),
              help="Print the first N failures with their input and output.")
def fuzz_command(inputs: int, timeout: float, seed: int, jobs: int, seeds_dir: Path | None, failures_dir: Path,
                 json_path: Path | None, show: int) -> None:
    """Bad inputs through the commands: prints, per corpus, inputs tried, clean errors, accepts,
    nonsensical accepts, tracebacks and hangs; exits 1 if there is any of the last three."""
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="closedloop-fuzz-seeds-") as scratch:
        seeds = seeds_dir or Path(scratch)
        with console.status(f"making seed files in {seeds} ..."):
            build_seeds(seeds)
        shutil.rmtree(failures_dir, ignore_errors=True)
        tally: Counter = Counter()

        def progress(outcome: Outcome) -> None:
            tally[outcome.kind] += 1
            if sum(tally.values()) % 100 == 0:
                console.print(f"{sum(tally.values())} inputs: " + ", ".join(f"{tally[k]} {k}" for k in OUTCOMES))

        report = run_fuzz(seeds, inputs, seed, timeout, jobs, failures_dir, progress)
    Console().print(report.table())
    for outcome in report.failures[:show]:
        click.echo(describe(outcome))
    if report.failures:
        click.echo(f"{len(report.failures)} failures in {len(report.groups())} groups; inputs saved in {failures_dir}")
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2))
    sys.exit(1 if report.failures else 0)
