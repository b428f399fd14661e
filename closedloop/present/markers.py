"""Stimulus markers: a JSON string per event on an LSL outlet, stamped at the flip."""

from __future__ import annotations

import json

import pylsl

from closedloop.config import StreamSpec


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
    """An irregular-rate string LSL outlet for stimulus events."""

    def __init__(self, spec: StreamSpec, source_id: str):
        info = pylsl.StreamInfo(spec.name, spec.type, 1, pylsl.IRREGULAR_RATE,
                                pylsl.cf_string, source_id)
        self._outlet = pylsl.StreamOutlet(info)

    def push(self, marker: str, timestamp: float) -> None:
        """Publish ``marker`` stamped at ``timestamp`` (LSL local clock, seconds)."""
        self._outlet.push_sample([marker], timestamp)

    def have_consumers(self) -> bool:
        return self._outlet.have_consumers()

    def close(self) -> None:
        del self._outlet
