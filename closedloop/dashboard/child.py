"""The dashboard beside a running session: a child process (``closedloop watch``) that only reads the
session directory, so serving the page never takes time from the presentation loop.

The socket is bound here, before the session starts (a port in use is a one-line error, and the
address is known at once), and handed to the child; the child dies with this process and ignores Ctrl-C
(:mod:`closedloop.children`).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from closedloop.children import set_death_signal, sigint_shielded
from closedloop.dashboard import TOKEN_VARIABLE
from closedloop.dashboard.server import bind, url

FINAL_PUSH = 3.0  # s allowed, after the session ended, for its final state to reach the open pages
STOP = 2.0  # s a dashboard has to exit after SIGTERM before SIGKILL


class Dashboard:
    """The dashboard of ``session`` served by a child process.

    Parameters
    ----------
    session : Path
        The session directory (it may not exist yet).
    host, port, token
        Where it listens (port 0: any free one) and the token every request must carry.

    Raises
    ------
    ClosedLoopError
        A non-loopback ``host`` without a token, or an address that cannot be bound (one line).
    """

    def __init__(self, session: Path, host: str, port: int, token: str | None):
        self.token = token
        sock = bind(host, port, token)
        self.url = url(sock, host, token)
        env = {**os.environ, **({TOKEN_VARIABLE: token} if token else {})}
        with sock, sigint_shielded():
            self.process = subprocess.Popen(
                [sys.executable, "-m", "closedloop", "watch", str(session), "--host", host, "--fd",
                 str(sock.fileno()), "--wait"], pass_fds=[sock.fileno()], env=env, stdout=subprocess.DEVNULL,
                preexec_fn=functools.partial(set_death_signal, os.getpid()))

    def close(self, ended: bool = True) -> None:
        """Stop the dashboard; when the session ended, first let its final state reach every open page
        (at most :data:`FINAL_PUSH` s)."""
        if ended:
            self._wait_for_final_push()
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_for_final_push(self) -> None:
        """Return once the dashboard has read the summary and sent it to every ``/events`` client."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        state = self.url.split("?")[0] + "state"
        deadline = time.monotonic() + FINAL_PUSH
        with httpx.Client(headers=headers, timeout=FINAL_PUSH) as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    answer = client.get(state).json()
                except httpx.HTTPError:
                    return
                if answer["complete"] and not answer["server"]["clients_behind"]:
                    return
                time.sleep(0.05)
