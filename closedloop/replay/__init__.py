"""Replay: recordings made elsewhere (neo formats, LabRecorder XDF) read into the
live system's presentation and response tables, for offline work."""

from closedloop.replay.readers import (
    READERS,
    NeoReader,
    Reader,
    XdfReader,
    presentations_from_markers,
    read_recording,
    read_stimulus_log,
    reader_for,
    register,
    supported_formats,
)
from closedloop.replay.recording import Recording, response_table

__all__ = [
    "READERS", "NeoReader", "Reader", "Recording", "XdfReader", "presentations_from_markers",
    "read_recording", "read_stimulus_log", "reader_for", "register", "response_table", "supported_formats",
]
