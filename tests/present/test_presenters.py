"""Both presenters keep the same timing contract, checked through a real LSL marker inlet."""

import time

import numpy as np
import pylsl
import pytest

from closedloop.config import DisplaySpec, StreamSpec
from closedloop.present.headless import HeadlessPresenter
from closedloop.present.markers import MarkerOutlet, parse_marker


def _present_and_collect(make_presenter, stream_name, images):
    spec = StreamSpec(name=stream_name, type="Markers")
    outlet = MarkerOutlet(spec, stream_name)
    inlet = pylsl.StreamInlet(pylsl.resolve_byprop("name", stream_name, timeout=5)[0])
    inlet.open_stream(timeout=5)
    presenter = make_presenter(outlet)
    timings = [presenter.present(im, i, f"stim{i}", on_frames=3, off_frames=2) for i, im in enumerate(images)]
    markers = []
    while len(markers) < 2 * len(images):
        samples, stamps = inlet.pull_chunk(timeout=2.0)
        assert samples, "markers did not arrive"
        markers += [(parse_marker(s[0]), t) for s, t in zip(samples, stamps)]
    inlet.close_stream()
    return timings, markers, presenter


def _check_contract(timings, markers, period):
    onsets = [(m, t) for m, t in markers if m["event"] == "onset"]
    offsets = [(m, t) for m, t in markers if m["event"] == "offset"]
    assert [m["index"] for m, _ in onsets] == list(range(len(timings)))
    assert [m["stimulus"] for m, _ in onsets] == [f"stim{i}" for i in range(len(timings))]
    for timing, (_, onset), (_, offset) in zip(timings, onsets, offsets):
        assert onset == pytest.approx(timing.onset, abs=2e-3)  # the marker is stamped at the flip
        assert offset == pytest.approx(timing.offset, abs=2e-3)
        assert len(timing.frame_intervals) == 3 + 2 - 1


def test_headless_presenter_counts_frames_on_its_refresh_clock(stream_name):
    display = DisplaySpec(backend="headless", refresh_rate=60.0)
    images = [np.full((16, 16, 3), v, np.uint8) for v in (0, 128, 255, 64)]
    timings, markers, _ = _present_and_collect(lambda o: HeadlessPresenter(display, o), stream_name, images)
    _check_contract(timings, markers, 1 / 60)
    for timing in timings:
        # Stamps are frame boundaries: on for exactly 3 frames unless a frame was dropped.
        if timing.dropped_frames == 0:
            assert timing.offset - timing.onset == pytest.approx(3 / 60, abs=1e-9)
    onsets = np.array([t.onset for t in timings])
    assert np.all(np.diff(onsets) >= 5 / 60 - 1e-9)


def test_headless_presenter_reports_dropped_frames(stream_name):
    display = DisplaySpec(backend="headless", refresh_rate=100.0)
    outlet = MarkerOutlet(StreamSpec(name=stream_name, type="Markers"), stream_name)
    presenter = HeadlessPresenter(display, outlet)
    original = presenter._flip
    calls = []

    def slow_flip(show_image, marker=None):
        calls.append(1)
        if len(calls) == 2:  # the caller stalls for 35 ms before the second flip
            time.sleep(0.035)
        return original(show_image, marker)

    presenter._flip = slow_flip
    timing = presenter.present(np.zeros((8, 8, 3), np.uint8), 0, "s", on_frames=3, off_frames=1)
    assert timing.dropped_frames >= 1
    assert max(timing.frame_intervals) >= 0.03


@pytest.mark.display
def test_psychopy_presenter_shows_the_image_and_stamps_the_flip(display, stream_name):
    from closedloop.present.window import PsychoPyPresenter

    spec = DisplaySpec(backend="psychopy", refresh_rate=60.0, size_px=(320, 240), stimulus_px=112)
    image = np.zeros((112, 112, 3), np.uint8)
    image[:56] = 255  # top half white
    image[56:, :, 0] = 200  # bottom half red
    image[:, :8] = np.arange(0, 256, 32, dtype=np.uint8)[:, None]  # a ramp of greys on the left
    images = [image, 255 - image]
    timings, markers, presenter = _present_and_collect(
        lambda o: PsychoPyPresenter(spec, o), stream_name, images)
    _check_contract(timings, markers, 1 / 60)
    # What the window draws is the image, pixel for pixel (1:1 at stimulus_px = 112).
    presenter._load(image)
    shot = presenter.screenshot()
    presenter.close()
    h, w = shot.shape[:2]
    top, left = h // 2 - 56, w // 2 - 56
    np.testing.assert_array_equal(shot[top:top + 112, left:left + 112], image)
    assert shot[5, 5].tolist() == [128, 128, 128]  # background 0.5
