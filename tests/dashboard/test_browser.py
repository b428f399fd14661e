"""The dashboard in headless Chromium: a live simulated session's page updates as presentations arrive
(pushed, one page load) and ends showing what the files hold; `watch` shows a finished session."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from closedloop.record import read_session
from closedloop.simulate.generate import protocol_text, rig_text
from tests.dashboard.browser import CHROMIUM, FLAGS, Chromium

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM} (apt-get install chromium)")
PRESENTATIONS = 120
NUMBERS = ("presented", "total", "responses", "deadline-misses", "dropped-frames", "decisions", "status")


def dashboard_url(process: subprocess.Popen) -> str:
    """The address a `closedloop run --dashboard` or `closedloop watch` prints (on stderr)."""
    for line in process.stderr:
        if found := re.search(r"(http://127\.0\.0\.1:\d+/\S*)", line):
            return found[1]
    raise AssertionError(f"no dashboard address printed; exit status {process.wait()}")


def numbers(browser: Chromium) -> dict[str, str]:
    return {key: browser.text(key) for key in NUMBERS}


def test_live_page_follows_a_simulated_session(tmp_path, stream_name):
    (tmp_path / "rig.toml").write_text(rig_text(stream_name))
    (tmp_path / "protocol.toml").write_text(protocol_text(PRESENTATIONS))
    run = subprocess.Popen([sys.executable, "-m", "closedloop", "run", tmp_path / "protocol.toml", "--rig",
                            tmp_path / "rig.toml", "--out", tmp_path / "sessions", "--dashboard", "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    browser = Chromium(tmp_path / "profile")
    try:
        browser.open(dashboard_url(run))
        first = int(browser.wait_for("+document.getElementById('presented').textContent", "a first presentation"))
        browser.evaluate("window.loadedOnce = true")  # gone if the page were reloaded
        assert first < PRESENTATIONS
        later = int(browser.wait_for(f"document.getElementById('presented').textContent > {first} && "
                                     "+document.getElementById('presented').textContent", "more presentations"))
        assert first < later and browser.evaluate("window.loadedOnce") is True
        assert browser.evaluate("document.querySelectorAll('section.unit').length") == 3
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        summary = json.loads(stdout)
        record = read_session(summary["session"])
        final = numbers(browser)  # the final push reached the page before the dashboard stopped
        assert final == {"presented": str(len(record.markers)), "total": str(PRESENTATIONS),
                         "responses": str(len(record.responses)), "deadline-misses": str(summary["deadline_misses"]),
                         "dropped-frames": str(sum(m["dropped_frames"] for m in record.markers)),
                         "decisions": str(len(record.selections)), "status": "complete"}
        assert browser.evaluate("window.loadedOnce") is True
        spikes = browser.evaluate("[...document.querySelectorAll('section.unit')].map(u => +u.dataset.spikes)")
        assert spikes == [int(((record.spikes["channel"] == u["channel"]) & (record.spikes["unit"] == u["unit"])).sum())
                          for u in record.rig["recorded_units"]]
        shown = browser.evaluate("[...document.querySelectorAll('figure.chosen')].map(f => +f.dataset.poolIndex)")
        assert shown[:len(record.selections[-1]["chosen"])] == record.selections[-1]["chosen"]
        assert browser.evaluate("[...document.querySelectorAll('figure.chosen img')].every(i => i.naturalWidth > 0)")
    finally:
        browser.close()
        if run.poll() is None:
            run.kill()
            run.communicate()


class Ids(HTMLParser):
    """The text of every element with an id, in a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        self._open.append(dict(attrs).get("id"))

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for element in filter(None, self._open):
            self.text[element] = self.text.get(element, "") + data


def test_watch_shows_a_finished_session(small_session, tmp_path):
    watch = subprocess.Popen([sys.executable, "-m", "closedloop", "watch", small_session, "--port", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = dashboard_url(watch)
        dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        watch.terminate()
        watch.wait(10)
    ids = Ids()
    ids.feed(dom)
    record = read_session(small_session)
    assert ids.text["presented"] == ids.text["total"] == str(len(record.markers)) == "8"
    assert ids.text["status"] == "complete" and ids.text["responses"] == "8"
    assert ids.text["time-left"] == "0 s"
