"""Readers: recordings made with other tools, read into a :class:`Recording`.

Each reader declares what it reads (``extensions``, ``description``,
``directories``) and the options it takes (``options``: name -> meaning);
:func:`read_recording` picks one by extension and refuses unknown options.
Every failure is a one-line :class:`ClosedLoopError` naming the file, stream
or event channel.

Stimulus events come as *markers*: either closedloop's own JSON strings
(``{"event": "onset", "index": 3, "stimulus": "..."}`` and the matching
``"offset"``, see ``closedloop.present.markers``), or plain labels, each a
stimulus id marking an onset, ended by the next event (labels ``offset``,
``off``, ``blank`` or empty end a presentation without starting one).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar
from xml.etree.ElementTree import Element, ParseError, fromstring

import numpy as np
from pydantic import ValidationError

from closedloop.config import UnitSpec
from closedloop.errors import ClosedLoopError, one_line
from closedloop.record.session import SPIKE_DTYPE
from closedloop.replay.recording import Recording

OFFSET_LABELS = frozenset({"offset", "off", "blank", ""})
T = TypeVar("T")


def _spikes(times: np.ndarray, channels: np.ndarray, units: np.ndarray) -> np.ndarray:
    out = np.empty(len(times), SPIKE_DTYPE)
    out["time"], out["channel"], out["unit"] = times, channels, units
    return out


# ------------------------------------------------------------ markers and logs --
def _marker(label: str, where: str, event: int) -> dict | None:
    """A closedloop JSON marker, or None when ``label`` is not one; a one-line error naming
    ``where`` and the event number when it is one with an index or stimulus of the wrong type."""
    if not label.startswith("{"):
        return None
    try:
        marker = json.loads(label)
    except json.JSONDecodeError:
        return None
    if not isinstance(marker, dict) or marker.get("event") not in ("onset", "offset") or "index" not in marker:
        return None
    if marker["event"] == "onset" and "stimulus" not in marker:
        return None
    index, stimulus = marker["index"], marker.get("stimulus", "")
    if isinstance(index, float) and index.is_integer():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(stimulus, (str, int)):
        raise ClosedLoopError(f"{where}: event {event}: a closedloop {marker['event']} marker needs a whole-number "
                              f"index and a stimulus id, got index {_short(marker['index'])} and stimulus "
                              f"{_short(stimulus)}")
    return {**marker, "index": index}


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) or np.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def presentations_from_markers(times: Sequence[float], labels: Sequence[str],
                               where: str = "markers") -> tuple[list[dict], list[str]]:
    """Presentations from stimulus events.

    Parameters
    ----------
    times : sequence of float
        Event times, seconds.
    labels : sequence of str
        One per event: closedloop JSON markers (onset and offset events paired
        by presentation index; other labels are ignored), or else plain
        stimulus ids, each presentation ending at the next event.
    where : str
        The file and stream or event channel, named in errors.

    Returns
    -------
    presentations : list of dict
        ``index``, ``stimulus``, ``onset``, ``offset`` (s; None when no event
        ends it), ordered by onset.
    notes : list of str
        What could not be paired or was ignored.

    Raises
    ------
    ClosedLoopError
        A closedloop marker whose index is not a whole number or whose
        stimulus is not an id (naming ``where`` and the event, from 0).
    """
    order = np.argsort(np.asarray(times, float), kind="stable")
    times = [float(times[i]) for i in order]
    labels = [str(labels[i]) for i in order]
    markers = [_marker(label, where, int(k)) for k, label in zip(order, labels)]
    notes: list[str] = []
    if any(m is not None for m in markers):
        onsets: dict[int, tuple[float, str]] = {}
        offsets: dict[int, float] = {}
        for t, m in zip(times, markers):
            if m is not None and m["event"] == "onset":
                onsets[m["index"]] = (t, str(m["stimulus"]))
            elif m is not None:
                offsets[m["index"]] = t
        presentations = [{"index": i, "stimulus": s, "onset": t, "offset": offsets.get(i)}
                         for i, (t, s) in onsets.items()]
        if ignored := sum(m is None for m in markers):
            notes.append(f"{ignored} events that are not closedloop markers ignored")
    else:
        presentations = []
        for k, (t, label) in enumerate(zip(times, labels)):
            if label.strip().lower() not in OFFSET_LABELS:
                presentations.append({"index": len(presentations), "stimulus": label, "onset": t,
                                      "offset": times[k + 1] if k + 1 < len(times) else None})
    if unended := sum(p["offset"] is None for p in presentations):
        notes.append(f"{unended} presentations have no offset event")
    return sorted(presentations, key=lambda p: p["onset"]), notes


def _json_or_none(line: str) -> object | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def read_stimulus_log(path: Path | str) -> list[dict]:
    """Presentations from a stimulus log on the recording's clock.

    Parameters
    ----------
    path : Path or str
        ``.jsonl``: one JSON object per line, like the live ``markers.jsonl``
        (a last line cut short, without its newline, is ignored). ``.csv``:
        a header row with columns ``index`` (optional), ``stimulus``,
        ``onset`` (s) and ``offset`` (s, optional); other columns are kept
        as strings.

    Returns
    -------
    list of dict
        ``index``, ``stimulus``, ``onset``, ``offset`` (None when absent)
        and any other keys of the log.
    """
    path = Path(path)
    if not path.is_file():
        raise ClosedLoopError(f"stimulus log {path}: not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            text = path.read_text()
            lines = [line for line in text.splitlines() if line.strip()]
            if lines and not text.endswith("\n") and _json_or_none(lines[-1]) is None:
                lines.pop()  # a last line cut short by a killed run
            rows = [json.loads(line) for line in lines]
        elif suffix == ".csv":
            with path.open(newline="") as f:
                rows = [{k: v for k, v in row.items() if k is not None and v not in (None, "")}
                        for row in csv.DictReader(f)]
        else:
            raise ClosedLoopError(f"stimulus log {path}: unknown format {suffix!r}; "
                                  "use .jsonl (like markers.jsonl) or .csv (index, stimulus, onset, offset)")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise ClosedLoopError(f"stimulus log {path}: not valid {suffix[1:]} ({one_line(exc)})") from None
    if not rows:
        raise ClosedLoopError(f"stimulus log {path}: no presentations in it (an empty file)")
    presentations = []
    for n, row in enumerate(rows, 1):
        try:
            offset = row.get("offset")
            presentations.append({**row, "index": int(row.get("index", n - 1)), "stimulus": str(row["stimulus"]),
                                  "onset": float(row["onset"]),
                                  "offset": None if offset is None else float(offset)})
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ClosedLoopError(f"stimulus log {path}: entry {n} needs stimulus and onset (s), "
                                  f"numeric index and offset ({type(exc).__name__}: {one_line(exc)})") from None
    return presentations


# ------------------------------------------------------------------ registry --
class Reader:
    """A recording format: what it reads and how.

    Subclasses set the class attributes and implement :meth:`read`.

    Attributes
    ----------
    extensions : tuple of str
        File extensions read, lower case, without the dot.
    description : str
        The format, in words.
    directories : bool
        Whether a folder (a multi-file recording) can be read.
    options : dict of str to str
        The keyword options :meth:`read` takes, and what each means.
    """

    extensions: tuple[str, ...] = ()
    description: str = ""
    directories: bool = False
    options: dict[str, str] = {}

    def read(self, path: Path, **options) -> Recording:
        """Read ``path`` into a :class:`Recording` (times in seconds, one clock)."""
        raise NotImplementedError


READERS: list[type[Reader]] = []


def register(reader: type[Reader]) -> type[Reader]:
    """Add ``reader`` to the registry; earlier readers win shared extensions."""
    READERS.append(reader)
    return reader


def supported_formats() -> str:
    """Every registered format and its extensions, on one line."""
    return "; ".join(f"{r.description}: {' '.join('.' + e for e in r.extensions)}"
                     + (" or a folder" if r.directories else "") for r in READERS)


def reader_for(path: Path | str) -> type[Reader]:
    """The registered reader for ``path``, chosen by extension (or folder)."""
    path = Path(path)
    for reader in READERS:
        if path.is_dir() and reader.directories or path.suffix.lower().lstrip(".") in reader.extensions:
            return reader
    raise ClosedLoopError(f"{path}: unknown recording format {path.suffix or '(no extension)'!r}; "
                          f"supported: {supported_formats()}")


def read_recording(path: Path | str, **options) -> Recording:
    """Read any supported recording into a :class:`Recording`.

    Parameters
    ----------
    path : Path or str
        The recording; its extension chooses the reader (see :data:`READERS`).
    **options
        The chosen reader's options (its ``options`` attribute lists them).

    Raises
    ------
    ClosedLoopError
        One line naming the file: not found, unknown format, unknown option,
        truncated or not of its format, a missing stream or event channel.
    """
    path = Path(path)
    if not path.exists():
        raise ClosedLoopError(f"{path}: not found")
    reader = reader_for(path)
    unknown = sorted(set(options) - set(reader.options))
    if unknown:
        raise ClosedLoopError(f"{path}: {reader.__name__} takes no option {unknown[0]!r}; "
                              f"its options: {', '.join(reader.options) or 'none'}")
    return reader().read(path, **options)


# ----------------------------------------------------------------------- XDF --
XDF_VALUE_BYTES = {"int8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4, "double64": 8, "string": 2}
"""Fewest bytes one channel's value takes in a Samples chunk (a string: its length's width and length)."""

READ_PIECE = 1 << 24  # bytes: chunks are read in pieces, so a corrupt length allocates no more than the file holds


def _read_up_to(f, length: int) -> bytes:
    """``length`` bytes of ``f``, or as many as are left (fewer: the file ends first)."""
    pieces = []
    while length > 0 and (piece := f.read(min(length, READ_PIECE))):
        pieces.append(piece)
        length -= len(piece)
    return b"".join(pieces)


def _varlen(data: bytes, at: int) -> tuple[int, int] | None:
    """An XDF variable-length integer at ``data[at]``: (value, bytes taken), None when malformed."""
    width = data[at] if at < len(data) else 0
    if width not in (1, 4, 8) or at + 1 + width > len(data):
        return None
    return int.from_bytes(data[at + 1:at + 1 + width], "little"), 1 + width


def _stream_header(body: bytes) -> dict:
    """The fields of a StreamHeader chunk's XML that the reader uses (``ValueError`` when malformed)."""
    info = fromstring(body.decode("utf-8", "replace"))
    header = {key: (info.findtext(key) or "").strip()
              for key in ("name", "type", "channel_count", "channel_format", "nominal_srate")}
    if header["channel_format"] not in XDF_VALUE_BYTES:
        raise ValueError(f"stream {header['name']!r}: unknown channel_format {header['channel_format']!r}")
    if not header["channel_count"].isdigit() or int(header["channel_count"]) < 1:
        raise ValueError(f"stream {header['name']!r}: channel_count {header['channel_count']!r} "
                         "is not a positive whole number")
    float(header["nominal_srate"] or 0)
    return {**header, "element": info}


def _check_samples(path: Path, header: dict, content: bytes) -> None:
    """Refuse a Samples chunk that claims more samples than its bytes can hold (pyxdf would
    allocate room for all of them first)."""
    count = _varlen(content, 0)
    name = header["name"]
    if count is None:
        raise ClosedLoopError(f"{path}: stream {name!r}: corrupt XDF Samples chunk (bad sample count field)")
    least = count[0] * (1 + int(header["channel_count"]) * XDF_VALUE_BYTES[header["channel_format"]])
    if least > len(content) - count[1]:
        raise ClosedLoopError(f"{path}: stream {name!r}: corrupt or truncated XDF Samples chunk ({count[0]} "
                              f"samples of {header['channel_count']} channels need at least {least} bytes, "
                              f"the chunk holds {len(content) - count[1]})")


def _xdf_headers(path: Path) -> tuple[dict[int, dict], set[int]]:
    """Stream headers by stream id and the ids that have a footer.

    Walks every chunk's framing to the end of the file, reading no more than
    the file holds, and checks each Samples chunk's count against its size,
    so a truncated or corrupt file is refused here rather than half-read by
    pyxdf (or read after allocating what a corrupt length claims).
    """
    opener = gzip.open if path.suffix.lower() == ".xdfz" else open
    headers: dict[int, dict] = {}
    footers: set[int] = set()
    try:
        with opener(path, "rb") as f:
            if f.read(4) != b"XDF:":
                raise ClosedLoopError(f"{path}: not an XDF file (no 'XDF:' magic at its start)")
            while head := f.read(1):
                field = _varlen(head + f.read(head[0] if head[0] in (1, 4, 8) else 0), 0)
                if field is None:
                    raise ClosedLoopError(f"{path}: truncated or corrupt XDF (bad chunk length field)")
                length = field[0]
                body = _read_up_to(f, length)
                if len(body) != length or length < 2:
                    raise ClosedLoopError(f"{path}: truncated XDF file (a chunk of {length} bytes "
                                          f"ends after the file, {len(body)} bytes left)")
                tag = struct.unpack_from("<H", body)[0]
                if tag not in (2, 3, 4, 6):
                    continue
                if length < 6:
                    raise ClosedLoopError(f"{path}: corrupt XDF (a chunk of tag {tag} without a stream id)")
                stream = struct.unpack_from("<I", body, 2)[0]
                if tag == 2:
                    headers[stream] = _stream_header(body[6:])
                elif stream not in headers:
                    raise ClosedLoopError(f"{path}: corrupt XDF (a chunk of tag {tag} for stream {stream}, "
                                          "which has no header before it)")
                elif tag == 3:
                    _check_samples(path, headers[stream], body[6:])
                elif tag == 4 and length != 22:
                    raise ClosedLoopError(f"{path}: stream {headers[stream]['name']!r}: corrupt XDF ClockOffset "
                                          f"chunk ({length} bytes, not 22)")
                elif tag == 6:
                    footers.add(stream)
    except (ParseError, ValueError) as exc:
        raise ClosedLoopError(f"{path}: corrupt XDF stream header ({one_line(exc)})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ClosedLoopError(f"{path}: unreadable XDF file ({one_line(exc)})") from None
    return headers, footers


class _Complaints(logging.Handler):
    """Keeps the errors pyxdf logs (it skips corrupt chunks rather than raising)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _pick_stream(path: Path, headers: dict[int, dict], what: str, name: str | None, type_: str | None) -> int:
    found = [sid for sid, h in headers.items()
             if (name is None or h["name"] == name) and (type_ is None or h["type"] == type_)]
    if len(found) == 1:
        return found[0]
    wanted = " ".join(x for x in (f"named {name!r}" if name else "", f"of type {type_!r}" if type_ else "") if x)
    present = ", ".join(f"{h['name']!r} ({h['type']})" for h in headers.values()) or "none"
    if not found:
        raise ClosedLoopError(f"{path}: no {what} stream {wanted}; streams present: {present}")
    raise ClosedLoopError(f"{path}: {len(found)} {what} streams {wanted}; choose one with {what}=NAME "
                          f"(streams present: {present})")


def _channel_labels(info: Element, count: int) -> list[str]:
    labels = [(ch.findtext("label") or "").strip() for ch in info.findall("./desc/channels/channel")]
    return labels if len(labels) == count and all(labels) else [f"ch{c}" for c in range(1, count + 1)]


def _unit(path: Path, label: object, channel: int, unit: int) -> UnitSpec:
    """A recording's unit: its own label when that is a usable name (non-blank, printable),
    else ``ch<channel>u<unit>``; channel and unit numbers beyond int32 are refused."""
    name = str(label).strip() if label is not None else ""
    if not name or not name.isprintable() or len(name) > 200:
        name = f"ch{channel}u{unit}"
    try:
        return UnitSpec(name=name, channel=int(channel), unit=int(unit))
    except ValidationError:
        raise ClosedLoopError(f"{path}: unit ({channel}, {unit}): channel and unit numbers must fit "
                              "in 32 bits") from None


def _as_units(path: Path, units: Iterable) -> list[UnitSpec]:
    try:
        return [u if isinstance(u, UnitSpec) else UnitSpec(**u) if isinstance(u, dict)
                else UnitSpec(name=u[0], channel=u[1], unit=u[2]) for u in units]
    except (ValidationError, TypeError, IndexError, KeyError) as exc:
        raise ClosedLoopError(f"{path}: option units: each needs name, channel and unit "
                              f"({type(exc).__name__}: {one_line(exc)})") from None


@register
class XdfReader(Reader):
    """LabRecorder XDF files: closedloop's marker stream and a spike stream.

    Both streams are put on the recording computer's clock with pyxdf's clock
    synchronisation (the files' ClockOffset chunks), so onsets and spikes
    share one clock.
    """

    extensions = ("xdf", "xdfz")
    description = "LabRecorder XDF (pyxdf)"
    options = {
        "markers": "name of the marker stream (default: the one stream of type markers_type)",
        "markers_type": "type of the marker stream (default 'Markers' when no name is given)",
        "spikes": "name of the spike stream (default: the one stream of type spikes_type)",
        "spikes_type": "type of the spike stream (default 'Spikes' when no name is given)",
        "units": "UnitSpecs (or (name, channel, unit)) to count, in order (default: every unit found)",
        "sync_channel": "spike-stream channel of closedloop sync events, dropped (default: none)",
        "dejitter": "pyxdf jitter removal of a regular (binned-count) stream's stamps (default True)",
    }

    def read(self, path: Path, markers: str | None = None, markers_type: str | None = None,
             spikes: str | None = None, spikes_type: str | None = None, units: Iterable | None = None,
             sync_channel: int | None = None, dejitter: bool = True) -> Recording:
        """Read an XDF file.

        The spike stream is either an event stream (irregular rate, two
        channels: channel, unit; one sample per spike, stamped at the spike)
        or a binned-count stream (regular rate, one channel per electrode:
        ``k`` in stream channel ``c`` (from 1) of a sample stamped ``t`` gives
        ``k`` spikes on (c, 1) at ``t - 0.5 / rate``, as the live inlet does).
        """
        import pyxdf

        path = Path(path)
        headers, footers = _xdf_headers(path)
        marker_id = _pick_stream(path, headers, "markers", markers,
                                 markers_type or (None if markers else "Markers"))
        spike_id = _pick_stream(path, headers, "spikes", spikes, spikes_type or (None if spikes else "Spikes"))
        complaints = _Complaints()
        log = logging.getLogger("pyxdf")
        log.addHandler(complaints)
        log.propagate = False  # pyxdf logs the corruption it skips: it is said once, in the error below
        try:
            loaded, _ = pyxdf.load_xdf(str(path), select_streams=[marker_id, spike_id], synchronize_clocks=True,
                                       dejitter_timestamps=dejitter)
        except Exception as exc:  # pyxdf raises whatever its parsing hits
            raise ClosedLoopError(f"{path}: pyxdf cannot read it ({type(exc).__name__}: {one_line(exc)})") from None
        finally:
            log.removeHandler(complaints)
            log.propagate = True
        if complaints.messages:
            raise ClosedLoopError(f"{path}: corrupt XDF file: pyxdf skipped part of it "
                                  f"({one_line(complaints.messages[0])})")
        by_id = {int(s["info"]["stream_id"]): s for s in loaded}
        notes = [f"stream {headers[sid]['name']!r} has no footer: the recording may have been cut short"
                 for sid in (marker_id, spike_id) if sid not in footers]
        notes += [f"stream {headers[sid]['name']!r} has no ClockOffset chunks: its stamps are used as recorded"
                  for sid in (marker_id, spike_id) if not len(by_id[sid]["clock_times"])]

        stream = by_id[marker_id]
        labels = [row[0] if isinstance(row, list) else str(row[0].item()) for row in stream["time_series"]]
        presentations, marker_notes = presentations_from_markers(
            stream["time_stamps"], labels, f"{path}: marker stream {headers[marker_id]['name']!r}")
        notes += marker_notes

        record, found = self._spikes(path, by_id[spike_id], headers[spike_id])
        if sync_channel is not None:
            dropped = record["channel"] == sync_channel
            record = record[~dropped]
            found = [u for u in found if u.channel != sync_channel]
            notes.append(f"{int(dropped.sum())} sync events on channel {sync_channel} dropped")
        return Recording(units=found if units is None else _as_units(path, units), spikes=record,
                         presentations=presentations, source=path, notes=notes)

    @staticmethod
    def _spikes(path: Path, stream: dict, header: dict) -> tuple[np.ndarray, list[UnitSpec]]:
        """Spike records and the units they hold."""
        name, values, stamps = header["name"], stream["time_series"], stream["time_stamps"]
        if header["channel_format"] == "string":
            raise ClosedLoopError(f"{path}: spike stream {name!r} holds strings, not numbers")
        values = np.asarray(values)
        rate = float(header["nominal_srate"] or 0)
        if rate <= 0:  # one (channel, unit) sample per spike
            if values.shape[1] != 2:
                raise ClosedLoopError(f"{path}: spike stream {name!r}: an event stream needs 2 channels "
                                      f"(channel, unit), found {values.shape[1]}")
            record = _spikes(stamps, values[:, 0], values[:, 1])
            pairs = sorted(set(zip(record["channel"].tolist(), record["unit"].tolist())))
            return record, [_unit(path, None, c, u) for c, u in pairs]
        counts = np.rint(values).astype(np.int64)
        if (counts < 0).any() or not np.allclose(counts, values):
            raise ClosedLoopError(f"{path}: spike stream {name!r}: binned counts must be whole numbers >= 0")
        sample, channel = np.nonzero(counts)
        k = counts[sample, channel]
        record = _spikes(np.repeat(stamps[sample] - 0.5 / rate, k), np.repeat(channel + 1, k), 1)
        labels = _channel_labels(header["element"], values.shape[1])
        return record, [_unit(path, label, c, 1) for c, label in enumerate(labels, 1)]


# ------------------------------------------------------ closedloop NWB exports --
NWB_ERRORS = (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError)
"""What h5py, pynwb and pandas raise on a damaged or foreign HDF5 file (UnicodeDecodeError and JSON
errors are ValueErrors)."""


def is_closedloop_export(path: Path) -> bool:
    """Whether ``path`` is an NWB file written by ``closedloop export`` (its ``data_collection``
    bookkeeping names the export format)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f["general/data_collection"][()] if "general/data_collection" in f else b""
            text = text.decode() if isinstance(text, bytes) else str(text)
    except NWB_ERRORS as exc:
        raise ClosedLoopError(f"{path}: unreadable NWB (HDF5) file ({one_line(exc)})") from None
    return '"closedloop_nwb_export"' in text


def read_export(path: Path, parse: Callable[[Path, object], T]) -> T:
    """``parse(path, nwbfile)`` on a ``closedloop export`` opened with pynwb; a one-line error
    naming ``path`` when it cannot be read or lacks what ``parse`` takes from it."""
    from hdmf.build.errors import ConstructError
    from pynwb import NWBHDF5IO

    try:
        with NWBHDF5IO(str(path), "r") as io:
            return parse(path, io.read())
    except (*NWB_ERRORS, ConstructError) as exc:
        raise ClosedLoopError(f"{path}: not a readable closedloop NWB export ({one_line(exc)})") from None


def export_recording(path: Path, nwb) -> Recording:
    """The recorded units, their spikes and the presentations of an open ``closedloop export``, on
    the session's LSL clock (file time + ``lsl_t0``); presentations keep ``pool_index``, ``role``
    and ``aborted`` from its ``presentations`` table."""
    t0 = json.loads(nwb.data_collection)["lsl_t0"]
    rows = nwb.units.to_dataframe()
    recorded = rows[rows["recorded"]]
    units = [UnitSpec(name=str(r.unit_name), channel=int(r.channel), unit=int(r.unit)) for r in recorded.itertuples()]
    spikes = np.concatenate([_spikes(np.asarray(r.spike_times) + t0, int(r.channel), int(r.unit))
                             for r in recorded.itertuples()] or [np.empty(0, SPIKE_DTYPE)])
    table = nwb.intervals["presentations"].to_dataframe()
    presentations = [{"index": int(r.presentation), "stimulus": str(r.stimulus_id), "onset": float(r.start_time) + t0,
                      "offset": float(r.stop_time) + t0, "pool_index": int(r.pool_index), "role": str(r.role),
                      "aborted": bool(r.aborted)} for r in table.itertuples()]
    return Recording(units=units, spikes=spikes[np.argsort(spikes["time"], kind="stable")],
                     presentations=sorted(presentations, key=lambda p: p["onset"]), source=path)


# ----------------------------------------------------------------------- neo --
NEO_OPEN = {"neo.io.nixio.NixIO": {"mode": "ro"}}  # read-only where the IO would open for writing


def _neo_extensions() -> tuple[str, ...]:
    from neo.io import io_by_extension

    found = [e for e in io_by_extension if e and e not in XdfReader.extensions]
    return tuple(sorted(found, key=lambda e: (e.isdigit(), int(e) if e.isdigit() else 0, e)))


def _int_annotation(obj, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = obj.annotations.get(key)
        try:
            if value is not None and float(value) == int(value):
                return int(value)
        except (TypeError, ValueError):
            pass
    return None


def _text(labels) -> list[str]:
    return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in labels]


def _load(obj):
    """A neo object, loaded if it is a lazy proxy."""
    return obj.load() if hasattr(obj, "load") else obj


@register
class NeoReader(Reader):
    """Any recording neo reads: its spike trains, and stimulus onsets from an
    event channel in the file or from a stimulus log.

    Units come from spike trains (across segments, matched by their
    ``channel`` and ``unit`` annotations, else by name, else by position);
    where any lacks integer ``channel``/``unit`` (or ``channel_id``/``unit_id``)
    annotations, units are numbered channel 1..n, unit 1, in file order.
    A closedloop NWB export needs no option: its own tables are read.
    """

    extensions = _neo_extensions()
    description = "any format neo reads (NWB, NIX, Blackrock, Plexon, Spike2, ...)"
    directories = True
    options = {
        "events": "name of the neo Event or Epoch with the stimulus onsets (labels: stimulus ids "
                  "or closedloop markers; an Epoch's durations give offsets); not needed for a "
                  "closedloop NWB export, whose presentations table is read",
        "log": "a stimulus log on the recording's clock instead: .jsonl like markers.jsonl, "
               "or .csv with index, stimulus, onset[, offset]",
        "block": "which neo Block to read (default 0)",
    }

    def read(self, path: Path, events: str | None = None, log: Path | str | None = None,
             block: int = 0) -> Recording:
        """Read a neo-readable recording (times in seconds); a ``closedloop export`` without
        options is read with pynwb instead (:func:`export_recording`: its units, spikes and
        presentations table, on the session's LSL clock)."""
        path = Path(path)
        if events is None and log is None and path.suffix.lower() == ".nwb" and is_closedloop_export(path):
            return read_export(path, export_recording)
        if (events is None) == (log is None):
            raise ClosedLoopError(f"{path}: say where the stimulus onsets are: events=NAME (an event "
                                  "channel in the file) or log=FILE (a stimulus log), one of them")
        segments = self._segments(path, block)
        units, record, notes = self._units(path, [trains for trains, _ in segments])
        if log is not None:
            presentations = read_stimulus_log(log)
        else:
            presentations, more = self._stimuli(path, [channels for _, channels in segments], events)
            notes += more
        return Recording(units=units, spikes=record, presentations=presentations, source=path, notes=notes)

    @staticmethod
    def _segments(path: Path, block: int) -> list[tuple[list, list]]:
        """(spike trains, events and epochs) of every segment of Block ``block``, loaded."""
        from neo.io import list_candidate_ios

        try:
            candidates = list(dict.fromkeys(list_candidate_ios(path)))
        except Exception as exc:
            raise ClosedLoopError(f"{path}: no neo IO reads it ({one_line(exc)})") from None
        failures = []
        for io_class in candidates:
            # Lazy loading spares a large file's signals; some IOs fail at it, so try eager next.
            for lazy in (True, False) if getattr(io_class, "support_lazy", False) else (False,):
                io = None
                try:
                    io = io_class(str(path), **NEO_OPEN.get(f"{io_class.__module__}.{io_class.__name__}", {}))
                    blocks = io.read(lazy=lazy)
                    if not 0 <= block < len(blocks):
                        raise ClosedLoopError(f"{path}: no neo Block {block}; the file has {len(blocks)}")
                    return [([_load(st) for st in seg.spiketrains],
                             [_load(e) for e in (*seg.events, *seg.epochs)]) for seg in blocks[block].segments]
                except ClosedLoopError:
                    raise
                except Exception as exc:  # neo and its backends raise anything on a bad file
                    failures.append(f"{io_class.__name__}: {type(exc).__name__}: {one_line(exc)}")
                finally:
                    if io is not None and hasattr(io, "close"):
                        try:
                            io.close()
                        except Exception:
                            pass
        raise ClosedLoopError(f"{path}: truncated, or not a file neo can read "
                              f"({'; '.join(dict.fromkeys(failures))})")

    @staticmethod
    def _units(path: Path, segments: list[list]) -> tuple[list[UnitSpec], np.ndarray, list[str]]:
        """Units (matched across segments), their spikes and what was assumed."""
        groups: dict[tuple, dict] = {}
        for trains in segments:
            seen: set[tuple] = set()
            for position, st in enumerate(trains):
                channel = _int_annotation(st, ("channel", "channel_id"))
                unit = _int_annotation(st, ("unit", "unit_id"))
                key = (("pair", channel, unit) if channel is not None and unit is not None
                       else ("name", st.name) if st.name else ("position", position))
                if key in seen:  # two trains of one segment answer to it: tell them apart
                    key = (*key, position)
                seen.add(key)
                group = groups.setdefault(key, {"name": st.name, "times": []})
                group["times"].append(np.asarray(st.times.rescale("s").magnitude, float))
        if not groups:
            raise ClosedLoopError(f"{path}: no spike trains in the file")
        notes = []
        if all(key[0] == "pair" and len(key) == 3 for key in groups):
            pairs = [key[1:] for key in groups]
        else:
            pairs = [(c, 1) for c in range(1, len(groups) + 1)]
            notes.append("spike trains lack channel/unit annotations: units numbered channel 1..n, unit 1")
        units = [_unit(path, g["name"], c, u) for (c, u), g in zip(pairs, groups.values())]
        parts = [_spikes(t, c, u) for (c, u), g in zip(pairs, groups.values()) for t in g["times"]]
        return units, np.concatenate(parts), notes

    @staticmethod
    def _stimuli(path: Path, segments: list[list], name: str) -> tuple[list[dict], list[str]]:
        """Presentations from the Epochs named ``name``, else the Events named ``name``."""
        import neo

        found = [obj for channels in segments for obj in channels if obj.name == name]
        if not found:
            present = sorted({str(obj.name) for channels in segments for obj in channels})
            raise ClosedLoopError(f"{path}: no event channel named {name!r}; event channels present: "
                                  f"{', '.join(repr(p) for p in present) or 'none'}")
        epochs = [obj for obj in found if isinstance(obj, neo.Epoch)]
        if epochs:
            rows = [(float(t), float(t + d), label) for e in epochs for t, d, label in
                    zip(e.times.rescale("s").magnitude, e.durations.rescale("s").magnitude, _text(e.labels))]
            rows.sort(key=lambda row: row[0])
            return [{"index": i, "stimulus": label, "onset": on, "offset": off}
                    for i, (on, off, label) in enumerate(rows)], []
        times = np.concatenate([e.times.rescale("s").magnitude for e in found])
        labels = [label for e in found for label in _text(e.labels)]
        return presentations_from_markers(times, labels, f"{path}: event channel {name!r}")
