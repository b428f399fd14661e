"""What a report shows, read from a session directory: spikes per unit around each onset, the
response matrix, accuracy and posterior traces, timing.

Every accessor names the session file and line at fault when a record lacks what it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.record import read_session
from closedloop.record.session import SessionRecord

JSON_FILES = ("protocol.json", "rig.json", "summary.json")


def load_session(path: Path | str) -> SessionRecord:
    """Read a session directory, complete or partial (no ``summary.json``).

    Raises
    ------
    ClosedLoopError
        One line naming the directory or the file: missing, unreadable or corrupt.
    """
    path = Path(path)
    for name in JSON_FILES:
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                raise ClosedLoopError(f"session file {file}: corrupt ({' '.join(str(exc).split())})") from None
    try:
        return read_session(path)
    except (OSError, ValueError) as exc:
        raise ClosedLoopError(f"session {path}: unreadable ({' '.join(str(exc).split())})") from None


def column(record: SessionRecord, log: str, key: str, default=None, required: bool = True) -> list:
    """``key`` of every record in ``<log>.jsonl`` (``default`` where absent, unless ``required``)."""
    values = []
    for line, entry in enumerate(getattr(record, log), 1):
        if not isinstance(entry, dict) or (required and key not in entry):
            raise ClosedLoopError(f"session file {record.path / f'{log}.jsonl'} line {line}: no {key!r}")
        values.append(entry.get(key, default))
    return values


@dataclass(frozen=True)
class Unit:
    """A recorded unit and its spike times (s, LSL clock, sorted)."""

    name: str
    times: np.ndarray


def units(record: SessionRecord) -> list[Unit]:
    """The recorded units (``rig.json`` ``recorded_units``, in count order) with their spikes."""
    listed = record.rig.get("recorded_units")
    if not isinstance(listed, list):
        raise ClosedLoopError(f"session file {record.path / 'rig.json'}: no recorded_units list")
    spikes = record.spikes
    out = []
    for k, u in enumerate(listed):
        try:
            name, channel, unit = str(u["name"]), int(u["channel"]), int(u["unit"])
        except (KeyError, TypeError, ValueError):
            raise ClosedLoopError(f"session file {record.path / 'rig.json'}: recorded_units[{k}] needs "
                                  f"name, channel and unit") from None
        mine = (spikes["channel"] == channel) & (spikes["unit"] == unit)
        out.append(Unit(name, np.sort(spikes["time"][mine])))
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
    rows = sorted(zip(column(record, "responses", "index"), column(record, "responses", "counts"),
                      column(record, "responses", "role", "", required=False)), key=lambda r: r[0])
    for index, counts, _ in rows:
        if not isinstance(counts, list) or len(counts) != n_units:
            raise ClosedLoopError(f"session file {record.path / 'responses.jsonl'}: presentation {index} has "
                                  f"counts {counts!r}, expected {n_units} (one per recorded unit)")
    counts = np.array([c for _, c, _ in rows], float).reshape(len(rows), n_units).T
    return counts, [role for _, _, role in rows]


def strategy(record: SessionRecord) -> str:
    """The session's selection strategy."""
    return str(record.protocol.get("selection", {}).get("strategy", "?"))


def accuracy(record: SessionRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"r_observed"|"r_true": (responses (n,), r (n, units) with NaN where undefined)}``, each
    only when the session recorded it."""
    responses = np.array(column(record, "accuracy", "responses"), float)
    out = {}
    for key in ("r_observed", "r_true"):
        values = column(record, "accuracy", key, required=False)
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
        seen.update(dict.fromkeys(int(i) for i in chosen))
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
