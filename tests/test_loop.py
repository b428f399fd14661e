"""The whole loop on a simulated rig: real LSL, a real simulator process, a real model worker."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.config import load_protocol, load_rig
from closedloop.loop import run_session
from closedloop.record import read_session

PRESENTATIONS = 220
# Held-out r (against the true rates) of the best simulated neuron after 220 presentations:
# measured 0.62, 0.67, 0.56 in three runs. Chance level over 60 held-out images is about 0.3
# at the 95th percentile for the best of three units.
R_TRUE_THRESHOLD = 0.4
# The simulated eye breaks fixation at random, about 20 times in a run of about 40 s: the chance
# of no break at all is e^-20.
FIXATION_BREAKS = 0.5  # per s


@pytest.fixture(scope="module")
def session(tmp_path_factory, sim_files):
    tmp = tmp_path_factory.mktemp("loop")
    sim_files.rig(tmp / "rig.toml", f"cltest-loop-{tmp.name}", fixation_breaks=FIXATION_BREAKS)
    sim_files.protocol(tmp / "protocol.toml", PRESENTATIONS)
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
    assert max(summary["heldout_r_true"]) > R_TRUE_THRESHOLD
    first, last = record.accuracy[0], record.accuracy[-1]
    assert last["responses"] > first["responses"] and len(last["r_true"]) == 3
    assert summary["accuracy_over_time"][-1]["responses"] == last["responses"]


def test_selections_and_summary_are_recorded(session):
    summary, record = session
    assert record.summary == summary
    assert record.selections and all(len(s["chosen"]) == 4 for s in record.selections)
    heldout_ids = {m["stimulus"] for m in record.markers if m["role"] == "heldout"}
    chosen = {record.pool.ids[i] for s in record.selections for i in s["chosen"]}
    assert not heldout_ids & chosen  # held-out images are never selected
    assert summary["deadline_misses"] == sum(e["kind"] == "deadline_miss" for e in record.events)
    assert record.protocol["protocol"]["name"] == "short" and record.rig["rig"]["name"] == "test-sim"


def test_a_binned_count_stream_feeds_the_same_loop(tmp_path, sim_files):
    """The simulated rig publishes 1 kHz counts instead of events; the loop runs unchanged."""
    sim_files.rig(tmp_path / "rig.toml", f"cltest-counts-{tmp_path.name}")
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


def test_an_hour_of_clock_offset_and_100_ppm_drift_are_aligned(tmp_path, sim_files):
    """The simulated acquisition clock runs an hour ahead and 100 ppm fast; sync events align it."""
    sim_files.rig(tmp_path / "rig.toml", f"cltest-clock-{tmp_path.name}")
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


def test_a_photodiode_moves_each_onset_to_the_light(tmp_path, sim_files):
    """The simulated monitor lights up 12 ms after each flip; the photodiode finds every one."""
    sim_files.rig(tmp_path / "rig.toml", f"cltest-pd-{tmp_path.name}")
    text = (tmp_path / "rig.toml").read_text()
    text = text.replace("[simulation]\n", f"[photodiode]\nname = \"cltest-pd-{tmp_path.name}-light\"\n"
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
    summary, record = session
    frames = record.frames
    assert len(frames) == summary["frames"]["count"] > 5 * PRESENTATIONS
    assert np.all(np.diff(frames) > 0)
    flips = set(frames.tolist())
    assert all(m["onset"] in flips and m["offset"] in flips for m in record.markers)
    assert summary["frames"]["dropped_in_presentations"] == sum(m["dropped_frames"] for m in record.markers)
    assert summary["frames"]["interval_median_ms"] == pytest.approx(1e3 / 60, abs=0.01)


def test_the_ensemble_is_checkpointed_in_the_session(session):
    from closedloop.model.models import load_model

    _, record = session
    folder = record.path / "checkpoints"
    assert (folder / "ensemble-000100.pt").is_file()  # every 100 responses trained on...
    trained = record.accuracy[-1]["responses"]
    assert len(list(folder.glob("ensemble-0*.pt"))) == trained // 100  # once per hundred, never again
    final = load_model(folder / "ensemble-final.pt")  # ...and at the end, as an ordinary model file
    assert final.output_shape == (5, 3)  # members x units
    assert final.predict(record.pool.images[:4]).shape == (4, 15)
