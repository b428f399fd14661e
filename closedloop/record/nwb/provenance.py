"""How the closed loop chose in the NWB export: its decisions and its model checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from closedloop.record.nwb.columns import columns, typed_columns
from closedloop.record.session import SessionRecord

CHECKPOINTS = "checkpoints"
"""The session's folder of model checkpoints."""

SELECTION_UNITS = {"time": "when the decision was logged, s", "turnaround_ms": "last response to decision, ms",
                   "choose_ms": "time the strategy took to choose, ms",
                   "predicted": "the model's expected count of each chosen image (a row, as chosen) per recorded "
                                "unit (a column, in the units table's order) at the decision, spikes in the response "
                                "window"}


def add_selections(module, record: SessionRecord, t0: float, clock: str) -> None:
    """``selections``: one row per model decision (``selections.jsonl``), one typed column per key."""
    from hdmf.common import DynamicTable

    if not record.selections:
        return
    rows = [{**s, "time": s["time"] - t0} if isinstance(s.get("time"), float) else s for s in record.selections]
    specs, left_out = typed_columns(rows, "", "selections.jsonl", SELECTION_UNITS)
    unexported = f"; not exported (nested values): {', '.join(left_out)}" if left_out else ""
    module.add(DynamicTable(name="selections", columns=columns(specs), description=(
        f"one row per model decision (selections.jsonl): chosen = pool indices to show next, best first; "
        f"the pool index names the image in intervals 'presentations' column pool_index{unexported}; {clock}")))


def add_checkpoints(module, path: Path) -> None:
    """``checkpoints``: the session's model checkpoint files with their sizes and SHA-256 digests."""
    from hdmf.common import DynamicTable

    files = sorted(p for p in (path / CHECKPOINTS).glob("*") if p.is_file())
    if not files:
        return
    module.add(DynamicTable(name="checkpoints", description=(
        "model checkpoints the session saved (not stored in this file): path relative to the session directory, "
        "size and SHA-256 digest to match a copy"), columns=columns([
            ("path", "file path relative to the session directory",
             np.array([f"{CHECKPOINTS}/{f.name}" for f in files], str), None),
            ("bytes", "file size, bytes", np.array([f.stat().st_size for f in files], np.int64), None),
            ("sha256", "SHA-256 digest, hex", np.array([_sha256(f) for f in files], str), None),
        ])))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
