"""A session damaged in each way a fuzz run found: every reader refuses it in one line naming the
file, the line and the field (read_session, resume, replay, report, export), or, for a record a
kill cut short, drops that record with a warning."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.record import check_resumable, read_session
from closedloop.record.nwb import export_nwb
from closedloop.report import write_report
from closedloop.replay.sources import open_source


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def edit(path: Path, line: int, change) -> None:
    """Replace line ``line`` (from 1) of a log by ``change(record)`` (a dict, or text as is)."""
    text = lines(path)
    new = change(json.loads(text[line - 1]))
    text[line - 1] = (new if isinstance(new, str) else json.dumps(new)) + "\n"
    path.write_text("".join(text))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


DAMAGE = {
    "empty markers": (lambda s: (s / "markers.jsonl").write_text(""),
                      "responses.jsonl line 1: field 'index': presentation 0 has no marker"),
    "duplicated marker line": (lambda s: append(s / "markers.jsonl", lines(s / "markers.jsonl")[2].encode()),
                               "markers.jsonl line 9: field 'index': presentation 2 recorded twice (first at line 3)"),
    "duplicated response line": (lambda s: append(s / "responses.jsonl", lines(s / "responses.jsonl")[0].encode()),
                                 "responses.jsonl line 9: field 'index': presentation 0 answered twice"),
    "counts of the wrong length": (lambda s: edit(s / "responses.jsonl", 4, lambda r: {**r, "counts": [1, 2, 3]}),
                                   "responses.jsonl line 4: field 'counts': 3 counts for the 2 recorded units"),
    "negative counts": (lambda s: edit(s / "responses.jsonl", 2, lambda r: {**r, "counts": [1, -2]}),
                        "responses.jsonl line 2: field 'counts[1]': Input should be greater than or equal to 0"),
    "counts beyond int32": (lambda s: edit(s / "responses.jsonl", 2, lambda r: {**r, "counts": [10**30, 1]}),
                            "responses.jsonl line 2: field 'counts[0]': Input should be less than 2147483648"),
    "fractional counts": (lambda s: edit(s / "responses.jsonl", 2, lambda r: {**r, "counts": [1, 2.5]}),
                          "responses.jsonl line 2: field 'counts[1]': Input should be a valid integer"),
    "invalid UTF-8": (lambda s: (s / "markers.jsonl").write_bytes(
                          b"".join(lines_b(s / "markers.jsonl")[:1]) + b'{"index": 1, "\xff": 0}\n'),
                      "markers.jsonl line 2: not UTF-8 text (byte 0xff"),
    "a line that is not JSON": (lambda s: edit(s / "selections.jsonl", 1, lambda r: "{chosen: [1]}"),
                                "selections.jsonl line 1: not JSON"),
    "a line that is not an object": (lambda s: edit(s / "events.jsonl", 2, lambda r: "[1, 2]"),
                                     "events.jsonl line 2: not a JSON object (list)"),
    "a blank line": (lambda s: edit(s / "markers.jsonl", 3, lambda r: ""), "markers.jsonl line 3: not JSON"),
    "missing index": (lambda s: edit(s / "markers.jsonl", 5, lambda r: {k: v for k, v in r.items() if k != "index"}),
                      "markers.jsonl line 5: field 'index': Field required"),
    "index as text": (lambda s: edit(s / "responses.jsonl", 3, lambda r: {**r, "index": "2"}),
                      "responses.jsonl line 3: field 'index': Input should be a valid integer (got '2')"),
    "index as a boolean": (lambda s: edit(s / "markers.jsonl", 1, lambda r: {**r, "index": False}),
                           "markers.jsonl line 1: field 'index': Input should be a valid integer (got False)"),
    "unknown role": (lambda s: edit(s / "markers.jsonl", 2, lambda r: {**r, "role": "favourite"}),
                     "markers.jsonl line 2: field 'role': Input should be 'chosen', 'heldout'"),
    "not-finite onset": (lambda s: edit(s / "markers.jsonl", 2, lambda r: {**r, "onset": float("nan")}),
                         "markers.jsonl line 2: field 'onset': Input should be a finite number"),
    "offset before onset": (lambda s: edit(s / "markers.jsonl", 2, lambda r: {**r, "offset": r["onset"] - 1}),
                            "markers.jsonl line 2: field 'offset': Value error"),
    "pool index beyond the pool": (lambda s: edit(s / "markers.jsonl", 6, lambda r: {**r, "pool_index": 99}),
                                   "markers.jsonl line 6: field 'pool_index': pool index 99 is not in the pool "
                                   "(6 stimuli"),
    "stimulus of another pool image": (lambda s: edit(s / "markers.jsonl", 6, lambda r: {**r, "pool_index": 0}),
                                       "markers.jsonl line 6: field 'stimulus': "),
    "response disagreeing with its marker": (
        lambda s: edit(s / "responses.jsonl", 4, lambda r: {**r, "role": "chosen"}),
        "responses.jsonl line 4: field 'role': 'chosen', but its marker (markers.jsonl line 4) has 'heldout'"),
    "decision choosing beyond the pool": (lambda s: edit(s / "selections.jsonl", 1, lambda r: {**r, "chosen": [1, 6]}),
                                          "selections.jsonl line 1: field 'chosen': pool index 6 is not in the pool"),
    "predictions for the wrong units": (
        lambda s: edit(s / "selections.jsonl", 1, lambda r: {**r, "predicted": [[1.5, 2.0], [0.5]]}),
        "selections.jsonl line 1: field 'predicted[1]': 1 counts for the 2 recorded units"),
    "a prediction that is not finite": (
        lambda s: edit(s / "selections.jsonl", 1, lambda r: {**r, "predicted": [[1.5, float("inf")], [0.5, 1.0]]}),
        "selections.jsonl line 1: field 'predicted[0][1]': Input should be a finite number"),
    "event without a kind": (lambda s: edit(s / "events.jsonl", 1, lambda r: {"trial": 0}),
                             "events.jsonl line 1: field 'kind': Field required"),
    "resume event without its presentation": (
        lambda s: append(s / "events.jsonl", b'{"kind": "resumed", "time": 1.0}\n'),
        "events.jsonl line 5: field 'from_presentation': Field required"),
    "protocol.json holding []": (lambda s: (s / "protocol.json").write_text("[]"),
                                 "protocol.json: not a JSON object (list)"),
    "rig.json cut": (lambda s: (s / "rig.json").write_text('{"rig": '), "rig.json: not JSON"),
    "recorded units of the wrong type": (
        lambda s: (s / "rig.json").write_text(json.dumps({"rig": {"name": "r"}, "recorded_units": [
            {"name": "a", "channel": "1", "unit": 1}]})),
        "rig.json: field 'recorded_units[0].channel': Input should be a valid integer"),
    "a unit listed twice": (
        lambda s: (s / "rig.json").write_text(json.dumps({"rig": {"name": "r"}, "recorded_units": [
            {"name": "a", "channel": 1, "unit": 1}, {"name": "b", "channel": 1, "unit": 1}]})),
        "rig.json: field 'recorded_units[1]': channel 1 unit 1 listed twice"),
    "protocol.json holding {}": (lambda s: (s / "protocol.json").write_text("{}"),
                                 "protocol.json: field 'protocol': Field required"),
    "rig.json without its rig": (lambda s: (s / "rig.json").write_text(json.dumps({"recorded_units": []})),
                                 "rig.json: field 'rig': Field required"),
    "presentation beyond the protocol": (lambda s: edit(s / "markers.jsonl", 8, lambda r: {**r, "index": 8}),
                                         "markers.jsonl line 8: field 'index': presentation 8 is beyond the 8 "
                                         "presentations of protocol.json"),
    "more spikes than a unit can fire": (lambda s: edit(s / "responses.jsonl", 2, lambda r: {**r, "counts": [600, 1]}),
                                         "responses.jsonl line 2: field 'counts': 600 spikes in one window is "
                                         "more than 501"),
    "a decision recorded twice": (lambda s: append(s / "selections.jsonl", lines(s / "selections.jsonl")[-1].encode()),
                                  "field 'received': "),
    "summary.json holding a list": (lambda s: (s / "summary.json").write_text("[1]"),
                                    "summary.json: not a JSON object (list)"),
    "a corrupt manifest": (lambda s: (s / "session.json").write_text(json.dumps({"id": "x", "created": "now",
                                                                                 "sha256": {}})),
                           "session.json: field 'sha256': Value error, needs exactly protocol.json"),
    "a corrupt pool": (lambda s: (s / "stimuli.npz").write_bytes(b"PK\x03\x04 not a zip"), "stimuli.npz"),
    "corrupt compressed images": (lambda s: flip_bytes(s / "stimuli.npz"), "stimuli.npz"),
    "a spike at no time": (lambda s: (s / "spikes.bin").write_bytes(
                               np.array([(np.nan, 1, 1)], "<f8,<i4,<i4").tobytes()),
                           "spikes.bin record 0: time nan is not finite"),
}


def flip_bytes(path: Path) -> None:
    """Invert bytes inside the compressed images (the zip's directory stays readable)."""
    data = bytearray(path.read_bytes())
    for k in range(200, 1200, 97):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def lines_b(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


READERS = {
    "read_session": read_session,
    "resume": lambda s: check_resumable(read_session(s)),
    "replay": open_source,
    "report": lambda s: write_report([s], s.parent / "report.html"),
    "export": lambda s: export_nwb(s, s.parent / "s.nwb"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_reader_refuses_a_damaged_session_in_one_line(small_session, damage):
    corrupt, expected = DAMAGE[damage]
    corrupt(small_session)
    for name, reader in READERS.items():
        with pytest.raises(ClosedLoopError) as info:
            reader(small_session)
        message = str(info.value)
        assert expected in message, (name, message)
        assert "\n" not in message and str(small_session) in message, (name, message)
    assert not (small_session.parent / "report.html").exists() and not (small_session.parent / "s.nwb").exists()


def test_a_record_cut_by_a_kill_is_dropped_by_every_reader(small_session, caplog):
    (small_session / "summary.json").unlink()
    whole = read_session(small_session)
    text = (small_session / "responses.jsonl").read_text()
    (small_session / "responses.jsonl").write_text(text + text.splitlines()[0][:25])
    append(small_session / "spikes.bin", b"\x01\x02\x03")
    append(small_session / "frames.bin", b"\x04")
    with caplog.at_level(logging.WARNING, logger="closedloop.record.session"):
        cut = read_session(small_session)
        check_resumable(cut)
        write_report([small_session], small_session.parent / "report.html")
        export_nwb(small_session, small_session.parent / "s.nwb")
    assert cut.responses == whole.responses and np.array_equal(cut.spikes, whole.spikes)
    assert np.array_equal(cut.frames, whole.frames)
    warned = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"responses.jsonl line 9: cut short by a killed run \(25 bytes", w) for w in warned)
    assert any("spikes.bin: last record cut short" in w for w in warned)
    assert any("frames.bin: last record cut short" in w for w in warned)
