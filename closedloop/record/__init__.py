"""Record: the session directory, written as things happen and read back whole."""

from closedloop.record.session import SessionRecord, SessionWriter, read_session

__all__ = ["SessionRecord", "SessionWriter", "read_session"]
