"""``closedloop report``: one self-contained HTML page of a real session, rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from closedloop.cli import main
from closedloop.config import load_protocol, load_rig
from closedloop.errors import ClosedLoopError
from closedloop.session import run_session
from closedloop.record import read_session
from closedloop.record.session import SPIKE_DTYPE
from closedloop.report import data, figures, write_report

PRESENTATIONS = 40
UNITS = ["curvature", "dot", "orientation"]
SECTIONS = ["Summary", "Model accuracy", "Rasters and PSTHs", "Response matrix", "Chosen images",
            "Hypothesis posteriors", "Timing"]
KEPT = 25  # presentations left in the partial copy


@pytest.fixture(scope="module")
def session(tmp_path_factory, sim_files) -> Path:
    """A real 40-presentation session on the simulated rig (three units, random selection)."""
    tmp = tmp_path_factory.mktemp("report")
    sim_files.rig(tmp / "rig.toml", f"cltest-report-{uuid.uuid4().hex[:8]}")
    sim_files.protocol(tmp / "protocol.toml", PRESENTATIONS)
    run_session(load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session")
    return tmp / "session"


def _cut(path: Path, keep: int) -> None:
    """Keep ``keep`` lines of a log and half of the next (as a kill mid-write leaves it)."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]) + (lines[keep][: len(lines[keep]) // 2] if len(lines) > keep else ""))


def _posterior(k: int) -> dict:
    """The posterior a hypothesis-testing strategy might log at decision ``k``."""
    p = min(0.3 + 0.02 * k, 0.96)
    return {"curvature": p, "dot": (1 - p) / 2, "untuned": (1 - p) / 2}


@pytest.fixture(scope="module")
def partial(session, tmp_path_factory) -> Path:
    """The session as a kill after presentation 25 leaves it (no summary, every log cut there, the
    last record half-written), its decisions carrying ``state.posterior`` as a hypothesis-testing
    strategy logs them."""
    path = tmp_path_factory.mktemp("partial") / "partial"
    shutil.copytree(session, path)
    (path / "summary.json").unlink()
    _cut(path / "markers.jsonl", KEPT)
    _cut(path / "responses.jsonl", KEPT)
    end = json.loads((path / "markers.jsonl").read_text().splitlines()[KEPT - 1])["onset"] + 0.2
    for log in ("selections", "accuracy", "events"):
        times = [json.loads(line)["time"] for line in (path / f"{log}.jsonl").read_text().splitlines()]
        _cut(path / f"{log}.jsonl", sum(t < end for t in times))
    spikes = np.fromfile(path / "spikes.bin", SPIKE_DTYPE)
    (path / "spikes.bin").write_bytes(spikes[spikes["time"] < end].tobytes() + b"\x01\x02\x03")
    flips = np.fromfile(path / "frames.bin", "<f8")
    (path / "frames.bin").write_bytes(flips[flips < end].tobytes() + b"\x04")
    text = (path / "selections.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()[:-1]]
    for k, line in enumerate(lines):
        line["state"] = {"posterior": _posterior(k)}
    (path / "selections.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines)
                                           + text.splitlines()[-1])
    return path


def _rendered(report: Path, tmp_path: Path) -> str:
    """The DOM headless Chromium builds from the report, with each image's decoded width written
    into it by a script appended to a copy of the page."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium) to render the report")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "decoded";
  out.textContent = JSON.stringify([...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(out);
});
</script></body>"""))
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _pngs(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(alt, size) of every inline PNG in the report, decoded here with Pillow."""
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">', text)
    return [(alt, Image.open(io.BytesIO(base64.b64decode(b64))).size) for b64, alt in found]


@pytest.fixture(scope="module")
def report(session, partial, tmp_path_factory) -> Path:
    """``closedloop report`` of the complete session and its partial copy."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(main, ["report", str(session), str(partial), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"report written to {out}\n"
    return out


def test_report_renders_in_chromium_with_every_figure(report, tmp_path):
    text = report.read_text()
    assert not re.search(r'(src|href)="(?!data:)', text)  # self-contained: nothing fetched
    pngs = _pngs(text)
    per_session = [f"raster {u}" for u in UNITS] + ["response matrix", "chosen images"]
    assert [alt for alt, _ in pngs] == (["model accuracy"] + per_session + ["timing"]
                                        + per_session + ["hypothesis posteriors", "timing"])
    dom = _rendered(report, tmp_path)
    headings = re.findall(r"<h[23][^>]*>([^<]*)</h[23]>", dom)
    for section in SECTIONS:
        assert section in headings, headings
    assert headings.count("Session session (random)") == headings.count("Session partial (random)") == 1
    decoded = json.loads(re.search(r'<pre id="decoded">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    # Chromium decoded every image to the size Pillow reads from the same bytes
    assert [(alt, (w, h)) for alt, w, h in decoded] == pngs


def test_rasters_are_the_spikes_the_loop_counted(session):
    """Spikes aligned for the rasters, counted in the response window, are the logged responses."""
    record = read_session(session)
    units = data.units(record)
    assert [u.name for u in units] == UNITS
    index, onset = data.onsets(record)
    assert index.tolist() == list(range(PRESENTATIONS))
    window = record.protocol["window"]
    counts, roles = data.response_matrix(record, len(units))
    assert counts.shape == (3, PRESENTATIONS) and counts.sum() > 0
    assert roles == [r["role"] for r in sorted(record.responses, key=lambda r: r["index"])]
    for u, unit in enumerate(units):
        relative = data.aligned(unit.times, onset, 0.1, 0.3)
        in_window = [int(np.sum((s >= window["start"]) & (s < window["end"]))) for s in relative]
        assert in_window == counts[u].astype(int).tolist()


def test_chosen_images_are_those_of_the_selections(session):
    record = read_session(session)
    order = data.chosen_order(record)
    every = [i for s in record.selections for i in s["chosen"]]
    assert sorted(order) == sorted(set(every)) and order[0] == every[0]


def test_a_partial_session_reports_what_it_has_beside_a_complete_one(report):
    text = report.read_text()
    assert "Partial session" in text and f"{KEPT} presentations" in text
    assert f"<td>{KEPT} of {PRESENTATIONS}</td>" in text and f"<td>{PRESENTATIONS} of {PRESENTATIONS}</td>" in text
    assert "<td>complete</td>" in text and "PARTIAL: no summary.json" in text
    # the partial session's decisions carry posteriors, the complete one's do not
    assert text.count("No decision carried a posterior") == 1


def test_accuracy_curves_of_several_sessions_are_overlaid(session, partial):
    curves = [(f"{p.name}", data.accuracy(read_session(p))) for p in (session, partial)]
    x, r = curves[0][1]["r_true"]
    assert r.shape == (len(x), 3) and np.all(np.diff(x) >= 0)
    figure = figures.accuracy(curves)
    for ax in figure.axes:
        assert ax.get_legend_handles_labels()[1] == ["session", "partial"]


def test_hypothesis_posteriors_are_read_from_the_selections_state(session, partial):
    record = read_session(partial)
    x, probabilities = data.posteriors(record)
    assert list(probabilities) == ["curvature", "dot", "untuned"]
    assert x.tolist() == [s["responses"] for s in record.selections]
    for k in (0, len(x) - 1):
        assert {name: p[k] for name, p in probabilities.items()} == pytest.approx(_posterior(k))
    assert data.posteriors(read_session(session)) is None  # random selection keeps no posterior


def _edit_response(path: Path, line: int, **change) -> None:
    lines = (path / "responses.jsonl").read_text().splitlines(keepends=True)
    lines[line - 1] = json.dumps({**json.loads(lines[line - 1]), **change}) + "\n"
    (path / "responses.jsonl").write_text("".join(lines))


@pytest.mark.parametrize("damage, named", [
    (lambda p: shutil.rmtree(p), "not a directory"),
    (lambda p: (p / "rig.json").write_text("{not json"), "rig.json: not JSON"),
    (lambda p: (p / "markers.jsonl").write_text('{"index": 0}\nnot json\n{"index": 2}\n'),
     "markers.jsonl line 1: field 'stimulus': Field required"),
    (lambda p: (p / "responses.jsonl").unlink(), "missing responses.jsonl"),
    (lambda p: _edit_response(p, 3, counts=[1, -1, 0]),
     "responses.jsonl line 3: field 'counts[1]': Input should be greater than or equal to 0"),
    (lambda p: _edit_response(p, 3, index=1), "responses.jsonl line 3: field 'index': presentation 1 answered twice"),
    (lambda p: (p / "protocol.json").write_text(json.dumps({"protocol": {"name": 3}})),
     "protocol.json: field 'protocol.name': Input should be a valid string"),
])
def test_a_missing_or_corrupt_session_is_one_line_naming_the_file(session, tmp_path, damage, named):
    path = tmp_path / "damaged"
    shutil.copytree(session, path)
    damage(path)
    with pytest.raises(ClosedLoopError, match=re.escape(named)):
        write_report([path], tmp_path / "r.html")
    result = CliRunner().invoke(main, ["report", str(path), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr and named in result.stderr
    assert not (tmp_path / "r.html").exists()
