"""NWB export of a session directory, written with pynwb.

Where things go in the file (times in seconds after the reference ``t0``, see below):

==============================================  ================================================
``units``                                       one row per ``rig.json`` ``recorded_units`` entry,
                                                in that order (row k is column k of ``counts``):
                                                ``unit_name``, ``channel``, ``unit``,
                                                ``recorded`` (True), ``spike_times`` (sorted),
                                                ``obs_intervals`` ``[[0, t_end]]``, ``_name``
                                                (the name again: neo's NWBIO names spike trains
                                                from it); then one row per (channel, unit) pair
                                                the spike stream sent but the rig does not list,
                                                ``recorded`` False, so no spike is dropped
``intervals["presentations"]``                  one row per marker: ``start_time`` = onset,
                                                ``stop_time`` = offset, ``presentation``,
                                                ``stimulus_id``, ``pool_index``, ``role``,
                                                ``family``, ``params`` (JSON text), ``trial``,
                                                ``aborted`` (a fixation break cut it short),
                                                ``dropped_frames``, ``frame_intervals`` (ragged),
                                                ``responded``, ``gap``, ``counts`` (float, one
                                                column per recorded unit; NaN where no response
                                                was recorded)
``stimulus_template["stimuli"]``                the distinct images shown, in pool order: one
                                                gzip-compressed ``RGBImage`` per image, named by
                                                stimulus id, pixels as in the pool (rows,
                                                columns, RGB; uint8)
``invalid_times``                               spike-stream gaps (tag ``spike_gap``)
``protocol``                                    ``protocol.json``, verbatim text
``notes``                                       ``rig.json``, verbatim text
``data_collection``                             JSON: ``lsl_t0`` (s), unlisted spike counts,
                                                ``summary.json`` (null for a run cut short)
``identifier``, ``session_id``                  the session directory's name
``session_start_time``                          ``protocol.json``'s modification time, UTC (the
                                                session writes it first; the directory name's
                                                stamp has no time zone; a copy that does not
                                                keep modification times changes it)
==============================================  ================================================

Times: the session records seconds on the stimulus PC's LSL clock. The file stores
``t - t0`` where ``t0`` is the earliest time the session holds (first onset, spike,
response onset or gap start), so no time is negative; ``t0`` (s, LSL clock) is
``json.loads(nwbfile.data_collection)["lsl_t0"]`` and is repeated in the
session, units and presentations descriptions. LSL time = NWB time + ``t0``.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.record.checks import recorded_units
from closedloop.record.session import SessionRecord, read_session

#: Bump when the layout above changes; stored in ``data_collection``.
EXPORT_FORMAT = 2  # 2: no ``responses_without_marker`` (a session with one is refused)


def export_nwb(session: Path | str, nwb_path: Path | str, overwrite: bool = False) -> Path:
    """Write a recorded session as an NWB file.

    Parameters
    ----------
    session : Path or str
        Session directory, complete or cut short by a killed run (no
        ``summary.json``, fewer responses than markers).
    nwb_path : Path or str
        File to write. It is written beside itself under a temporary name and
        renamed at the end, so a failed export leaves no partial file.
    overwrite : bool
        Replace ``nwb_path`` if it exists; otherwise an existing file is refused.

    Returns
    -------
    Path
        ``nwb_path``.

    Raises
    ------
    ClosedLoopError
        One line naming the path: not a session directory, a missing, corrupt or
        inconsistent session file (see :func:`closedloop.record.read_session`), a
        rig without ``recorded_units``, an existing ``nwb_path`` without
        ``overwrite``, or a file that cannot be written.

    Notes
    -----
    The file layout and the time convention (seconds after ``t0``, an LSL
    clock time stored in the file) are described in this module's docstring.
    """
    session, nwb_path = Path(session), Path(nwb_path)
    if nwb_path.is_dir():
        raise ClosedLoopError(f"NWB file {nwb_path}: is a directory")
    if nwb_path.exists() and not overwrite:
        raise ClosedLoopError(f"NWB file {nwb_path}: already exists (not overwritten)")
    if not nwb_path.parent.is_dir():
        raise ClosedLoopError(f"NWB file {nwb_path}: directory {nwb_path.parent} does not exist")
    nwbfile = _build(read_session(session))
    _write(nwbfile, nwb_path)
    return nwb_path


# ----------------------------------------------------------------- building --
def _spikes_by_unit(spikes: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Sorted spike times (s, LSL clock) of each (channel, unit) pair in ``spikes``."""
    if not len(spikes):
        return {}
    s = spikes[np.lexsort((spikes["time"], spikes["unit"], spikes["channel"]))]
    change = np.flatnonzero((np.diff(s["channel"]) != 0) | (np.diff(s["unit"]) != 0)) + 1
    starts, stops = np.r_[0, change], np.r_[change, len(s)]
    return {(int(s["channel"][a]), int(s["unit"][a])): s["time"][a:b].astype(np.float64)
            for a, b in zip(starts, stops)}


def _columns(specs: list[tuple[str, str, np.ndarray, list[int] | None]]) -> list:
    """hdmf columns from (name, description, data, row lengths or None for a plain column)."""
    from hdmf.common import VectorData, VectorIndex

    columns = []
    for name, description, data, lengths in specs:
        columns.append(VectorData(name=name, description=description, data=data))
        if lengths is not None:
            columns.append(VectorIndex(name=f"{name}_index", target=columns[-1],
                                       data=np.cumsum(lengths, dtype=np.uint64)))
    return columns


def _build(record: SessionRecord):
    """The NWBFile for a session record (pynwb objects, not yet written)."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBFile
    from pynwb.base import ImageReferences
    from pynwb.epoch import TimeIntervals
    from pynwb.image import Images, RGBImage
    from pynwb.misc import Units

    pool, path = record.pool, record.path
    units = [(u["name"], u["channel"], u["unit"]) for u in recorded_units(record)]
    n_units = len(units)
    markers, responses = record.markers, record.responses
    answered = {r["index"]: r for r in responses}
    gaps = [(e["start"], e["end"]) for e in record.events if e["kind"] == "spike_gap"]

    spikes = record.spikes
    times = [spikes["time"], [m["onset"] for m in markers], [r["onset"] for r in responses],
             [g[0] for g in gaps]]
    ends = [spikes["time"], [m["offset"] for m in markers], [r["onset"] for r in responses],
            [g[1] for g in gaps]]
    t0 = min((float(np.min(t)) for t in times if len(t)), default=0.0)
    t_end = max((float(np.max(t)) for t in ends if len(t)), default=t0) - t0

    # ---- file and metadata
    protocol_text = (path / "protocol.json").read_text()
    rig_text = (path / "rig.json").read_text()
    started = datetime.fromtimestamp((path / "protocol.json").stat().st_mtime, tz=timezone.utc)
    protocol_name = record.protocol.get("protocol", {}).get("name")
    clock = f"times are s after t0 = {t0!r} s on the stimulus PC's LSL clock (LSL time = time + t0)"

    by_unit = _spikes_by_unit(spikes)
    listed = {(c, u) for _, c, u in units}
    unlisted = [(c, u, len(t)) for (c, u), t in sorted(by_unit.items()) if (c, u) not in listed]

    bookkeeping = {
        "closedloop_nwb_export": EXPORT_FORMAT,
        "lsl_t0": t0,
        "time_convention": clock,
        "session_start_time_source": "modification time of protocol.json",
        "complete": record.summary is not None,
        "unlisted_spikes": [{"channel": c, "unit": u, "spikes": n} for c, u, n in unlisted],
        "summary": record.summary,
    }
    nwbfile = NWBFile(
        session_description=(f"closedloop session {path.name}, protocol {protocol_name or 'unnamed'!s}"
                             f"{'' if record.summary is not None else ' (cut short)'}; {clock}"),
        identifier=path.name,
        session_id=path.name,
        session_start_time=started,
        protocol=protocol_text,
        notes=rig_text,
        data_collection=json.dumps(bookkeeping),
        stimulus_notes=("images shown: stimulus_template 'stimuli', one RGBImage per stimulus id; "
                        "presentations: intervals 'presentations'"),
    )

    # ---- units (whole columns, not add_unit: hdmf converts row-added data one value at a time)
    rows = [*units, *((f"unlisted channel {c} unit {u}", c, u) for c, u, _ in unlisted)]
    if rows:
        trains = [by_unit.get((channel, unit), np.empty(0)) - t0 for _, channel, unit in rows]
        names = np.array([name for name, _, _ in rows], str)
        nwbfile.units = Units(name="units", description=(
            f"the first {n_units} rows: rig.json recorded_units in order (row k is column k of "
            f"presentations counts); later rows: (channel, unit) pairs the rig does not list; "
            f"spike times sorted; {clock}"), columns=_columns([
                ("spike_times", "spike times of each unit, s", np.concatenate(trains),
                 [len(t) for t in trains]),
                ("obs_intervals", "observation interval of each unit: the exported span, s",
                 np.tile([0.0, t_end], (len(rows), 1)), [1] * len(rows)),
                ("unit_name", "unit name from rig.json recorded_units", names, None),
                ("channel", "spike-stream channel", np.array([c for _, c, _ in rows], np.int64), None),
                ("unit", "unit id on the channel (spike stream)",
                 np.array([u for _, _, u in rows], np.int64), None),
                ("recorded", "listed in rig.json recorded_units (False: a (channel, unit) pair the "
                             "spike stream sent but the rig does not list)",
                 np.arange(len(rows)) < n_units, None),
                ("_name", "the unit name again, where neo's NWBIO looks for it", names, None),
            ]))

    # ---- presentations
    got = [answered.get(m["index"]) for m in markers]
    counts = np.full((len(markers), n_units), np.nan)
    for i, r in enumerate(got):
        if r is not None:
            counts[i] = r["counts"]
    nwbfile.add_time_intervals(TimeIntervals(name="presentations", description=(
        f"one row per stimulus presentation (markers.jsonl), onset to offset; {clock}"), columns=_columns([
            ("start_time", "onset: first frame of the stimulus, s",
             np.array([m["onset"] for m in markers], np.float64) - t0, None),
            ("stop_time", "offset: first frame after the stimulus, s",
             np.array([m["offset"] for m in markers], np.float64) - t0, None),
            ("presentation", "presentation index", np.array([m["index"] for m in markers], np.int64), None),
            ("stimulus_id", "stimulus id (content hash; names the image in stimulus_template 'stimuli')",
             np.array([m["stimulus"] for m in markers], str), None),
            ("pool_index", "position in the session's stimulus pool",
             np.array([m["pool_index"] for m in markers], np.int64), None),
            ("role", "why it was shown: chosen, heldout, control, requeued or fallback",
             np.array([m["role"] for m in markers], str), None),
            ("family", "stimulus family",
             np.array([pool.families[m["pool_index"]] for m in markers], str), None),
            ("params", "stimulus parameters, JSON text",
             np.array([json.dumps(pool.params[m["pool_index"]]) for m in markers], str), None),
            ("trial", "fixation trial the presentation belongs to (-1: not recorded)",
             np.array([m.get("trial", -1) for m in markers], np.int64), None),
            ("aborted", "a fixation break took the image off before its last frame",
             np.array([m.get("aborted", False) for m in markers], bool), None),
            ("dropped_frames", "frames shown late (-1: not recorded)",
             np.array([m.get("dropped_frames", -1) for m in markers], np.int64), None),
            ("frame_intervals", "s between this presentation's display flips",
             np.array([x for m in markers for x in m.get("frame_intervals", [])], np.float64),
             [len(m.get("frame_intervals", [])) for m in markers]),
            ("responded", "a response (spike counts) was recorded; False: counts are NaN",
             np.array([r is not None for r in got], bool), None),
            ("gap", "the response window overlapped a spike-stream gap: counts are incomplete",
             np.array([r is not None and r.get("gap", False) for r in got], bool), None),
            ("counts", "spikes per recorded unit in the response window, column k = units row k; "
                       "NaN where no response was recorded (never a zero)", counts, None),
        ])))

    # ---- spike-stream gaps
    for start, end in gaps:
        nwbfile.add_invalid_time_interval(start_time=start - t0, stop_time=end - t0, tags=["spike_gap"])

    # ---- images
    shown = sorted({m["pool_index"] for m in markers})
    if shown:
        images = [RGBImage(name=pool.ids[i], data=H5DataIO(pool.images[i], compression="gzip"),
                           description=f"{pool.families[i]} {json.dumps(pool.params[i])} "
                                       f"(pool index {i}; rows, columns, RGB)")
                  for i in shown]
        nwbfile.add_stimulus_template(Images(
            name="stimuli", images=images,
            description="the distinct stimulus images shown, named by stimulus id, in pool order",
            order_of_images=ImageReferences(name="order_of_images", data=images)))
    return nwbfile


# ------------------------------------------------------------------ writing --
def _write(nwbfile, nwb_path: Path) -> None:
    from pynwb import NWBHDF5IO

    # beside the target (same file system, so the rename is atomic); ends in .nwb as pynwb asks
    temporary = nwb_path.with_name(f".{nwb_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial.nwb")
    try:
        with NWBHDF5IO(str(temporary), "w") as io:
            io.write(nwbfile)
        os.replace(temporary, nwb_path)
    except OSError as exc:
        raise ClosedLoopError(f"NWB file {nwb_path}: cannot write ({exc.strerror or exc})") from None
    finally:
        temporary.unlink(missing_ok=True)
