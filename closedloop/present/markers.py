"""Stimulus markers: a JSON string per event on an LSL outlet, stamped at the flip, and a numeric
companion stream for tools that take no strings (mne-lsl's ``StreamLSL`` and ``EpochsStream``).

Both outlets describe themselves in ``<desc>`` (:func:`closedloop.acquire.streams.outlet_info`):
the string stream its payload (``<closedloop><marker_format>json``, ``<marker_schema>``: every
event's JSON keys), the numeric one its channels and ``<event_codes>``; both the session and rig
they belong to.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pylsl

from closedloop.acquire.streams import outlet_info
from closedloop.config import StreamSpec

NUMERIC_SUFFIX = "-numeric"  # the numeric companion's name and source_id: the string stream's, with this
EVENT_CODES = {"onset": 1, "offset": 2, "fixation_break": 3, "trial_start": 4, "reward": 5, "no_fixation": 6}
NO_INDEX = -1  # a numeric marker's presentation or pool index where the event has none
MARKER_SCHEMA = {  # each event's JSON keys, as the marker stream's <desc><closedloop><marker_schema> says
    "onset": {"event": "onset", "index": "presentation index (from 0)",
              "stimulus": "content hash of the image now on screen (closedloop.stimuli.stimulus_id)"},
    "offset": {"event": "offset", "index": "presentation index: the first flip without its image"},
    "fixation_break": {"event": "fixation_break", "index": "presentation index cut short by the break"},
    "trial_start": {"event": "trial_start", "trial": "trial number: the fixation point appears"},
    "reward": {"event": "reward", "trial": "trial number, completed"},
    "no_fixation": {"event": "no_fixation", "trial": "trial number, fixation never acquired"},
}


def onset_marker(index: int, stimulus: str) -> str:
    """Marker for presentation ``index`` of the stimulus with content hash ``stimulus``."""
    return json.dumps({"event": "onset", "index": index, "stimulus": stimulus})


def offset_marker(index: int) -> str:
    """Marker for the first blank frame after presentation ``index``."""
    return json.dumps({"event": "offset", "index": index})


def parse_marker(text: str) -> dict:
    """Inverse of :func:`onset_marker` and :func:`offset_marker`."""
    return json.loads(text)


class MarkerOutlet:
    """Stimulus events on two irregular-rate LSL outlets, each event stamped alike on both.

    ``spec.name``: one JSON string per event (:func:`onset_marker`, ...). ``spec.name`` +
    ``-numeric`` (source_id likewise): one int32 sample per event, channels ``event`` (its code,
    :data:`EVENT_CODES`: 1 onset, 2 offset, ...), ``presentation`` (index) and ``pool_index``
    (:data:`NO_INDEX` where the event has none).

    Parameters
    ----------
    spec : StreamSpec
        The string stream's name and type.
    source_id : str
        Its source_id.
    session_id, rig : str, optional
        The session and rig, written into both ``<desc>`` (``<closedloop><session_id>``, ``<rig>``).
    pool_index : callable(str) -> int, optional
        The pool index of a stimulus id (KeyError when unknown: :data:`NO_INDEX`); without it every
        pool index is :data:`NO_INDEX`. An onset's carries on to its offset and fixation break.
    """

    def __init__(self, spec: StreamSpec, source_id: str, session_id: str | None = None, rig: str | None = None,
                 pool_index: Callable[[str], int] | None = None):
        own = {"session_id": session_id, "rig": rig}
        info = outlet_info(spec, source_id, [("marker", "", "Marker")], pylsl.IRREGULAR_RATE, pylsl.cf_string,
                           "stimulus presentation", {"marker_format": "json", "marker_schema": MARKER_SCHEMA, **own})
        numeric = spec.model_copy(update={"name": spec.name + NUMERIC_SUFFIX})
        numeric_info = outlet_info(numeric, source_id + NUMERIC_SUFFIX,
                                   [("event", "", "Stim"), ("presentation", "", "Misc"), ("pool_index", "", "Misc")],
                                   pylsl.IRREGULAR_RATE, pylsl.cf_int32, "stimulus presentation",
                                   {"event_codes": EVENT_CODES, "no_index": NO_INDEX, **own})
        self._outlet = pylsl.StreamOutlet(info)
        self._numeric = pylsl.StreamOutlet(numeric_info)
        self._pool_index = pool_index
        self._shown = (NO_INDEX, NO_INDEX)  # the latest onset's (presentation index, pool index)

    def push(self, marker: str, timestamp: float) -> None:
        """Publish ``marker`` stamped at ``timestamp`` (LSL local clock, seconds), and its numeric
        companion (an event :data:`EVENT_CODES` lacks has none)."""
        self._outlet.push_sample([marker], timestamp)
        numeric = self._numeric_sample(parse_marker(marker))
        if numeric is not None:
            self._numeric.push_sample(numeric, timestamp)

    def _numeric_sample(self, marker: dict) -> list[int] | None:
        """``[event code, presentation index, pool index]`` for one parsed marker."""
        code = EVENT_CODES.get(marker.get("event"))
        if code is None:
            return None
        index = int(marker.get("index", NO_INDEX))
        if marker["event"] == "onset":
            self._shown = (index, self._lookup(marker["stimulus"]))
        return [code, index, self._shown[1] if index == self._shown[0] != NO_INDEX else NO_INDEX]

    def _lookup(self, stimulus: str) -> int:
        if self._pool_index is None:
            return NO_INDEX
        try:
            return int(self._pool_index(stimulus))
        except KeyError:
            return NO_INDEX

    def have_consumers(self) -> bool:
        return self._outlet.have_consumers()

    def close(self) -> None:
        del self._outlet, self._numeric
