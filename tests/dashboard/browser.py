"""Headless Chromium driven over its DevTools protocol (a websocket): open a page once, read its DOM as
its scripts change it."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]


class Chromium:
    """A headless browser showing one page."""

    def __init__(self, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"  # a file, not a pipe nobody drains
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([str(CHROMIUM), *FLAGS, "--remote-debugging-port=0",
                                             f"--user-data-dir={profile}", "about:blank"],
                                            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        # it writes "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" once it listens
        while not (found := re.search(r"ws://127\.0\.0\.1:(\d+)/", self.log.read_text())):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"chromium did not open its DevTools port: {self.log.read_text()[-500:]}")
            time.sleep(0.05)
        targets = httpx.get(f"http://127.0.0.1:{found[1]}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.socket = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        """One DevTools command's result (events met meanwhile are skipped)."""
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while (answer := json.loads(self.socket.recv(timeout=30))).get("id") != number:
            pass
        assert "error" not in answer, answer
        return answer["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self, element_id: str) -> str | None:
        return self.evaluate(f"document.getElementById({element_id!r})?.textContent ?? null")

    def wait_for(self, expression: str, what: str, timeout: float = 120.0):
        """The value of ``expression`` once it is truthy (looked at every 0.1 s)."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:g} s: {what}")
            time.sleep(0.1)
        return value

    def close(self) -> None:
        self._stack.close()
        self.process.terminate()
        self.process.wait(10)
