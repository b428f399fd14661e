"""Following a session directory while it is written: only what was appended since the last look is read.

A ``.jsonl`` log is read from where the last look stopped, up to its last newline (a line still being
written waits for the next look); ``spikes.bin`` likewise in whole records. The whole-file JSON
objects (``protocol.json``, ``rig.json``, ``summary.json``) are written atomically and read as they
appear. Every record is parsed and checked as :func:`closedloop.record.read_session` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.record import recorded_units
from closedloop.record.schema import JSON_FILES, LOGS, SPIKE_DTYPE, binary_problem
from closedloop.record.session import parse_record, read_record_file

SETUP = ("protocol.json", "rig.json")  # written when the session is created, before any record
ORDER = ("responses", "markers", "events", "accuracy", "selections")
"""Logs in the order they are read at each look: a response's decision and marker were written before
it (one writer thread), so reading the responses first never finds one without them."""


class LogTail:
    """The complete lines appended to one ``.jsonl`` log since the last :meth:`read`."""

    def __init__(self, file: Path, model: type):
        self.file, self.model = file, model
        self.offset = 0  # bytes consumed: up to and including the last complete line read
        self.lines = 0

    def read(self) -> list[dict]:
        """The records of the lines completed since the last call (none while the file is absent).

        Raises
        ------
        ClosedLoopError
            A line that is not a JSON object fitting its schema (naming the file and line).
        """
        try:
            with open(self.file, "rb") as f:
                f.seek(self.offset)
                raw = f.read()
        except FileNotFoundError:
            return []
        end = raw.rfind(b"\n") + 1
        records = []
        for line in raw[:end].split(b"\n")[:-1]:
            self.lines += 1
            records.append(parse_record(line, self.model, f"session file {self.file} line {self.lines}"))
        self.offset += end
        return records


class RecordTail:
    """The whole fixed-size records appended to one ``.bin`` file since the last :meth:`read`."""

    def __init__(self, file: Path, dtype: np.dtype):
        self.file, self.dtype = file, dtype
        self.offset = 0  # bytes consumed: whole records only

    def read(self) -> np.ndarray:
        """The records completed since the last call (none while the file is absent).

        Raises
        ------
        ClosedLoopError
            A record whose time is not finite.
        """
        try:
            with open(self.file, "rb") as f:
                f.seek(self.offset)
                raw = f.read()
        except FileNotFoundError:
            return np.empty(0, self.dtype)
        whole = len(raw) - len(raw) % self.dtype.itemsize
        records = np.frombuffer(raw[:whole], self.dtype)
        why = binary_problem(records)
        if why is not None:
            raise ClosedLoopError(f"session file {self.file} {why}")
        self.offset += whole
        return records


class SessionFollower:
    """Everything a session directory holds so far (but its pool and frames), brought up to date by :meth:`poll`.

    Parameters
    ----------
    path : Path
        The session directory; it may not exist yet (a session about to start): nothing is read until
        its ``protocol.json`` and ``rig.json`` are there.

    Attributes
    ----------
    protocol, rig : dict or None
        ``protocol.json`` and ``rig.json``, once written.
    summary : dict or None
        ``summary.json``: None while the session runs (or after it was killed).
    markers, responses, selections, accuracy, events : list of dict
        The records read so far, in file order.
    spikes : list of ndarray
        Per recorded unit (``rig.json``'s ``recorded_units`` order), its spike times (s, LSL clock) read
        so far, sorted.
    newest_spike : float or None
        The latest spike time of any unit (s).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.protocol: dict | None = None
        self.rig: dict | None = None
        self.summary: dict | None = None
        self.units: list[dict] = []
        self.markers: list[dict] = []
        self.responses: list[dict] = []
        self.selections: list[dict] = []
        self.accuracy: list[dict] = []
        self.events: list[dict] = []
        self.spikes: list[np.ndarray] = []
        self.newest_spike: float | None = None
        self._logs = {name: LogTail(self.path / f"{name}.jsonl", LOGS[name]) for name in ORDER}
        self._spikes = RecordTail(self.path / "spikes.bin", SPIKE_DTYPE)

    @property
    def started(self) -> bool:
        """Whether the session's setup (protocol and rig) has been read."""
        return self.rig is not None

    def poll(self) -> bool:
        """Read what was appended since the last call; whether anything new was read.

        Raises
        ------
        ClosedLoopError
            A record that does not fit its schema, a rig without ``recorded_units`` (one line naming the
            file, line and field).
        """
        changed = not self.started  # the setup is read now (if it is there)
        if changed and not self._read_setup():
            return False
        for name, tail in self._logs.items():
            new = tail.read()
            getattr(self, name).extend(new)
            changed |= bool(new)
        changed |= self._add_spikes(self._spikes.read())
        summary = read_record_file(self.path / "summary.json", JSON_FILES["summary.json"])
        changed |= summary != self.summary
        self.summary = summary  # None again when a resumed run removed it
        return changed

    def _read_setup(self) -> bool:
        if not all((self.path / name).exists() for name in SETUP):
            return False
        self.protocol, self.rig = (read_record_file(self.path / name, JSON_FILES[name]) for name in SETUP)
        self.units = recorded_units(self)
        self.spikes = [np.empty(0) for _ in self.units]
        return True

    def _add_spikes(self, records: np.ndarray) -> bool:
        """Append each recorded unit's spikes of ``records`` (others', if any, are not counted)."""
        if not len(records):
            return False
        for k, unit in enumerate(self.units):
            mine = records["time"][(records["channel"] == unit["channel"]) & (records["unit"] == unit["unit"])]
            if len(mine):
                times = np.concatenate([self.spikes[k], mine])
                self.spikes[k] = times if np.all(np.diff(times[-len(mine) - 1:]) >= 0) else np.sort(times)
        newest = float(records["time"].max())
        self.newest_spike = newest if self.newest_spike is None else max(self.newest_spike, newest)
        return True
