"""The parts of a session's summary (``summary.json``) that are computed from its record."""

from __future__ import annotations

import numpy as np

from closedloop.align.clock import ClockMap
from closedloop.config import Rig
from closedloop.present.base import DROPPED_FRAME


def photodiode_summary(responses: list[dict]) -> dict:
    """Distribution of the photodiode's onset corrections (ms, light minus flip) and the misses."""
    ms = np.array([r["photodiode_correction"] for r in responses if "photodiode_correction" in r]) * 1e3
    quantiles = dict(zip(("min", "p5", "median", "p95", "max"),
                         np.percentile(ms, [0, 5, 50, 95, 100]).round(3).tolist())) if len(ms) else {}
    return {"corrected": len(ms), "missed": sum("photodiode_missed" in r for r in responses),
            "correction_ms": quantiles}


def clock_summary(rig: Rig, clock: ClockMap | None, anomalies: int) -> dict:
    """How spikes were put on this clock, and how well the sync fit holds (microseconds)."""
    report = {"sync": rig.clock.sync, "anomalies": anomalies}
    if clock is not None:
        residuals = np.abs(clock.residuals()) * 1e6
        report.update(pairs=clock.pairs,
                      residual_median_us=float(np.median(residuals)) if len(residuals) else None,
                      residual_max_us=float(residuals.max()) if len(residuals) else None)
    return report


def frame_summary(flips: np.ndarray, refresh_rate: float, in_presentations: int) -> dict:
    """Every flip of the session: count, dropped frames (all, and during presentations) and
    the frame interval's median and 99th percentile (ms)."""
    intervals = np.diff(flips) * 1e3
    if not len(intervals):
        return {"count": len(flips), "dropped": 0, "dropped_in_presentations": in_presentations}
    return {"count": len(flips), "dropped": int(np.sum(intervals > DROPPED_FRAME * 1e3 / refresh_rate)),
            "dropped_in_presentations": in_presentations,
            "interval_median_ms": round(float(np.median(intervals)), 3),
            "interval_p99_ms": round(float(np.percentile(intervals, 99)), 3)}


def mean_counts(responses: list[dict]) -> dict[str, list[float]]:
    """Mean spike count per unit of each role's responses."""
    counts: dict[str, list] = {}
    for r in responses:
        counts.setdefault(r["role"], []).append(r["counts"])
    return {role: np.mean(c, axis=0).round(3).tolist() for role, c in counts.items()}


def turnaround_summary(turnaround_ms: list[float]) -> dict:
    """Median and 99th percentile (ms) of the model's turnarounds, the first (warm-up) left out
    (None when there were no others)."""
    turnaround = np.array(turnaround_ms[1:])
    if not len(turnaround):
        return {"median": None, "p99": None}
    return {"median": float(np.median(turnaround)), "p99": float(np.percentile(turnaround, 99))}
