"""The session directory.

Layout (every ``.jsonl`` file holds one JSON object per line, appended and
flushed as it happens, so a killed run keeps everything completed):

=================  ==========================================================
``protocol.json``  the resolved protocol
``rig.json``       the resolved rig
``stimuli.npz``    the candidate pool (see ``StimulusPool.save``)
``markers.jsonl``  one per presentation: index, stimulus id, pool index, role,
                   onset and offset (s, LSL clock), frame intervals, dropped frames
``spikes.bin``     every spike: little-endian records of time (float64, s,
                   LSL clock of the stimulus PC), channel (int32), unit (int32)
``responses.jsonl`` one per presentation: index, stimulus, role, onset, counts
``selections.jsonl`` one per model decision: chosen ids, scores, turnaround
``accuracy.jsonl`` held-out prediction accuracy over time
``events.jsonl``   deadline misses, warnings and errors
``summary.json``   written at the end: counts, deadline misses, accuracy
=================  ==========================================================
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.stimuli import StimulusPool

SPIKE_DTYPE = np.dtype([("time", "<f8"), ("channel", "<i4"), ("unit", "<i4")])
LOGS = ("markers", "responses", "selections", "accuracy", "events")


class SessionWriter:
    """Appends records to a session directory from a background thread.

    Callers never wait on the disk: :meth:`log` and :meth:`spikes` only
    enqueue. Each record is written and flushed as soon as the thread gets it.
    """

    def __init__(self, path: Path | str, protocol: dict, rig: dict, pool: StimulusPool):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=False)
        (self.path / "protocol.json").write_text(json.dumps(protocol, indent=2))
        (self.path / "rig.json").write_text(json.dumps(rig, indent=2))
        pool.save(self.path / "stimuli.npz")
        self._open()

    @classmethod
    def reopen(cls, path: Path | str) -> SessionWriter:
        """Append to an existing session (``closedloop resume``).

        A record cut short by a killed run is removed first, so appended
        records start on a fresh line; ``summary.json`` is removed until the
        session ends again.
        """
        self = cls.__new__(cls)
        self.path = Path(path)
        for name in LOGS:
            log = self.path / f"{name}.jsonl"
            text = log.read_bytes()
            log.write_bytes(text[:text.rfind(b"\n") + 1])
        spikes = self.path / "spikes.bin"
        size = spikes.stat().st_size
        with open(spikes, "r+b") as f:
            f.truncate(size - size % SPIKE_DTYPE.itemsize)
        (self.path / "summary.json").unlink(missing_ok=True)
        self._open()
        return self

    def _open(self) -> None:
        self._files = {name: open(self.path / f"{name}.jsonl", "a") for name in LOGS}
        self._spikes = open(self.path / "spikes.bin", "ab")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="session-writer", daemon=True)
        self._thread.start()

    def log(self, name: str, record: dict) -> None:
        """Append ``record`` to ``<name>.jsonl``."""
        if name not in self._files:
            raise ValueError(f"unknown log {name!r}")
        self._queue.put((name, record))

    def spikes(self, times: np.ndarray, channels: np.ndarray, units: np.ndarray) -> None:
        """Append spikes to ``spikes.bin``."""
        block = np.empty(len(times), SPIKE_DTYPE)
        block["time"], block["channel"], block["unit"] = times, channels, units
        self._queue.put(("spikes", block))

    def flush(self) -> None:
        """Return once everything queued so far is on disk."""
        written = threading.Event()
        self._queue.put(("flush", written))
        written.wait()

    def close(self, summary: dict | None = None) -> None:
        """Write everything still queued, then ``summary.json`` if given."""
        self._queue.put(None)
        self._thread.join()
        for f in (*self._files.values(), self._spikes):
            f.close()
        if summary is not None:
            (self.path / "summary.json").write_text(json.dumps(summary, indent=2))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, record = item
            if name == "flush":
                record.set()
            elif name == "spikes":
                self._spikes.write(record.tobytes())
                self._spikes.flush()
            else:
                self._files[name].write(json.dumps(record) + "\n")
                self._files[name].flush()


@dataclass
class SessionRecord:
    """Everything a session directory holds, read back."""

    path: Path
    protocol: dict
    rig: dict
    pool: StimulusPool
    markers: list[dict]
    responses: list[dict]
    selections: list[dict]
    accuracy: list[dict]
    events: list[dict]
    spikes: np.ndarray  # SPIKE_DTYPE records
    summary: dict | None  # None when the run was killed before it ended


def _read_jsonl(path: Path) -> list[dict]:
    """Complete lines only: a line cut short by a killed run is ignored."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
    try:
        return [json.loads(line) for line in lines if line]
    except json.JSONDecodeError as exc:
        raise ClosedLoopError(f"session file {path}: corrupt at line {exc.lineno}") from None


def read_session(path: Path | str) -> SessionRecord:
    """Read a session directory, complete or cut short by a killed run."""
    path = Path(path)
    if not path.is_dir():
        raise ClosedLoopError(f"session {path}: not a directory")
    for required in ("protocol.json", "rig.json", "stimuli.npz", *(f"{n}.jsonl" for n in LOGS), "spikes.bin"):
        if not (path / required).exists():
            raise ClosedLoopError(f"session {path}: missing {required}")
    raw = (path / "spikes.bin").read_bytes()
    whole = len(raw) - len(raw) % SPIKE_DTYPE.itemsize
    summary_path = path / "summary.json"
    return SessionRecord(
        path=path,
        protocol=json.loads((path / "protocol.json").read_text()),
        rig=json.loads((path / "rig.json").read_text()),
        pool=StimulusPool.load(path / "stimuli.npz"),
        **{name: _read_jsonl(path / f"{name}.jsonl") for name in LOGS},
        spikes=np.frombuffer(raw[:whole], SPIKE_DTYPE),
        summary=json.loads(summary_path.read_text()) if summary_path.exists() else None,
    )
