"""Running one fuzz input as the CLI would, in a forked child, and classifying what happened.

The parent imports closedloop (and the heavy libraries its commands use) once; each input then
runs in a child forked from it, in its own process group and working directory, so a run costs
milliseconds of start-up instead of an interpreter's seconds, and a hung run is killed with
everything it started.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from closedloop.errors import ClosedLoopError

CLEAN, ACCEPTED, NONSENSICAL, TRACEBACK, HANG = "clean", "accepted", "nonsensical", "traceback", "hang"
OUTCOMES = (CLEAN, ACCEPTED, NONSENSICAL, TRACEBACK, HANG)
ORACLE_FILE = ".fuzz-oracle"  # where the child writes why an accepted input should have been refused
PREPARE_FAILED = 99  # exit status of a child whose input could not be written (a harness bug)


class HarnessError(RuntimeError):
    """An input could not be prepared: the harness itself is wrong, no finding about the product."""


@dataclass
class Case:
    """One fuzz input: files to write, a command to run on them, and what an accept must satisfy.

    Parameters
    ----------
    corpus : str
        Row of the report (``rig``, ``session/replay``, ...).
    name : str
        What was done to the seed, for the failure listing.
    prepare : callable
        ``prepare(folder)`` writes the input files into the empty case folder (the working
        directory of the run).
    args : list of str
        ``closedloop`` arguments, or a harness check (a key of ``fuzz.CHECKS``) and its arguments.
    oracle : callable, optional
        ``oracle(folder)`` runs in the child after an accepted run: a reason the input should have
        been refused, else None.
    """

    corpus: str
    name: str
    prepare: Callable[[Path], None]
    args: list[str]
    oracle: Callable[[Path], str | None] | None = None


@dataclass
class Outcome:
    """What one input did.

    ``seconds`` is the wall time of the child; ``reason`` says why an accept was nonsensical;
    ``signature`` groups tracebacks (exception type and the innermost closedloop frame).
    """

    case: Case
    kind: str
    status: int | None
    stdout: str
    stderr: str
    seconds: float
    reason: str = ""
    signature: str = field(default="")


def _child(case: Case, folder: Path, checks: dict[str, Callable[..., None]]) -> None:
    """Run ``case`` in this (forked) process and leave with its exit status; never returns."""
    status = 1
    try:
        os.setpgid(0, 0)
        # A parent that ran torch has an OpenMP pool this child did not inherit: entering it would
        # wait for ever on threads that are not there. One thread never enters it.
        torch.set_num_threads(1)
        os.chdir(folder)
        try:
            case.prepare(folder)
        except BaseException:  # noqa: BLE001
            Path(".fuzz-prepare-error").write_text(traceback.format_exc())
            os._exit(PREPARE_FAILED)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, ".fuzz-stdout"), (2, ".fuzz-stderr")):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdin = io.TextIOWrapper(os.fdopen(0, "rb", closefd=False))
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True,
                                      errors="backslashreplace")
        status = _invoke(case.args, checks)
        if status == 0 and case.oracle is not None:
            reason = case.oracle(folder)
            if reason:
                Path(ORACLE_FILE).write_text(reason)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever escapes is the finding
        traceback.print_exc()
        status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _invoke(args: Sequence[str], checks: dict[str, Callable[..., None]]) -> int:
    """Exit status of ``closedloop ARGS``, or of a harness check (one-line errors as the CLI prints them)."""
    if args and args[0] in checks:
        try:
            checks[args[0]](*args[1:])
        except ClosedLoopError as exc:
            print(f"closedloop: error: {exc}", file=sys.stderr)
            return 2
        return 0
    from closedloop.cli import main

    try:
        main.main(args=list(args), prog_name="closedloop", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def classify(status: int | None, stderr: str, hung: bool) -> str:
    """``hang``, ``accepted`` (exit 0, no traceback), ``clean`` (exit 2 whose last stderr line is
    ``closedloop: error: ...``, or click's own usage error) or ``traceback`` (anything else:
    another status, a signal, a traceback on stderr, an error message of several lines)."""
    if hung:
        return HANG
    if "Traceback (most recent call last)" in stderr:
        return TRACEBACK
    lines = [line for line in stderr.splitlines() if line.strip()]
    if status == 0:
        return ACCEPTED
    if status != 2 or not lines:
        return TRACEBACK
    if lines[-1].startswith("closedloop: error: ") and sum("closedloop: error" in s for s in lines) == 1:
        return CLEAN
    if lines[0].startswith("Usage: ") and lines[-1].startswith("Error: "):  # click's usage errors
        return CLEAN
    return TRACEBACK


def signature(stderr: str) -> str:
    """Exception type and the innermost closedloop frame of a traceback (else the last stderr line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    frames = [line.strip() for line in lines if line.strip().startswith('File "') and "/closedloop/" in line
              and "/benchmarks/fuzz" not in line]
    where = frames[-1].split("/closedloop/", 1)[-1] if frames else ""
    where = where.replace('", line ', ":").replace(", in ", " ")
    last = lines[-1].strip()
    kind = last.split(":", 1)[0] if "Traceback (most recent call last)" in stderr else last[:100]
    return f"{kind} at {where}" if where else kind


@dataclass
class _Running:
    case: Case
    folder: Path
    pid: int
    started: float


def run_cases(cases: Sequence[tuple[Case, Path]], checks: dict[str, Callable[..., None]], timeout: float,
              jobs: int = 1, done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run each (case, folder), ``jobs`` at a time, each in a forked child; folders must exist.

    Parameters
    ----------
    cases : sequence of (Case, Path)
        Inputs and their (prepared) working folders.
    checks : dict
        Harness checks a case's ``args[0]`` may name.
    timeout : float
        s a child may run before it counts as hung and its process group is killed.
    jobs : int
        Children at once.
    done : callable, optional
        Called with each outcome as it arrives.
    """
    pending, running, outcomes = list(reversed(cases)), [], []
    while pending or running:
        while pending and len(running) < jobs:
            case, folder = pending.pop()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(case, folder, checks)
            try:
                os.setpgid(pid, pid)
            except OSError:  # the child got there first (or is already gone)
                pass
            running.append(_Running(case, folder, pid, time.monotonic()))
        time.sleep(0.002)
        for run in list(running):
            seconds = time.monotonic() - run.started
            pid, raw = os.waitpid(run.pid, os.WNOHANG)
            hung = pid == 0 and seconds > timeout
            if pid == 0 and not hung:
                continue
            if hung:
                _kill_group(run.pid)
                _, raw = os.waitpid(run.pid, 0)
            else:
                _kill_group(run.pid)  # whatever the child left running
            running.remove(run)
            outcome = _outcome(run, raw, hung, seconds)
            outcomes.append(outcome)
            if done is not None:
                done(outcome)
    return outcomes


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "backslashreplace") if path.exists() else ""


def _outcome(run: _Running, raw: int, hung: bool, seconds: float) -> Outcome:
    status = os.waitstatus_to_exitcode(raw)
    if status == PREPARE_FAILED and (run.folder / ".fuzz-prepare-error").exists():
        raise HarnessError(f"input {run.case.corpus}: {run.case.name}: could not be written:\n"
                           f"{_read(run.folder / '.fuzz-prepare-error')}")
    stderr = _read(run.folder / ".fuzz-stderr")
    if status < 0:
        stderr += f"\n(killed by signal {signal.Signals(-status).name})"
    kind = classify(status, stderr, hung)
    reason = _read(run.folder / ORACLE_FILE)
    if kind == ACCEPTED and reason:
        kind = NONSENSICAL
    return Outcome(run.case, kind, None if hung else status, _read(run.folder / ".fuzz-stdout"), stderr, seconds,
                   reason, signature(stderr) if kind == TRACEBACK else "")
