"""``closedloop report``: one self-contained HTML page of a real session, rendered by headless Chromium: every
figure decodes and fits the page, the contents link every section, and the per-unit figures (ranked images,
tuning, predicted against observed) show the numbers the session files hold."""

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
from closedloop.report import data, figures, timing, write_report
from closedloop.report.html import BODY_WIDTH
from closedloop.report.tuning import tuning
from closedloop.report.units import RANKED
from closedloop.simulate.generate import protocol_text, rig_text

PRESENTATIONS = 40
UNITS = ["curvature", "dot", "orientation"]
SECTIONS = ["Summary", "Model accuracy", "Rasters and PSTHs", "Response matrix", "Units", "Chosen images",
            "Hypothesis posteriors", "Eye traces", "Recorded streams", "Timing"]
KEPT = 25  # presentations left in the partial copy
SIZE_DEG = 5.6  # 112 px stimuli: 16 a row made the chosen-images gallery 1,860 px wide
HYPOTHESIS = {"strategy": "hypothesis", "warmup": 0, "batch": 4}
HYPOTHESES = """[selection.params]
neuron = "dot"
seed = 0
hypotheses = [
    {name = "curvature", model = "curvature"},
    {name = "dot", model = "dot"},
    {name = "untuned", model = "untuned"},
]
"""


def _run(tmp: Path, presentations: int, **tables) -> Path:
    """A real session on the simulated rig (three units, gaze recorded) of 112 px stimuli."""
    (tmp / "rig.toml").write_text(rig_text(f"cltest-report-{uuid.uuid4().hex[:8]}", gaze=True))
    text = protocol_text(presentations, stimulus={"size_deg": SIZE_DEG}, **tables)
    if tables.get("selection", {}).get("strategy") == "hypothesis":
        text = text.replace("[heldout]", HYPOTHESES + "[heldout]")
    (tmp / "protocol.toml").write_text(text)
    run_session(load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session")
    return tmp / "session"


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """A 40-presentation session, random selection."""
    return _run(tmp_path_factory.mktemp("report"), PRESENTATIONS)


@pytest.fixture(scope="module")
def hypothesis(tmp_path_factory) -> Path:
    """A 24-presentation session of a hypothesis test (its decisions log the posterior)."""
    return _run(tmp_path_factory.mktemp("hypothesis"), 24, selection=HYPOTHESIS)


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


def _rendered(report: Path, tmp_path: Path) -> tuple[str, dict]:
    """The DOM headless Chromium builds from the report in a 1,400 px wide window, and what a script appended
    to a copy of the page measured once it loaded: each image's decoded size and displayed box, the body's
    content box and the page's scroll width."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium) to render the report")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", """<script>
window.addEventListener("load", () => {
  const body = document.body.getBoundingClientRect(), style = getComputedStyle(document.body);
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => {
      const box = i.getBoundingClientRect();
      return [i.alt, i.naturalWidth, i.naturalHeight, box.left, box.right];
    }),
    body: [body.left + parseFloat(style.paddingLeft), body.right - parseFloat(style.paddingRight)],
    scroll: document.documentElement.scrollWidth, window: window.innerWidth});
  document.body.appendChild(out);
});
</script></body>"""))
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                             probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = re.search(r'<pre id="measured">(.*?)</pre>', result.stdout, re.S).group(1)
    return result.stdout, json.loads(measured.replace("&quot;", '"'))


def _pngs(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(alt, size) of every inline PNG in the report, decoded here with Pillow."""
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">', text)
    assert len(found) == text.count("<img ")
    return [(alt, Image.open(io.BytesIO(base64.b64decode(b64))).size) for b64, alt in found]


@pytest.fixture(scope="module")
def report(session, partial, tmp_path_factory) -> Path:
    """``closedloop report`` of the complete session and its partial copy."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(main, ["report", str(session), str(partial), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"report written to {out}\n"
    return out


TILE = re.compile(r"(most|least) (\d+): pool (\d+)")


def test_report_renders_in_chromium_with_every_figure_inside_the_page(session, report, tmp_path):
    text = report.read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # self-contained: nothing fetched
    pngs = _pngs(text)
    # predicted against observed where the decisions logged predictions (sessions since they are recorded)
    predicted = any("predicted" in s for s in read_session(session).selections)
    kinds = ("families", "tuning", "predicted") if predicted else ("families", "tuning")
    per_unit = [f"{kind} {u}" for u in UNITS for kind in kinds]
    per_session = [f"raster {u}" for u in UNITS] + ["response matrix"] + per_unit + ["chosen images"]
    figures_only = [alt for alt, _ in pngs if not TILE.fullmatch(alt)]
    assert figures_only == (["model accuracy"] + per_session + ["gaze", "timing"]
                            + per_session + ["hypothesis posteriors", "gaze", "timing"])
    assert sum(bool(TILE.fullmatch(alt)) for alt, _ in pngs) == 2 * len(UNITS) * 2 * RANKED
    dom, measured = _rendered(report, tmp_path)
    headings = re.findall(r"<h[234][^>]*>([^<]*)</h[234]>", dom)
    for section in SECTIONS:
        assert section in headings, headings
    assert headings.count("Session session (random)") == headings.count("Session partial (random)") == 1
    # Chromium decoded every image to the size Pillow reads from the same bytes
    assert [(alt, (w, h)) for alt, w, h, _, _ in measured["images"]] == pngs
    # every figure is drawn no wider than the body (1,300 px), and displayed inside it: nothing scrolls sideways
    left, right = measured["body"]
    assert right - left == BODY_WIDTH
    assert f"max-width: {BODY_WIDTH}px" in text and "img { max-width: 100%; height: auto; }" in text
    for alt, width, _, shown_left, shown_right in measured["images"]:
        assert width <= BODY_WIDTH and left - 0.5 <= shown_left and shown_right <= right + 0.5, alt
    assert measured["scroll"] <= measured["window"]
    chosen = dict(pngs)["chosen images"]
    assert chosen[0] > BODY_WIDTH * 0.9  # the gallery fills the page's width rather than overflowing it


def test_the_contents_link_every_section(report):
    text = report.read_text()
    nav = re.search(r'<nav id="contents">(.*?)</nav>', text, re.S).group(1)
    links = re.findall(r'href="#([^"]+)"', nav)
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    headings = re.findall(r'<h[234] id="([^"]+)">', text)
    assert links == headings  # every heading, in page order, each once
    assert {f"session-{k}-unit-{u}" for k in (0, 1) for u in range(len(UNITS))} <= set(links)
    assert set(links) <= set(ids)


def test_the_posterior_section_is_shown_only_when_a_strategy_keeps_one(session, hypothesis, tmp_path):
    random_report = write_report([session], tmp_path / "random.html").read_text()
    assert "Hypothesis posteriors" not in random_report and 'alt="hypothesis posteriors"' not in random_report
    assert all(s.get("state") is None for s in read_session(session).selections)
    record = read_session(hypothesis)
    assert record.selections and all("posterior" in s["state"] for s in record.selections)
    hypothesis_report = write_report([hypothesis], tmp_path / "hypothesis.html").read_text()
    assert '<h3 id="session-0-posteriors">Hypothesis posteriors</h3>' in hypothesis_report
    assert hypothesis_report.count('alt="hypothesis posteriors"') == 1


def test_every_timing_panel_labels_its_axes(session):
    axes = timing.figure(read_session(session)).axes
    assert len(axes) == 2
    assert [ax.get_ylabel() for ax in axes] == ["flips", "dropped frames"]
    assert all(ax.get_xlabel() for ax in axes)


def _whole_responses(path: Path) -> list[dict]:
    """responses.jsonl's responses that were neither cut by a fixation break nor by a spike gap."""
    rows = [json.loads(line) for line in (path / "responses.jsonl").read_text().splitlines()]
    return [r for r in rows if not r.get("aborted") and not r.get("gap")]


def _seconds(path: Path) -> float:
    window = json.loads((path / "protocol.json").read_text())["window"]
    return window["end"] - window["start"]


def _pool_params(path: Path) -> tuple[list[str], list[dict]]:
    meta = json.loads(str(np.load(path / "stimuli.npz")["meta"]))
    return meta["families"], meta["params"]


def test_top_and_bottom_images_are_ordered_by_their_mean_response(session, report):
    """The ranked images of each unit, as the report shows them, against means computed here from
    responses.jsonl."""
    responses, seconds = _whole_responses(session), _seconds(session)
    text = report.read_text().split('id="session-1"')[0]  # the complete session's part
    for u, name in enumerate(UNITS):
        by_image: dict[int, list[float]] = {}
        for r in responses:
            by_image.setdefault(r["pool_index"], []).append(r["counts"][u] / seconds)
        means = {i: float(np.mean(v)) for i, v in by_image.items()}
        top = sorted(means, key=lambda i: (-means[i], i))[:RANKED]
        bottom = sorted(means, key=lambda i: (means[i], i))[:RANKED]
        assert means[top[0]] > means[bottom[0]]
        section = text.split(f'id="session-0-unit-{u}"')[1].split("<h4")[0]
        tiles = re.findall(r'alt="(most|least) (\d+): pool (\d+)"><figcaption>#(\d+) (\w+): ([\d.]+) spikes/s, n (\d+)',
                           section)
        shown = {which: [(int(i), float(value), int(n)) for w, _, i, _, _, value, n in tiles if w == which]
                 for which in ("most", "least")}
        for which, expected in (("most", top), ("least", bottom)):
            assert [i for i, _, _ in shown[which]] == expected
            assert [v for _, v, _ in shown[which]] == [round(means[i], 1) for i in expected]
            assert [n for _, _, n in shown[which]] == [len(by_image[i]) for i in expected]


def _parameter(family: str, params: dict, name: str) -> float | None:
    """A tuning axis computed here from a stimulus's parameters."""
    if name == "curvature max":
        return max(params["curvatures"])
    if family == "dot" and name in ("x", "y"):
        return float(np.mean([p["xy".index(name)] for p in params["positions"]]))
    return params.get(name)


@pytest.mark.parametrize("family, name", [("contour", "curvature max"), ("contour", "rotation"),
                                          ("dot", "diameter"), ("dot", "x"), ("grating", "orientation")])
def test_tuning_points_are_the_mean_responses_per_parameter_value(session, family, name):
    responses, seconds = _whole_responses(session), _seconds(session)
    families, params = _pool_params(session)
    expected: dict[float, list[list[float]]] = {}
    for r in responses:
        if families[r["pool_index"]] == family:
            value = _parameter(family, params[r["pool_index"]], name)
            expected.setdefault(float(value), []).append([c / seconds for c in r["counts"]])
    assert len(expected) >= 2
    found = tuning(read_session(session))
    curve = found[family].curves[name]
    values = sorted(expected)
    np.testing.assert_allclose(curve.values, values)
    np.testing.assert_allclose(curve.mean, np.array([np.mean(expected[v], axis=0) for v in values]).T)
    assert curve.presentations.tolist() == [len(expected[v]) for v in values]
    assert found[family].presentations == sum(curve.presentations)
    # the figure plots those points, in the family's row, in the panel the parameter names
    u = 1
    curves = {f: {p: (c.values, c.mean[u], c.presentations) for p, c in t.curves.items()} for f, t in found.items()}
    figure = figures.tuning(UNITS[u], curves)
    columns = max(len(c) for c in curves.values())
    panel = figure.axes[list(curves).index(family) * columns + list(curves[family]).index(name)]
    assert panel.get_xlabel() == name
    np.testing.assert_allclose(panel.collections[0].get_offsets(), np.column_stack([curve.values, curve.mean[u]]))


def test_mean_response_per_family_is_over_its_presentations(session):
    responses, seconds = _whole_responses(session), _seconds(session)
    families, _ = _pool_params(session)
    found = tuning(read_session(session))
    assert list(found) == [f for f in dict.fromkeys(families) if any(families[r["pool_index"]] == f for r in responses)]
    for family, t in found.items():
        rates = np.array([r["counts"] for r in responses if families[r["pool_index"]] == family]) / seconds
        assert t.presentations == len(rates)
        np.testing.assert_allclose(t.mean, rates.mean(axis=0))
        np.testing.assert_allclose(t.sem, rates.std(axis=0, ddof=1) / np.sqrt(len(rates)))


def _with_predictions(session: Path, path: Path, predicted) -> Path:
    """A copy of ``session`` whose decisions log ``predicted(k, j, u)`` (decision k, chosen j, unit u), or
    none when ``predicted`` is None."""
    shutil.copytree(session, path)
    lines = [json.loads(line) for line in (path / "selections.jsonl").read_text().splitlines()]
    for k, line in enumerate(lines):
        line.pop("predicted", None)
        if predicted is not None:
            line["predicted"] = [[predicted(k, j, u) for u in range(len(UNITS))] for j in range(len(line["chosen"]))]
    (path / "selections.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_predicted_against_observed_pairs_each_chosen_presentation_with_its_decision(session, tmp_path):
    path = _with_predictions(session, tmp_path / "predicted", lambda k, j, u: float(100 * k + 10 * j + u))
    selections = [json.loads(line) for line in (path / "selections.jsonl").read_text().splitlines()]
    seconds = _seconds(path)
    expected_predicted, expected_observed = [], []
    for r in _whole_responses(path):
        before = [s for s in selections if s["time"] <= r["onset"] and r["pool_index"] in s["chosen"]]
        if r["role"] == "chosen" and before:
            s = before[-1]
            expected_predicted.append(np.array(s["predicted"][s["chosen"].index(r["pool_index"])]) / seconds)
            expected_observed.append(np.array(r["counts"]) / seconds)
    assert len(expected_predicted) > 10
    predicted, observed = data.predicted_observed(read_session(path))
    np.testing.assert_allclose(predicted, expected_predicted)
    np.testing.assert_allclose(observed, expected_observed)
    text = write_report([path], tmp_path / "report.html").read_text()
    assert re.findall(r'alt="predicted (\w+)"', text) == UNITS
    assert "No decision logged the model" not in text
    without = _with_predictions(session, tmp_path / "without", None)
    text = write_report([without], tmp_path / "without.html").read_text()
    assert 'alt="predicted' not in text and text.count("No decision logged the model") == len(UNITS)


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
    assert re.findall(r'<h3 id="(session-\d)-posteriors">', text) == ["session-1"]


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
