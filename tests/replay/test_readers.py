"""One compliance suite run against every replay reader.

Ground truth (units, spike times, onsets and stimulus ids; seeded) is written
with the real writers -- neo's NixIO, neo's NWBIO (pynwb underneath) and an
XDF file built here to the format's specification -- then read back and
compared with the truth, response counts included (counted here by hand).
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from closedloop.config import UnitSpec
from closedloop.errors import ClosedLoopError
from closedloop.present.markers import offset_marker, onset_marker
from closedloop.record.session import SPIKE_DTYPE
from closedloop.replay import (NeoReader, XdfReader, presentations_from_markers, read_recording, reader_for,
                               response_table)

START, END = 0.05, 0.15  # s, the response window after onset
T0 = 100.0  # s, about the first onset, recording clock
PRESENTATIONS = 16
RATE = 30.0  # spikes/s per unit
EDGE = 1e-6  # s: random spikes keep this far from window edges (clock sync moves stamps by far less)
MARKER_CLOCK = 0.0125  # s, the stimulus PC's clock offset in the XDF file
SPIKE_CLOCK = (-3600.25, -80e-6)  # acquisition PC: an hour ahead, 80 ppm drift: offset = a + b * stamp


# ------------------------------------------------------------- ground truth --
@dataclass
class Truth:
    units: list[UnitSpec]
    spikes: np.ndarray  # SPIKE_DTYPE, sorted by time
    presentations: list[dict]  # index, stimulus, onset, offset

    def times(self, unit: UnitSpec) -> np.ndarray:
        s = self.spikes
        return s["time"][(s["channel"] == unit.channel) & (s["unit"] == unit.unit)]

    def counts(self) -> list[list[int]]:
        """Spikes per unit in [onset + START, onset + END), counted one by one."""
        return [[sum(1 for t in self.times(u) if p["onset"] + START <= t < p["onset"] + END) for u in self.units]
                for p in self.presentations]


def make_truth(edges: bool = True) -> Truth:
    """Three units on two channels, 16 presentations of 5 stimuli, Poisson spikes.

    With ``edges``, unit 0 also fires exactly at one window's start (counted)
    and another's end (not counted): the half-open rule, for exact formats.
    """
    rng = np.random.default_rng(11)
    units = [UnitSpec(name="V4-a", channel=1, unit=1), UnitSpec(name="V4-b", channel=1, unit=2),
             UnitSpec(name="V4-c", channel=7, unit=3)]
    stimuli = [rng.bytes(8).hex() for _ in range(5)]
    onsets = T0 + 0.3 * np.arange(PRESENTATIONS) + rng.uniform(0, 0.05, PRESENTATIONS)
    offsets = onsets + 0.1 + rng.uniform(0, 0.01, PRESENTATIONS)
    presentations = [{"index": i, "stimulus": stimuli[rng.integers(len(stimuli))], "onset": float(on),
                      "offset": float(off)} for i, (on, off) in enumerate(zip(onsets, offsets))]
    window_edges = np.concatenate([onsets + START, onsets + END])
    first, last = T0 - 1.0, float(onsets[-1]) + 1.0
    parts = []
    for k, unit in enumerate(units):
        times = rng.uniform(first, last, rng.poisson(RATE * (last - first)))
        times = times[np.abs(times[:, None] - window_edges).min(axis=1) > EDGE]
        if edges and k == 0:
            times = np.append(times, [presentations[0]["onset"] + START, presentations[1]["onset"] + END])
        part = np.empty(len(times), SPIKE_DTYPE)
        part["time"], part["channel"], part["unit"] = times, unit.channel, unit.unit
        parts.append(part)
    spikes = np.concatenate(parts)
    return Truth(units, spikes[np.argsort(spikes["time"], kind="stable")], presentations)


# -------------------------------------------------------------- neo writers --
def neo_block(truth: Truth, stimulus: str | None):
    """A neo Block of the truth; stimuli as an ``"event"`` or ``"epoch"`` channel, or none."""
    import neo
    import quantities as pq

    block = neo.Block(name="truth", session_start_time=datetime(2024, 5, 1, tzinfo=timezone.utc),
                      identifier="replay-test", session_description="replay compliance suite")
    segment = neo.Segment(name="session")
    block.segments.append(segment)
    t_stop = float(truth.spikes["time"].max()) + 1.0
    for u in truth.units:
        segment.spiketrains.append(neo.SpikeTrain(truth.times(u) * pq.s, t_start=0 * pq.s, t_stop=t_stop * pq.s,
                                                  name=u.name, channel=u.channel, unit=u.unit))
    segment.events.append(neo.Event(np.array([T0 + 0.123, T0 + 2.5]) * pq.s,
                                    labels=np.array(["reward", "reward"]), name="reward"))
    onsets = np.array([p["onset"] for p in truth.presentations])
    offsets = np.array([p["offset"] for p in truth.presentations])
    ids = np.array([p["stimulus"] for p in truth.presentations])
    if stimulus == "event":  # an onset labelled with its stimulus id, then an "offset" event
        times = np.concatenate([onsets, offsets])
        labels = np.concatenate([ids, np.full(len(offsets), "offset")])
        order = np.argsort(times)
        segment.events.append(neo.Event(times[order] * pq.s, labels=labels[order], name="stimulus"))
    elif stimulus == "epoch":
        segment.epochs.append(neo.Epoch(onsets * pq.s, durations=(offsets - onsets) * pq.s, labels=ids,
                                        name="stimulus"))
    return block


def write_nix(path: Path, block) -> Path:
    from neo.io import NixIO

    with NixIO(str(path), mode="ow") as io:
        io.write_block(block)
    return path


def write_nwb(path: Path, block) -> Path:
    from neo.io import NWBIO

    NWBIO(str(path), mode="w").write_all_blocks([block])
    return path


def write_jsonl_log(path: Path, truth: Truth) -> Path:
    """A log shaped like the live markers.jsonl."""
    path.write_text("".join(json.dumps({**p, "pool_index": 40 + p["index"], "role": "train", "dropped_frames": 0,
                                        "frame_intervals": [0.0167] * 5}) + "\n" for p in truth.presentations))
    return path


def write_csv_log(path: Path, truth: Truth) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["index", "stimulus", "onset", "offset"])
        writer.writeheader()
        writer.writerows({k: p[k] for k in writer.fieldnames} for p in truth.presentations)
    return path


# --------------------------------------------------------------- XDF writer --
XDF_NUMERIC = {"int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "float32": "<f4", "double64": "<f8"}


def varlen(n: int) -> bytes:
    """An XDF variable-length integer: a byte saying 1, 4 or 8, then the number in that many bytes."""
    for width, fmt in ((1, "<B"), (4, "<I"), (8, "<Q")):
        if n < 1 << (8 * width):
            return bytes([width]) + struct.pack(fmt, n)
    raise ValueError(n)


class XdfFile:
    """An XDF 1.0 file built chunk by chunk (https://github.com/sccn/xdf/wiki/Specifications)."""

    def __init__(self):
        self.data = bytearray(b"XDF:")
        self.formats: dict[int, str] = {}
        self._chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')

    def _chunk(self, tag: int, content: bytes, stream: int | None = None) -> None:
        body = struct.pack("<H", tag) + (b"" if stream is None else struct.pack("<I", stream)) + content
        self.data += varlen(len(body)) + body

    def header(self, stream: int, name: str, type_: str, channels: int, fmt: str, rate: float,
               labels: tuple[str, ...] = ()) -> None:
        described = "".join(f"<channel><label>{label}</label></channel>" for label in labels)
        xml = (f'<?xml version="1.0"?><info><name>{name}</name><type>{type_}</type>'
               f"<channel_count>{channels}</channel_count><nominal_srate>{rate}</nominal_srate>"
               f"<channel_format>{fmt}</channel_format><source_id>{name}-1</source_id>"
               f"<created_at>1.0</created_at><desc><channels>{described}</channels></desc></info>")
        self.formats[stream] = fmt
        self._chunk(2, xml.encode(), stream)

    def samples(self, stream: int, stamps, values, stamped=None) -> None:
        """A Samples chunk; a sample with ``stamped[k]`` false leaves its stamp to be deduced."""
        fmt = self.formats[stream]
        out = bytearray(varlen(len(stamps)))
        for k, (t, row) in enumerate(zip(stamps, values)):
            out += b"\x08" + struct.pack("<d", t) if stamped is None or stamped[k] else b"\x00"
            if fmt == "string":
                for value in row:
                    out += varlen(len(value.encode())) + value.encode()
            else:
                out += np.asarray(row, XDF_NUMERIC[fmt]).tobytes()
        self._chunk(3, bytes(out), stream)

    def clock_offset(self, stream: int, time: float, value: float) -> None:
        """``value`` s to add to the stream's stamps around ``time`` (the stream's clock)."""
        self._chunk(4, struct.pack("<dd", time, value), stream)

    def footer(self, stream: int, first: float, last: float, count: int) -> None:
        xml = (f'<?xml version="1.0"?><info><first_timestamp>{first!r}</first_timestamp>'
               f"<last_timestamp>{last!r}</last_timestamp><sample_count>{count}</sample_count></info>")
        self._chunk(6, xml.encode(), stream)

    def save(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


def interleave(xdf: XdfFile, streams: list[tuple[int, np.ndarray, list, np.ndarray, float]], pieces: int = 4,
               stamped: dict | None = None) -> None:
    """Samples of several streams in ``pieces`` chunks each, a ClockOffset chunk after each piece.

    ``streams`` holds (id, raw stamps, values, offset coefficients (a, b), _).
    """
    for k in range(pieces):
        for stream, stamps, values, (a, b), _ in streams:
            part = slice(k * len(stamps) // pieces, (k + 1) * len(stamps) // pieces)
            mask = None if stamped is None or stream not in stamped else stamped[stream][part]
            xdf.samples(stream, stamps[part], values[part], mask)
            collected = stamps[part][-1] if len(stamps[part]) else stamps[0]
            xdf.clock_offset(stream, collected, a + b * collected)
    for stream, stamps, _, _, _ in streams:
        xdf.footer(stream, float(stamps[0]), float(stamps[-1]), len(stamps))


def marker_stream(truth: Truth) -> tuple[np.ndarray, list]:
    """closedloop's JSON markers, stamped on the stimulus PC's clock."""
    events = sorted([(p["onset"], onset_marker(p["index"], p["stimulus"])) for p in truth.presentations]
                    + [(p["offset"], offset_marker(p["index"])) for p in truth.presentations])
    return np.array([t for t, _ in events]) - MARKER_CLOCK, [[m] for _, m in events]


def write_xdf(path: Path, truth: Truth) -> Path:
    """LabRecorder-like: a marker stream, a spike event stream, an EEG stream; three clocks."""
    xdf = XdfFile()
    xdf.header(1, "closedloop-markers", "Markers", 1, "string", 0)
    xdf.header(2, "closedloop-spikes", "Spikes", 2, "int32", 0, labels=("channel", "unit"))
    xdf.header(3, "cap", "EEG", 2, "float32", 100.0)
    a, b = SPIKE_CLOCK
    spike_stamps = (truth.spikes["time"] - a) / (1 + b)  # the acquisition PC's clock
    spikes = np.column_stack([truth.spikes["channel"], truth.spikes["unit"]])
    marker_stamps, markers = marker_stream(truth)
    eeg_stamps = T0 + np.arange(50) / 100.0
    interleave(xdf, [(1, marker_stamps, markers, (MARKER_CLOCK, 0.0), None),
                     (2, spike_stamps, spikes, SPIKE_CLOCK, None),
                     (3, eeg_stamps, np.zeros((50, 2)), (0.001, 0.0), None)])
    return xdf.save(path)


# ---------------------------------------------------------- compliance suite --
@dataclass
class Case:
    """A format as one writer writes it, and how it is read back."""

    write: Callable[[Path, Truth], tuple[Path, dict]]
    reader: type
    exact: bool = True  # times come back as written (no clock synchronisation)
    unit_ids: bool = True  # the format keeps each unit's channel and unit


CASES = {
    "nix-event-channel": Case(lambda d, t: (write_nix(d / "rec.nix", neo_block(t, "event")), {"events": "stimulus"}),
                              NeoReader),
    "nwb-epoch-channel": Case(lambda d, t: (write_nwb(d / "rec.nwb", neo_block(t, "epoch")), {"events": "stimulus"}),
                              NeoReader, unit_ids=False),
    "nix-jsonl-log": Case(lambda d, t: (write_nix(d / "rec.nix", neo_block(t, None)),
                                        {"log": write_jsonl_log(d / "markers.jsonl", t)}), NeoReader),
    "nwb-csv-log": Case(lambda d, t: (write_nwb(d / "rec.nwb", neo_block(t, None)),
                                      {"log": write_csv_log(d / "stimuli.csv", t)}), NeoReader, unit_ids=False),
    "xdf": Case(lambda d, t: (write_xdf(d / "rec.xdf", t), {"units": t.units}), XdfReader, exact=False),
}


@pytest.mark.parametrize("name", CASES)
def test_reader_returns_the_ground_truth(name, tmp_path):
    case = CASES[name]
    truth = make_truth(edges=case.exact)
    path, options = case.write(tmp_path, truth)
    assert reader_for(path) is case.reader
    rec = read_recording(path, **options)
    tol = 0 if case.exact else EDGE / 10  # s

    assert rec.source == path
    assert [u.name for u in rec.units] == [u.name for u in truth.units]
    if case.unit_ids:
        assert rec.units == truth.units
    else:  # neo's NWBIO drops spike-train annotations: units are numbered, and it is said so
        assert [(u.channel, u.unit) for u in rec.units] == [(c, 1) for c in range(1, len(truth.units) + 1)]
        assert any("numbered" in note for note in rec.notes)
    assert rec.spikes.dtype == SPIKE_DTYPE
    for mine, true in zip(rec.units, truth.units):
        got = np.sort(rec.spikes["time"][(rec.spikes["channel"] == mine.channel) & (rec.spikes["unit"] == mine.unit)])
        np.testing.assert_allclose(got, truth.times(true), rtol=0, atol=tol)
    assert len(rec.spikes) == len(truth.spikes)

    assert [(p["index"], p["stimulus"]) for p in rec.presentations] == \
           [(p["index"], p["stimulus"]) for p in truth.presentations]
    for key in ("onset", "offset"):
        np.testing.assert_allclose([p[key] for p in rec.presentations], [p[key] for p in truth.presentations],
                                   rtol=0, atol=max(tol, 1e-9))

    table = response_table(rec, START, END)
    assert [r["counts"] for r in table] == truth.counts()
    assert [(r["index"], r["stimulus"]) for r in table] == [(p["index"], p["stimulus"]) for p in truth.presentations]
    np.testing.assert_allclose([r["onset"] for r in table], [p["onset"] for p in truth.presentations],
                               rtol=0, atol=tol)
    if "role" in rec.presentations[0]:  # carried over from a markers.jsonl log, as live responses do
        assert [(r["pool_index"], r["role"]) for r in table] == [(40 + i, "train") for i in range(PRESENTATIONS)]


def test_xdf_units_default_to_every_pair_found(tmp_path):
    rec = read_recording(write_xdf(tmp_path / "rec.xdf", make_truth(edges=False)), markers="closedloop-markers")
    assert [(u.name, u.channel, u.unit) for u in rec.units] == [("ch1u1", 1, 1), ("ch1u2", 1, 2), ("ch7u3", 7, 3)]


def test_xdf_binned_count_stream(tmp_path):
    """A regular-rate count stream (stamps mostly deduced) becomes spikes at bin centres."""
    rate, bins, channels = 1000.0, 4000, 3
    rng = np.random.default_rng(5)
    counts = rng.poisson(0.03, (bins, channels)).astype(np.int32)
    ends = T0 - 0.5 + (np.arange(bins) + 1) / rate  # a sample is stamped at its bin's end
    truth = make_truth(edges=False)
    for k, p in enumerate(truth.presentations):  # window edges a quarter bin from any bin centre
        p["onset"] = T0 + 0.2 * k + 0.00025
        p["offset"] = p["onset"] + 0.1
    sample, channel = np.nonzero(counts)
    spikes = np.empty(int(counts.sum()), SPIKE_DTYPE)
    spikes["time"] = np.repeat(ends[sample] - 0.5 / rate, counts[sample, channel])
    spikes["channel"], spikes["unit"] = np.repeat(channel + 1, counts[sample, channel]), 1
    truth = Truth([UnitSpec(name=f"e{c}", channel=c, unit=1) for c in range(1, channels + 1)],
                  spikes[np.argsort(spikes["time"], kind="stable")], truth.presentations)

    xdf = XdfFile()
    xdf.header(4, "closedloop-markers", "Markers", 1, "string", 0)
    xdf.header(9, "closedloop-spikes", "Spikes", channels, "int16", rate, labels=("e1", "e2", "e3"))
    a = -1234.5
    marker_stamps, markers = marker_stream(truth)
    stamped = np.zeros(bins, bool)
    stamped[::bins // 4] = True  # as the specification allows: only each chunk's first stamp is written
    interleave(xdf, [(4, marker_stamps, markers, (MARKER_CLOCK, 0.0), None),
                     (9, ends - a, counts, (a, 0.0), None)], stamped={9: stamped})
    rec = read_recording(xdf.save(tmp_path / "counts.xdf"))

    assert rec.units == truth.units
    np.testing.assert_allclose(np.sort(rec.spikes["time"]), truth.spikes["time"], rtol=0, atol=1e-6)
    assert [r["counts"] for r in response_table(rec, START, END)] == truth.counts()


# ---------------------------------------------------------------- bad input --
def _nix(d: Path) -> Path:
    return write_nix(d / "good.nix", neo_block(make_truth(), "event"))


def _nwb(d: Path) -> Path:
    return write_nwb(d / "good.nwb", neo_block(make_truth(), "epoch"))


def _xdf(d: Path) -> Path:
    return write_xdf(d / "good.xdf", make_truth(edges=False))


# per reader: a good file, a file of another format, an option naming a missing channel, the name
BAD = {
    "nix": (_nix, _nwb, {"events": "photodiode"}, "'photodiode'"),
    "nwb": (_nwb, _xdf, {"events": "photodiode"}, "'photodiode'"),
    "xdf": (_xdf, _nix, {"spikes": "blackrock"}, "'blackrock'"),
}


def _one_line_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    return message


@pytest.mark.parametrize("fmt", BAD)
def test_truncated_file(fmt, tmp_path):
    good = BAD[fmt][0](tmp_path)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 3 // 5])
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(cut, **({"events": "stimulus"} if fmt != "xdf" else {}))
    _one_line_error(excinfo, str(cut))


@pytest.mark.parametrize("fmt", BAD)
def test_file_of_another_format(fmt, tmp_path):
    (tmp_path / "other").mkdir()
    other = BAD[fmt][1](tmp_path / "other")
    wrong = tmp_path / f"wrong.{fmt}"
    wrong.write_bytes(other.read_bytes())
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(wrong, **({"events": "stimulus"} if fmt != "xdf" else {}))
    _one_line_error(excinfo, str(wrong))


@pytest.mark.parametrize("fmt", BAD)
def test_missing_stream_or_event_channel(fmt, tmp_path):
    good, _, options, named = BAD[fmt]
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(good(tmp_path), **options)
    message = _one_line_error(excinfo, named)
    present = ("'closedloop-spikes'", "'closedloop-markers'", "'cap'") if fmt == "xdf" else ("stimulus", "reward")
    assert all(name in message for name in present), message


def test_unknown_format_option_and_log(tmp_path):
    odd = tmp_path / "rec.qqq"
    odd.write_text("?")
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(odd)
    _one_line_error(excinfo, str(odd), ".xdf", ".nwb", ".nix")
    good = _nix(tmp_path)
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(good, events="stimulus", spikes="x")
    _one_line_error(excinfo, "'spikes'", "events")
    log = tmp_path / "bad.csv"
    log.write_text("index,stimulus\n0,abc\n")
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(good, log=log)
    _one_line_error(excinfo, str(log), "onset")
    with pytest.raises(ClosedLoopError) as excinfo:
        read_recording(good)
    _one_line_error(excinfo, "events=", "log=")


def test_plain_labels_end_at_the_next_event():
    presentations, notes = presentations_from_markers([3.0, 1.0, 2.0, 2.5], ["b", "a", "off", "c"])
    assert [(p["index"], p["stimulus"], p["onset"], p["offset"]) for p in presentations] == \
           [(0, "a", 1.0, 2.0), (1, "c", 2.5, 3.0), (2, "b", 3.0, None)]
    assert notes == ["1 presentations have no offset event"]


def test_a_closedloop_nwb_export_needs_no_options(tmp_path):
    """`closedloop export`'s file read back with no options: the session's units, spikes and
    presentations (its presentations table, on the session's clock), not neo's guess."""
    from closedloop.record import read_session
    from closedloop.record.nwb import export_nwb
    from closedloop.replay import session_recording
    from tests.record.conftest import write_small_session

    session = write_small_session(tmp_path / "s")
    path = export_nwb(session, tmp_path / "s.nwb")
    assert reader_for(path) is NeoReader
    rec, want = read_recording(path), session_recording(read_session(session))
    assert rec.source == path and rec.units == want.units
    np.testing.assert_allclose(rec.spikes["time"], want.spikes["time"], rtol=0, atol=1e-9)
    assert rec.spikes[["channel", "unit"]].tolist() == want.spikes[["channel", "unit"]].tolist()
    assert [(p["index"], p["stimulus"], p["pool_index"], p["role"]) for p in rec.presentations] == \
           [(p["index"], p["stimulus"], p["pool_index"], p["role"]) for p in want.presentations]
    for key in ("onset", "offset"):
        np.testing.assert_allclose([p[key] for p in rec.presentations], [p[key] for p in want.presentations],
                                   rtol=0, atol=1e-9)
    assert [r["counts"] for r in response_table(rec, START, END)] == \
           [r["counts"] for r in response_table(want, START, END)]
    by_neo = read_recording(path, events="presentations")  # neo reads the same presentations as an Epoch
    assert [p["stimulus"] for p in by_neo.presentations] == [p["stimulus"] for p in want.presentations]
