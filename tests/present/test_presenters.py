"""Both presenters keep the same timing contract, checked through a real LSL marker inlet."""

import time

import numpy as np
import pylsl
import pytest

from closedloop.config import DisplaySpec, PatchSpec, StimulusSpec, StreamSpec, TrialSpec
from closedloop.present.geometry import Layout
from closedloop.present.headless import HeadlessPresenter
from closedloop.present.markers import MarkerOutlet, parse_marker

LAYOUT = Layout(patch_px=16, patch_centre_px=(0.0, 0.0), fixation_px=4.0, background=0.5)


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
    timings, markers, _ = _present_and_collect(lambda o: HeadlessPresenter(display, LAYOUT, o), stream_name, images)
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
    presenter = HeadlessPresenter(display, LAYOUT, outlet)
    original = presenter._flip
    calls = []

    def slow_flip(show_image, markers):
        calls.append(1)
        if len(calls) == 2:  # the caller stalls for 35 ms before the second flip
            time.sleep(0.035)
        return original(show_image, markers)

    presenter._flip = slow_flip
    timing = presenter.present(np.zeros((8, 8, 3), np.uint8), 0, "s", on_frames=3, off_frames=1)
    assert timing.dropped_frames >= 1
    assert max(timing.frame_intervals) >= 0.03


def _psychopy_setup(size_deg=5.6, position_deg=(3.0, 2.0), patch=None):
    """A 400 x 300 px, 20 x 15 cm screen at 57.29 cm (about 20 px per degree) and the layout of a
    ``size_deg`` patch at ``position_deg``."""
    spec = DisplaySpec(backend="psychopy", refresh_rate=60.0, size_px=(400, 300), size_cm=(20.0, 15.0),
                       distance_cm=57.29, photodiode_patch=patch)
    stimulus = StimulusSpec(size_deg=size_deg, position_deg=position_deg, background=0.5)
    return spec, Layout.of(spec, stimulus, TrialSpec(fixation_deg=0.3))


def _test_image(side):
    image = np.zeros((side, side, 3), np.uint8)
    image[: side // 2] = 255  # top half white
    image[side // 2:, :, 0] = 200  # bottom half red
    image[:, :8] = np.linspace(0, 255, side).astype(np.uint8)[:, None, None]  # a ramp of greys on the left
    return image


def _patch_in(shot, layout):
    """The screenshot's pixels where the layout puts the image patch (rows from the top)."""
    h, w = shot.shape[:2]
    left = round(w / 2 + layout.patch_centre_px[0] - layout.patch_px / 2)
    top = round(h / 2 - layout.patch_centre_px[1] - layout.patch_px / 2)
    return shot[top:top + layout.patch_px, left:left + layout.patch_px]


@pytest.mark.display
def test_psychopy_presenter_shows_the_image_and_stamps_the_flip(display, stream_name):
    from closedloop.present.window import PsychoPyPresenter

    spec, layout = _psychopy_setup()
    assert layout.patch_px == 112  # 5.6 degrees centred 3 degrees right of fixation
    image = _test_image(layout.patch_px)
    images = [image, 255 - image]
    timings, markers, presenter = _present_and_collect(
        lambda o: PsychoPyPresenter(spec, layout, o), stream_name, images)
    _check_contract(timings, markers, 1 / 60)
    # What the window draws is the image, pixel for pixel, at the receptive field.
    presenter._load(image)
    shot = presenter.screenshot()
    blank = presenter.screenshot(show_image=False)
    presenter.close()
    np.testing.assert_array_equal(_patch_in(shot, layout), image)
    assert np.all(_patch_in(blank, layout) == 128)  # background 0.5 without the image
    # and nothing else: every other pixel is background
    assert np.any(shot != 128, axis=-1).sum() == np.any(image != 128, axis=-1).sum()


@pytest.mark.display
def test_psychopy_fixation_point_and_photodiode_patch(display, stream_name):
    from closedloop.present.window import PsychoPyPresenter

    spec, layout = _psychopy_setup(patch=PatchSpec(corner="bottom-left", size_px=20))
    outlet = MarkerOutlet(StreamSpec(name=stream_name, type="Markers"), stream_name)
    presenter = PsychoPyPresenter(spec, layout, outlet)
    presenter._load(np.zeros((layout.patch_px,) * 2 + (3,), np.uint8))
    on = presenter.screenshot(show_image=True)
    presenter.fixation_point = True
    off = presenter.screenshot(show_image=False)
    presenter.close()
    h, w = on.shape[:2]
    assert np.all(on[h - 20:, :20] == 255) and np.all(off[h - 20:, :20] == 0)  # the corner square
    assert on[h - 21, 20].tolist() == [128, 128, 128]  # and no more
    assert on[h // 2, w // 2].tolist() == [128, 128, 128]  # no fixation point...
    assert off[h // 2, w // 2].tolist() == [255, 255, 255]  # ...until asked for
    assert layout.fixation_px == pytest.approx(6.0, rel=1e-3)  # 0.3 degrees at 20 px per degree
