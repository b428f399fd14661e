"""A small valid session written by the real SessionWriter, to corrupt in tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from closedloop.record import SessionWriter
from closedloop.stimuli import generate_pool

UNITS = [{"name": "a", "channel": 1, "unit": 1}, {"name": "b", "channel": 2, "unit": 1}]
PROTOCOL = {"protocol": {"name": "small", "seed": 0, "presentations": 8, "on_frames": 6},
            "window": {"start": 0.05, "end": 0.15}, "selection": {"strategy": "random"}}
SUBJECT = {"id": "M1", "species": "Macaca mulatta", "sex": "M", "age": "P6Y"}
RIG = {"rig": {"name": "lab", "simulated": False}, "display": {"refresh_rate": 60.0}, "subject": SUBJECT,
       "recorded_units": UNITS}
PRESENTATIONS = 8
T = 100.0  # s, LSL clock: the first onset


def role(i: int) -> str:
    """Presentation ``i``'s role: every fourth held out."""
    return "heldout" if i % 4 == 3 else "chosen"


def pool_index(i: int) -> int:
    return (5 * i) % 6


def write_small_session(path: Path, answered: int = PRESENTATIONS, complete: bool = True) -> Path:
    """8 presentations of a 6-image pool (two per trial, every fourth held out), spikes of two
    units, the first ``answered`` responses, a decision, an accuracy report, and
    ``summary.json`` (status complete) when ``complete``."""
    pool = generate_pool({"dot": 3, "grating": 3}, 16, seed=0)
    writer = SessionWriter(path, PROTOCOL, RIG, pool)
    writer.log("selections", {"strategy": "random", "chosen": [1, 2], "responses": 0, "received": 0,
                              "core_version": 0, "cores_trained_on": 0, "turnaround_ms": 1.5})
    info = []
    for i in range(PRESENTATIONS):
        onset = T + 0.25 * i
        info.append({"stimulus": pool.ids[pool_index(i)], "pool_index": pool_index(i), "role": role(i),
                     "trial": i // 2})
        writer.log("markers", {"index": i, **info[i], "onset": onset, "offset": onset + 0.1,
                               "dropped_frames": 0, "frame_intervals": [1 / 60] * 6})
        writer.spikes(onset + np.array([0.06, 0.07, 0.08]), np.array([1, 2, 1]), np.array([1, 1, 1]))
        writer.frames(onset + np.arange(7) / 60)
        if i % 2:
            writer.log("events", {"kind": "trial", "trial": i // 2, "end": "completed", "shown": [i - 1, i],
                                  "requeued": [], "reward": True, "time": onset + 0.2})
    for i in range(answered):
        writer.log("responses", {"index": i, "onset": T + 0.25 * i, "counts": [2, 1], **info[i]})
    writer.log("accuracy", {"responses": answered, "core_version": 0, "heldout_shown": 1, "r_observed": [0.5, None]})
    writer.close({"status": "complete", "presentations": PRESENTATIONS} if complete else None)
    return path


@pytest.fixture(name="write_small_session")
def write_small_session_fixture():
    """:func:`write_small_session`, for tests that write the session themselves."""
    return write_small_session


@pytest.fixture
def small_session(tmp_path) -> Path:
    """A complete small session in ``tmp_path / "s"``."""
    return write_small_session(tmp_path / "s")
