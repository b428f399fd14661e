"""Degrees of visual angle to pixels: exact, invertible, and refused when the patch is off screen."""

import math

import pytest

from closedloop.config import DisplaySpec, StimulusSpec, TrialSpec
from closedloop.errors import ClosedLoopError
from closedloop.present.geometry import Geometry, Layout

# 40 x 30 cm, 800 x 600 px (20 px per cm) at 57.29 cm, where 1 cm subtends about 1 degree.
DISPLAY = DisplaySpec(size_px=(800, 600), size_cm=(40.0, 30.0), distance_cm=57.29)
GEOMETRY = Geometry.of(DISPLAY)


def test_conversions_are_exact_trigonometry():
    # tan(45 degrees) = 1: a point 45 degrees right lies one viewing distance from the centre.
    assert GEOMETRY.position_px(45.0, 0.0) == pytest.approx((57.29 * 20, 0.0), abs=1e-9)
    assert GEOMETRY.position_px(0.0, -45.0) == pytest.approx((0.0, -57.29 * 20), abs=1e-9)
    # One degree centred on fixation: 2 d tan(0.5 deg) cm, close to 1 cm at 57.29 cm.
    one = GEOMETRY.span_px(1.0)
    assert one == 2 * 57.29 * math.tan(math.radians(0.5)) * 20
    assert one == pytest.approx(20.0, rel=1e-4)
    # The same angle covers more screen away from fixation, and symmetrically so.
    assert GEOMETRY.span_px(1.0, 20.0) > one
    assert GEOMETRY.span_px(1.0, 20.0) == pytest.approx(GEOMETRY.span_px(1.0, -20.0), abs=1e-12)


@pytest.mark.parametrize("x, y", [(0.0, 0.0), (3.0, 2.0), (-12.5, 7.25), (30.0, -25.0)])
def test_degrees_and_pixels_round_trip(x, y):
    back = GEOMETRY.position_deg(*GEOMETRY.position_px(x, y))
    assert back == pytest.approx((x, y), abs=1e-12)


def test_non_square_pixels_use_each_axis():
    geometry = Geometry(50.0, (40.0, 20.0), (800, 600))  # 20 px/cm across, 30 px/cm down
    assert geometry.span_px(2.0, axis=1) / geometry.span_px(2.0, axis=0) == pytest.approx(1.5, abs=1e-12)


def test_layout_puts_the_patch_on_whole_pixels_at_the_receptive_field():
    layout = Layout.of(DISPLAY, StimulusSpec(size_deg=4.0, position_deg=(5.0, -3.0)), TrialSpec(fixation_deg=0.5))
    exact = GEOMETRY.position_px(5.0, -3.0)
    assert layout.patch_px == round(GEOMETRY.span_px(4.0, 5.0))
    for centre, want, screen in zip(layout.patch_centre_px, exact, DISPLAY.size_px):
        assert abs(centre - want) <= 0.5  # moved by at most half a pixel...
        edge = centre - layout.patch_px / 2 + screen / 2
        assert edge == round(edge)  # ...so the patch's edges are pixel edges
    assert layout.fixation_px == pytest.approx(GEOMETRY.span_px(0.5))


def test_a_patch_off_the_screen_is_refused():
    with pytest.raises(ClosedLoopError, match=r"\[stimulus\].*does not fit the rig's 800x600 px screen"):
        Layout.of(DISPLAY, StimulusSpec(size_deg=10.0, position_deg=(0.0, 12.0)), TrialSpec())
