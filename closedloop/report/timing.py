"""The report's timing: frame intervals, dropped frames, deadline misses, clock and photodiode
corrections, as table rows and one figure."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from closedloop.present.base import DROPPED_FRAME
from closedloop.record.session import SessionRecord
from closedloop.report.data import column

CLOCK_ANOMALIES = ("clock_backwards", "clock_jump")


def _events(record: SessionRecord, kinds: tuple[str, ...]) -> list[dict]:
    return [e for e, kind in zip(record.events, column(record, "events", "kind")) if kind in kinds]


def frame_period(record: SessionRecord) -> float:
    """The display's refresh period, s."""
    return 1.0 / float(record.rig.get("display", {}).get("refresh_rate", 60.0))


def photodiode_corrections(record: SessionRecord) -> np.ndarray:
    """Onset corrections the photodiode made (light minus flip), ms."""
    values = column(record, "responses", "photodiode_correction")
    return np.array([v for v in values if v is not None], float) * 1e3


def rows(record: SessionRecord) -> list[tuple[str, str]]:
    """(what, value) pairs: frames, dropped frames, deadline misses, aborts, gaps, clock, photodiode."""
    intervals = np.diff(record.frames) * 1e3
    period = frame_period(record) * 1e3
    dropped = column(record, "markers", "dropped_frames", 0)
    aborted = column(record, "markers", "aborted", False)
    out = [("flips recorded", f"{len(record.frames)}")]
    if len(intervals):
        out.append(("frame interval median / p99 / max (ms)",
                    f"{np.median(intervals):.3f} / {np.percentile(intervals, 99):.3f} / {intervals.max():.3f} "
                    f"(refresh period {period:.3f})"))
    out += [
        ("dropped frames, whole run (interval > 1.5 periods)", f"{int(np.sum(intervals > DROPPED_FRAME * period))}"),
        ("dropped frames during presentations", f"{int(sum(dropped))}"),
        ("deadline misses (fallback images shown)", f"{len(_events(record, ('deadline_miss',)))}"),
        ("presentations cut short by a fixation break", f"{int(sum(bool(a) for a in aborted))}"),
        ("spike-stream gaps", f"{len(_events(record, ('spike_gap',)))}"),
    ]
    clock = record.rig.get("clock", {}).get("sync", "lsl")
    fit = (record.summary or {}).get("clock", {})
    residuals = (f"; sync fit residual median {fit['residual_median_us']:.1f} us, max {fit['residual_max_us']:.1f} us "
                 f"over {fit.get('pairs')} pairs" if fit.get("residual_median_us") is not None else "")
    out.append(("clock", f"sync {clock}, {len(_events(record, CLOCK_ANOMALIES))} anomalies{residuals}"))
    corrections = photodiode_corrections(record)
    if len(corrections):
        missed = sum(bool(m) for m in column(record, "responses", "photodiode_missed", False))
        out.append(("photodiode onset corrections (ms)",
                    f"{len(corrections)} corrected, {missed} missed; median {np.median(corrections):.2f}, "
                    f"range {corrections.min():.2f} to {corrections.max():.2f}"))
    return out


def figure(record: SessionRecord) -> Figure:
    """Frame-interval histogram; dropped frames, deadline misses and aborts over the session;
    photodiode corrections (when the rig had a photodiode)."""
    corrections = photodiode_corrections(record)
    panels = 3 if len(corrections) else 2
    fig = Figure(figsize=(4.0 * panels, 3.0), layout="constrained")
    axes = fig.subplots(1, panels)
    period = frame_period(record) * 1e3
    intervals = np.diff(record.frames) * 1e3
    ax = axes[0]
    if len(intervals):
        ax.hist(intervals, bins=np.linspace(0, max(intervals.max(), 2.5 * period) * 1.05, 60), color="#4c72b0",
                log=True)
    ax.axvline(period, color="black", linewidth=0.8, label=f"refresh {period:.2f} ms")
    ax.axvline(DROPPED_FRAME * period, color="#d62728", linestyle="--", linewidth=0.8, label="dropped beyond")
    ax.set_xlabel("frame interval (ms)")
    ax.set_ylabel("flips")
    ax.set_title("frame intervals (whole run)", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    index = column(record, "markers", "index")
    dropped = column(record, "markers", "dropped_frames", 0)
    ax.bar(index, dropped, width=1.0, color="#4c72b0", label="dropped frames")
    misses = [e.get("index") for e in _events(record, ("deadline_miss",)) if e.get("index") is not None]
    ax.plot(misses, np.full(len(misses), -0.3), "|", color="#d62728", markersize=10, label="deadline miss")
    aborted = [i for i, a in zip(index, column(record, "markers", "aborted", False)) if a]
    ax.plot(aborted, np.full(len(aborted), -0.6), "|", color="grey", markersize=10, label="fixation break")
    ax.set_ylim(-1, max([1, *dropped]) + 0.5)
    ax.set_xlabel("presentation")
    ax.set_ylabel("dropped frames")
    ax.set_title("timing events over the session", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    if len(corrections):
        ax = axes[2]
        ax.hist(corrections, bins=30, color="#55a868")
        ax.set_xlabel("photodiode correction (ms, light - flip)")
        ax.set_ylabel("presentations")
        ax.set_title("photodiode onset corrections", fontsize=10)
    return fig
