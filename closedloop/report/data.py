"""What a report shows, read from a session directory: spikes per unit around each onset, the
response matrix, accuracy and posterior traces, timing, the recorded gaze and photodiode.

Sessions are read by :func:`closedloop.record.read_session`, which checks every record against
its schema and the records against each other, so the accessors below rely on the keys the
schema declares (:mod:`closedloop.record.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.acquire.photodiode import light_changes
from closedloop.record import recorded_units
from closedloop.record.predictions import paired_predictions
from closedloop.record.schema import RecordedStream
from closedloop.record.session import SessionRecord


def column(record: SessionRecord, log: str, key: str, default=None) -> list:
    """``key`` of every record in ``<log>.jsonl`` (``default`` where absent)."""
    return [entry.get(key, default) for entry in getattr(record, log)]


@dataclass(frozen=True)
class Unit:
    """A recorded unit and its spike times (s, LSL clock, sorted)."""

    name: str
    times: np.ndarray


def units(record: SessionRecord) -> list[Unit]:
    """The recorded units (``rig.json`` ``recorded_units``, in count order) with their spikes."""
    spikes = record.spikes
    out = []
    for u in recorded_units(record):
        mine = (spikes["channel"] == u["channel"]) & (spikes["unit"] == u["unit"])
        out.append(Unit(u["name"], np.sort(spikes["time"][mine])))
    return out


def onsets(record: SessionRecord) -> tuple[np.ndarray, np.ndarray]:
    """Presentation indices and their onsets (s): the response's onset (photodiode-corrected
    where there is one), else the marker's flip."""
    index = np.array(column(record, "markers", "index"), int)
    onset = np.array(column(record, "markers", "onset"), float)
    corrected = dict(zip(column(record, "responses", "index"), column(record, "responses", "onset")))
    return index, np.array([corrected.get(i, t) for i, t in zip(index.tolist(), onset)], float)


def aligned(times: np.ndarray, onset: np.ndarray, before: float, after: float) -> list[np.ndarray]:
    """Spike times relative to each onset, from ``-before`` to ``after`` s (``times`` sorted)."""
    lo = np.searchsorted(times, onset - before)
    hi = np.searchsorted(times, onset + after)
    return [times[a:b] - t for a, b, t in zip(lo, hi, onset)]


def response_matrix(record: SessionRecord, n_units: int) -> tuple[np.ndarray, list[str]]:
    """Spike counts (units, presentations) in presentation order, and each presentation's role."""
    rows = sorted(record.responses, key=lambda r: r["index"])
    counts = np.array([r["counts"] for r in rows], float).reshape(len(rows), n_units).T
    return counts, [r["role"] for r in rows]


def window(record: SessionRecord) -> tuple[float, float]:
    """The response window, s after onset (the protocol's ``[window]``)."""
    spec = record.protocol.get("window", {})
    return float(spec.get("start", 0.05)), float(spec.get("end", 0.15))


def valid_responses(record: SessionRecord) -> list[dict]:
    """The responses whose counts are whole, in presentation order: neither cut short by a fixation
    break (``aborted``) nor overlapping a spike-stream gap (``gap``)."""
    return sorted((r for r in record.responses if not r.get("aborted") and not r.get("gap")),
                  key=lambda r: r["index"])


def rates(record: SessionRecord, responses: list[dict]) -> np.ndarray:
    """Each response's counts as spikes/s in the window (count / window length), (responses, units)."""
    start, end = window(record)
    width = len(recorded_units(record))
    return np.array([r["counts"] for r in responses], float).reshape(len(responses), width) / (end - start)


@dataclass(frozen=True)
class ImageMeans:
    """Mean response of every image shown, over its whole presentations."""

    pool_index: np.ndarray  # (images,) pool indices, ascending
    mean: np.ndarray  # (units, images) spikes/s in the response window
    presentations: np.ndarray  # (images,) presentations averaged


def image_means(record: SessionRecord) -> ImageMeans:
    """The mean response (spikes/s in the window) of every image, over its :func:`valid_responses`."""
    responses = valid_responses(record)
    values = rates(record, responses)
    index = np.array([r["pool_index"] for r in responses], int)
    images, where, n = np.unique(index, return_inverse=True, return_counts=True)
    sums = np.zeros((values.shape[1], len(images)))
    np.add.at(sums.T, where, values)
    return ImageMeans(images, sums / np.maximum(n, 1), n)


def ranked(means: ImageMeans, unit: int, count: int) -> tuple[list[int], list[int]]:
    """Positions in ``means`` of the ``count`` images ``unit`` answered most (highest first) and
    least (lowest first); ties in pool order."""
    order = np.lexsort((means.pool_index, -means.mean[unit]))
    top = order[:count].tolist()
    bottom = np.lexsort((means.pool_index, means.mean[unit]))[:count].tolist()
    return top, bottom


def predicted_observed(record: SessionRecord) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's prediction for each chosen presentation against what it evoked, spikes/s.

    Each whole response to a ``chosen`` image is paired with the prediction (``selections.jsonl``
    ``predicted``) of the latest decision before its onset that chose that image. None when no
    decision carries predictions (sessions from before they were logged, or a strategy without).

    Returns
    -------
    predicted, observed : ndarray (pairs, units)
        Spikes/s in the response window (counts / window length).
    """
    if not any(s.get("predicted") for s in record.selections):
        return None
    start, end = window(record)
    chosen = [r for r in valid_responses(record) if r["role"] == "chosen"]
    pairs = paired_predictions(record.selections, chosen)
    responses, predicted = [r for r, _, _ in pairs], [p for _, _, p in pairs]
    width = len(recorded_units(record))
    return np.array(predicted, float).reshape(len(predicted), width) / (end - start), rates(record, responses)


def strategy(record: SessionRecord) -> str:
    """The session's selection strategy."""
    return str(record.protocol.get("selection", {}).get("strategy", "?"))


def accuracy(record: SessionRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"r_observed"|"r_true": (responses (n,), r (n, units) with NaN where undefined)}``, each
    only when the session recorded it."""
    responses = np.array(column(record, "accuracy", "responses"), float)
    out = {}
    for key in ("r_observed", "r_true"):
        values = column(record, "accuracy", key)
        if any(v for v in values):
            width = max(len(v) for v in values if v)
            r = np.full((len(values), width), np.nan)
            for row, v in enumerate(values):
                r[row, :len(v or [])] = [np.nan if x is None else x for x in (v or [])]
            out[key] = (responses, r)
    return out


def chosen_order(record: SessionRecord) -> list[int]:
    """Pool indices the strategy chose, each once, in order of first choice."""
    seen: dict[int, None] = {}
    for chosen in column(record, "selections", "chosen"):
        seen.update(dict.fromkeys(chosen))
    return list(seen)


def posteriors(record: SessionRecord) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Responses at each decision and each hypothesis's posterior probability then (NaN where a
    decision lacks it), from the selections' ``state.posterior``; None when none carries one."""
    found = [(s.get("responses", k), s["state"]["posterior"]) for k, s in enumerate(record.selections)
             if isinstance(s.get("state"), dict) and isinstance(s["state"].get("posterior"), dict)]
    if not found:
        return None
    names = list(dict.fromkeys(name for _, posterior in found for name in posterior))
    x = np.array([r for r, _ in found], float)
    return x, {name: np.array([p.get(name, np.nan) for _, p in found], float) for name in names}


def proposal(record: SessionRecord) -> dict | None:
    """The last logged state of a model-derived hypothesis test (the ``propose`` strategy's: its
    ``proposal``, ``posterior``, ``responses``, ``decided`` and ``verdict``); None when no decision
    carries a proposal."""
    found = [s["state"] for s in record.selections
             if isinstance(s.get("state"), dict) and isinstance(s["state"].get("proposal"), dict)]
    return found[-1] if found else None


def stream(record: SessionRecord, role: str) -> RecordedStream | None:
    """The recorded stream of ``role`` (``gaze``, ``photodiode``), or None when none was recorded."""
    return next((s for s in record.streams.values() if s.role == role), None)


def fixation_breaks(record: SessionRecord) -> np.ndarray:
    """When each trial ended by a fixation break was logged, s."""
    return np.array([e["time"] for e in record.events if e.get("kind") == "trial"
                     and e.get("end") == "fixation_break" and e.get("time") is not None], float)


def photodiode_lags(record: SessionRecord) -> np.ndarray:
    """Light minus flip (s) of every presentation, from the recorded photodiode as the rig's
    ``[photodiode]`` reads it (an ``analog`` trace rising through ``threshold`` on ``channel``, or
    ``events``): the first light change within ``max_delay`` s after each marker's flip; empty
    without a recorded photodiode, NaN where no light change came."""
    recorded, spec = stream(record, "photodiode"), record.rig.get("photodiode") or {}
    if recorded is None or not len(recorded.times):
        return np.zeros(0)
    if spec.get("format", "analog") == "events":
        lights = recorded.times
    else:
        lights = light_changes(recorded.values[:, spec.get("channel", 0)], recorded.times,
                               spec.get("threshold", 0.5), None)
    flips = np.array(column(record, "markers", "onset"), float)
    first = np.searchsorted(lights, flips)
    found = np.concatenate([lights, [np.inf]])[first] - flips
    return np.where(found <= spec.get("max_delay", 0.1), found, np.nan)
