"""What the dashboard shows, as one JSON-able snapshot of a followed session (:class:`SessionFollower`).

Times are s on the stimulus PC's LSL clock unless a key says otherwise (``_ms``: milliseconds, ``_hz``:
spikes per s); counts are spikes in the response window.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from closedloop.dashboard.follow import SessionFollower
from closedloop.record.predictions import paired_predictions
from closedloop.report.data import aligned
from closedloop.summary import turnaround_summary

BEFORE = 0.1  # s of raster and PSTH before each onset
AFTER_MARGIN = 0.1  # s shown after the later of the image's offset and the window's end
BIN = 0.01  # s, PSTH bin
RASTER_ROWS = 40  # latest presentations in each raster
PSTH_PRESENTATIONS = 200  # latest presentations (their spikes all in) in each PSTH
SCATTER_POINTS = 300  # latest responses paired with a prediction, per unit
LATEST_IMAGES = 8  # latest chosen images shown
HISTORY = 200  # latest decisions in the posterior trace


def snapshot(session: SessionFollower) -> dict:
    """Everything the page draws, from what ``session`` has read so far.

    Returns
    -------
    dict
        ``session`` (the directory's name), ``status`` (``waiting`` before the session's setup is
        written, ``running`` until ``summary.json`` is, then its status), ``complete`` (summary written),
        ``progress``, ``units`` (one per recorded unit: raster, PSTH, predicted and observed counts,
        held-out r over time), ``chosen`` (latest chosen images), ``posterior``, ``state``, ``timing``
        and ``stream``; before the setup only the first three.
    """
    status = "waiting" if not session.started else session.summary.get("status", "ended") if session.summary \
        else "running"
    out = {"session": session.path.name, "status": status, "complete": session.summary is not None}
    if not session.started:
        return out
    onsets = _onsets(session)
    pairs = _paired(session)
    window = session.protocol["window"]
    on = _image_on(session)
    out.update(
        progress=_progress(session),
        window=[window["start"], window["end"]], image_on_s=on,
        units=[_unit(session, k, onsets, pairs, max(on or 0.0, window["end"]) + AFTER_MARGIN)
               for k in range(len(session.units))],
        chosen=_chosen(session, pairs),
        posterior=_posterior(session),
        state=next((s["state"] for s in reversed(session.selections) if s.get("state") is not None), None),
        timing=_timing(session),
        stream=_stream(session, onsets),
    )
    return out


def _progress(session: SessionFollower) -> dict:
    """Presented of the protocol's total, responses, and the time left at the presentation rate so far."""
    total = session.protocol["protocol"]["presentations"]
    presented = len(session.markers)
    elapsed = rate = left = None
    if presented:
        elapsed = session.markers[-1]["offset"] - session.markers[0]["onset"]
        rate = (presented - 1) / (session.markers[-1]["onset"] - session.markers[0]["onset"]) \
            if presented > 1 and session.markers[-1]["onset"] > session.markers[0]["onset"] else None
    if session.summary is not None:
        left = 0.0
    elif rate:
        left = max(total - presented, 0) / rate
    return {"presented": presented, "total": total, "responses": len(session.responses),
            "fraction": min(presented / total, 1.0), "elapsed_s": elapsed, "rate_per_s": rate,
            "time_left_s": left}


def _image_on(session: SessionFollower) -> float | None:
    """How long each image stays on, s: ``on_frames`` at the display's refresh rate (None if unknown)."""
    frames = session.protocol["protocol"].get("on_frames")
    rate = (session.rig.get("display") or {}).get("refresh_rate")
    return frames / rate if frames and rate else None


def _onsets(session: SessionFollower) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every presentation's index, onset (the response's, photodiode-corrected where measured, else the
    marker's flip) and role, in presentation order."""
    corrected = {r["index"]: r["onset"] for r in session.responses}
    markers = sorted(session.markers, key=lambda m: m["index"])
    return (np.array([m["index"] for m in markers], int),
            np.array([corrected.get(m["index"], m["onset"]) for m in markers], float),
            [m["role"] for m in markers])


def _paired(session: SessionFollower) -> list[tuple[dict, int, list[float]]]:
    """Each response whose image a decision predicted, with that decision (its number) and the prediction
    (:func:`closedloop.record.predictions.paired_predictions`)."""
    return paired_predictions(session.selections, session.responses)


def _unit(session: SessionFollower, k: int, onsets: tuple[np.ndarray, np.ndarray, list[str]],
          pairs: list[tuple[dict, int, list[float]]], after: float) -> dict:
    """Unit ``k``'s raster, PSTH, predicted against observed counts and held-out r over time."""
    index, onset, roles = onsets
    times = session.spikes[k]
    rows = [{"index": int(i), "role": role, "t": np.round(t, 4).tolist()}
            for i, role, t in zip(index[-RASTER_ROWS:], roles[-RASTER_ROWS:],
                                  aligned(times, onset[-RASTER_ROWS:], BEFORE, after))]
    newest = session.newest_spike
    covered = onset[onset + after <= newest][-PSTH_PRESENTATIONS:] if newest is not None else onset[:0]
    edges = np.arange(-BEFORE, after + BIN / 2, BIN)
    counts = np.histogram(np.concatenate(aligned(times, covered, BEFORE, after) or [np.empty(0)]), edges)[0]
    rate = counts / (len(covered) * BIN) if len(covered) else np.zeros(len(counts))
    r = [[a["responses"], _at(a.get("r_observed"), k), _at(a.get("r_true"), k)] for a in session.accuracy]
    observed = [resp["counts"][k] for resp in session.responses]
    return {"name": session.units[k]["name"], "spikes": int(len(times)),
            "mean_count": float(np.mean(observed)) if observed else None,
            "raster": {"before_s": BEFORE, "after_s": after, "rows": rows},
            "psth": {"start_s": -BEFORE, "bin_s": BIN, "presentations": int(len(covered)),
                     "rate_hz": np.round(rate, 3).tolist()},
            "predicted_observed": [[round(predicted[k], 4), resp["counts"][k]]
                                   for resp, _, predicted in pairs[-SCATTER_POINTS:]],
            "r": r}


def _at(values: list | None, k: int) -> float | None:
    return values[k] if values and k < len(values) else None


def _chosen(session: SessionFollower, pairs: list[tuple[dict, int, list[float]]]) -> list[dict]:
    """The latest chosen images, newest decision first: pool index, the decision (its number), the
    prediction (mean count per unit, None when not recorded) and the mean observed counts of the
    presentations the decision led to (None before any)."""
    observed: dict[tuple[int, int], list[list[int]]] = defaultdict(list)
    for response, k, _ in pairs:
        observed[k, response["pool_index"]].append(response["counts"])
    images = []
    for k in range(len(session.selections) - 1, -1, -1):
        selection = session.selections[k]
        predicted = selection.get("predicted") or []
        for j, pool_index in enumerate(selection["chosen"]):
            seen = observed.get((k, pool_index))
            images.append({"pool_index": pool_index, "decision": k, "predicted": predicted[j] if j < len(predicted)
                           else None, "observed": np.mean(seen, axis=0).round(3).tolist() if seen else None,
                           "shown": len(seen or [])})
            if len(images) == LATEST_IMAGES:
                return images
    return images


def _posterior(session: SessionFollower) -> dict | None:
    """Each hypothesis's posterior over the latest decisions that logged one (``state.posterior``), as
    ``{"responses": [...], "hypotheses": {name: [...]}}``; None when no decision did."""
    found = [(s.get("responses"), s["state"]["posterior"]) for s in session.selections
             if isinstance(s.get("state"), dict) and isinstance(s["state"].get("posterior"), dict)][-HISTORY:]
    if not found:
        return None
    names = list(dict.fromkeys(name for _, posterior in found for name in posterior))
    return {"responses": [r for r, _ in found],
            "hypotheses": {name: [p.get(name) for _, p in found] for name in names}}


def _timing(session: SessionFollower) -> dict:
    """Deadline misses, dropped frames, frame intervals of the latest presentations, selection turnaround."""
    intervals = [i for m in session.markers[-PSTH_PRESENTATIONS:] for i in m["frame_intervals"]]
    turnaround = [s["turnaround_ms"] for s in session.selections if s.get("turnaround_ms") is not None]
    return {"deadline_misses": sum(e["kind"] == "deadline_miss" for e in session.events),
            "dropped_frames": sum(m["dropped_frames"] for m in session.markers),
            "frame_interval_median_ms": float(np.median(intervals)) * 1e3 if intervals else None,
            "frame_interval_max_ms": float(np.max(intervals)) * 1e3 if intervals else None,
            "decisions": len(session.selections),
            "turnaround_ms": {"latest": turnaround[-1] if turnaround else None, **turnaround_summary(turnaround)}}


def _stream(session: SessionFollower, onsets: tuple[np.ndarray, np.ndarray, list[str]]) -> dict:
    """How far the spikes are behind the presentations, and the stream's gaps and clock events."""
    onset = onsets[1]
    newest_onset = float(onset.max()) if len(onset) else None
    kinds = [e["kind"] for e in session.events]
    return {"newest_spike": session.newest_spike, "newest_onset": newest_onset,
            "spikes_behind_s": newest_onset - session.newest_spike
            if newest_onset is not None and session.newest_spike is not None else None,
            "pending_windows": len(session.markers) - len(session.responses),
            "gap_responses": sum(bool(r.get("gap")) for r in session.responses),
            "spike_gaps": kinds.count("spike_gap"), "stream_lost": "spike_stream_lost" in kinds,
            "clock_events": sum(kind.startswith("clock_") for kind in kinds)}
