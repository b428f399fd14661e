"""Shared fixtures: a virtual display, unique LSL stream names, the shared V4 data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from closedloop.simulate.generate import protocol_text, rig_text

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, as the model worker runs: reproducible, and much
    faster than two on a busy machine; the count is put back afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wait_until(condition, what: str, timeout: float = 10.0, poll: float = 0.005) -> None:
    """Return as soon as ``condition()`` holds (polled every ``poll`` s); fail naming ``what`` after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(poll)


@pytest.fixture(scope="session")
def wait_until():
    """``wait_until(condition, what, timeout=10)``: wait on a condition, never blindly."""
    return _wait_until


@pytest.fixture
def stream_name(request) -> str:
    """A unique LSL stream name, so tests never see each other's outlets."""
    return f"cltest-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def shared_v4_path() -> Path:
    """Where the shared V4 data lives: $CLOSEDLOOP_SHARED_V4, else ../shared/v4 beside the project."""
    return Path(os.environ.get("CLOSEDLOOP_SHARED_V4", ROOT.parent / "shared" / "v4"))


@pytest.fixture(scope="session")
def shared_v4() -> Path:
    """The shared V4 folder (compact_models/, sessions/); skips when it is absent."""
    path = shared_v4_path()
    if not (path / "compact_models").is_dir():
        pytest.skip(f"real V4 data not found at {path} (set CLOSEDLOOP_SHARED_V4 or place ../shared/v4)")
    return path


class SimFiles:
    """Writers of small rig and protocol files for end-to-end runs."""

    @staticmethod
    def rig(path: Path, stream_name: str, fixation_breaks: float | None = None) -> None:
        """A headless simulated rig with the three built-in units, on its own LSL streams; with
        ``fixation_breaks`` (per s) the simulator also plays an eye on a gaze stream."""
        breaks = {} if fixation_breaks is None else {"fixation_breaks": fixation_breaks, "break_duration": 0.1}
        path.write_text(rig_text(stream_name, gaze=fixation_breaks is not None, **breaks))

    @staticmethod
    def protocol(path: Path, presentations: int) -> None:
        """A short, small protocol (random selection) that runs in seconds."""
        path.write_text(protocol_text(presentations))


class Processes:
    """Looking at the processes a run started (psutil), for tests that kill it."""

    @staticmethod
    def running(process) -> bool:
        """Still running (a zombie has ended: nobody may be left to reap it once its parent died)."""
        import psutil

        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    @staticmethod
    def left_after(children: list, seconds: float) -> list[str]:
        """The command lines of ``children`` still running ``seconds`` from now (returning as soon
        as none is); those are then killed, so a test leaves nothing behind whatever it asserts."""
        import psutil

        deadline = time.monotonic() + seconds
        while any(Processes.running(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = []
        for process in filter(Processes.running, children):
            try:
                left.append(" ".join(process.cmdline()))
                process.kill()
            except psutil.Error:  # it ended just now
                pass
        return left


@pytest.fixture(scope="session")
def processes() -> type[Processes]:
    return Processes


@pytest.fixture(scope="session")
def sim_files() -> type[SimFiles]:
    return SimFiles


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for every test that needs it; shut down at the end of the run."""
    import ray

    from closedloop.cluster import connect

    yield connect(None, cpus=2)
    ray.shutdown()
