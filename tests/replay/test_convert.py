"""The real V4 session 210325 (single-trial counts) as a session directory, and its replay."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner

from closedloop.cli import main
from closedloop.record import read_session
from closedloop.replay import response_table
from closedloop.replay.convert import WINDOW
from closedloop.replay.session_replay import Cadence, replay
from closedloop.replay.sources import open_recording, open_source

IMAGES = 40  # the first 40 of 640 images, to stay fast


@pytest.fixture(scope="module")
def converted(shared_v4, tmp_path_factory):
    out = tmp_path_factory.mktemp("v4") / "session"
    result = CliRunner().invoke(main, ["convert", "v4", "--session", "210325", "--data", str(shared_v4),
                                       "--out", str(out), "--images", str(IMAGES), "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out, np.load(shared_v4 / "sessions" / "responses_raw_210325.npy")[:, :IMAGES]


def test_every_trial_is_one_presentation_with_its_counts(converted):
    out, raw = converted
    record = read_session(out)
    shown = ~np.isnan(raw[0])
    assert len(record.markers) == len(record.responses) == shown.sum() == record.summary["presentations"]
    assert len(record.pool) == IMAGES and record.pool.images.shape[1:] == (112, 112, 3)
    by_image = defaultdict(list)
    for r in record.responses:
        by_image[r["pool_index"]].append(r["counts"])
    for image in range(IMAGES):  # each image's trials, whatever their order: the recorded counts
        recorded = raw[:, image, shown[image]].T.astype(int).tolist()
        assert sorted(by_image[image]) == sorted(recorded)
    onsets = np.array([m["onset"] for m in record.markers])
    assert np.allclose(np.diff(onsets), 0.2) and [m["index"] for m in record.markers] == list(range(len(onsets)))
    assert [m["pool_index"] for m in record.markers] != sorted(m["pool_index"] for m in record.markers)  # shuffled
    assert {m["role"] for m in record.markers} == {"heldout", "control"}
    assert json.loads((out / "conversion.json").read_text())["presentations"] == len(onsets)


def test_the_live_counting_rule_gives_back_the_counts(converted):
    """Spike times lie inside the response window, so counting them as the live loop does is exact."""
    out, _ = converted
    record = read_session(out)
    table = response_table(open_recording(out), *WINDOW)
    assert [(r["index"], r["counts"]) for r in table] == [(r["index"], r["counts"]) for r in record.responses]
    window = np.searchsorted([m["onset"] for m in record.markers], record.spikes["time"]) - 1
    after = record.spikes["time"] - np.array([m["onset"] for m in record.markers])[window]
    assert after.min() >= WINDOW[0] and after.max() < WINDOW[1]


def test_the_converted_session_replays(converted, tmp_path):
    out, raw = converted
    source = open_source(out)
    assert source.selections == [] and source.complete
    report = replay(source, tmp_path / "replay", cadence=Cadence(every=20, refresh_every=200, accuracy_every=100))
    assert report["responses"] == report["presentations"] == len(source.presentations)
    assert report["trained_on"] == sum(p["role"] == "control" for p in source.presentations)
    assert report["accuracy"]["core_version"] >= 1 and len(report["accuracy"]["r_observed"]) == raw.shape[0]


def test_a_session_without_single_trial_counts_is_refused(shared_v4, tmp_path):
    result = CliRunner().invoke(main, ["convert", "v4", "--session", "190923", "--data", str(shared_v4),
                                       "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"closedloop: error: {shared_v4 / 'sessions' / 'responses_raw_190923.npy'}: "
                                     "not found (single-trial counts exist for session 210325 only)")
