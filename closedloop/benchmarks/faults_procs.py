"""Processes of the fault-injection benchmark: launched, watched, killed and accounted for.

Every command runs in its own process group with an environment variable (:data:`TAG`) naming
its launch. Everything it starts inherits the variable, so its descendants are found (with
psutil) even after its own death has made them children of init: that is how orphans are told
apart from anything else on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

TAG = "CLOSEDLOOP_FAULTS_TAG"
POLL = 0.05  # s between looks at a process or a file
ROLES = (("simulate", "simulator"), ("spawn_main", "model worker"), ("resource_tracker", "resource tracker"),
         ("faults_outlet", "outlet"), (" run ", "run"), (" resume ", "resume"))


def role(process: psutil.Process) -> str:
    """What a closedloop process is, from its command line (``other`` when unknown or gone)."""
    try:
        line = " " + " ".join(process.cmdline()) + " "
    except psutil.Error:
        return "other"
    return next((name for key, name in ROLES if key in line), "other")


def _alive(process: psutil.Process) -> bool:
    """Running (a zombie is dead: only init has not reaped it yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (not a zombie)."""
    try:
        return _alive(psutil.Process(pid))
    except psutil.Error:
        return False


@dataclass
class Launch:
    """A command in its own process group, tagged; its output goes to ``<name>.out`` and ``.err``.

    Attributes
    ----------
    process : subprocess.Popen
        The launched command (its pid is its process group's id).
    tag : str
        The value of :data:`TAG` in its environment and its descendants'.
    started : float
        ``time.monotonic()`` at launch, s.
    """

    process: subprocess.Popen
    tag: str
    stdout: Path
    stderr: Path
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, args: list[str], folder: Path, name: str, source: Path | None = None) -> Launch:
        """Run ``args`` in ``folder`` (``python`` means this interpreter), importing closedloop
        from the project folder ``source`` when given."""
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, TAG: tag, "PYTHONUNBUFFERED": "1"}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        stdout, stderr = folder / f"{name}.out", folder / f"{name}.err"
        command = [sys.executable if a == "python" else a for a in args]
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(process, tag, stdout, stderr)

    @property
    def pid(self) -> int:
        return self.process.pid

    def elapsed(self) -> float:
        """Seconds since launch."""
        return time.monotonic() - self.started

    def children(self) -> list[psutil.Process]:
        """Live descendants (cheap: follows parent links only)."""
        try:
            return [p for p in psutil.Process(self.pid).children(recursive=True) if _alive(p)]
        except psutil.Error:
            return []

    def child(self, name: str) -> psutil.Process | None:
        """The live descendant with role ``name`` (see :func:`role`), if any."""
        return next((p for p in self.children() if role(p) == name), None)

    def tagged(self) -> list[psutil.Process]:
        """Every live process carrying this launch's tag, the launched one excepted."""
        found = []
        for process in psutil.process_iter(["uids"]):
            if process.pid == self.pid or process.info["uids"] is None or process.info["uids"].real != os.getuid():
                continue
            try:
                if process.environ().get(TAG) == self.tag and _alive(process):
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if still running after ``timeout`` s."""
        try:
            return self.process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """``kill -9`` of the launched process alone, then reap it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the launched process's whole group."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def orphans(self, grace: float) -> list[dict]:
        """Tagged processes still alive ``grace`` s from now (returns early when none is left):
        pid and role of each. Call once the launched process has exited."""
        deadline = time.monotonic() + grace
        left = self.tagged()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [p for p in left if _alive(p)]
        return [{"pid": p.pid, "role": role(p)} for p in left]

    def clean_up(self) -> None:
        """``kill -9`` the launched process's group and every tagged process left, by pid."""
        if self.process.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.process.wait()
        for process in self.tagged():
            try:
                process.kill()
            except psutil.Error:
                pass

    def error_line(self) -> str:
        """The last line of its standard error that names an error (else its last line)."""
        lines = [line.strip() for line in self.stderr.read_text(errors="replace").splitlines() if line.strip()]
        marked = [line for line in lines if "rror" in line or line.startswith("Aborted")]
        return (marked or lines or [""])[-1][:300]


def wait_for(condition, timeout: float) -> bool:
    """Poll ``condition()`` until it holds (True) or ``timeout`` s pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True
