"""Fuzz corpora of session directories: a complete and a killed session, corrupted, fed to
``resume`` (its checks, see :func:`check_resume`), ``replay``, ``report`` and ``export``.

Whether an accepted session made sense is decided by :func:`session_faults`, which reads the
directory by the layout of :mod:`closedloop.record.session` without any of the product's readers.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from closedloop.benchmarks.fuzz_gen import JSON_VALUES, byte_mutations, examples, pick
from closedloop.benchmarks.fuzz_run import Case

LOGS = ("markers", "responses", "selections", "accuracy", "events")
SPIKE_DTYPE = np.dtype([("time", "<f8"), ("channel", "<i4"), ("unit", "<i4")])
COMMANDS = {  # corpus: closedloop arguments after the session directory
    "session/resume": None,
    "session/replay": ["--out", "replayed"],
    "session/report": ["--out", "report.html"],
    "session/export": ["--nwb", "session.nwb"],
}
Edit = Callable[[Path], None]


def check_resume(session: str) -> None:
    """What ``closedloop resume SESSION`` checks before it starts anything: its protocol and rig,
    the record, and whether the record can be continued."""
    from closedloop.checks import check_session
    from closedloop.config import load_protocol, load_rig
    from closedloop.record import check_resumable, read_session

    path = Path(session)
    check_session(load_protocol(path / "protocol.json"), load_rig(path / "rig.json"))
    check_resumable(read_session(path))


# ----------------------------------------------------------------- oracle --
def _lines(path: Path) -> list[str]:
    """Complete lines of a log (the part after the last newline is a record a kill cut short)."""
    data = path.read_bytes()
    return data[:data.rfind(b"\n") + 1].decode("utf-8").split("\n")[:-1]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def session_faults(path: Path) -> str | None:
    """What is wrong with a session directory that no command should take without complaint;
    None for a sound (complete or killed) session."""
    try:
        rig = json.loads((path / "rig.json").read_text())
        protocol = json.loads((path / "protocol.json").read_text())
        units = len(rig["recorded_units"])
        presentations = protocol["protocol"]["presentations"]
        pool = len(np.load(path / "stimuli.npz")["images"])
        logs = {name: [json.loads(line) for line in _lines(path / f"{name}.jsonl") if line] for name in LOGS}
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else None
        raw = (path / "spikes.bin").read_bytes()
        spikes = np.frombuffer(raw[:len(raw) - len(raw) % SPIKE_DTYPE.itemsize], SPIKE_DTYPE)
    except Exception as exc:  # noqa: BLE001 - any unreadable part is a fault
        return f"unreadable: {type(exc).__name__}: {str(exc)[:200]}"
    bad = [f"{name}.jsonl line {k + 1} is not an object" for name, records in logs.items()
           for k, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        return bad[0]
    markers, responses = logs["markers"], logs["responses"]
    marked = {}
    for m in markers:
        if not (_count(m.get("index")) and _count(m.get("pool_index")) and m["pool_index"] < pool
                and _finite(m.get("onset")) and _finite(m.get("offset")) and isinstance(m.get("stimulus"), str)):
            return f"markers.jsonl: a bad presentation {json.dumps(m)[:200]}"
        if m["index"] in marked:
            return f"markers.jsonl: presentation {m['index']} twice"
        marked[m["index"]] = m
    if len(marked) > presentations:
        return f"{len(marked)} presentations of a protocol of {presentations}"
    answered = set()
    for r in responses:
        counts = r.get("counts")
        if not (_count(r.get("index")) and isinstance(counts, list) and len(counts) == units
                and all(_count(c) for c in counts)):
            return f"responses.jsonl: a bad response {json.dumps(r)[:200]} ({units} units)"
        if r["index"] in answered or r["index"] not in marked:
            return f"responses.jsonl: response {r['index']} twice or without a presentation"
        answered.add(r["index"])
    if summary is not None and not isinstance(summary, dict):
        return "summary.json is not an object"
    if not np.isfinite(spikes["time"]).all():
        return "spikes.bin: spike times that are not finite"
    return None


# ------------------------------------------------------------ corruptions --
def _rewrite_line(log: str, pick_line: Callable[[list[str]], int], change: Callable[[str], str]) -> Edit:
    def edit(session: Path) -> None:
        path = session / f"{log}.jsonl"
        lines = path.read_text().split("\n")
        complete = len(lines) - 1
        if complete > 0:
            k = pick_line(lines[:complete]) % complete
            lines[k] = change(lines[k])
        path.write_text("\n".join(lines))
    return edit


def _set_field(log: str, line: int, key: str, value, delete: bool = False) -> Edit:
    def change(text: str) -> str:
        record = json.loads(text)
        if delete:
            record.pop(key, None)
        else:
            record[key] = value
        return json.dumps(record)
    return _rewrite_line(log, lambda lines: line, change)


def _replace_file(name: str, data: bytes | None) -> Edit:
    def edit(session: Path) -> None:
        path = session / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
    return edit


def _remove(name: str) -> Edit:
    def edit(session: Path) -> None:
        path = session / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return edit


def _mutate_bytes(name: str, mutation: Callable[[bytes], bytes]) -> Edit:
    def edit(session: Path) -> None:
        path = session / name
        path.write_bytes(mutation(path.read_bytes()))
    return edit


def _duplicate_line(log: str, line: int) -> Edit:
    def edit(session: Path) -> None:
        path = session / f"{log}.jsonl"
        lines = path.read_text().split("\n")
        if len(lines) > 1:
            lines.insert(line % (len(lines) - 1), lines[line % (len(lines) - 1)])
        path.write_text("\n".join(lines))
    return edit


def _systematic(rng: random.Random, seed_dir: Path) -> list[tuple[str, Edit]]:
    """The user's corruptions, each at a few places."""
    found: list[tuple[str, Edit]] = []
    for log in LOGS:
        found += [(f"empty {log}.jsonl", _replace_file(f"{log}.jsonl", b"")),
                  (f"{log}.jsonl missing", _remove(f"{log}.jsonl")),
                  (f"{log}.jsonl a directory", _replace_file(f"{log}.jsonl", None)),
                  (f"{log}.jsonl: invalid UTF-8 in line 1", _mutate_bytes(f"{log}.jsonl", lambda d: d[:5] + b"\xff\xfe" + d[5:])),
                  (f"{log}.jsonl: a line that is not an object", _rewrite_line(log, lambda ls: 1, lambda t: "[1, 2]")),
                  (f"{log}.jsonl: null line", _rewrite_line(log, lambda ls: 2, lambda t: "null"))]
        for line in (0, 3, rng.randrange(20)):
            found.append((f"{log}.jsonl: line {line} duplicated", _duplicate_line(log, line)))
    for log in ("markers", "responses"):
        for line in (0, 5):
            found.append((f"{log}.jsonl line {line} lacks index", _set_field(log, line, "index", None, delete=True)))
            for value in (-1, "3", 2.5, 10**30, None, 99999):
                found.append((f"{log}.jsonl line {line}: index = {value!r}", _set_field(log, line, "index", value)))
            for key in ("onset", "pool_index", "stimulus"):
                for value in (math.nan, math.inf, -1, "x", None, 10**30):
                    found.append((f"{log}.jsonl line {line}: {key} = {value!r}", _set_field(log, line, key, value)))
    for line in (0, 4, 7):
        for counts in ([], [1], [1, 2, 3], [-1, 2], [-5, -5], [1.5, 2], ["a", 1], [None, 1], [math.nan, 1],
                       [10**30, 1], 3, None):
            found.append((f"responses.jsonl line {line}: counts = {counts!r}", _set_field("responses", line, "counts", counts)))
        found.append((f"responses.jsonl line {line} lacks counts", _set_field("responses", line, "counts", None, delete=True)))
    for name in ("protocol.json", "rig.json", "summary.json"):
        for label, data in (("[]", b"[]"), ("{}", b"{}"), ("empty", b""), ("not JSON", b"{oops"), ("null", b"null"),
                            ("invalid UTF-8", b'{"\xff": 1}')):
            found.append((f"{name} holding {label}", _replace_file(name, data)))
        found.append((f"{name} missing", _remove(name)))
        found.append((f"{name} a directory", _replace_file(name, None)))
    for name in ("spikes.bin", "frames.bin", "stimuli.npz"):
        data = (seed_dir / name).read_bytes()
        found += [(f"{name} {label}", _mutate_bytes(name, f)) for label, f in byte_mutations(data, rng)]
        found += [(f"{name} missing", _remove(name)), (f"{name} a directory", _replace_file(name, None))]
    found.append(("spikes.bin: a NaN spike time", _mutate_bytes("spikes.bin", lambda d: np.float64(np.nan).tobytes() + d[8:])))
    found.append(("checkpoints missing", _remove("checkpoints")))
    found.append(("protocol.json: presentations = 3", _json_edit("protocol.json", ("protocol", "presentations"), 3)))
    found.append(("rig.json: recorded_units = []", _json_edit("rig.json", ("recorded_units",), [])))
    found.append(("rig.json: one more recorded unit",
                  _json_edit("rig.json", ("recorded_units",), lambda units: units + units[:1])))
    return found


def _json_edit(name: str, keys: tuple, value) -> Edit:
    def edit(session: Path) -> None:
        path = session / name
        document = json.loads(path.read_text())
        table = document
        for key in keys[:-1]:
            table = table[key]
        table[keys[-1]] = value(table[keys[-1]]) if callable(value) else value
        path.write_text(json.dumps(document))
    return edit


def _generated(count: int, seed: int) -> list[tuple[str, Edit]]:
    """Hypothesis: a field of a log record (markers, responses, selections, accuracy, events)
    set to any JSON value, or a record appended that is any JSON value."""
    from hypothesis import strategies as st

    strategy = st.tuples(st.sampled_from(LOGS), st.integers(0, 30), st.text(max_size=10),
                         st.sampled_from(["index", "counts", "onset", "offset", "pool_index", "stimulus", "role",
                                          "trial", "kind", "chosen", "time", "responses", "aborted", "gap"]),
                         JSON_VALUES, st.booleans())
    found = []
    for log, line, _, key, value, append in examples(strategy, count, seed):
        if append:
            text = json.dumps(value)
            found.append((f"hypothesis: {log}.jsonl: line {text[:60]} appended",
                          _mutate_bytes(f"{log}.jsonl", lambda d, text=text: d + text.encode() + b"\n")))
        else:
            found.append((f"hypothesis: {log}.jsonl line {line}: {key} = {value!r:.60}", _set_field(log, line, key, value)))
    return found


def session_cases(seeds: Path, counts: dict[str, int], seed: int) -> list[Case]:
    """Corrupted copies of the seed sessions, ``counts[corpus]`` for each corpus of :data:`COMMANDS`."""
    rng = random.Random(seed)
    edits = _systematic(rng, seeds / "session")
    cases = []
    for n, (corpus, extra) in enumerate(COMMANDS.items()):
        count = counts.get(corpus, 0)
        chosen = pick(edits, count - count // 4, seed + n) + _generated(count // 4, seed + n)
        for k, (name, edit) in enumerate(chosen):
            source = "killed" if corpus == "session/resume" or k % 2 else "session"
            args = ["check-resume", "s"] if extra is None else [corpus.split("/")[1], "s", *extra]
            cases.append(Case(corpus, f"{source}: {name}", _copy_and(seeds / source, edit), args,
                              lambda folder: session_faults(folder / "s")))
    return cases


def _copy_and(source: Path, edit: Edit) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        shutil.copytree(source, folder / "s")
        edit(folder / "s")
    return prepare
