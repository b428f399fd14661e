"""NWB export of a session directory, written with pynwb, as an archive (DANDI) accepts it.

Where things go in the file (times in seconds after the reference ``t0``, see below):

==============================================  ================================================
``subject``                                     ``rig.json`` [subject] (id, species, sex, age,
                                                description), command-line options over it
``experimenter``, ``institution``, ``lab``      ``rig.json`` [lab]
``experiment_description``, ``keywords``        ``protocol.json`` protocol.description, keywords
``devices``, ``electrode_groups``,              ``rig.json`` [recording]: one device, one
``electrodes``                                  electrode group (location), one electrode per
                                                spike-stream channel the units use (``channel``)
``units``                                       one row per ``rig.json`` ``recorded_units`` entry,
                                                in that order (row k is column k of ``counts``):
                                                ``unit_name``, ``channel``, ``unit``,
                                                ``recorded`` (True), ``spike_times`` (sorted),
                                                ``obs_intervals`` ``[[0, t_end]]``, ``electrodes``
                                                (its channel's), ``_name`` (the name again: neo's
                                                NWBIO names spike trains from it); then one row
                                                per (channel, unit) pair the spike stream sent
                                                but the rig does not list, ``recorded`` False,
                                                so no spike is dropped; ``resolution``: the
                                                smallest difference between two spike times
``intervals["presentations"]``                  one row per marker: ``start_time`` = onset,
                                                ``stop_time`` = offset, ``presentation``,
                                                ``stimulus_id``, ``pool_index``, ``role``,
                                                ``family``, ``trial``, ``aborted`` (a fixation
                                                break cut it short), ``dropped_frames``,
                                                ``frame_intervals`` (ragged), ``responded``,
                                                ``gap``, ``counts`` (float, one column per
                                                recorded unit; NaN where no response was
                                                recorded), ``param_<name>``: one typed column per
                                                stimulus parameter name over all families (NaN,
                                                "" or empty where a family lacks it)
``epochs``                                      the presentations again as neo's NWBIO reads an
                                                Epoch: ``tags`` = stimulus id, ``_name``
                                                "presentations", ``segment``, ``block``
``trials``                                      one row per fixation trial (events.jsonl
                                                ``trial``): from the previous trial's end to its
                                                own, ``trial``, ``outcome``, ``presentations``
                                                (ragged), ``requeued``, ``rewarded``,
                                                ``reward_time``
``stimulus_template["stimuli"]``                the distinct images shown, in pool order: one
                                                gzip-compressed ``RGBImage`` per image, named by
                                                stimulus id (rows, columns, RGB; uint8)
``processing["misc"]``                          ``presented_images`` (IndexSeries: at each onset,
                                                the image shown, its position in ``stimuli``'s
                                                order_of_images; not in ``stimulus``, where neo
                                                0.14's NWBIO fails on it), ``display_flips``
                                                (every flip of frames.bin),
                                                ``selections`` (selections.jsonl, typed columns),
                                                ``checkpoints`` (the session's checkpoints/:
                                                path, bytes, sha256)
``processing["behavior"]["eye_tracking"]``      gaze: SpatialSeries ``gaze``, degrees from the
                                                fixation point, x right, y up
``acquisition``                                 ``photodiode`` and every other recorded stream
                                                (``streams/``), a TimeSeries each
``invalid_times``                               spike-stream gaps (tag ``spike_gap``)
``protocol``                                    ``protocol.json``, verbatim text
``notes``                                       ``rig.json``, verbatim text
``data_collection``                             JSON: ``lsl_t0`` (s), unlisted spike counts,
                                                ``summary.json`` (null for a run cut short),
                                                ``stimulus_params`` (each shown stimulus id's
                                                parameters exactly, for replay)
``identifier``                                  the session directory's name
``session_id``                                  its session id (``sub-<subject>_ses-<session>``)
``session_start_time``                          ``protocol.json``'s modification time, UTC (the
                                                session writes it first; a copy that does not
                                                keep modification times changes it)
==============================================  ================================================

Times: the session records seconds on the stimulus PC's LSL clock. The file stores
``t - t0`` where ``t0`` is the earliest time the session holds (spike, onset, response onset,
gap start, display flip, decision, trial end or stream sample), so no time is negative; ``t0``
(s, LSL clock) is ``json.loads(nwbfile.data_collection)["lsl_t0"]`` and is repeated in the
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
from closedloop.record.naming import modalities, nwb_filename
from closedloop.record.nwb.ecephys import add_units, unit_rows
from closedloop.record.nwb.metadata import ArchiveMetadata, archive_metadata, file_fields
from closedloop.record.nwb.provenance import add_checkpoints, add_selections
from closedloop.record.nwb.stimuli import add_images, add_presentations, add_trials
from closedloop.record.nwb.streams import add_frames, add_streams
from closedloop.record.session import SessionRecord, read_session

__all__ = ["EXPORT_FORMAT", "export_nwb"]

#: Bump when the layout above changes; stored in ``data_collection``.
EXPORT_FORMAT = 3  # 3: archive metadata, electrodes, typed parameters, epochs, trials, IndexSeries, streams


def export_nwb(session: Path | str, nwb_path: Path | str | None = None, overwrite: bool = False,
               subject: dict | None = None, lab: dict | None = None) -> Path:
    """Write a recorded session as an NWB file an archive (DANDI) accepts.

    Parameters
    ----------
    session : Path or str
        Session directory, complete or cut short by a killed run (no
        ``summary.json``, fewer responses than markers).
    nwb_path : Path or str, optional
        File to write. It is written beside itself under a temporary name and
        renamed at the end, so a failed export leaves no partial file. Default:
        ``<session's parent>/sub-<subject>/sub-<subject>_ses-<session>_<modalities>.nwb``,
        as DANDI's organize names it (:func:`closedloop.record.naming.nwb_filename`; the
        folder is made if needed).
    overwrite : bool
        Replace ``nwb_path`` if it exists; otherwise an existing file is refused.
    subject, lab : dict, optional
        Fields over ``rig.json``'s [subject] and [lab] tables (the command line's
        ``--subject-id`` ...; see :func:`closedloop.config.with_metadata`).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ClosedLoopError
        One line naming the path: not a session directory, a missing, corrupt or
        inconsistent session file (see :func:`closedloop.record.read_session`), a
        rig without ``recorded_units``, a subject field an archive needs that is
        missing (naming the rig field and the option), an existing ``nwb_path``
        without ``overwrite``, or a file that cannot be written.

    Notes
    -----
    The file layout and the time convention (seconds after ``t0``, an LSL
    clock time stored in the file) are described in this module's docstring.
    """
    session = Path(session)
    record = read_session(session)
    meta = archive_metadata(record, subject, lab)
    nwbfile = _build(record, meta)
    if nwb_path is None:
        name = nwb_filename(meta.subject.id, meta.session_id, modalities(nwbfile))
        nwb_path = session.parent / f"sub-{meta.subject.id}" / name
        nwb_path.parent.mkdir(exist_ok=True)
    nwb_path = Path(nwb_path)
    if nwb_path.is_dir():
        raise ClosedLoopError(f"NWB file {nwb_path}: is a directory")
    if nwb_path.exists() and not overwrite:
        raise ClosedLoopError(f"NWB file {nwb_path}: already exists (not overwritten)")
    if not nwb_path.parent.is_dir():
        raise ClosedLoopError(f"NWB file {nwb_path}: directory {nwb_path.parent} does not exist")
    _write(nwbfile, nwb_path)
    return nwb_path


# ----------------------------------------------------------------- building --
def _span(record: SessionRecord) -> tuple[float, float]:
    """``t0`` (s, LSL clock): the earliest time the session holds, and the export's end (s after ``t0``)."""
    gaps = [e for e in record.events if e["kind"] == "spike_gap"]
    timed = [e["time"] for e in (*record.events, *record.selections) if isinstance(e.get("time"), float)]
    streams = [s.times for s in getattr(record, "streams", {}).values()]
    starts = [record.spikes["time"], [m["onset"] for m in record.markers], [r["onset"] for r in record.responses],
              [g["start"] for g in gaps], record.frames, timed, *streams]
    ends = [record.spikes["time"], [m["offset"] for m in record.markers], [r["onset"] for r in record.responses],
            [g["end"] for g in gaps], record.frames, timed, *streams]
    t0 = min((float(np.min(t)) for t in starts if len(t)), default=0.0)
    return t0, max((float(np.max(t)) for t in ends if len(t)), default=t0) - t0


def _build(record: SessionRecord, meta: ArchiveMetadata):
    """The NWBFile for a session record (pynwb objects, not yet written)."""
    from pynwb import NWBFile, ProcessingModule

    path = record.path
    t0, t_end = _span(record)
    protocol_name = record.protocol.get("protocol", {}).get("name")
    clock = f"times are s after t0 = {t0!r} s on the stimulus PC's LSL clock (LSL time = time + t0)"
    _, unlisted = unit_rows(record)
    shown = sorted({m["pool_index"] for m in record.markers})
    bookkeeping = {
        "closedloop_nwb_export": EXPORT_FORMAT,
        "lsl_t0": t0,
        "time_convention": clock,
        "session_start_time_source": "modification time of protocol.json",
        "complete": record.summary is not None,
        "unlisted_spikes": [{"channel": c, "unit": u, "spikes": n} for c, u, n in unlisted],
        "summary": record.summary,
        "stimulus_params": {record.pool.ids[i]: record.pool.params[i] for i in shown},
    }
    nwbfile = NWBFile(
        session_description=(f"closedloop session {path.name}, protocol {protocol_name or 'unnamed'!s}"
                             f"{'' if record.summary is not None else ' (cut short)'}; {clock}"),
        identifier=path.name,
        session_start_time=datetime.fromtimestamp((path / "protocol.json").stat().st_mtime, tz=timezone.utc),
        protocol=(path / "protocol.json").read_text(),
        notes=(path / "rig.json").read_text(),
        data_collection=json.dumps(bookkeeping),
        stimulus_notes=("images shown: stimulus_template 'stimuli', one RGBImage per stimulus id; which when: "
                        "processing 'misc' 'presented_images'; presentations: intervals 'presentations'"),
        **file_fields(meta),
    )
    add_units(nwbfile, record, meta.recording, t0, t_end, clock)
    add_presentations(nwbfile, record, len(recorded_units(record)), t0, clock)
    first = record.frames[0] if len(record.frames) else min((m["onset"] for m in record.markers), default=t0)
    add_trials(nwbfile, record, t0, float(first), clock)
    for e in record.events:
        if e["kind"] == "spike_gap":
            nwbfile.add_invalid_time_interval(start_time=e["start"] - t0, stop_time=e["end"] - t0, tags=["spike_gap"])
    misc = ProcessingModule(name="misc", description=(
        "the closed loop's own records: which image each onset showed, display flips, model decisions and "
        "model checkpoints"))
    add_images(nwbfile, misc, record, t0, clock)
    add_frames(misc, record, t0, clock)
    add_selections(misc, record, t0, clock)
    add_checkpoints(misc, path)
    if misc.data_interfaces:
        nwbfile.add_processing_module(misc)
    add_streams(nwbfile, record, t0, clock)
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
