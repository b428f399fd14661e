"""What a replay is fed: a session directory, a closedloop NWB export, or any recording.

:func:`open_source` reads any of them into a :class:`ReplaySource`: the
protocol, units, stimulus pool, presentations and spikes on one clock, and,
for a session directory, what the live loop logged (its responses in the order
the model worker got them, its decisions and accuracy reports, resumes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from closedloop.checks import check_rig, check_strategy
from closedloop.config import Protocol, SimulationSpec, UnitSpec, load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.stimuli.candidates import split_pool
from closedloop.record.session import ADDED, read_session
from closedloop.replay.readers import export_recording, is_closedloop_export, read_export, read_recording
from closedloop.replay.recording import Recording, session_recording
from closedloop.stimuli import StimulusPool, read_added


@dataclass
class ReplaySource:
    """Everything a replay needs, on one clock (seconds).

    Attributes
    ----------
    source : Path
        The file or directory read.
    protocol : Protocol
        The session's (or the given) protocol: window, model, selection, seed.
    units : list of UnitSpec
        The counted units, in the order of the counts.
    pool : StimulusPool
        The pool the model worker starts from (a session's ``stimuli.npz``;
        stimuli a strategy synthesised are added again by the replay).
    pool_path : Path or None
        The file ``pool`` was read from, when the worker can load it as is.
    candidates, heldout : ndarray of int
        Pool indices the strategy may choose, and those held out.
    presentations : list of dict
        ``index``, ``onset`` (s), ``stimulus``, ``pool_index`` (None: not in
        the pool), ``role``, ``aborted``; ordered by onset.
    spikes : ndarray
        ``SPIKE_DTYPE`` records, sorted by time.
    gaps : list of (float, float)
        Stretches of lost spikes (s): windows overlapping them are flagged.
    lights : list of float
        Photodiode light changes (s) that moved onsets live.
    light_window : float
        Seconds after a flip in which its light change came (the rig's ``max_delay``).
    responses : list of dict or None
        A session's ``responses.jsonl``, in file order: the order the live
        loop handed them to the model worker.
    selections, accuracy : list of dict
        A session's logged decisions and accuracy reports (empty otherwise).
    resumes : list of int
        The first presentation of each ``closedloop resume`` of the session.
    truth : SimulationSpec or None
        A simulated rig's neurons (for accuracy against the true rates).
    complete : bool
        False for a session cut short (no ``summary.json``).
    notes : list of str
        What had to be assumed or left out.
    """

    source: Path
    protocol: Protocol
    units: list[UnitSpec]
    pool: StimulusPool
    candidates: np.ndarray
    heldout: np.ndarray
    presentations: list[dict]
    spikes: np.ndarray
    gaps: list[tuple[float, float]] = field(default_factory=list)
    lights: list[float] = field(default_factory=list)
    light_window: float = 0.1
    pool_path: Path | None = None
    responses: list[dict] | None = None
    selections: list[dict] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)
    truth: SimulationSpec | None = None
    complete: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Seconds from the first onset to the last response window's end."""
        onsets = [p["onset"] for p in self.presentations]
        return max(onsets) - min(onsets) + self.protocol.window.end if onsets else 0.0


def open_source(path: Path | str, protocol: Path | None = None, pool: Path | None = None,
                **options) -> ReplaySource:
    """Read a replay's input.

    Parameters
    ----------
    path : Path or str
        A closedloop session directory; a closedloop NWB export
        (``closedloop export``); or any recording :func:`read_recording`
        reads (XDF, NWB, NIX, ... with ``options`` such as ``events`` or
        ``log``).
    protocol : Path, optional
        Protocol file for a recording that carries none (required then).
    pool : Path, optional
        For a recording that carries no images: a pool ``.npz`` or a session
        directory whose pool holds the stimulus ids the recording names.

    Raises
    ------
    ClosedLoopError
        One line naming the file and what is wrong.
    """
    path = Path(path)
    if path.is_dir() and (path / "protocol.json").exists():
        return _session(path)
    if path.suffix.lower() == ".nwb" and not options and is_closedloop_export(path):
        return _nwb_export(path)
    if protocol is None or pool is None:
        raise ClosedLoopError(f"{path}: a recording made elsewhere needs --protocol (model, selection, "
                              "window) and --pool (the images its stimulus ids name)")
    given = load_protocol(protocol)
    check_strategy(given)
    return _recording(path, given, _pool(pool), Path(pool), options)


# ----------------------------------------------------------------- sessions --
def _session(path: Path) -> ReplaySource:
    record = read_session(path)
    recording = session_recording(record)
    protocol = load_protocol(path / "protocol.json")
    rig = load_rig(path / "rig.json")
    check_strategy(protocol)
    check_rig(rig)
    base = StimulusPool.load(path / "stimuli.npz")
    candidates, heldout = split_pool(len(base), protocol.heldout.images, protocol.protocol.seed)
    for p in recording.presentations:  # read_session checked them against the pool and the responses
        p["aborted"] = bool(p.get("aborted"))
    return ReplaySource(
        source=path, protocol=protocol, units=recording.units, pool=base, candidates=candidates, heldout=heldout,
        presentations=recording.presentations, spikes=recording.spikes,
        gaps=[(e["start"], e["end"]) for e in record.events if e.get("kind") == "spike_gap"],
        lights=[r["onset"] for r in record.responses if "flip" in r],
        light_window=rig.photodiode.max_delay if rig.photodiode else 0.1, pool_path=path / "stimuli.npz",
        responses=record.responses, selections=record.selections, accuracy=record.accuracy,
        resumes=[e["from_presentation"] for e in record.events if e.get("kind") == "resumed"],
        truth=rig.simulation if rig.rig.simulated else None, complete=record.summary is not None,
        notes=recording.notes)


# -------------------------------------------------------------- NWB exports --
def _read_export(path: Path) -> tuple[Recording, Protocol, StimulusPool, list[tuple[float, float]]]:
    """A ``closedloop export`` on the session's LSL clock: its recorded units, spikes and
    presentations (``pool_index`` into the returned pool: the images shown, in pool order),
    its protocol, and its spike gaps."""
    return read_export(path, _parse_export)


def _parse_export(path: Path, nwb) -> tuple[Recording, Protocol, StimulusPool, list[tuple[float, float]]]:
    """What :func:`_read_export` returns, from the open NWB file."""
    book = json.loads(nwb.data_collection)
    t0, params = book["lsl_t0"], book["stimulus_params"]
    protocol = _protocol(path, json.loads(nwb.protocol))
    recording = export_recording(path, nwb)
    table = nwb.intervals["presentations"].to_dataframe()
    images = nwb.stimulus_template["stimuli"]
    gaps = [] if nwb.invalid_times is None else [
        (a + t0, b + t0) for a, b in zip(nwb.invalid_times["start_time"][:], nwb.invalid_times["stop_time"][:])]
    first = table.drop_duplicates("pool_index").sort_values("pool_index")
    pool = StimulusPool(np.stack([np.asarray(images.images[sid].data[:]) for sid in first["stimulus_id"]]),
                        list(first["family"]), [params[sid] for sid in first["stimulus_id"]])
    position = {int(k): i for i, k in enumerate(first["pool_index"])}
    for p in recording.presentations:
        p["pool_index"] = position[p["pool_index"]]
    return recording, protocol, pool, gaps


def _nwb_export(path: Path) -> ReplaySource:
    """A ``closedloop export``: the pool is the images shown, none of the unshown candidates."""
    recording, protocol, pool, gaps = _read_export(path)
    heldout = np.array(sorted({p["pool_index"] for p in recording.presentations if p["role"] == "heldout"}), int)
    return ReplaySource(
        source=path, protocol=protocol, units=recording.units, pool=pool,
        candidates=np.setdiff1d(np.arange(len(pool)), heldout), heldout=heldout,
        presentations=recording.presentations, spikes=recording.spikes, gaps=gaps,
        notes=["an NWB export keeps the images shown, not the whole candidate pool, nor the live "
               "decisions: the model chooses among the images shown"])


def open_recording(path: Path | str, **options) -> Recording:
    """Units, spikes and presentations of a session directory, or any recording
    :func:`read_recording` reads (with its ``options``; a closedloop NWB export needs none)."""
    path = Path(path)
    if path.is_dir() and (path / "protocol.json").exists():
        return session_recording(read_session(path))
    return read_recording(path, **options)


def _protocol(path: Path, data: dict) -> Protocol:
    """The protocol an export carries, validated and its strategy checked."""
    try:
        protocol = Protocol.model_validate({**data, "source": path})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ClosedLoopError(f"{path}: its protocol: field '{'.'.join(map(str, error['loc']))}': "
                              f"{error['msg']}") from None
    check_strategy(protocol)
    return protocol


# --------------------------------------------------------------- recordings --
def _pool(path: Path) -> StimulusPool:
    """A pool ``.npz``, or a session directory's pool (synthesised stimuli included)."""
    path = Path(path)
    if not path.is_dir():
        return StimulusPool.load(path)
    pool = StimulusPool.load(path / "stimuli.npz")
    read_added(path / ADDED, pool)
    return pool


def _recording(path: Path, protocol: Protocol, pool: StimulusPool, pool_path: Path, options: dict) -> ReplaySource:
    recording = read_recording(path, **options)
    onsets, times = [p["onset"] for p in recording.presentations], recording.spikes["time"]
    if onsets and len(times) and not any(times[0] <= t <= times[-1] for t in onsets):
        what = (f"stimulus log {options['log']}" if "log" in options
                else f"{path}: event channel {options.get('events')!r}")
        raise ClosedLoopError(f"{what}: its onsets ({min(onsets):.3f} to {max(onsets):.3f} s) lie outside the "
                              f"recording's spikes ({times[0]:.3f} to {times[-1]:.3f} s): another recording's, "
                              "or on another clock")
    candidates, heldout = split_pool(len(pool), protocol.heldout.images, protocol.protocol.seed)
    held = set(heldout.tolist())
    presentations, unknown = [], 0
    for p in recording.presentations:
        index = pool.index(p["stimulus"]) if p["stimulus"] in pool else None
        unknown += index is None
        presentations.append({"index": p["index"], "onset": p["onset"], "stimulus": p["stimulus"],
                              "pool_index": index, "aborted": False,
                              "role": "heldout" if index in held else "recorded"})
    if unknown == len(presentations):
        raise ClosedLoopError(f"{path}: none of its {unknown} presentations names a stimulus of the pool {pool_path}")
    notes = list(recording.notes)
    if unknown:
        notes.append(f"{unknown} presentations name stimuli not in the pool: counted, never learned")
    return ReplaySource(source=path, protocol=protocol, units=recording.units, pool=pool, candidates=candidates,
                        heldout=heldout, presentations=presentations, spikes=recording.spikes, notes=notes)
