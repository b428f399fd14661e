"""Sessions for the dashboard's tests, written by the real SessionWriter, and a dashboard served on a free port."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from closedloop.dashboard.server import bind, make_app, url
from closedloop.record import SessionWriter
from closedloop.stimuli import generate_pool
from tests.record.conftest import PROTOCOL, RIG, T, write_small_session

TOTAL = 12  # the protocol's presentations
PREDICTED = [[1.5, 0.5], [2.5, 1.0]]  # the model's mean counts per unit for each decision's two images


def pool_index(i: int) -> int:
    return (5 * i) % 6


class LiveSession:
    """A session being written: every second presentation follows a decision (with predictions, a
    posterior and a turnaround), presentation 5 shows a fallback (deadline miss), presentation 2
    dropped a frame, an accuracy report every four responses."""

    def __init__(self, path: Path):
        self.pool = generate_pool({"dot": 3, "grating": 3}, 16, seed=0)
        self.writer = SessionWriter(path, {**PROTOCOL, "protocol": {**PROTOCOL["protocol"], "presentations": TOTAL}},
                                    RIG, self.pool)
        self.path, self.presented = path, 0

    def present(self, count: int) -> None:
        """``count`` more presentations with their spikes, decisions, responses and events; on disk on return."""
        for i in range(self.presented, self.presented + count):
            onset = T + 0.25 * i
            if i % 2 == 0:
                p = 0.5 + 0.04 * i
                self.writer.log("selections", {"strategy": "test", "chosen": [pool_index(i), pool_index(i + 1)],
                                               "predicted": PREDICTED, "turnaround_ms": 2.0 + i,
                                               "responses": i, "time": onset - 0.05,
                                               "state": {"posterior": {"tuned": p, "flat": 1 - p}}})
            role = "fallback" if i == 5 else "chosen"
            if i == 5:
                self.writer.log("events", {"kind": "deadline_miss", "index": i, "time": onset - 0.01})
            info = {"stimulus": self.pool.ids[pool_index(i)], "pool_index": pool_index(i), "role": role,
                    "trial": i // 2}
            self.writer.log("markers", {"index": i, **info, "onset": onset, "offset": onset + 0.1,
                                        "dropped_frames": int(i == 2), "frame_intervals": [1 / 60] * 6})
            self.writer.spikes(onset + np.array([0.06, 0.07, 0.08 + 0.001 * i]), np.array([1, 2, 1]),
                               np.array([1, 1, 1]))
            self.writer.frames(onset + np.arange(7) / 60)
            self.writer.log("responses", {"index": i, "onset": onset, "counts": [2, 1 + i % 2], **info})
            if i % 4 == 3:
                self.writer.log("accuracy", {"responses": i + 1, "r_observed": [0.1 * i, None],
                                             "r_true": [0.05 * i, 0.2]})
        self.presented += count
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close({"status": "complete", "presentations": self.presented, "duration_s": 3.0})


@pytest.fixture
def small_session(tmp_path) -> Path:
    """The record tests' small complete session (from before decisions recorded predictions)."""
    return write_small_session(tmp_path / "s")


@pytest.fixture
def live_session(tmp_path) -> LiveSession:
    """A session in ``tmp_path / "live"`` with nothing presented yet (the writer open)."""
    session = LiveSession(tmp_path / "live")
    yield session
    if session.writer._thread.is_alive():
        session.writer.close()


class Served:
    """The dashboard of a session served by uvicorn from a thread, on a free loopback port."""

    def __init__(self, path: Path, token: str | None = None):
        sock = bind("127.0.0.1", 0, token)
        self.url = url(sock, "127.0.0.1", None)
        config = uvicorn.Config(make_app(path, False, token), log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve(wait_until):
    """``serve(path, token=None)``: the dashboard of ``path`` answering on a free port (``.url``)."""
    started = []

    def start(path: Path, token: str | None = None) -> Served:
        served = Served(path, token)
        started.append(served)
        wait_until(lambda: served.server.started, "the dashboard answers")
        return served

    yield start
    for served in started:
        served.stop()
