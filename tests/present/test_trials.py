"""Fixation trials on the headless presenter, markers and gaze over real LSL."""

import json
import threading
import time

import numpy as np
import pylsl
import pytest

from closedloop.acquire.gaze import GazeInlet
from closedloop.config import DisplaySpec, StreamSpec, TrialSpec
from closedloop.present.geometry import Layout
from closedloop.present.headless import HeadlessPresenter
from closedloop.present.markers import MarkerOutlet, parse_marker
from closedloop.present.trials import Item, run_trial

LAYOUT = Layout(patch_px=8, patch_centre_px=(0.0, 0.0), fixation_px=4.0, background=0.5)
ITEMS = [Item(np.full((8, 8, 3), 40 * k, np.uint8), index=10 + k, stimulus=f"s{k}", info=k) for k in range(4)]


END = json.dumps({"event": "end_of_test"})  # pushed after a trial: every marker before it has arrived


def _marker_inlet(name: str) -> pylsl.StreamInlet:
    inlet = pylsl.StreamInlet(pylsl.resolve_byprop("name", name, timeout=10)[0])
    inlet.open_stream(timeout=10)
    return inlet


def _pull_until(inlet, event: str, timeout: float = 10.0) -> list[tuple[dict, float]]:
    """Markers up to and including the first ``event`` one."""
    got, deadline = [], time.monotonic() + timeout
    while not any(m["event"] == event for m, _ in got):
        left = deadline - time.monotonic()
        assert left > 0, f"no {event!r} marker; got {[m['event'] for m, _ in got]}"
        samples, stamps = inlet.pull_chunk(timeout=left, min_samples=1)
        got += [(parse_marker(s[0]), t) for s, t in zip(samples, stamps)]
    return got


def _remaining_events(presenter, inlet) -> list[str]:
    """The events of every marker not yet pulled from ``inlet``: an end marker is flipped after the
    trial, and LSL keeps the order, so all of the trial's markers have arrived before it."""
    presenter.blank(1, END)
    return [m["event"] for m, _ in _pull_until(inlet, "end_of_test")][:-1]


@pytest.fixture
def rig(stream_name):
    """A headless presenter at 120 Hz and an inlet on its marker stream."""
    outlet = MarkerOutlet(StreamSpec(name=f"{stream_name}-m", type="Markers"), f"{stream_name}-m")
    inlet = _marker_inlet(f"{stream_name}-m")
    yield HeadlessPresenter(DisplaySpec(backend="headless", refresh_rate=120.0), LAYOUT, outlet), inlet
    inlet.close_stream()


def test_a_completed_trial_shows_everything_and_rewards_at_the_next_flip(rig):
    presenter, inlet = rig
    spec = TrialSpec(images=4, hold=0.05, iti=0.05)
    shown_now = []
    outcome = run_trial(presenter, spec, 7, lambda: ITEMS, on_frames=3, off_frames=2,
                        on_shown=lambda item, timing: shown_now.append((item.index, timing.aborted)))
    assert outcome.end == "completed" and not outcome.unshown
    assert shown_now == [(10, False), (11, False), (12, False), (13, False)]
    markers = _pull_until(inlet, "reward")
    events = [m["event"] for m, _ in markers]
    assert events == ["trial_start"] + ["onset", "offset"] * 4 + ["reward"]
    assert markers[0][0]["trial"] == markers[-1][0]["trial"] == 7
    flips = presenter.take_flips()
    hold = presenter.frames(0.05)  # 6 frames at 120 Hz, counted from the trial_start flip
    assert len(flips) == hold + 4 * 5 + 6  # hold, images, iti: every flip recorded
    # Each marker at its own flip, counted in frames, whether or not a frame dropped on the way:
    # the first onset after the hold, 3 on and 2 off frames per image, the reward right after.
    image_flips = [hold + 5 * k + f for k in range(4) for f in (0, 3)]
    assert [t for _, t in markers] == flips[[0, *image_flips, hold + 4 * 5]].tolist()
    assert outcome.reward == markers[-1][1]
    assert [(timing.onset, timing.offset) for _, timing in outcome.shown] == [
        (flips[hold + 5 * k], flips[hold + 5 * k + 3]) for k in range(4)]
    # and the flips lie on the 120 Hz frame clock: the hold lasted at least its 6 frames
    frames = np.diff(flips) * 120
    np.testing.assert_allclose(frames, np.round(frames), atol=1e-6)
    assert round((flips[hold] - flips[0]) * 120) >= hold


def test_no_reward_marker_when_the_protocol_gives_none(rig):
    presenter, inlet = rig
    outcome = run_trial(presenter, TrialSpec(images=1, hold=0.0, iti=0.0, reward=False), 0, lambda: ITEMS[:1],
                        on_frames=2, off_frames=1)
    assert outcome.end == "completed" and outcome.reward is None
    assert _remaining_events(presenter, inlet) == ["trial_start", "onset", "offset"]  # and no reward


def test_without_fixation_nothing_is_picked_or_shown(rig):
    presenter, inlet = rig
    picked = []
    outcome = run_trial(presenter, TrialSpec(hold=0.05, acquire=0.1, iti=0.0), 3,
                        lambda: picked.append(1) or ITEMS, on_frames=3, off_frames=2, fixating=lambda: False)
    assert outcome.end == "no_fixation" and outcome.shown == [] and picked == []
    assert _remaining_events(presenter, inlet) == ["trial_start", "no_fixation"]


def test_fixation_must_be_held_without_a_break(rig):
    presenter, _ = rig
    answers = iter([True] * 3 + [False] + [True] * 100)  # broken once while acquiring
    asked = []

    def fixating():
        asked.append(1)
        return next(answers)

    outcome = run_trial(presenter, TrialSpec(images=1, hold=0.05, acquire=1.0), 0, lambda: ITEMS[:1],
                        on_frames=2, off_frames=1, fixating=fixating)
    assert outcome.end == "completed"
    assert len(asked) >= 4 + presenter.frames(0.05)  # the hold restarted after the break


def test_a_gaze_break_aborts_the_image_and_leaves_the_rest_unshown(rig, stream_name):
    """A real gaze outlet: the 'eye' leaves the window when it sees presentation 11's onset.

    Images are on for 1 s, so the eye has that long to see the onset and look
    away; the trial goes on only until it has.
    """
    presenter, inlet = rig
    info = pylsl.StreamInfo(f"{stream_name}-gaze", "Gaze", 2, 500.0, pylsl.cf_float32, f"{stream_name}-gaze")
    eye_out = pylsl.StreamOutlet(info)
    watch = _marker_inlet(f"{stream_name}-m")
    stop, looked_away = threading.Event(), threading.Event()

    def eye():
        """A gaze sample after every marker and at least every 10 ms (fresh, see ``STALE``)."""
        while not stop.is_set():
            marker, _ = watch.pull_sample(timeout=0.01)  # back as soon as a marker comes
            if marker is not None and parse_marker(marker[0]) == {"event": "onset", "index": 11,
                                                                  "stimulus": "s1"}:
                looked_away.set()
            eye_out.push_sample([8.0, 0.0] if looked_away.is_set() else [0.3, -0.2], pylsl.local_clock())

    thread = threading.Thread(target=eye, daemon=True)
    thread.start()
    gaze = GazeInlet(pylsl.resolve_byprop("name", f"{stream_name}-gaze", timeout=10)[0])
    gaze.start()
    try:
        spec = TrialSpec(images=4, hold=0.05, acquire=10.0, iti=0.0)
        outcome = run_trial(presenter, spec, 1, lambda: ITEMS, on_frames=120, off_frames=6,
                            fixating=lambda: gaze.fixating(2.0))
    finally:
        stop.set()
        thread.join()
        gaze.stop()
        watch.close_stream()
    assert looked_away.is_set()
    assert outcome.end == "fixation_break"
    assert [(item.index, timing.aborted) for item, timing in outcome.shown] == [(10, False), (11, True)]
    assert [item.index for item in outcome.unshown] == [12, 13]
    broken = outcome.shown[1][1]
    assert broken.offset - broken.onset < 120 / 120  # taken off before its 120 frames
    markers = _pull_until(inlet, "fixation_break")
    assert [m["event"] for m, _ in markers] == ["trial_start", "onset", "offset", "onset", "offset",
                                                "fixation_break"]
    assert markers[-1][0]["index"] == 11 and markers[-1][1] == markers[-2][1] == broken.offset
    assert _remaining_events(presenter, inlet) == []  # no reward after a break
