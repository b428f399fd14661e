"""Soak: one long run at about 5 presentations/s with 96 simulated units, watched over time.

The rig has no gaze stream: the simulator computes a new image's rates for all 96 units in its
serving loop (tens of ms each), which would stall the simulated eye and end trials in fixation
breaks; presentation here is paced by the frames alone.

Every :data:`SAMPLE` s the resident memory (RSS) of the run and of each of its children
(simulator, model worker, ...) is read with psutil, and the presentations and ``deadline_miss``
events the session has logged are counted; a line is printed every minute. The summary gives
each process's memory slope (MB/hour, least squares over the samples once presenting has gone
on for a tenth of the soak) and the deadline misses in every 10 minutes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from closedloop.benchmarks.faults_files import simulated_rig, soak_protocol
from closedloop.benchmarks.faults_procs import pid_alive, role
from closedloop.benchmarks.faults_runs import Bench, finish, outcome, session_of, start_run

RATE = 5.0  # presentations/s asked for (the protocol's frames give about this)
UNITS = 96
SAMPLE = 5.0  # s between samples
PRINT = 60.0  # s between printed lines
BUCKET = 600.0  # s: deadline misses are counted per 10 minutes
MB = 1024 * 1024


class Tail:
    """Counts the complete lines of a growing file, and those holding ``token``, reading only
    what was appended since the last call."""

    def __init__(self, token: bytes = b""):
        self.token, self.offset, self.lines, self.matches = token, 0, 0, 0

    def update(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        data = data[:data.rfind(b"\n") + 1]
        self.offset += len(data)
        self.lines += data.count(b"\n")
        if self.token:
            self.matches += sum(self.token in line for line in data.splitlines())


def _memory(launch) -> dict[str, float]:
    """RSS in MB of the run and of its children by role (several of a role are summed)."""
    rss: dict[str, float] = {}
    if not pid_alive(launch.pid):  # exiting: nothing steady to sample
        return rss
    try:
        processes = [("run", psutil.Process(launch.pid))] + [(role(p), p) for p in launch.children()]
    except psutil.Error:
        return rss
    for name, process in processes:
        try:
            rss[name] = rss.get(name, 0.0) + process.memory_info().rss / MB
        except psutil.Error:
            continue
    return rss


def _slope(times: np.ndarray, values: np.ndarray) -> float | None:
    """Least-squares slope, MB/hour, of ``values`` (MB) against ``times`` (s)."""
    if len(times) < 3 or np.ptp(times) <= 0:
        return None
    return round(float(np.polyfit(times, values, 1)[0] * 3600.0), 1)


def soak(bench: Bench, seconds: float, log: Callable[[str], None]) -> dict:
    """Run the soak for about ``seconds`` s of presenting; the samples and the summary."""
    trial = bench.trial("soak")
    presentations = int(round(RATE * seconds))
    protocol = soak_protocol(trial / "protocol.toml", presentations)
    launch = start_run(bench, trial, protocol, simulated_rig(trial / "rig.toml", bench.streams("soak"), UNITS,
                                                             gaze=False))
    markers, events = Tail(), Tail(b'"deadline_miss"')
    samples: list[dict] = []
    presenting_since = next_print = None
    limit = seconds * 1.5 + bench.timeout  # s: then the run is interrupted (counted as a hang)
    try:
        while launch.process.poll() is None and launch.elapsed() < limit:
            time.sleep(SAMPLE)
            session = session_of(trial)
            if session is not None:
                markers.update(session / "markers.jsonl")
                events.update(session / "events.jsonl")
            memory = _memory(launch)
            if not markers.lines or not memory:
                continue
            now = launch.elapsed()
            if presenting_since is None:
                presenting_since, next_print = now, now
            samples.append({"t": round(now - presenting_since, 1), "presented": markers.lines,
                            "misses": events.matches, "rss_mb": memory})
            if now >= next_print:
                log(_line(samples))
                next_print += PRINT
        hung = launch.process.poll() is None
        if hung:
            launch.signal_group(signal.SIGINT)
        status = finish(launch, launch.elapsed() + bench.timeout)
        result = outcome(launch, status, trial, presentations)
        result["hang"] = hung or status is None
        return {**result, "presentations_asked": presentations, "units": UNITS, "samples": samples,
                **_summary(samples, seconds)}
    finally:
        launch.clean_up()


def _line(samples: list[dict]) -> str:
    last = samples[-1]
    earlier = next((s for s in reversed(samples) if last["t"] - s["t"] >= PRINT), samples[0])
    span = last["t"] - earlier["t"]
    rate = (last["presented"] - earlier["presented"]) / span if span > 0 else float("nan")
    memory = ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(last["rss_mb"].items()))
    return (f"t={last['t']:6.0f} s  presented {last['presented']:6d} ({rate:4.2f}/s)  RSS MB: {memory}, "
            f"total {sum(last['rss_mb'].values()):.0f}  deadline misses {last['misses']} "
            f"(+{last['misses'] - earlier['misses']})")


def _summary(samples: list[dict], seconds: float) -> dict:
    """Memory slopes (MB/hour) per process and in total, and deadline misses per 10 minutes."""
    if not samples:
        return {"slope_mb_per_hour": {}, "misses_per_10_min": []}
    steady = [s for s in samples if s["t"] >= 0.1 * seconds] or samples
    names = sorted({name for s in steady for name in s["rss_mb"]})
    slopes = {name: _slope(np.array([s["t"] for s in steady if name in s["rss_mb"]]),
                           np.array([s["rss_mb"][name] for s in steady if name in s["rss_mb"]])) for name in names}
    whole = [s for s in steady if set(s["rss_mb"]) == set(steady[0]["rss_mb"])]  # every process sampled
    slopes["total"] = _slope(np.array([s["t"] for s in whole]), np.array([sum(s["rss_mb"].values()) for s in whole]))
    buckets = []
    for start in np.arange(0.0, samples[-1]["t"] + 1e-9, BUCKET):
        inside = [s["misses"] for s in samples if start <= s["t"] < start + BUCKET]
        before = [s["misses"] for s in samples if s["t"] < start]
        if inside:
            buckets.append(inside[-1] - (before[-1] if before else 0))
    last = samples[-1]
    return {"slope_mb_per_hour": slopes, "misses_per_10_min": buckets,
            "rate_per_s": round(last["presented"] / last["t"], 2) if last["t"] > 0 else None,
            "rss_mb_first": {k: round(v) for k, v in steady[0]["rss_mb"].items()},
            "rss_mb_last": {k: round(v) for k, v in last["rss_mb"].items()}}
