"""What a session directory holds, read the way the fault-injection benchmark counts it.

Only complete records count: a ``.jsonl`` line cut short by a kill (no newline, or not JSON)
is not a recorded presentation.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


def complete_records(path: Path) -> list[dict]:
    """The newline-terminated, parseable JSON lines of ``path`` (none when it is absent)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for line in text[:text.rfind(b"\n") + 1].splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def count_lines(path: Path) -> int:
    """Newline-terminated lines of ``path`` (0 when absent): cheap enough to poll."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def find_session(out: Path) -> Path | None:
    """The session directory a run made in ``out`` (the first, if several)."""
    found = sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
    return found[0] if found else None


def read_summary(session: Path | None) -> dict | None:
    """``summary.json``, or None when there is none (or it is cut short)."""
    try:
        return json.loads((session / "summary.json").read_text())
    except (TypeError, FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass
class Snapshot:
    """Presentation indices of a session's complete marker and response lines, and its summary."""

    markers: list[int]
    responses: list[int]
    summary: dict | None

    @classmethod
    def of(cls, session: Path | None) -> Snapshot:
        if session is None:
            return cls([], [], None)
        return cls([m["index"] for m in complete_records(session / "markers.jsonl")],
                   [r["index"] for r in complete_records(session / "responses.jsonl")], read_summary(session))

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status", "none")

    def complete(self, presentations: int) -> bool:
        """Summary status ``complete`` and every index ``0..presentations-1`` presented exactly once."""
        return self.status == "complete" and sorted(self.markers) == list(range(presentations))

    def unanswered(self) -> list[int]:
        """Presented indices without a response."""
        return sorted(set(self.markers) - set(self.responses))


def losses(before: Snapshot, after: Snapshot) -> dict:
    """What ``after`` lacks or repeats of what ``before`` recorded.

    Returns
    -------
    dict
        ``markers`` and ``responses``: indices recorded before but missing after;
        ``duplicated``: extra copies of an index in after's markers or responses;
        ``lost``: the sum of the three.
    """
    lost_markers = len(set(before.markers) - set(after.markers))
    lost_responses = len(set(before.responses) - set(after.responses))
    duplicated = sum(n - 1 for records in (after.markers, after.responses) for n in Counter(records).values())
    return {"markers": lost_markers, "responses": lost_responses, "duplicated": duplicated,
            "lost": lost_markers + lost_responses + duplicated}
