"""The whole loop on a simulated rig: real LSL, a real simulator process, a real model worker."""

from __future__ import annotations

import itertools
import time
import uuid

import numpy as np
import pytest

from closedloop.config import load_protocol, load_rig
from closedloop.session import run_session
from closedloop.present.headless import HeadlessPresenter
from closedloop.record import read_session

PRESENTATIONS = 220
# The held-out r against the true rates, averaged over the three units, must rise by RISE from
# the first accuracy report (a readout fitted to about 8 responses) to the last (about 150). A
# model that learned nothing more would move between two reports only by refitting noise: r over
# 60 held-out images spreads by about 1/sqrt(57) = 0.13 per unit, 0.075 for a mean of three;
# RISE is twice that. The case is built to rise: units this small model learns from 150 responses
# (a curvature unit and two dot detectors; the built-in orientation unit barely learns at 32 px),
# driven at 120 spikes/s (at 60, seed 3 once rose by only 0.17). Over protocol seeds 1-8, run
# alone or beside two CPU hogs, the rise was 0.35-0.67.
RISE = 0.15
LEARNABLE = (('kind = "orientation"', 'kind = "dot"\nradius = 0.1'), ("mean_rate = 60.0", "mean_rate = 120.0"))
# The scratch core learns only when fine-tuned: every 32 responses here (not the default 256), 60 steps.
FINETUNED = ("steps_per_update = 30", "steps_per_update = 60\nfinetune_every = 32\nlearning_rate = 0.003")
# The simulated eye breaks fixation at random, about 20 times in a run of about 40 s: the chance
# of no break at all is e^-20.
FIXATION_BREAKS = 0.5  # per s
STALL_AT = 300  # flips before the presentation loop is held up once, for 2 frames, during an image


@pytest.fixture(scope="module")
def session(tmp_path_factory, sim_files):
    tmp = tmp_path_factory.mktemp("loop")
    sim_files.rig(tmp / "rig.toml", f"cltest-loop-{uuid.uuid4().hex[:8]}", fixation_breaks=FIXATION_BREAKS)
    rig_text = (tmp / "rig.toml").read_text()
    for old, new in LEARNABLE:
        assert old in rig_text
        rig_text = rig_text.replace(old, new)
    (tmp / "rig.toml").write_text(rig_text)
    sim_files.protocol(tmp / "protocol.toml", PRESENTATIONS)
    protocol_text = (tmp / "protocol.toml").read_text()
    assert FINETUNED[0] in protocol_text
    (tmp / "protocol.toml").write_text(protocol_text.replace(*FINETUNED))
    flip, count, stalled = HeadlessPresenter._flip, itertools.count(), []

    def stalling_flip(presenter, show_image, markers):
        """Once, in the middle of an image, start a flip 2 frames late (a frame dropped under load)."""
        if next(count) >= STALL_AT and show_image and not markers and not stalled:
            stalled.append(True)
            time.sleep(2 * presenter.frame_period)
        return flip(presenter, show_image, markers)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HeadlessPresenter, "_flip", stalling_flip)
        summary = run_session(load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session")
    return summary, read_session(tmp / "session")


def test_every_presentation_gets_a_response(session):
    summary, record = session
    assert summary["status"] == "complete"
    assert summary["presentations"] == summary["responses"] == PRESENTATIONS
    assert [m["index"] for m in record.markers] == list(range(PRESENTATIONS))
    assert sorted(r["index"] for r in record.responses) == list(range(PRESENTATIONS))
    for marker, response in zip(record.markers, sorted(record.responses, key=lambda r: r["index"])):
        assert response["stimulus"] == marker["stimulus"] == record.pool.ids[marker["pool_index"]]
        assert len(response["counts"]) == 3


def test_spikes_on_disk_are_the_responses(session):
    """Counting the recorded spikes in each window gives back the logged responses."""
    summary, record = session
    assert len(record.spikes) == summary["spikes"] > 0
    assert summary["unknown_spikes"] == 0
    window = record.protocol["window"]
    times, channels = record.spikes["time"], record.spikes["channel"]
    for r in record.responses[::10]:
        inside = (times >= r["onset"] + window["start"]) & (times < r["onset"] + window["end"])
        assert np.bincount(channels[inside], minlength=4)[1:].tolist() == r["counts"]


def test_driven_responses_exceed_baseline(session):
    _, record = session
    counts = np.array([r["counts"] for r in record.responses])
    window = record.protocol["window"]["end"] - record.protocol["window"]["start"]
    baseline = record.rig["simulation"]["baseline_rate"] * window
    assert counts.mean() > 3 * baseline  # the simulator answered the images, not just noise


def test_heldout_accuracy_rises(session):
    summary, record = session
    first, last = record.accuracy[0], record.accuracy[-1]
    assert first["responses"] < 20 and last["responses"] > 120
    assert len(first["r_true"]) == len(last["r_true"]) == 3 and last["r_true"] == summary["heldout_r_true"]
    assert np.mean(last["r_true"]) > np.mean(first["r_true"]) + RISE
    assert summary["accuracy_over_time"][-1]["responses"] == last["responses"]


def test_selections_and_summary_are_recorded(session):
    summary, record = session
    assert record.summary == summary
    assert record.selections and all(len(s["chosen"]) == 4 for s in record.selections)
    heldout_ids = {m["stimulus"] for m in record.markers if m["role"] == "heldout"}
    chosen = {record.pool.ids[i] for s in record.selections for i in s["chosen"]}
    assert not heldout_ids & chosen  # held-out images are never selected
    assert summary["deadline_misses"] == sum(e["kind"] == "deadline_miss" for e in record.events)
    assert record.protocol["protocol"]["name"] == "short" and record.rig["rig"]["name"].startswith("cltest-loop-")


def test_a_binned_count_stream_feeds_the_same_loop(tmp_path, sim_files, stream_name):
    """The simulated rig publishes 1 kHz counts instead of events; the loop runs unchanged."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    text = (tmp_path / "rig.toml").read_text()
    (tmp_path / "rig.toml").write_text(text.replace('type = "Spikes"\n', 'type = "Spikes"\nformat = "counts"\nrate = 1000.0\n'))
    sim_files.protocol(tmp_path / "protocol.toml", 40)
    summary = run_session(load_protocol(tmp_path / "protocol.toml"), load_rig(tmp_path / "rig.toml"),
                          tmp_path / "session")
    record = read_session(tmp_path / "session")
    assert summary["responses"] == 40 and summary["unknown_spikes"] == 0
    times = record.spikes["time"]
    # Every spike sits on the 1 ms bin grid (at bin centres): all share one sub-millisecond phase.
    phase = np.exp(2j * np.pi * ((times * 1000) % 1))
    assert len(times) > 100 and abs(phase.mean()) > 0.99
    counts = np.array([r["counts"] for r in record.responses])
    window = record.protocol["window"]["end"] - record.protocol["window"]["start"]
    assert counts.mean() > 3 * record.rig["simulation"]["baseline_rate"] * window


def test_an_hour_of_clock_offset_and_100_ppm_drift_are_aligned(tmp_path, sim_files, stream_name):
    """The simulated acquisition clock runs an hour ahead and 100 ppm fast; sync events align it."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    text = (tmp_path / "rig.toml").read_text()
    text = text.replace("[simulation]\n", "[clock]\nsync = \"events\"\n[simulation]\n"
                        "clock_offset = 3600.0\nclock_drift_ppm = 100.0\n")
    (tmp_path / "rig.toml").write_text(text)
    sim_files.protocol(tmp_path / "protocol.toml", 40)
    summary = run_session(load_protocol(tmp_path / "protocol.toml"), load_rig(tmp_path / "rig.toml"),
                          tmp_path / "session")
    record = read_session(tmp_path / "session")
    assert summary["responses"] == 40 and summary["clock"]["sync"] == "events"
    assert summary["clock"]["pairs"] >= 39 and summary["clock"]["residual_max_us"] < 1000
    assert summary["clock"]["anomalies"] == 0
    # Spikes land on the stimulus PC's clock (not an hour away): within the run's few seconds.
    onsets = [m["onset"] for m in record.markers]
    assert record.spikes["time"].min() > onsets[0] - 1.0 and record.spikes["time"].max() < onsets[-1] + 5.0
    counts = np.array([r["counts"] for r in record.responses])
    window = record.protocol["window"]["end"] - record.protocol["window"]["start"]
    assert counts.mean() > 3 * record.rig["simulation"]["baseline_rate"] * window


def test_a_photodiode_moves_each_onset_to_the_light(tmp_path, sim_files, stream_name):
    """The simulated monitor lights up 12 ms after each flip; the photodiode finds every one."""
    sim_files.rig(tmp_path / "rig.toml", stream_name)
    text = (tmp_path / "rig.toml").read_text()
    text = text.replace("[simulation]\n", f"[photodiode]\nname = \"{stream_name}-light\"\n"
                        "type = \"Photodiode\"\n[simulation]\ndisplay_lag = 0.012\n")
    (tmp_path / "rig.toml").write_text(text)
    sim_files.protocol(tmp_path / "protocol.toml", 40)
    summary = run_session(load_protocol(tmp_path / "protocol.toml"), load_rig(tmp_path / "rig.toml"),
                          tmp_path / "session")
    record = read_session(tmp_path / "session")
    assert summary["responses"] == 40 and summary["photodiode"]["missed"] == 0
    assert summary["photodiode"]["corrected"] == 40
    corrections = np.array([r["photodiode_correction"] for r in record.responses])
    np.testing.assert_allclose(corrections, 0.012, atol=0.0015)  # 1 kHz trace, interpolated
    flips = {m["index"]: m["onset"] for m in record.markers}
    for r in record.responses:  # the response's onset is the light; the marker keeps the flip
        assert r["flip"] == flips[r["index"]] and r["onset"] == pytest.approx(r["flip"] + r["photodiode_correction"])


def test_fixation_breaks_requeue_what_they_cut(session):
    summary, record = session
    trials = [e for e in record.events if e["kind"] == "trial"]
    assert summary["trials"]["fixation_break"] > 0
    assert len(trials) == sum(summary["trials"][k] for k in ("completed", "fixation_break", "no_fixation"))
    assert summary["trials"]["rewards"] == sum(e["reward"] is not None for e in trials) \
        == summary["trials"]["completed"]
    by_index = {m["index"]: m for m in record.markers}
    aborted = [m for m in record.markers if m.get("aborted")]
    assert summary["aborted_responses"] == len(aborted) == summary["trials"]["fixation_break"]
    for event in trials:
        shown = [by_index[i] for i in event["shown"]]
        assert all(m["trial"] == event["trial"] for m in shown)
        if event["end"] != "fixation_break":
            assert event["requeued"] == [] and not any(m.get("aborted") for m in shown)
            continue
        assert shown[-1].get("aborted") and not any(m.get("aborted") for m in shown[:-1])
        if shown[-1]["role"] != "heldout":
            assert event["requeued"][0] == shown[-1]["pool_index"]  # the image the break cut short...
        later = [m for m in record.markers if m["index"] > shown[-1]["index"]]
        if event["requeued"] and later:  # what the break cut comes back first...
            assert later[0]["role"] in ("requeued", "heldout")
    for k, event in enumerate(trials[:-3]):  # ...and is shown again, or cut again by a later break
        again = {m["pool_index"] for m in record.markers if m["trial"] > event["trial"] and m["role"] == "requeued"}
        cut_again = {p for e in trials[k + 1:] for p in e["requeued"]}
        assert set(event["requeued"]) <= again | cut_again
    for r in record.responses:
        assert r.get("aborted", False) == bool(by_index[r["index"]].get("aborted"))


def test_every_flip_is_recorded(session):
    """Every flip is on disk, on the 60 Hz virtual clock: each frame interval is a whole number of
    refresh periods, and exactly the longer ones count as dropped, in the summary and in each
    presentation's marker. A frame dropped under load changes the counts, never the contract."""
    summary, record = session
    frames = record.frames
    period = 1.0 / record.rig["display"]["refresh_rate"]
    assert len(frames) == summary["frames"]["count"] > 5 * PRESENTATIONS
    periods = np.diff(frames) / period
    whole = np.round(periods)
    np.testing.assert_allclose(periods, whole, rtol=0, atol=1e-6)  # flips on refresh boundaries only
    assert whole.min() == 1
    assert summary["frames"]["dropped"] == np.sum(whole > 1)
    assert summary["frames"]["interval_median_ms"] == round(float(np.median(np.diff(frames))) * 1e3, 3)
    on_frames, off_frames = record.protocol["protocol"]["on_frames"], record.protocol["protocol"]["off_frames"]
    at = {t: k for k, t in enumerate(frames.tolist())}
    for m in record.markers:
        first = at[m["onset"]]  # the presentation's flips are consecutive flips of the session
        flips = frames[first:first + len(m["frame_intervals"]) + 1]
        assert np.diff(flips).tolist() == m["frame_intervals"]
        assert m["dropped_frames"] == np.sum(np.round(np.diff(flips) / period) > 1)
        if not m.get("aborted"):  # whole frames: the image stays for on_frames flips, then off_frames
            assert len(flips) == on_frames + off_frames and m["offset"] == flips[on_frames]
        else:
            assert m["offset"] in flips.tolist()
    assert summary["frames"]["dropped_in_presentations"] == sum(m["dropped_frames"] for m in record.markers) >= 1


def test_the_learner_is_checkpointed_in_the_session(session):
    from closedloop.learn import OnlineLearner

    summary, record = session
    folder = record.path / "checkpoints"
    trained = record.accuracy[-1]["responses"]
    assert len(list(folder.glob("learner-0*.pt"))) == trained // 100 > 0  # once per hundred trained on...
    final = OnlineLearner.from_checkpoint(folder / "learner-final.pt", record.pool.images)  # ...and at the end
    try:
        assert final.core.name == summary["core"] and summary["core"].startswith("scratch")
        assert [e["core"] for e in record.events if e["kind"] == "model_ready"] == [summary["core"]]
        assert final.predictions(np.arange(4)).shape == (5, 3, 4)  # members x units x images
        assert (final.predictive(np.arange(4))[0] > 0).all()  # expected counts
    finally:
        final.close()
