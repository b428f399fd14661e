"""What the live dashboard costs the presentation loop: frame timing with and without ``--dashboard``.

Runs the same short simulated session (``closedloop.simulate.generate``: a headless rig of three
units, random selection) through ``closedloop run``, in pairs: once plain, once with ``--dashboard``
and a client connected to its ``/events`` stream for the whole run (as an open page is), the order
alternating from pair to pair. Prints, per session, the frame interval's median and 99th percentile
and the dropped frames (from its ``summary.json``) and the snapshots the client was pushed; then the
medians over sessions of each kind and their ratio (with / without). The headless presenter stamps
each flip with its frame boundary (as a monitor's vertical blank), so a loop held up by the dashboard
shows as long intervals and dropped frames, not as jitter.

    python bench/dashboard_cost.py --pairs 3 --presentations 300 --json dashboard_cost.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np

from closedloop.simulate.generate import protocol_text, rig_text

FIGURES = ("interval_median_ms", "interval_p99_ms", "dropped")


def listen(url: str, pushed: list[int]) -> None:
    """Read the dashboard's ``/events`` stream until it closes, counting the snapshots pushed."""
    try:
        with httpx.stream("GET", url.split("?")[0] + "events", timeout=None) as response:
            for line in response.iter_lines():
                pushed[0] += line.startswith("data: ")
    except httpx.HTTPError:  # the dashboard stopped with the run
        pass


def session(folder: Path, presentations: int, dashboard: bool) -> dict:
    """One session (its own LSL stream names); its frame figures and the snapshots a client was pushed."""
    name = f"bench-dashboard-{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.toml").write_text(rig_text(name))
    (folder / "protocol.toml").write_text(protocol_text(presentations))
    command = [sys.executable, "-m", "closedloop", "run", str(folder / "protocol.toml"), "--rig",
               str(folder / f"{name}.toml"), "--out", str(folder / name)]
    run = subprocess.Popen(command + (["--dashboard", "--port", "0"] if dashboard else []), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    pushed, client = [0], None
    if dashboard:
        for line in run.stderr:
            if found := re.search(r"dashboard: (http://\S+)", line):
                client = threading.Thread(target=listen, args=(found[1], pushed), daemon=True)
                client.start()
                break
    stdout, stderr = run.communicate()
    if run.returncode != 0:
        raise SystemExit(f"closedloop run failed: {stderr.strip().splitlines()[-1:]}")
    if client is not None:
        client.join(10)
    frames = json.loads(stdout)["frames"]
    return {"dashboard": dashboard, **{key: frames[key] for key in FIGURES}, "pushed": pushed[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="sessions of each kind, alternating")
    parser.add_argument("--presentations", type=int, default=300, help="per session (about 9 a second)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="dashboard-cost-") as folder:
        for pair in range(args.pairs):
            for dashboard in ((False, True) if pair % 2 == 0 else (True, False)):
                rows.append(session(Path(folder), args.presentations, dashboard))
                r = rows[-1]
                print(f"pair {pair} {'with' if dashboard else 'without':<7} dashboard: frame interval median "
                      f"{r['interval_median_ms']:.3f} ms, p99 {r['interval_p99_ms']:.3f} ms, {r['dropped']} dropped "
                      f"frames" + (f"; {r['pushed']} snapshots pushed to the client" if dashboard else ""), flush=True)
    medians = {kind: {key: float(np.median([r[key] for r in rows if r["dashboard"] == kind])) for key in FIGURES}
               for kind in (False, True)}
    for key in FIGURES:
        without, with_ = medians[False][key], medians[True][key]
        ratio = f"{with_ / without:.3f}" if without else "-"
        print(f"{key}: without {without:.3f}, with {with_:.3f} (median over {args.pairs} sessions each); "
              f"ratio {ratio}")
    if args.json is not None:
        args.json.write_text(json.dumps({"sessions": rows, "medians": {"without": medians[False],
                                                                        "with": medians[True]}}, indent=2))


if __name__ == "__main__":
    main()
