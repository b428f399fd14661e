"""Sweep throughput on this machine: cells per minute with 1 and 2 workers, and how a grid's time
grows with its size.

The cells are ``closedloop sweep efficiency``'s, run by the product's own path
(:func:`closedloop.sweep.efficiency.plan` and :func:`closedloop.sweep.run_sweep` on a local Ray): one
simulated session each (random and ``--strategy`` on the first twins, seed 0), ``--budget`` trials
on the first ``--pool-limit`` images of ``--pool`` scored on ``--heldout-limit`` held-out images.
The load average before and after is printed: other work on the machine takes its cores too.
Every timed run writes to a fresh folder, so no cell is skipped; the per-machine cache (the twins'
rates, the core's features, the model files) is filled by a first, cold run of the largest grid
and then shared, as it is from the second run of a real sweep on.

Figures, medians over ``--repeats`` runs:

* **baseline**: the same cells called one after another in this process, without Ray;
* **workers**: a grid of ``--workers-grid`` cells with at most 1 and 2 cells at once: cells per
  minute, 2 workers' rate over 1 worker's (at most 2 on this 2-core machine), and a cell's wall
  and CPU seconds in its worker (a cell whose wall time exceeds its CPU time waited for a core);
* **growth**: grids of ``--sizes`` cells with 2 workers: seconds, seconds per cell, and each grid's
  time over the smallest one's (linear growth: the size ratio).

    python bench/sweep_scale.py --twins ../shared/v4/compact_models \\
        --pool ../shared/v4/sessions/images_201025.zip --heldout ../shared/v4/sessions/images_190923.zip
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from closedloop.benchmarks.efficiency import Arm, EfficiencyData
from closedloop.cluster import connect
from closedloop.stimuli import StimulusPool
from closedloop.sweep import efficiency, run_sweep
from closedloop.sweep.runner import Plan, execute


def timed_sweep(plan: Plan, cells: int, workers: int, folder: Path, cell_times: list | None = None) -> float:
    """Wall seconds of a sweep of the first ``cells`` cells of ``plan`` into a fresh folder; each
    cell's (wall, CPU) seconds are added to ``cell_times``."""
    quiet = Console(file=io.StringIO())
    with tempfile.TemporaryDirectory(dir=folder) as out:
        started = time.perf_counter()
        outcome = run_sweep(dataclasses.replace(plan, cells=plan.cells[:cells]), Path(out), workers=workers,
                            console=quiet)
        seconds = time.perf_counter() - started
    if outcome.failed or outcome.ran != cells:
        raise SystemExit(f"a timed sweep did not run its {cells} cells: {[r['error'] for r in outcome.records]}")
    if cell_times is not None:
        cell_times += [(r["provenance"]["seconds"], r["provenance"]["cpu_seconds"]) for r in outcome.records]
    return seconds


def in_process(plan: Plan, cells: int) -> float:
    """Wall seconds of the first ``cells`` cells run one after another here, as a Ray task runs each."""
    started = time.perf_counter()
    for inputs in plan.cells[:cells]:
        result = execute(plan.run, plan.shared[plan.part(inputs)], inputs)
        if result["status"] != "done":
            raise SystemExit(f"a cell failed in process: {result['error']}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twins", type=Path, required=True, help="Folder of compact models (the twins).")
    parser.add_argument("--pool", type=Path, required=True, help="Candidate images (zip, folder, .npz).")
    parser.add_argument("--heldout", type=Path, required=True, help="Held-out images.")
    parser.add_argument("--pool-limit", type=int, default=300, help="Pool images used (the first N).")
    parser.add_argument("--heldout-limit", type=int, default=50)
    parser.add_argument("--budget", type=int, default=200, help="Trials per session (cell).")
    parser.add_argument("--strategy", default="max_response", help="The strategy beside random.")
    parser.add_argument("--sizes", default="2,4,8", help="Grid sizes (cells) for the growth figures.")
    parser.add_argument("--workers-grid", type=int, default=4, help="Cells of the grid timed with 1 and 2 workers.")
    parser.add_argument("--repeats", type=int, default=5, help="Runs per figure (medians).")
    args = parser.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    largest = max(*sizes, args.workers_grid)
    data = EfficiencyData.load(args.twins, [args.pool], args.heldout, limit=(largest + 1) // 2, core_models=4,
                               heldout_limit=args.heldout_limit, log=print)
    pool = data.pool
    data.pool = StimulusPool(pool.images[:args.pool_limit], pool.families[:args.pool_limit],
                             pool.params[:args.pool_limit])
    arms = [Arm("random", "random"), Arm.parse(args.strategy)]
    with tempfile.TemporaryDirectory(prefix="sweep-scale-") as scratch:
        folder = Path(scratch)
        plan = efficiency.plan(data, arms, 1, {"budget": args.budget, "batch": 4}, {}, folder / "cache")
        print(f"{connect(None, cpus=2)}; cells: one session each of {args.budget} trials, {len(data.pool)} pool "
              f"and {len(data.heldout)} held-out images, a twin and {arms[0].label} or {arms[1].label}")
        load = os.getloadavg()[0]
        cold = timed_sweep(plan, largest, 2, folder)
        print(f"cold run ({largest} cells, 2 workers; fills the cache, starts Ray's workers): {cold:.1f} s")
        in_process(plan, 1)  # this process's first cell loads what Ray's workers loaded in the cold run
        baseline = [in_process(plan, args.workers_grid) for _ in range(args.repeats)]
        cell_times: dict[int, list] = {1: [], 2: []}
        per_workers = {w: [timed_sweep(plan, args.workers_grid, w, folder, cell_times[w]) for _ in range(args.repeats)]
                       for w in (1, 2)}
        growth = {n: [timed_sweep(plan, n, 2, folder) for _ in range(args.repeats)] for n in sizes}
    print(f"load average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores "
          "(other work on the machine slows the figures down)")

    def rate(seconds: list[float], cells: int) -> float:
        return 60 * cells / statistics.median(seconds)

    base = rate(baseline, args.workers_grid)
    print(f"\n{args.workers_grid} cells, medians of {args.repeats} runs:")
    print(f"{'':<22}{'s':>7}{'cells/min':>11}{'x in-process':>14}{'x 1 worker':>12}{'a cell: wall s':>16}"
          f"{'CPU s':>7}")
    print(f"{'in process, no Ray':<22}{statistics.median(baseline):>7.1f}{base:>11.1f}{1:>14.2f}")
    for w, seconds in per_workers.items():
        wall, cpu = (statistics.median(column) for column in zip(*cell_times[w]))
        print(f"{f'Ray, {w} worker' + 's' * (w > 1):<22}{statistics.median(seconds):>7.1f}"
              f"{rate(seconds, args.workers_grid):>11.1f}{rate(seconds, args.workers_grid) / base:>14.2f}"
              f"{rate(seconds, args.workers_grid) / rate(per_workers[1], args.workers_grid):>12.2f}"
              f"{wall:>16.2f}{cpu:>7.2f}")
    print("a cell: median over cells of its wall and CPU seconds in its worker (wall > CPU: it waited for a core)")
    smallest = min(sizes)
    print(f"\ngrid size, 2 workers, medians of {args.repeats} runs:")
    print(f"{'cells':>6}{'s':>8}{'s/cell':>8}{'cells/min':>11}{f'time / {smallest} cells':>18}{'size ratio':>12}")
    for n, seconds in growth.items():
        median = statistics.median(seconds)
        print(f"{n:>6}{median:>8.1f}{median / n:>8.2f}{rate(seconds, n):>11.1f}"
              f"{median / statistics.median(growth[smallest]):>18.2f}{n / smallest:>12.2f}")


if __name__ == "__main__":
    main()
