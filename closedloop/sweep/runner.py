"""Run a sweep's cells as Ray tasks, record each as it finishes, show progress.

:func:`run_sweep` joins Ray (:func:`closedloop.cluster.connect`: a local Ray on this machine's
cores, or a running cluster at ``address``), puts the data every cell reads in Ray's object store
once, and keeps at most ``workers`` cells running at once (one CPU each). Each finished cell's
record goes to the :class:`~closedloop.sweep.journal.Journal` at once.

Rules:

- **skip**: a cell whose identity (:func:`~closedloop.sweep.grid.cell_id`) the journal holds as
  done is not run again; how many were skipped is said;
- **fail**: a cell that raises is recorded as failed with its one-line error (a
  :class:`ClosedLoopError`'s message, else ``Type: message``), and the others go on; a worker that
  dies is recorded the same way (Ray runs its cell once more first);
- **retry**: a failed cell runs again on the next run of the grid;
- **interrupt**: Ctrl-C cancels the running cells; every finished cell stays recorded.

Inside a task the cell runs on one thread (torch and BLAS), as the model worker does: cells are
the parallelism, and threads inside a forked worker slow it down or hang it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from closedloop.errors import ClosedLoopError, one_line
from closedloop.sweep.grid import cell_id
from closedloop.sweep.journal import RESULTS, Journal, utc

FILES = "_files"  # an output key: files (name -> text or bytes) the driver writes under OUT/cells/<id>/


@dataclass
class Plan:
    """A sweep: its cells and what runs them.

    Attributes
    ----------
    kind : str
        ``efficiency``, ``hypotheses`` or ``replay`` (part of each cell's identity).
    cells : list of dict
        Each cell's inputs (JSON values): its parameters and its identity.
    run : callable
        ``run(shared, inputs) -> outputs`` (a dict of JSON values; under ``"_files"`` optionally
        files to keep), run in a Ray worker: a module-level function, so any worker imports it.
    shared : dict
        Data cells read (images, model files), each put in Ray's object store once; a cell gets
        ``shared[part(inputs)]``.
    part : callable
        Which of ``shared`` a cell reads.
    describe : callable
        A cell's inputs in a few words, for messages.
    """

    kind: str
    cells: list[dict]
    run: Callable[[Any, dict], dict]
    shared: dict[str, Any] = field(default_factory=dict)
    part: Callable[[dict], str] = lambda inputs: ""
    describe: Callable[[dict], str] = str


@dataclass
class Outcome:
    """What a sweep run did: ``records`` of the grid's finished cells (this run's and earlier
    runs'), in grid order; how many ran now, were skipped, failed; where it ran."""

    records: list[dict]
    ran: int
    skipped: int
    failed: int
    ray: str | None  # None: nothing ran, Ray was not started

    def done(self) -> list[dict]:
        """The records of the cells that finished without an error."""
        return [r for r in self.records if r["status"] == "done"]


def provenance(ray: str) -> dict:
    """What every record of this run carries: closedloop's version, the git commit of its source
    (with ``dirty``: uncommitted changes; None outside a git checkout) and Ray."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        closedloop = version("closedloop")
    except PackageNotFoundError:
        closedloop = None
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(commit) and bool(subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, False
    return {"closedloop": closedloop, "commit": commit, "dirty": dirty, "ray": ray}


def _error(exc: BaseException) -> str:
    """One line: a ClosedLoopError's message, else ``Type: message``."""
    if isinstance(exc, ClosedLoopError):
        return " ".join(str(exc).split())
    return one_line(exc)


def execute(run: Callable[[Any, dict], dict], shared: Any, inputs: dict) -> dict:
    """Run one cell (in a Ray worker): its status, outputs or one-line error, and where and when it ran."""
    import ray
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    node = ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else None
    started, clock, cpu = time.time(), time.perf_counter(), time.process_time()
    try:
        with threadpool_limits(1):
            outputs, status, error = run(shared, inputs), "done", None
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded; the others go on
        outputs, status, error = None, "failed", _error(exc)
    return {"status": status, "outputs": outputs, "error": error,
            "provenance": {"host": socket.gethostname(), "node": node, "pid": os.getpid(), "started": utc(started),
                           "ended": utc(time.time()), "seconds": round(time.perf_counter() - clock, 3),
                           "cpu_seconds": round(time.process_time() - cpu, 3)}}


def run_sweep(plan: Plan, out: Path, address: str | None = None, workers: int | None = None,
              console: Console | None = None) -> Outcome:
    """Run the cells of ``plan`` not yet done in ``out`` as Ray tasks (module docstring).

    Parameters
    ----------
    plan : Plan
        The grid.
    out : Path
        Folder of ``results.jsonl``, ``results.json`` and ``cells/``.
    address : str, optional
        A running Ray cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``); a local Ray when None.
    workers : int, optional
        Most cells running at once (and a local Ray's CPUs); default: every CPU Ray has.
    console : rich Console, optional
        Where progress goes (stderr by default).

    Returns
    -------
    Outcome
    """
    import ray

    from closedloop.cluster import connect

    console = console or Console(stderr=True)
    journal = Journal(out)
    ids = [cell_id(plan.kind, inputs) for inputs in plan.cells]
    cells = dict(zip(ids, plan.cells))  # a cell listed twice runs once
    todo = [(cell, inputs) for cell, inputs in cells.items() if not journal.done(cell)]
    if journal.damaged:
        console.print(f"note: {journal.damaged} unreadable lines in the journal (a sweep killed mid-write) ignored",
                      markup=False, soft_wrap=True)
    skipped = f"skipped {len(cells) - len(todo)} finished cells (recorded in {Path(out) / RESULTS})"
    described, failed = None, 0
    try:
        if todo:
            described = connect(address, cpus=workers)
            at_once = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            console.print(f"sweep {plan.kind}: {len(cells)} cells on {described}, at most {at_once} at once",
                          markup=False, soft_wrap=True)
            if len(todo) < len(cells):
                console.print(skipped, markup=False, soft_wrap=True)
            failed = _run(plan, todo, journal, at_once, provenance(described), console)
        else:
            console.print(f"sweep {plan.kind}: {len(cells)} cells, all finished before: {skipped}", markup=False,
                          soft_wrap=True)
    finally:
        journal.close()
    records = [journal.records[cell] for cell in cells if cell in journal.records]
    return Outcome(records, len(todo), len(cells) - len(todo), failed, described)


def _run(plan: Plan, todo: list[tuple[str, dict]], journal: Journal, at_once: int, base: dict,
         console: Console) -> int:
    """Submit ``todo`` keeping ``at_once`` running, record each as it finishes; the failed count."""
    import ray

    task = ray.remote(execute).options(num_cpus=1, max_retries=1)
    shared = {key: ray.put(value) for key, value in plan.shared.items()}
    queue, running, failed = iter(todo), {}, 0

    def submit() -> None:
        for cell, inputs in queue:
            running[task.remote(plan.run, shared[plan.part(inputs)], inputs)] = (cell, inputs)
            if len(running) >= at_once:
                return

    columns = (TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("cells", total=len(todo), failed=0)
        submit()
        try:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                cell, inputs = running.pop(ref)
                record = _record(plan, cell, inputs, ref, base, journal)
                journal.add(record)
                failed += record["status"] != "done"
                progress.update(bar, advance=1, failed=failed)
                if record["status"] != "done":
                    progress.console.print(f"cell {cell} ({plan.describe(inputs)}) failed: {record['error']}",
                                           markup=False, highlight=False, soft_wrap=True)
                if not console.is_terminal:  # a log has no live bar: a line per cell
                    _log_line(progress, bar, console)
                submit()
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref, force=True)
            raise ClosedLoopError(f"interrupted: the finished cells are recorded in {journal.out / RESULTS}; "
                                  "run the same command again to run the others") from None
    return failed


def _log_line(progress: Progress, bar, console: Console) -> None:
    """``3/8 cells done (0 failed), about 0:01:10 left``."""
    task = progress.tasks[bar]
    left = task.time_remaining
    console.print(f"{task.completed:.0f}/{task.total:.0f} cells done ({task.fields['failed']} failed)"
                  + ("" if left is None else f", about {round(left) // 3600}:{round(left) % 3600 // 60:02d}:"
                                            f"{round(left) % 60:02d} left"), markup=False, highlight=False)


def _record(plan: Plan, cell: str, inputs: dict, ref, base: dict, journal: Journal) -> dict:
    """The record of a finished task: its result, or a failure when the worker died."""
    import ray

    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:
        result = {"status": "failed", "outputs": None, "error": _error(exc).splitlines()[0][:160],
                  "provenance": {"ended": utc(time.time())}}
    outputs = result["outputs"]
    files = journal.write_files(cell, outputs.pop(FILES)) if outputs and FILES in outputs else []
    return {"id": cell, "kind": plan.kind, "inputs": inputs, "status": result["status"], "outputs": outputs,
            "error": result["error"], "files": files, "provenance": {**base, **result["provenance"]}}
