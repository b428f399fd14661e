"""The report uses the recorded streams: the gaze over time with its fixation breaks, and the photodiode's
lag read from the recorded trace, on a real simulated session with an eye and a photodiode."""

from __future__ import annotations

import re

import numpy as np
import pytest

from closedloop.config import load_protocol, load_rig
from closedloop.record import read_session
from closedloop.report import data, write_report
from closedloop.session import run_session
from closedloop.simulate.generate import protocol_text, rig_text

DISPLAY_LAG = 0.012  # s the simulated monitor lights up after each flip


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """20 presentations on a simulated rig whose eye breaks fixation about twice a second, with a photodiode."""
    tmp = tmp_path_factory.mktemp("streams")
    name = f"cltest-report-streams-{tmp.name}"
    (tmp / "rig.toml").write_text(rig_text(name, gaze=True, photodiode=True, fixation_breaks=2.0,
                                           break_duration=0.1, display_lag=DISPLAY_LAG))
    (tmp / "protocol.toml").write_text(protocol_text(20))
    summary = run_session(load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session")
    return summary, read_session(tmp / "session")


def test_the_photodiode_lag_is_read_from_the_recorded_trace(session):
    """The lag the report reads from the recorded trace is the one the live loop measured, presentation by
    presentation (the same trace: recorded as it was pulled)."""
    summary, record = session
    lags = data.photodiode_lags(record)
    live = {r["index"]: r.get("photodiode_correction", np.nan) for r in record.responses}
    expected = [live.get(m["index"], np.nan) for m in record.markers]
    assert np.isfinite(lags).sum() >= len(record.responses) - 1 > 0
    np.testing.assert_allclose(lags, expected, atol=1e-9)
    np.testing.assert_allclose(lags[np.isfinite(lags)], DISPLAY_LAG, atol=0.0015)


def test_the_report_shows_gaze_and_photodiode_with_their_sample_counts(session, tmp_path):
    summary, record = session
    gaze, light = data.stream(record, "gaze"), data.stream(record, "photodiode")
    assert summary["stream_samples"] == {"gaze": len(gaze.times), "photodiode": len(light.times)}
    assert (gaze.labels, gaze.units) == (["x", "y"], ["degrees", "degrees"])  # the simulator's <desc>
    assert len(data.fixation_breaks(record)) == summary["trials"]["fixation_break"] > 0
    text = write_report([record.path], tmp_path / "report.html").read_text()
    assert re.findall(r'alt="(gaze|photodiode lag)"', text) == ["gaze", "photodiode lag"]
    assert f"gaze {len(gaze.times)}, photodiode {len(light.times)}" in text  # the summary's row
    assert f"{len(gaze.times)} samples of {gaze.name!r}".replace("'", "&#x27;") in text
    assert f"red: the {summary['trials']['fixation_break']} trials ended by a fixation break" in text
    assert "x (degrees), y (degrees)" in text  # the streams table's channels
