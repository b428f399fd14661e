"""The gaze inlet over real LSL: fixation from fresh samples only; malformed streams refused."""

import time

import pylsl
import pytest

from closedloop.acquire.gaze import STALE, GazeInlet
from closedloop.errors import ClosedLoopError


def _outlet(name: str, channels: int = 2, fmt=pylsl.cf_float32) -> pylsl.StreamOutlet:
    return pylsl.StreamOutlet(pylsl.StreamInfo(name, "Gaze", channels, 500.0, fmt, name))


def _wait_for(gaze: GazeInlet, samples: int) -> None:
    deadline = time.monotonic() + 5
    while gaze.samples < samples:
        assert time.monotonic() < deadline, "gaze samples did not arrive"
        time.sleep(0.005)


def test_fixating_means_a_fresh_sample_inside_the_window(stream_name):
    outlet = _outlet(stream_name)
    gaze = GazeInlet(pylsl.resolve_byprop("name", stream_name, timeout=5)[0])
    gaze.start()
    try:
        assert not gaze.fixating(2.0)  # no sample yet: no evidence of fixation
        t = pylsl.local_clock()
        outlet.push_sample([1.2, -1.5], t)  # 1.92 degrees from fixation
        _wait_for(gaze, 1)
        assert gaze.latest() == pytest.approx((t, 1.2, -1.5), abs=1e-4)
        assert gaze.fixating(2.0, now=t) and not gaze.fixating(1.9, now=t)
        assert not gaze.fixating(2.0, now=t + STALE + 0.01)  # the eye tracker went quiet
        outlet.push_sample([9.0, 0.0], pylsl.local_clock())
        _wait_for(gaze, 2)
        assert not gaze.fixating(2.0)
    finally:
        gaze.stop()


def test_a_gaze_stream_without_two_numeric_channels_is_refused(stream_name):
    outlets = [_outlet(f"{stream_name}-1", channels=1), _outlet(f"{stream_name}-s", fmt=pylsl.cf_string)]
    for name, found in ((f"{stream_name}-1", "1 numeric"), (f"{stream_name}-s", "2 string")):
        with pytest.raises(ClosedLoopError, match=rf"LSL stream '{name}': a gaze stream needs 2 numeric "
                                                  rf"channels .*found {found}"):
            GazeInlet(pylsl.resolve_byprop("name", name, timeout=5)[0])
    del outlets
