"""The session directory.

Layout (every ``.jsonl`` file holds one JSON object per line, appended and
flushed as it happens, so a killed run keeps everything completed):

=================  ==========================================================
``protocol.json``  the resolved protocol
``rig.json``       the resolved rig
``stimuli.npz``    the candidate pool (see ``StimulusPool.save``)
``synthesized/``   stimuli a strategy added during the session, in pool order
                   (see ``closedloop.stimuli.write_added``)
``markers.jsonl``  one per presentation: index, stimulus id, pool index, role,
                   trial, onset and offset (s, LSL clock), frame intervals,
                   dropped frames, ``aborted`` when fixation broke during it
``frames.bin``     every flip of the whole session: float64 little-endian,
                   s, LSL clock (frame intervals are its differences)
``spikes.bin``     every spike: little-endian records of time (float64, s,
                   LSL clock of the stimulus PC), channel (int32), unit (int32)
``responses.jsonl`` one per presentation: index, stimulus, role, onset, counts
``selections.jsonl`` one per model decision: chosen ids, scores, turnaround
``accuracy.jsonl`` held-out prediction accuracy over time
``events.jsonl``   trials (fixation breaks, rewards, no fixation), deadline
                   misses, stream gaps, warnings and errors
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
from closedloop.stimuli import StimulusPool, read_added

SPIKE_DTYPE = np.dtype([("time", "<f8"), ("channel", "<i4"), ("unit", "<i4")])
FRAME_DTYPE = np.dtype("<f8")
LOGS = ("markers", "responses", "selections", "accuracy", "events")
ADDED = "synthesized"  # folder of the stimuli strategies add during the session
BINARY = {"spikes": SPIKE_DTYPE, "frames": FRAME_DTYPE}  # name.bin: fixed-size records


class SessionWriter:
    """Appends records to a session directory from a background thread.

    Callers never wait on the disk: :meth:`log`, :meth:`spikes` and
    :meth:`frames` only enqueue. Each record is written and flushed as soon as the thread gets it.
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
        for name, dtype in BINARY.items():
            binary = self.path / f"{name}.bin"
            binary.touch()  # sessions from before frames were recorded
            size = binary.stat().st_size
            with open(binary, "r+b") as f:
                f.truncate(size - size % dtype.itemsize)
        (self.path / "summary.json").unlink(missing_ok=True)
        self._open()
        return self

    def _open(self) -> None:
        self._files = {name: open(self.path / f"{name}.jsonl", "a") for name in LOGS}
        self._binary = {name: open(self.path / f"{name}.bin", "ab") for name in BINARY}
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

    def frames(self, flips: np.ndarray) -> None:
        """Append flip times (s, LSL clock) to ``frames.bin``."""
        self._queue.put(("frames", np.asarray(flips, FRAME_DTYPE)))

    def flush(self) -> None:
        """Return once everything queued so far is on disk."""
        written = threading.Event()
        self._queue.put(("flush", written))
        written.wait()

    def close(self, summary: dict | None = None) -> None:
        """Write everything still queued, then ``summary.json`` if given."""
        self._queue.put(None)
        self._thread.join()
        for f in (*self._files.values(), *self._binary.values()):
            f.close()
        if summary is not None:
            (self.path / "summary.json").write_text(json.dumps(summary, indent=2))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, record = item
            if name == "flush":
                record.set()
            elif name in self._binary:
                self._binary[name].write(record.tobytes())
                self._binary[name].flush()
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
    frames: np.ndarray  # every flip, s (float64)
    summary: dict | None  # None when the run was killed before it ended


def _read_jsonl(path: Path) -> list[dict]:
    """Complete lines only: a line cut short by a killed run is ignored."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
    try:
        return [json.loads(line) for line in lines if line]
    except json.JSONDecodeError as exc:
        raise ClosedLoopError(f"session file {path}: corrupt at line {exc.lineno}") from None


def _read_binary(path: Path, dtype: np.dtype) -> np.ndarray:
    """Whole records only (a record cut short by a killed run is ignored); empty when absent."""
    raw = path.read_bytes() if path.exists() else b""
    return np.frombuffer(raw[:len(raw) - len(raw) % dtype.itemsize], dtype)


def read_session(path: Path | str) -> SessionRecord:
    """Read a session directory, complete or cut short by a killed run."""
    path = Path(path)
    if not path.is_dir():
        raise ClosedLoopError(f"session {path}: not a directory")
    for required in ("protocol.json", "rig.json", "stimuli.npz", *(f"{n}.jsonl" for n in LOGS), "spikes.bin"):
        if not (path / required).exists():
            raise ClosedLoopError(f"session {path}: missing {required}")
    summary_path = path / "summary.json"
    pool = StimulusPool.load(path / "stimuli.npz")
    read_added(path / ADDED, pool)
    return SessionRecord(
        path=path,
        protocol=json.loads((path / "protocol.json").read_text()),
        rig=json.loads((path / "rig.json").read_text()),
        pool=pool,
        **{name: _read_jsonl(path / f"{name}.jsonl") for name in LOGS},
        spikes=_read_binary(path / "spikes.bin", SPIKE_DTYPE),
        frames=_read_binary(path / "frames.bin", FRAME_DTYPE),
        summary=json.loads(summary_path.read_text()) if summary_path.exists() else None,
    )
