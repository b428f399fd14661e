"""Record: the session directory, written as things happen and read back whole and checked."""

from closedloop.record.checks import ResumePoint, check_consistent, check_resumable, recorded_units
from closedloop.record.session import SessionRecord, SessionWriter, read_session

__all__ = ["ResumePoint", "SessionRecord", "SessionWriter", "check_consistent", "check_resumable", "read_session",
           "recorded_units"]
