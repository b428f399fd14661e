"""Shared fixtures: a virtual display, unique LSL stream names, the shared V4 data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def display():
    """An X display: the one set in $DISPLAY, or an Xvfb started for the tests."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip("no X display and no Xvfb (apt-get install xvfb)")
    for number in range(99, 140):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    name = f":{number}"
    server = subprocess.Popen(["Xvfb", name, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"Xvfb {name} did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = name
    yield name
    del os.environ["DISPLAY"]
    server.terminate()
    server.wait()


@pytest.fixture
def stream_name(request) -> str:
    """A unique LSL stream name, so tests never see each other's outlets."""
    return f"cltest-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
