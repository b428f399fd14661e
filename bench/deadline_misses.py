"""Deadline misses of the live loop, on a quiet machine and beside CPU hogs.

Runs the demo (``protocols/demo.toml`` on ``rigs/sim.toml``: presenter, simulated rig over LSL,
model worker with the learner) once per strategy on a quiet machine, then again with ``--hogs``
busy-loop processes beside it (one per core makes a rig PC that is doing something else), and
prints, per run, the presentations that showed a random fallback image because no choice was ready
(deadline misses), the selection turnaround (response window closed -> next images chosen, median
and p99, ms) and the refreshes the learner swapped in.

    python bench/deadline_misses.py --strategies random disagreement --hogs 2 --json misses.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from closedloop.config import load_protocol, load_rig
from closedloop.session import run_session
from closedloop.record import read_session

PROJECT = Path(__file__).resolve().parent.parent
HOG = "while True: pass"


def run(protocol, rig, strategy: str, hogs: int, folder: Path) -> dict:
    """One demo session with ``hogs`` busy processes beside it; its figures."""
    selection = protocol.selection.model_copy(update={"strategy": strategy, "params": {}})
    busy = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
    try:
        summary = run_session(protocol.model_copy(update={"selection": selection}), rig,
                              folder / f"{strategy}-{hogs}-hogs")
    finally:
        for process in busy:
            process.kill()
            process.wait()
    session = read_session(Path(summary["session"]))
    turnaround = [s["turnaround_ms"] for s in session.selections if s.get("turnaround_ms") is not None]
    return {"strategy": strategy, "hogs": hogs, "presentations": summary["presentations"],
            "deadline_misses": summary["deadline_misses"],
            "miss_percent": 100.0 * summary["deadline_misses"] / max(summary["presentations"], 1),
            "turnaround_median_ms": float(np.median(turnaround)) if turnaround else None,
            "turnaround_p99_ms": float(np.percentile(turnaround, 99)) if turnaround else None,
            "refreshes": max((s.get("core_version", 0) for s in session.selections), default=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", type=Path, default=PROJECT / "protocols" / "demo.toml")
    parser.add_argument("--rig", type=Path, default=PROJECT / "rigs" / "sim.toml")
    parser.add_argument("--strategies", nargs="+", default=["random", "disagreement"])
    parser.add_argument("--hogs", type=int, default=2, help="busy processes beside the loaded runs")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    protocol, rig = load_protocol(args.protocol), load_rig(args.rig)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deadline-misses-") as folder:
        for hogs in (0, args.hogs):
            for strategy in args.strategies:
                rows.append(run(protocol, rig, strategy, hogs, Path(folder)))
                r = rows[-1]
                print(f"{strategy:<14} hogs {hogs}: {r['deadline_misses']:>3} misses of {r['presentations']} "
                      f"presentations ({r['miss_percent']:.1f}%); turnaround median "
                      f"{r['turnaround_median_ms']:.1f} ms, p99 {r['turnaround_p99_ms']:.1f} ms; "
                      f"{r['refreshes']} refreshes swapped in", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
