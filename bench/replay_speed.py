"""Replay speed as a multiple of real time, for a simulated one-hour session.

The hour is synthetic but goes through the real session format: ``SessionWriter`` writes the
pool (``stimuli/demo.toml``, about 1000 images at 112 px), one marker per presentation, every
spike and every response. Trials of 4 images, 100 ms on and 67 ms off, with a 0.3 s fixation hold
and 0.5 s between trials; every 5th image held out; ``--units`` units firing at 4 spikes/s and,
from 50 to 150 ms after an onset, at a rate drawn per (unit, image) around 24 spikes/s (lognormal).
The model is ``protocols/demo.toml``'s (disagreement, the scratch core), with ``--units`` outputs.

Two pacings are timed (see ``closedloop.replay.session_replay``):

* **faithful**: the session's own batches and refresh swaps, every decision made again. Its log
  (and its ``cores/``) is made here for the first ``--faithful-minutes`` as the live worker makes
  it, one decision per response: the worker state steps through the responses at their window
  ends, and a refresh started at one response is swapped in at the first response after it would
  have finished (it takes as long as it took here). The replay reads the fine-tuned cores back
  instead of training them, as ``closedloop replay`` does with a session directory.
* **fast**: the whole hour, a decision every ``--every`` responses, refreshes swapped in every
  ``--refresh-every``, accuracy every ``--accuracy-every`` (decisions not reproduced; cores are
  fine-tuned here).

    python bench/replay_speed.py --units 32 --faithful-minutes 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pylsl
import torch

from closedloop.config import UnitSpec, load_protocol, to_jsonable
from closedloop.stimuli.candidates import candidate_pool, split_pool
from closedloop.learn.worker import Accuracy, Choice, Response, Stopped, WorkerConfig, WorkerState, cores_folder
from closedloop.record import SessionWriter
from closedloop.replay.session_replay import Cadence, replay
from closedloop.replay.sources import open_source
from closedloop.select.registry import make_strategy

PROJECT = Path(__file__).resolve().parent.parent
FRAME = 1 / 60
ON, OFF, HOLD, ITI, PER_TRIAL = 6 * FRAME, 4 * FRAME, 0.3, 0.5, 4
BASELINE, MEAN_RATE, WINDOW = 4.0, 24.0, (0.05, 0.15)
START = 100.0  # s, the session clock's first trial


def presentations(seconds: float) -> np.ndarray:
    """Onsets (s) of every presentation of a session ``seconds`` long."""
    trial = HOLD + PER_TRIAL * (ON + OFF) + ITI
    starts = START + HOLD + trial * np.arange(int(seconds // trial))
    return (starts[:, None] + (ON + OFF) * np.arange(PER_TRIAL)).ravel()


def write_session(path: Path, protocol, pool, units: int, onsets: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """A complete session directory; returns its responses, as written."""
    candidates, heldout = split_pool(len(pool), protocol.heldout.images, protocol.protocol.seed)
    rates = MEAN_RATE * rng.lognormal(-0.32, 0.8, (len(pool), units))  # driven spikes/s, mean about 24
    names = [UnitSpec(name=f"u{k:02d}", channel=k + 1, unit=1).model_dump() for k in range(units)]
    writer = SessionWriter(path, to_jsonable(protocol), {"rig": {"name": "bench-hour", "simulated": False},
                                                          "units": names, "recorded_units": names}, pool)
    end = onsets[-1] + 1.0
    background = np.sort(rng.uniform(onsets[0] - 1.0, end, rng.poisson(BASELINE * units * (end - onsets[0] + 1))))
    background_units = rng.integers(1, units + 1, len(background))
    responses = []
    for i, onset in enumerate(onsets):
        role, index = (("heldout", heldout[(i // 5) % len(heldout)]) if i % 5 == 4
                       else ("chosen", rng.choice(candidates)))
        driven = rng.poisson(rates[index] * (WINDOW[1] - WINDOW[0]))
        times = onset + rng.uniform(*WINDOW, driven.sum())
        channels = np.repeat(np.arange(1, units + 1), driven)
        lo, hi = np.searchsorted(background, [onset + WINDOW[0], onset + WINDOW[1]])
        counts = driven + np.bincount(background_units[lo:hi] - 1, minlength=units)
        info = {"stimulus": pool.ids[index], "pool_index": int(index), "role": role, "trial": i // PER_TRIAL}
        writer.log("markers", {"index": i, **info, "onset": onset, "offset": onset + ON, "dropped_frames": 0,
                               "frame_intervals": [FRAME] * 6})
        responses.append({"index": i, "onset": onset, "counts": counts.tolist(), **info})
        writer.log("responses", responses[-1])
        block = np.concatenate([times, background[(background >= onset) & (background < onset + ON + OFF)]])
        units_of = np.concatenate([channels, background_units[(background >= onset) & (background < onset + ON + OFF)]])
        order = np.argsort(block)
        writer.spikes(block[order], units_of[order], np.ones(len(block), int))
    before = background < onsets[0]
    writer.spikes(background[before], background_units[before], np.ones(before.sum(), int))
    writer.close({"status": "complete", "presentations": len(onsets)})
    return responses


def live_log(path: Path) -> tuple[list[dict], list[dict], float]:
    """The decisions and accuracy reports the live worker would log for session ``path`` (and the
    fine-tuned cores it would keep): one decision per response, at its window's end; a refresh
    swapped in at the first response after it would have finished. Returns (selections, accuracy,
    seconds spent refreshing)."""
    source = open_source(path)
    selection = source.protocol.selection
    config = WorkerConfig(pool_path=path / "stimuli.npz", units=tuple(u.name for u in source.units),
                          model=source.protocol.model, selection=selection,
                          strategy=make_strategy(selection.strategy, selection.params),
                          candidates=tuple(source.candidates.tolist()), heldout=tuple(source.heldout.tolist()),
                          seed=source.protocol.protocol.seed, cores=cores_folder(path))
    selections, accuracy = [], []

    def send(message) -> None:
        if isinstance(message, Choice):
            selections.append({"time": pylsl.local_clock(), **message.record()})
        elif isinstance(message, (Accuracy, Stopped)):
            report = message if isinstance(message, Accuracy) else message.accuracy
            accuracy.append({"time": pylsl.local_clock(), **report.record()})

    state = WorkerState(config, background=True)
    state.begin(send)
    ready_at = np.inf  # session time the refresh in flight is done
    for r in source.responses:
        arrives = r["onset"] + WINDOW[1]
        swap = state.learner.refreshing and arrives >= ready_at
        busy = state.learner.refreshing and not swap
        state.step([Response(r["pool_index"], np.array(r["counts"]), r["role"] == "heldout", 0.0)], send, swap=swap)
        if state.learner.refreshing and not busy:  # a refresh started at this step: time it
            spent = state.learner.refresh_seconds
            if not state.learner.wait_refreshed():
                raise RuntimeError("the learner's refresh did not finish")
            ready_at = arrives + state.learner.refresh_seconds - spent
    state.finish(send)
    return selections, accuracy, state.learner.refresh_seconds


def describe(name: str, report: dict) -> str:
    s = report["seconds"]
    line = (f"{name}: {report['session_s']:.0f} s of session in {s['total']:.1f} s = {report['speed']:.1f}x real "
            f"time; alignment {s['alignment']:.1f} s, model {s['model']:.1f} s (learner refreshes {s['refresh']:.1f} s "
            f"for {report['accuracy']['core_version']} swaps), selection {s['selection']:.2f} s; "
            f"{report['decisions']} decisions")
    if report["pacing"] == "recorded":
        line += f", {report['reproduced']} of {report['logged_decisions']} reproduced"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the simulated session")
    parser.add_argument("--faithful-minutes", type=float, default=3.0,
                        help="the part replayed faithfully (its live log is made here at the same cost; "
                             "0: none)")
    parser.add_argument("--every", type=int, default=100, help="fast mode: responses per decision")
    parser.add_argument("--refresh-every", type=int, default=5000, help="fast mode: responses per refresh swap")
    parser.add_argument("--accuracy-every", type=int, default=1000, help="fast mode: responses per accuracy report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the sessions here instead of a temporary folder")
    args = parser.parse_args()

    torch.set_num_threads(1)
    protocol = load_protocol(PROJECT / "protocols" / "demo.toml")
    started = time.perf_counter()
    pool = candidate_pool(protocol, 112)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="replay-speed-"))
    try:
        onsets = presentations(args.minutes * 60)
        hour = protocol.model_copy(update={"protocol": protocol.protocol.model_copy(
            update={"presentations": len(onsets)})})
        responses = write_session(folder / "hour", hour, pool, args.units, onsets, np.random.default_rng(args.seed))
        spikes = (folder / "hour" / "spikes.bin").stat().st_size // 16
        print(f"{args.minutes:.0f}-minute session: {len(onsets)} presentations, {args.units} units, {spikes} spikes, "
              f"pool {len(pool)} images; written in {time.perf_counter() - started:.0f} s "
              f"(mean count {np.mean([r['counts'] for r in responses]):.2f} per unit and window); "
              f"torch threads {torch.get_num_threads()}")

        fast = replay(open_source(folder / "hour"), folder / "fast",
                      cadence=Cadence(args.every, args.refresh_every, args.accuracy_every))
        print(describe(f"fast (a decision every {args.every} responses, refreshes every {args.refresh_every}, "
                       f"accuracy every {args.accuracy_every})", fast))

        if not args.faithful_minutes:
            return
        part = onsets[onsets < START + args.faithful_minutes * 60]
        short = protocol.model_copy(update={"protocol": protocol.protocol.model_copy(
            update={"presentations": len(part)})})
        write_session(folder / "part", short, pool, args.units, part, np.random.default_rng(args.seed))
        t = time.perf_counter()
        selections, accuracy, refresh_s = live_log(folder / "part")
        made = time.perf_counter() - t
        writer = SessionWriter.reopen(folder / "part")  # the log, as the live loop appends it
        for name, records in (("selections", selections), ("accuracy", accuracy)):
            for record in records:
                writer.log(name, record)
        writer.close({"status": "complete", "presentations": len(part)})
        faithful = replay(open_source(folder / "part"), folder / "faithful")
        print(f"the live log of the first {args.faithful_minutes:g} minutes ({len(selections)} decisions) took "
              f"{made:.0f} s to make, {refresh_s:.1f} s of it refreshing the learner")
        print(describe("faithful (the live batches and core swaps)", faithful))
        (folder / "bench.json").write_text(json.dumps({"fast": fast, "faithful": faithful, "refresh_s": refresh_s},
                                                      indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
