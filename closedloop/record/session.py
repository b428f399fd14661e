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
``selections.jsonl`` one per model decision: chosen ids, scores, turnaround,
                   the model's expected counts of each chosen image per unit
                   (``predicted``; absent in sessions from before it was logged)
``accuracy.jsonl`` held-out prediction accuracy over time
``events.jsonl``   trials (fixation breaks, rewards, no fixation), deadline
                   misses, stream gaps, warnings and errors
``streams/``       every recorded LSL stream beside spikes (gaze, photodiode and
                   the rig's ``[[record]]`` streams), by key (``gaze``,
                   ``photodiode``, or the stream's file-safe name):
                   ``<key>.json`` its header (name, type, source_id, host,
                   rate, channel labels, units, types; written when the
                   stream is opened), ``<key>.bin`` its samples as
                   little-endian float64 rows: time (s, LSL clock of the
                   stimulus PC), then one value per channel
``summary.json``   written at the end: counts, deadline misses, accuracy
``session.json``   written at creation: a session id and the SHA-256 of
                   ``protocol.json``, ``rig.json`` and ``stimuli.npz`` (see
                   :mod:`closedloop.record.manifest`)
=================  ==========================================================

Every record's keys and types are declared once, in :mod:`closedloop.record.schema`: the
writer refuses a record that does not fit it, and :func:`read_session` refuses a file
holding one, naming the file, line and field. Whole files (``protocol.json``, ``rig.json``,
``stimuli.npz``, ``session.json``, ``summary.json``) are written atomically.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.record.atomic import replacing, write_atomic
from closedloop.record.checks import check_consistent
from closedloop.record.manifest import MANIFEST, write_manifest
from closedloop.record.schema import (BINARY, FRAME_DTYPE, JSON_FILES, LOGS, SPIKE_DTYPE, STREAMS, RecordedStream,
                                     SessionRecord, StreamHeader, binary_problem, problem, stream_dtype)
from closedloop.stimuli import StimulusPool, read_added

log = logging.getLogger(__name__)

ADDED = "synthesized"  # folder of the stimuli strategies add during the session
T = TypeVar("T")
REQUIRED = ("protocol.json", "rig.json", "stimuli.npz", *(f"{name}.jsonl" for name in LOGS), "spikes.bin")


class SessionWriter:
    """Appends records to a session directory from a background thread.

    Callers never wait on the disk: :meth:`log`, :meth:`spikes`, :meth:`frames` and
    :meth:`samples` only enqueue. Each record is written and flushed as soon as the thread gets it.

    Parameters
    ----------
    path : Path or str
        The session directory to create (its parents are created too).
    protocol, rig : dict
        The resolved protocol and rig, as JSON objects; ``rig["recorded_units"]`` lists the
        units in the order of every response's counts.
    pool : StimulusPool
        The candidate pool.

    Raises
    ------
    ClosedLoopError
        ``path`` exists (a folder or a file) or cannot be created.
    """

    def __init__(self, path: Path | str, protocol: dict, rig: dict, pool: StimulusPool):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:
            what = "a folder" if self.path.is_dir() else "a file"
            raise ClosedLoopError(f"session {self.path}: already exists ({what}); a new session needs a new "
                                  "path") from None
        except OSError as exc:
            blocking = next((p for p in self.path.parents if p.is_file()), None)
            why = f"{blocking} is a file" if blocking is not None else exc.strerror or exc
            raise ClosedLoopError(f"session {self.path}: cannot create ({why})") from None
        for name, content in (("protocol.json", protocol), ("rig.json", rig)):
            _check(name, JSON_FILES[name], content)
            write_atomic(self.path / name, json.dumps(content, indent=2))
        with replacing(self.path / "stimuli.npz") as temporary:
            pool.save(temporary)
        write_manifest(self.path)
        self._open()

    @classmethod
    def reopen(cls, path: Path | str) -> SessionWriter:
        """Append to an existing session (``closedloop resume``).

        A record cut short by a killed run is removed first, so appended
        records start on a fresh line (a stream's row: its size from the stream's header);
        ``summary.json`` is removed until the session ends again.

        Raises
        ------
        ClosedLoopError
            A ``streams/<key>.bin`` without a readable header (one line naming the file).
        """
        self = cls.__new__(cls)
        self.path = Path(path)
        for name in LOGS:
            log_file = self.path / f"{name}.jsonl"
            text = log_file.read_bytes()
            log_file.write_bytes(text[:text.rfind(b"\n") + 1])
        for name, dtype in BINARY.items():
            binary = self.path / f"{name}.bin"
            binary.touch()  # sessions from before frames were recorded
            _truncate_partial(binary, dtype)
        for binary in _stream_files(self.path, ".bin"):
            _truncate_partial(binary, stream_dtype(_read_header(binary)["channel_count"]))
        (self.path / "summary.json").unlink(missing_ok=True)
        self._open()
        return self

    def _open(self) -> None:
        self._files = {name: open(self.path / f"{name}.jsonl", "a") for name in LOGS}
        self._binary = {name: open(self.path / f"{name}.bin", "ab") for name in BINARY}
        self._streams: dict[str, np.dtype] = {}  # key: its rows; their files are in _binary as streams/<key>
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="session-writer", daemon=True)
        self._thread.start()

    def log(self, name: str, record: dict) -> None:
        """Append ``record`` to ``<name>.jsonl``.

        Raises
        ------
        ValueError
            An unknown log, or a record that does not fit its schema
            (:mod:`closedloop.record.schema`): a bug in the caller, never written.
        """
        if name not in LOGS:
            raise ValueError(f"unknown log {name!r}")
        line = json.dumps(record)
        _check(f"{name}.jsonl", LOGS[name], json.loads(line))  # as a reader will see it
        self._queue.put((name, line))

    def spikes(self, times: np.ndarray, channels: np.ndarray, units: np.ndarray) -> None:
        """Append spikes to ``spikes.bin``."""
        block = np.empty(len(times), SPIKE_DTYPE)
        block["time"], block["channel"], block["unit"] = times, channels, units
        self._queue.put(("spikes", block))

    def frames(self, flips: np.ndarray) -> None:
        """Append flip times (s, LSL clock) to ``frames.bin``."""
        self._queue.put(("frames", np.asarray(flips, FRAME_DTYPE)))

    def stream_header(self, key: str, header: dict) -> None:
        """Open the recorded stream ``key``: write ``streams/<key>.json`` (atomically, now) and
        open ``streams/<key>.bin`` for :meth:`samples`. A resumed session keeps the header it has
        (the stream must have as many channels as before).

        Raises
        ------
        ValueError
            A header that does not fit :class:`~closedloop.record.schema.StreamHeader` or whose
            ``key`` is not ``key``: a bug in the caller, never written.
        ClosedLoopError
            ``key`` is already open (two streams with the same file-safe name), or the resumed
            session recorded it with another channel count.
        """
        _check(f"{STREAMS}/{key}.json", StreamHeader, header)
        if header["key"] != key:
            raise ValueError(f"{STREAMS}/{key}.json record: field 'key' is {header['key']!r}")
        file = self.path / STREAMS / f"{key}.json"
        if key in self._streams:
            raise ClosedLoopError(f"session file {file}: two streams are recorded as {key!r} (stream "
                                  f"{header['name']!r}); their file-safe names must differ")
        if file.exists():
            recorded = _read_header(file.with_suffix(".bin"))["channel_count"]
            if recorded != header["channel_count"]:
                raise ClosedLoopError(f"session file {file}: stream {header['name']!r} now has "
                                      f"{header['channel_count']} channels; it was recorded with {recorded}")
        else:
            file.parent.mkdir(exist_ok=True)
            write_atomic(file, json.dumps(header, indent=2))
        self._streams[key] = stream_dtype(header["channel_count"])
        self._binary[f"{STREAMS}/{key}"] = open(file.with_suffix(".bin"), "ab")  # before any of its samples

    def samples(self, key: str, times: np.ndarray, values: np.ndarray) -> None:
        """Append samples to ``streams/<key>.bin`` (opened by :meth:`stream_header`).

        Parameters
        ----------
        times : ndarray, shape (n,)
            s, LSL clock of the stimulus PC.
        values : ndarray, shape (n, channel_count)
            The samples as pulled.
        """
        block = np.empty(len(times), self._streams[key])
        block["time"], block["values"] = times, values
        self._queue.put((f"{STREAMS}/{key}", block))

    def flush(self) -> None:
        """Return once everything queued so far is on disk."""
        written = threading.Event()
        self._queue.put(("flush", written))
        written.wait()

    def close(self, summary: dict | None = None) -> None:
        """Write everything still queued, then ``summary.json`` (atomically) if given."""
        self._queue.put(None)
        self._thread.join()
        for f in (*self._files.values(), *self._binary.values()):
            f.close()
        if summary is not None:
            _check("summary.json", JSON_FILES["summary.json"], summary)
            write_atomic(self.path / "summary.json", json.dumps(summary, indent=2))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, record = item
            if name == "flush":
                record.set()
            elif name in self._binary:
                self._binary[name].write(record.tobytes())
                self._binary[name].flush()
            else:
                self._files[name].write(record + "\n")
                self._files[name].flush()


def _check(name: str, model: type, record: object) -> None:
    """Refuse (ValueError) a record the writer was handed that does not fit its schema."""
    why = problem(model, record)
    if why is not None:
        raise ValueError(f"{name} record: {why}")


def _truncate_partial(binary: Path, dtype: np.dtype) -> None:
    """Cut a final partial record (a killed run's) off ``binary``."""
    size = binary.stat().st_size
    with open(binary, "r+b") as f:
        f.truncate(size - size % dtype.itemsize)


def _stream_files(path: Path, suffix: str) -> list[Path]:
    """``streams/*<suffix>`` of session ``path`` (none in sessions from before streams were
    recorded); hidden files (a temporary file a kill left mid-write) are not the stream's."""
    folder = path / STREAMS
    return sorted(f for f in folder.glob(f"*{suffix}") if not f.name.startswith(".")) if folder.is_dir() else []


def _read_header(binary: Path) -> dict:
    """The header of ``streams/<key>.bin``: ``<key>.json``, checked, its ``key`` the file's."""
    file = binary.with_suffix(".json")
    if not file.exists():
        raise ClosedLoopError(f"session file {binary}: no header {file.name} beside it (its rows cannot be read)")
    header = parse_record(_bytes(file), StreamHeader, f"session file {file}")
    if header["key"] != file.stem:
        raise ClosedLoopError(f"session file {file}: field 'key': {header['key']!r} is not the file's "
                              f"{file.stem!r}")
    return header


def _read_streams(path: Path) -> dict[str, RecordedStream]:
    """Every recorded stream of session ``path``, by key; a stream opened before it sent a sample has none."""
    keys = {f.stem for f in (*_stream_files(path, ".json"), *_stream_files(path, ".bin"))}
    streams = {}
    for key in sorted(keys):
        binary = path / STREAMS / f"{key}.bin"
        header = _read_header(binary)
        rows = _read_binary(binary, stream_dtype(header["channel_count"]))
        streams[key] = RecordedStream(header, rows["time"].copy(), rows["values"].copy())
    return streams


def read_session(path: Path | str) -> SessionRecord:
    """Read a session directory, complete or cut short by a killed run, and check it.

    A record a kill cut short (the last line of a log without its newline, a final partial
    binary record or stream row) is dropped with a logged warning; any other damage is refused.

    Raises
    ------
    ClosedLoopError
        One line naming the file, line and field: a missing file, bytes that are not UTF-8,
        a line that is not a JSON object, a record that does not fit its schema
        (:mod:`closedloop.record.schema`), an unreadable pool, a recorded stream without a valid
        header (``streams/<key>.json``), or records that contradict
        each other (:func:`closedloop.record.checks.check_consistent`).
    """
    path = Path(path)
    if not path.is_dir():
        raise ClosedLoopError(f"session {path}: not a directory")
    for required in REQUIRED:
        if not (path / required).exists():
            raise ClosedLoopError(f"session {path}: missing {required}")
    files = {name: read_record_file(path / name, model) for name, model in JSON_FILES.items()}
    record = SessionRecord(
        path=path,
        protocol=files["protocol.json"],
        rig=files["rig.json"],
        pool=_read_pool(path),
        **{name: _read_jsonl(path / f"{name}.jsonl", model) for name, model in LOGS.items()},
        spikes=_read_binary(path / "spikes.bin", SPIKE_DTYPE),
        frames=_read_binary(path / "frames.bin", FRAME_DTYPE),
        summary=files["summary.json"],
        manifest=files[MANIFEST],
        streams=_read_streams(path),
    )
    check_consistent(record)
    return record


def _bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ClosedLoopError(f"session file {file}: unreadable ({exc.strerror or exc})") from None


def parse_record(text: bytes, model: type, where: str) -> dict:
    """One JSON object fitting ``model``; ``where`` (file and line) starts the error."""
    try:
        record = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ClosedLoopError(f"{where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                              f"offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ClosedLoopError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    why = problem(model, record)
    if why is not None:
        raise ClosedLoopError(f"{where}: {why}")
    return record


def read_record_file(file: Path, model: type) -> dict | None:
    """A whole-file JSON object; None when the (optional) file is absent."""
    return parse_record(_bytes(file), model, f"session file {file}") if file.exists() else None


def _read_jsonl(file: Path, model: type) -> list[dict]:
    """Every complete line; the part after the last newline (a line a kill cut) is dropped."""
    raw = _bytes(file)
    lines = raw.split(b"\n")
    if lines[-1]:
        log.warning("session file %s line %d: cut short by a killed run (%d bytes without a newline); dropped",
                    file, len(lines), len(lines[-1]))
    return [parse_record(line, model, f"session file {file} line {n}") for n, line in enumerate(lines[:-1], 1)]


def _read_binary(file: Path, dtype: np.dtype) -> np.ndarray:
    """Whole records (a final partial one, cut by a kill, is dropped); empty when absent."""
    raw = _bytes(file) if file.exists() else b""
    extra = len(raw) % dtype.itemsize
    if extra:
        log.warning("session file %s: last record cut short by a killed run (%d of %d bytes); dropped",
                    file, extra, dtype.itemsize)
    records = np.frombuffer(raw[:len(raw) - extra], dtype)
    why = binary_problem(records)
    if why is not None:
        raise ClosedLoopError(f"session file {file} {why}")
    return records


def _read_pool(path: Path) -> StimulusPool:
    """``stimuli.npz`` and the stimuli added in ``synthesized/``."""
    pool = _unpack(path / "stimuli.npz", lambda: StimulusPool.load(path / "stimuli.npz"))
    _unpack(path / ADDED, lambda: read_added(path / ADDED, pool))
    return pool


def _unpack(file: Path, read: Callable[[], T]) -> T:
    """``read()``, its failure one line naming ``file``."""
    try:
        return read()
    except (ClosedLoopError, ValueError, zlib.error) as exc:  # ValueError: added images of another shape
        raise ClosedLoopError(f"session file {file}: unreadable ({' '.join(str(exc).split())})") from None
