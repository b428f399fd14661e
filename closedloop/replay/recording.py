"""A recording read back for offline work, and its response table.

:class:`Recording` is deliberately small and strict: units, spikes and
stimulus presentations on one clock, in the shapes the live session writes
(``spikes.bin`` records, ``markers.jsonl`` entries). :func:`response_table`
turns it into ``responses.jsonl``-shaped records with the live counting rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from closedloop.align.windows import ResponseAligner
from closedloop.config import UnitSpec
from closedloop.errors import ClosedLoopError
from closedloop.record.session import SPIKE_DTYPE, SessionRecord

PRESENTATION_KEYS = ("index", "stimulus", "onset", "offset")
CARRIED = ("pool_index", "role")  # marker keys the live system copies into responses


@dataclass
class Recording:
    """Units, spikes and stimulus presentations of one recording, on one clock.

    Attributes
    ----------
    units : list of UnitSpec
        The units whose spikes are counted, in the order of the counts; each
        (channel, unit) pair appears once.
    spikes : numpy.ndarray
        Every spike as a ``SPIKE_DTYPE`` record (time in seconds, channel,
        unit), sorted by time. Spikes of pairs not in ``units`` may be present;
        they are not counted (as in the live system).
    presentations : list of dict
        One per presentation, ordered by onset, with at least ``index`` (int),
        ``stimulus`` (id string), ``onset`` and ``offset`` (seconds, same clock
        as the spikes; ``offset`` is None when the file does not tell it):
        the keys of the live ``markers.jsonl``.
    source : Path
        The file (or folder) read.
    notes : list of str
        What the reader had to assume or could not recover.
    """

    units: list[UnitSpec]
    spikes: np.ndarray
    presentations: list[dict]
    source: Path
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        pairs = [(u.channel, u.unit) for u in self.units]
        if len(set(pairs)) != len(pairs):
            raise ClosedLoopError(f"{self.source}: two units share a (channel, unit) pair: {pairs}")
        spikes = np.asarray(self.spikes)
        if spikes.dtype != SPIKE_DTYPE:
            if spikes.dtype.names != SPIKE_DTYPE.names:
                raise ClosedLoopError(f"{self.source}: spikes need fields {SPIKE_DTYPE.names}")
            spikes = spikes.astype(SPIKE_DTYPE)
        self.spikes = spikes[np.argsort(spikes["time"], kind="stable")]
        for p in self.presentations:
            missing = [k for k in PRESENTATION_KEYS if k not in p]
            if missing:
                raise ClosedLoopError(f"{self.source}: presentation {p} lacks {', '.join(missing)}")
        self.presentations = sorted(self.presentations, key=lambda p: p["onset"])


def session_recording(record: SessionRecord) -> Recording:
    """A closedloop session (see :func:`closedloop.record.read_session`) as a :class:`Recording`:
    its recorded units, every spike, and one presentation per marker (with its ``pool_index``,
    ``role``, ``trial`` and ``aborted`` where recorded)."""
    try:
        units = [UnitSpec(**u) for u in record.rig["recorded_units"]]
    except (KeyError, TypeError, ValueError):
        raise ClosedLoopError(f"session {record.path}: rig.json lacks a valid 'recorded_units' list") from None
    presentations = [{k: m[k] for k in (*PRESENTATION_KEYS, *CARRIED, "trial", "aborted") if k in m}
                     for m in record.markers]
    return Recording(units=units, spikes=record.spikes, presentations=presentations, source=record.path,
                     notes=[] if record.summary is not None else ["no summary.json: the run was cut short"])


def response_table(recording: Recording, start: float, end: float) -> list[dict]:
    """Spike counts per unit in ``[onset + start, onset + end)`` of every presentation.

    Counting is done by :class:`closedloop.align.windows.ResponseAligner`,
    the live system's own, so offline and live counts agree exactly.

    Parameters
    ----------
    recording : Recording
        What a reader returned.
    start, end : float
        Response window, seconds after onset (``end > start``).

    Returns
    -------
    list of dict
        Shaped like the live ``responses.jsonl``: ``index``, ``stimulus``,
        ``onset`` (s), ``counts`` (spikes per unit, in ``recording.units``
        order), plus ``pool_index`` and ``role`` where the presentation has
        them.
    """
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise ClosedLoopError(f"response window [{start}, {end}) s: end must be after start")
    aligner = ResponseAligner([(u.channel, u.unit) for u in recording.units], start, end)
    spikes = recording.spikes
    aligner.add_spikes(spikes["time"], spikes["channel"], spikes["unit"])
    for p in recording.presentations:
        info = {"stimulus": p["stimulus"], **{k: p[k] for k in CARRIED if k in p}}
        aligner.add_onset(p["index"], p["onset"], info)
    return [{"index": r.index, "onset": r.onset, "counts": r.counts.tolist(), **r.info}
            for r in aligner.complete(math.inf)]
