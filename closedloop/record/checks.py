"""Checks across a session's records, in one place: what each record alone cannot tell.

:func:`check_consistent` runs in :func:`closedloop.record.read_session`, so every reader
(replay, report, export, resume) gets a session whose records agree with each other;
:func:`check_resumable` adds what ``closedloop resume`` needs before it appends anything.
Every error is one line naming the file, line and field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from closedloop.errors import ClosedLoopError
from closedloop.record.manifest import MANIFEST, changed
from closedloop.record.schema import SessionRecord

MAX_RATE = 5000.0
"""spikes/s: faster than any unit fires, a multi-unit channel included (a refractory period of
about 1 ms caps a single neuron near 1000); more spikes than this in a window is corruption."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed session goes on.

    Attributes
    ----------
    next_index : int
        The first presentation to show: one past the last recorded marker.
    next_trial : int
        The first trial number: one past the last trial recorded (markers and trial events).
    in_flight : list of int
        Pool indices of the presentations in flight at the kill (a marker, no response), held-out
        ones excepted, in presentation order: their responses were lost, so they are shown again.
    unanswered : list of int
        Presentation indices of every marker without a response (held-out ones included).
    lifetime : int
        The model worker's lifetime number: 1 + the session's earlier resumes.
    """

    next_index: int
    next_trial: int
    in_flight: list[int]
    unanswered: list[int]
    lifetime: int


def recorded_units(record: SessionRecord) -> list[dict]:
    """``rig.json``'s ``recorded_units`` (``name``, ``channel``, ``unit``; the order of every
    response's counts).

    Raises
    ------
    ClosedLoopError
        The rig lists none.
    """
    units = record.rig.get("recorded_units")
    if units is None:
        raise ClosedLoopError(f"session file {record.path / 'rig.json'}: field 'recorded_units': missing (the "
                              "units whose spikes the responses count)")
    return units


def check_consistent(record: SessionRecord) -> None:
    """Refuse records that contradict each other.

    Checked: each presentation has one marker, within protocol.json's presentations; each
    marker's stimulus is the pool's at its ``pool_index`` (synthesized stimuli included); each
    response answers a marker, once, with the marker's ``pool_index`` and ``role`` and one
    count per recorded unit, none above what ``MAX_RATE`` allows in the window; recorded units
    are distinct (channel, unit) pairs; decisions come in order (``received`` rising within
    each model worker's lifetime) and choose and add stimuli of the pool.

    Raises
    ------
    ClosedLoopError
        One line naming the file, line and field of the first contradiction.
    """
    _check_units(record)
    markers: dict[int, int] = {}  # presentation -> line
    where = _where(record, "markers")
    planned = record.protocol["protocol"]["presentations"]
    for line, m in enumerate(record.markers, 1):
        if m["index"] >= planned:
            raise ClosedLoopError(f"{where(line)}: field 'index': presentation {m['index']} is beyond the "
                                  f"{planned} presentations of protocol.json")
        if m["index"] in markers:
            raise ClosedLoopError(f"{where(line)}: field 'index': presentation {m['index']} recorded twice "
                                  f"(first at line {markers[m['index']]})")
        markers[m["index"]] = line
        _in_pool(record, where(line), "pool_index", [m["pool_index"]])
        if record.pool.ids[m["pool_index"]] != m["stimulus"]:
            raise ClosedLoopError(f"{where(line)}: field 'stimulus': {m['stimulus']!r} is not pool image "
                                  f"{m['pool_index']} ({record.pool.ids[m['pool_index']]!r})")
    answered: dict[int, int] = {}
    where = _where(record, "responses")
    width = len(recorded_units(record)) if record.responses else 0
    most = _most_spikes(record)
    for line, r in enumerate(record.responses, 1):
        if r["index"] not in markers:
            raise ClosedLoopError(f"{where(line)}: field 'index': presentation {r['index']} has no marker in "
                                  "markers.jsonl")
        if r["index"] in answered:
            raise ClosedLoopError(f"{where(line)}: field 'index': presentation {r['index']} answered twice "
                                  f"(first at line {answered[r['index']]})")
        answered[r["index"]] = line
        marker = record.markers[markers[r["index"]] - 1]
        for key in ("pool_index", "role"):
            if r[key] != marker[key]:
                raise ClosedLoopError(f"{where(line)}: field '{key}': {r[key]!r}, but its marker (markers.jsonl "
                                      f"line {markers[r['index']]}) has {marker[key]!r}")
        if len(r["counts"]) != width:
            raise ClosedLoopError(f"{where(line)}: field 'counts': {len(r['counts'])} counts for the {width} "
                                  "recorded units of rig.json")
        if max(r["counts"], default=0) > most:
            raise ClosedLoopError(f"{where(line)}: field 'counts': {max(r['counts'])} spikes in one window is "
                                  f"more than {most} (a unit at {MAX_RATE:g} spikes/s over protocol.json's window)")
    where = _where(record, "selections")
    workers = 1 + sum(e["kind"] == "resumed" for e in record.events)
    received, restarts = -1, 0
    for line, s in enumerate(record.selections, 1):
        if s.get("received") is not None:
            restarts += s["received"] < received  # a resumed session's next worker counts from 0 again
            if s["received"] == received or restarts >= workers:
                raise ClosedLoopError(f"{where(line)}: field 'received': {s['received']} responses after "
                                      f"{received} at the decision before, in a session of {workers} model "
                                      "worker(s): a decision recorded twice or out of order")
            received = s["received"]
        _in_pool(record, where(line), "chosen", s["chosen"])
        _in_pool(record, where(line), "added", s.get("added") or [])
        for k, predicted in enumerate(s.get("predicted") or []):
            if len(predicted) != len(recorded_units(record)):
                raise ClosedLoopError(f"{where(line)}: field 'predicted[{k}]': {len(predicted)} counts for the "
                                      f"{len(recorded_units(record))} recorded units of rig.json")


def check_resumable(record: SessionRecord) -> ResumePoint:
    """Refuse to resume a session that cannot be trusted to go on; else where it goes on.

    Call it on :func:`closedloop.record.read_session`'s record before anything starts or is
    appended.

    Raises
    ------
    ClosedLoopError
        One line: the session is complete (``summary.json`` says so); its ``protocol.json``,
        ``rig.json`` or ``stimuli.npz`` changed since it was created (``session.json``; a
        session from before that file existed is trusted on the checks alone); or its
        records contradict each other (:func:`check_consistent`: e.g. responses without
        markers).
    """
    check_consistent(record)
    if record.summary is not None and record.summary.get("status") == "complete":
        raise ClosedLoopError(f"session {record.path}: complete (summary.json), {len(record.markers)} "
                              "presentations recorded; nothing to resume")
    if record.manifest is not None:
        altered = changed(record.path, record.manifest)
        if altered:
            raise ClosedLoopError(f"session {record.path}: {', '.join(altered)} changed since the session was "
                                  f"created (SHA-256 differs from {MANIFEST}); not resumed")
    answered = {r["index"] for r in record.responses}
    open_ = sorted((m for m in record.markers if m["index"] not in answered), key=lambda m: m["index"])
    trials = [m["trial"] for m in record.markers if "trial" in m]
    trials += [e["trial"] for e in record.events if e["kind"] == "trial"]
    return ResumePoint(
        next_index=1 + max((m["index"] for m in record.markers), default=-1),
        next_trial=1 + max(trials, default=-1),
        in_flight=[m["pool_index"] for m in open_ if m["role"] != "heldout"],
        unanswered=[m["index"] for m in open_],
        lifetime=1 + sum(e["kind"] == "resumed" for e in record.events),
    )


def _most_spikes(record: SessionRecord) -> int:
    """The most spikes one unit can put in protocol.json's response window (at ``MAX_RATE``)."""
    window = record.protocol["window"]
    return math.ceil((window["end"] - window["start"]) * MAX_RATE) + 1


def _where(record: SessionRecord, log: str):
    """``line -> "session file <log>.jsonl line <line>"``."""
    file = record.path / f"{log}.jsonl"
    return lambda line: f"session file {file} line {line}"


def _in_pool(record: SessionRecord, where: str, key: str, indices: list[int]) -> None:
    size = len(record.pool)
    bad = [i for i in indices if i >= size]
    if bad:
        raise ClosedLoopError(f"{where}: field '{key}': pool index {bad[0]} is not in the pool ({size} stimuli, "
                              f"{record.path.name}/synthesized included)")


def _check_units(record: SessionRecord) -> None:
    """Each recorded unit a distinct (channel, unit) pair."""
    seen: dict[tuple[int, int], int] = {}
    for k, u in enumerate(record.rig.get("recorded_units") or []):
        pair = (u["channel"], u["unit"])
        if pair in seen:
            raise ClosedLoopError(f"session file {record.path / 'rig.json'}: field 'recorded_units[{k}]': channel "
                                  f"{pair[0]} unit {pair[1]} listed twice (also recorded_units[{seen[pair]}])")
        seen[pair] = k
