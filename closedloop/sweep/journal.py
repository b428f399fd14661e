"""A sweep's results on disk: ``OUT/results.jsonl``, the journal, and ``OUT/results.json``.

Each finished cell (done or failed) is one record, appended to ``results.jsonl`` and flushed to the
disk as it finishes, so a killed sweep loses no finished cell. ``results.json`` holds the latest
record of every cell the journal holds (of this grid and of any earlier grid run into the same
folder): ``{"updated", "done", "failed", "cells": [...]}``. It is rebuilt from the journal and
replaced whole (written aside, then renamed) at most once a second while a sweep runs, and always
when it ends, however it ends; a rerun rebuilds it from the journal, which is the truth.

A record: ``id`` (:func:`closedloop.sweep.grid.cell_id`), ``kind``, ``inputs`` (the cell's
parameters), ``status`` (``done`` or ``failed``), ``outputs`` (the figures; None when failed),
``error`` (the one-line error; None when done), ``files`` (written under ``OUT/cells/<id>/``) and
``provenance`` (closedloop's version, the git commit, Ray and where it ran, the host and Ray node,
start and end times in UTC, wall seconds and the worker's CPU seconds).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from closedloop.errors import ClosedLoopError
from closedloop.record.atomic import write_atomic

JOURNAL = "results.jsonl"
RESULTS = "results.json"
CELLS = "cells"  # OUT/cells/<id>/: the files a cell wrote
REWRITE_EVERY = 1.0  # s: results.json is rebuilt at most this often while a sweep runs


def utc(seconds: float) -> str:
    """An epoch time as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


class Journal:
    """The records of the sweeps run into ``out``: read when opened, appended as cells finish.

    Parameters
    ----------
    out : Path
        The sweep's folder (created).

    Raises
    ------
    ClosedLoopError
        ``out`` cannot be created or written (the folder named).
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.records: dict[str, dict] = {}  # the latest record of each cell, by id
        self.damaged = 0  # journal lines that are not a record (a kill mid-write)
        self._written = 0.0
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._read()
            self._file = open(self.out / JOURNAL, "a", encoding="utf-8")
        except OSError as exc:
            raise ClosedLoopError(f"--out {self.out}: cannot write ({exc.strerror or exc})") from None

    def _read(self) -> None:
        path = self.out / JOURNAL
        if not path.exists():
            return
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            try:
                record = json.loads(line)
                self.records[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                self.damaged += 1
        if text and not text.endswith("\n"):  # cut mid-line: the next record starts a line of its own
            with open(path, "a", encoding="utf-8") as file:
                file.write("\n")

    def done(self, cell: str) -> bool:
        """Whether cell ``cell`` finished (a failed cell runs again)."""
        return self.records.get(cell, {}).get("status") == "done"

    def add(self, record: dict) -> None:
        """Append ``record`` to the journal and flush it to the disk; rebuild ``results.json`` when
        the last rebuild is a second old."""
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[record["id"]] = record
        if time.monotonic() - self._written >= REWRITE_EVERY:
            self.write()

    def write(self) -> Path:
        """Rebuild ``results.json`` from the records (written aside, then renamed into place)."""
        cells = list(self.records.values())
        data = {"updated": utc(time.time()), "done": sum(r["status"] == "done" for r in cells),
                "failed": sum(r["status"] != "done" for r in cells), "cells": cells}
        path = self.out / RESULTS
        write_atomic(path, json.dumps(data, indent=1, default=float) + "\n")
        self._written = time.monotonic()
        return path

    def write_files(self, cell: str, files: dict[str, str | bytes]) -> list[str]:
        """A cell's files (name -> text or bytes) under ``cells/<cell>/``; their paths relative to the folder."""
        folder = self.out / CELLS / cell
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            write_atomic(folder / name, content)
        return [str(Path(CELLS) / cell / name) for name in files]

    def close(self) -> None:
        """Rebuild ``results.json`` and close the journal."""
        try:
            self.write()
        finally:
            self._file.close()
