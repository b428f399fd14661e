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


STALL = 0.05  # s the caller stalls before one flip: longer than 1.5 periods at 60 Hz and above
ON, OFF = 3, 2  # frames of each presentation


def _stalling(cls, stall_at):
    """``cls`` whose caller stalls ``STALL`` s once, before flip number ``stall_at`` (from 0; None: never).

    The flip after the stall comes at least ``STALL`` s after the one before,
    whatever else the machine does: a dropped frame forced at a known place.
    """

    class Stalling(cls):
        calls = 0

        def _flip(self, show_image, markers):
            if self.calls == stall_at:
                time.sleep(STALL)
            self.calls += 1
            return super()._flip(show_image, markers)

    return Stalling


def _present_and_collect(make_presenter, stream_name, images):
    """Present ``images`` (``ON`` + ``OFF`` frames each); the timings, the markers as an inlet received
    them, every flip the presenter recorded, and the presenter."""
    spec = StreamSpec(name=stream_name, type="Markers")
    outlet = MarkerOutlet(spec, stream_name)
    inlet = pylsl.StreamInlet(pylsl.resolve_byprop("name", stream_name, timeout=10)[0])
    inlet.open_stream(timeout=10)
    presenter = make_presenter(outlet)
    timings = [presenter.present(image, i, f"stim{i}", on_frames=ON, off_frames=OFF)
               for i, image in enumerate(images)]
    markers = []
    while len(markers) < 2 * len(images):
        samples, stamps = inlet.pull_chunk(timeout=10.0, min_samples=1)
        assert samples, "markers did not arrive"
        markers += [(parse_marker(s[0]), t) for s, t in zip(samples, stamps)]
    inlet.close_stream()
    return timings, markers, presenter.take_flips(), presenter


def _check_contract(timings, markers, flips, period):
    """The contract of ``closedloop.present.base``, exactly, on the flips the presenter recorded:
    every flip kept, markers stamped at the flips that showed and removed the image, and each
    presentation's intervals and dropped frames those of its own flips."""
    frames = ON + OFF
    assert len(flips) == frames * len(timings)  # every flip recorded, none twice
    onsets = [(m, t) for m, t in markers if m["event"] == "onset"]
    offsets = [(m, t) for m, t in markers if m["event"] == "offset"]
    assert [m["index"] for m, _ in onsets] == [m["index"] for m, _ in offsets] == list(range(len(timings)))
    assert [m["stimulus"] for m, _ in onsets] == [f"stim{i}" for i in range(len(timings))]
    for k, (timing, (_, onset), (_, offset)) in enumerate(zip(timings, onsets, offsets)):
        own = flips[k * frames:(k + 1) * frames]
        assert onset == timing.onset == own[0]  # the flip that first shows the image
        assert offset == timing.offset == own[ON]  # the flip of the first frame without it
        assert timing.frame_intervals == tuple(np.diff(own))
        assert timing.dropped_frames == np.sum(np.diff(own) > 1.5 * period)
        assert not timing.aborted


# Stall before: no flip; the second frame of presentation 1 (inside its image); its offset flip;
# its onset flip (between two presentations: in the flip record, in neither timing).
STALLS = [None, ON + OFF + 1, ON + OFF + ON, ON + OFF]


@pytest.mark.parametrize("stall_at", STALLS)
def test_headless_presenter_keeps_the_contract_on_its_refresh_clock(stream_name, stall_at):
    """Without a drop, and with one forced before each kind of flip: the contract holds on the flips
    as recorded, and the forced drop is where it was made."""
    display = DisplaySpec(backend="headless", refresh_rate=100.0)
    images = [np.full((16, 16, 3), v, np.uint8) for v in (0, 128, 255)]
    timings, markers, flips, _ = _present_and_collect(
        lambda o: _stalling(HeadlessPresenter, stall_at)(display, LAYOUT, o), stream_name, images)
    _check_contract(timings, markers, flips, 1 / 100)
    # Stamps are frame boundaries: every interval is a whole number of frames, at least one.
    intervals = np.diff(flips) * 100  # frames
    frames = np.round(intervals)
    np.testing.assert_allclose(intervals, frames, atol=1e-6)
    assert np.all(frames >= 1)
    if stall_at is not None:
        assert frames[stall_at - 1] >= round(STALL * 100)  # the flip after the stall came late
        if stall_at % (ON + OFF):  # inside presentation 1: its timing reports the drop
            assert timings[1].dropped_frames >= 1
        if stall_at == ON + OFF + ON:  # the image stayed on through the stall: the offset says so
            assert round((timings[1].offset - timings[1].onset) * 100) >= round(STALL * 100) + ON - 1


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
@pytest.mark.parametrize("stall_at", [None, ON + OFF + ON])
def test_psychopy_presenter_shows_the_image_and_stamps_the_flip(display, stream_name, stall_at):
    """Without and with a dropped frame (the offset flip of presentation 1 comes late)."""
    from closedloop.present.window import PsychoPyPresenter

    spec, layout = _psychopy_setup()
    assert layout.patch_px == 112  # 5.6 degrees centred 3 degrees right of fixation
    image = _test_image(layout.patch_px)
    images = [image, 255 - image]
    timings, markers, flips, presenter = _present_and_collect(
        lambda o: _stalling(PsychoPyPresenter, stall_at)(spec, layout, o), stream_name, images)
    _check_contract(timings, markers, flips, 1 / 60)
    if stall_at is not None:
        assert timings[1].offset - flips[stall_at - 1] >= STALL and timings[1].dropped_frames >= 1
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
