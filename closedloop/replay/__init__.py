"""Replay: recordings (sessions, neo formats, LabRecorder XDF) read into the live system's
presentation and response tables, replayed through the live model and strategy
(``session_replay``), republished on LSL (``republish``); real data converted to sessions
(``convert``)."""

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
from closedloop.replay.recording import Recording, response_table, session_recording

__all__ = [
    "READERS", "NeoReader", "Reader", "Recording", "XdfReader", "presentations_from_markers",
    "read_recording", "read_stimulus_log", "reader_for", "register", "response_table", "session_recording",
    "supported_formats",
]
