"""The paper's compression on real V4 data: a teacher's neurons distilled and pruned to compact students.

Runs ``closedloop teacher distil``'s own code path (:func:`closedloop.distil.students.distil_session`:
pool, teacher responses, shared student, one Ray task per neuron) on some neurons of a session
and prints, per neuron and as medians, the pruned student against its baseline measured in the
same run, the uncompressed student (the same student fine-tuned for that neuron, before
pruning):

- parameters, and the compression ratio against the teacher for both;
- R^2 and r against the teacher on the session's held-out images (never trained on by the
  teacher or the students);
- r against the recorded responses on those images, beside the teacher's and the published
  compact model's r;
- the share of the teacher's explained variance the student keeps (r_student^2 / r_teacher^2,
  both against recorded responses);
- the wall time of each stage.

    python bench/compression.py --teacher teacher.pt --data ../shared/v4 --session 190923
    python bench/compression.py --teacher teacher.pt --data ../shared/v4 --session 201025 --neurons 0,1,2,3

The teacher comes from ``closedloop teacher train --data ../shared/v4 --out teacher.pt`` (about an
hour on two cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from closedloop.distil.students import DistilSettings, _student_config, distil_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, type=Path, help="teacher file (closedloop teacher train)")
    parser.add_argument("--data", required=True, type=Path, help="the sessions it was trained on")
    parser.add_argument("--session", default="190923", help="whose neurons")
    parser.add_argument("--neurons", default="0,1,2,3", help="which neurons (comma-separated; 'all')")
    parser.add_argument("--budget", type=int, default=12_500, help="most parameters per student")
    parser.add_argument("--shared-steps", type=int, default=DistilSettings().shared_steps)
    parser.add_argument("--images-n", type=int, default=_student_config().images_n, help="pool after augmentation")
    parser.add_argument("--workers", type=int, default=None, help="students at once (default: every core)")
    parser.add_argument("--out", type=Path, default=None, help="keep the students here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report")
    args = parser.parse_args()
    neurons = None if args.neurons == "all" else [int(n) for n in args.neurons.split(",")]
    settings = DistilSettings(student=replace(_student_config(), budget=args.budget, images_n=args.images_n),
                              shared_steps=args.shared_steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        report = distil_session(args.teacher, args.data, args.session, out, settings, workers=args.workers,
                                neurons=neurons, log=lambda line: print(f"  {line}", flush=True))
    seconds = time.perf_counter() - started
    print_report(report, seconds)
    if args.json:
        args.json.write_text(json.dumps({**report, "seconds": seconds}, indent=1) + "\n")


def print_report(report: dict, seconds: float) -> None:
    teacher = report["teacher_parameters"]
    rows = [r for r in report["neurons"] if r["status"] == "done"]
    header = ("neuron", "params", "ratio", "R2 vs T", "r vs T", "r rec", "share", "| base params", "ratio",
              "R2 vs T", "r rec", "| teacher r", "published r")
    table = [header]
    for r in rows:
        share = r["r_recorded"] ** 2 / r["teacher_r_recorded"] ** 2 if r["teacher_r_recorded"] > 0 else float("nan")
        table.append((r["name"], f"{r['parameters']:,}", f"{teacher / r['parameters']:,.0f}x", f"{r['r2_teacher']:.3f}",
                      f"{r['r_teacher']:.3f}", f"{r['r_recorded']:.3f}", f"{share:.2f}",
                      f"| {r['parameters_unpruned']:,}", f"{teacher / r['parameters_unpruned']:,.0f}x",
                      f"{r['r2_teacher_unpruned']:.3f}", f"{r['r_recorded_unpruned']:.3f}",
                      f"| {r['teacher_r_recorded']:.3f}", "-" if r["published_r"] is None else f"{r['published_r']:.3f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"\nteacher {report['teacher']}: {teacher:,} parameters; session {report['session']}, "
          f"{report['heldout_images']} held-out images, pool of {report['pool_images']} images")
    for row in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    s = report["summary"]

    def median(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    print(f"\nmedians over {len(rows)} neurons ({s['failed']} failed):")
    print(f"  pruned student:       {s['parameters']:,.0f} parameters ({s['ratio']:,.0f}x), R2 vs teacher "
          f"{s['r2_teacher']:.3f}, r vs recorded {s['r_recorded']:.3f}, share of the teacher's explained variance "
          f"{s['explained_share']:.2f}")
    print(f"  uncompressed student: {median('parameters_unpruned'):,.0f} parameters "
          f"({teacher / median('parameters_unpruned'):,.0f}x), R2 vs teacher {s['r2_teacher_unpruned']:.3f}, "
          f"r vs recorded {s['r_recorded_unpruned']:.3f}")
    print(f"  pruned / uncompressed parameters: {median('parameters_unpruned') / s['parameters']:.1f}x; "
          f"R2 vs teacher ratio {s['r2_teacher'] / s['r2_teacher_unpruned']:.2f}")
    published = s["published_r"]
    print(f"  teacher r vs recorded {s['teacher_r_recorded']:.3f}; published compact models "
          f"{'-' if published is None else f'{published:.3f}'}")
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["stages"].items()) + f"; total {seconds:.0f} s")


if __name__ == "__main__":
    main()
