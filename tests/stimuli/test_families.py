"""Stimulus families: parameters are JSON, rendering is deterministic and does what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from closedloop.stimuli.families import BACKGROUND, FAMILIES, closed_bspline

SIZE = 64


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_contract(name):
    family = FAMILIES[name]
    rng = np.random.default_rng(0)
    params = [family.sample(rng) for _ in range(20)]
    for p in params:
        assert json.loads(json.dumps(p)) == p  # JSON-able, losslessly
        image = family.render(p, SIZE)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert np.array_equal(image, family.render(json.loads(json.dumps(p)), SIZE))
        assert np.all(image[0, 0] == BACKGROUND)  # corners are background grey
        assert np.any(image != BACKGROUND)  # and something is drawn
    distinct = {family.render(p, SIZE).tobytes() for p in params}
    assert len(distinct) >= 18


def test_bspline_of_equal_radii_is_a_circle():
    points = closed_bspline([1.0] * 8, rotation_deg=0)
    distance = np.hypot(*points.T)
    assert distance.max() / distance.min() < 1.01
    # A spike in one radius bends the curve out towards that control point only.
    points = closed_bspline([1.0] + [0.3] * 7, rotation_deg=0)
    spiky = np.hypot(*points.T)
    angle = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
    assert abs(angle[np.argmax(spiky)]) < 5


def test_rotation_turns_the_shape():
    a = closed_bspline([1.0, 0.2, 0.2, 0.2], rotation_deg=0)
    b = closed_bspline([1.0, 0.2, 0.2, 0.2], rotation_deg=90)
    turn = np.array([[0, -1], [1, 0]])  # +90 degrees
    np.testing.assert_allclose(a @ turn.T, b, atol=1e-12)


def test_filled_contour_covers_more_than_outline():
    p = FAMILIES["contour"].sample(np.random.default_rng(1))
    filled = FAMILIES["contour"].render({**p, "fill": True, "colour": [0, 0, 0]}, SIZE)
    outline = FAMILIES["contour"].render({**p, "fill": False, "colour": [0, 0, 0]}, SIZE)
    assert (filled < BACKGROUND).sum() > 1.5 * (outline < BACKGROUND).sum()


def test_dot_is_drawn_where_asked():
    image = FAMILIES["dot"].render({"dots": [[0.25, 0.25, 0.05]], "colour": [1, 1, 1]}, SIZE)
    rows, cols = np.nonzero(image[..., 0] > BACKGROUND)
    assert rows.mean() == pytest.approx(SIZE * 0.25, abs=1)  # y up: upper half of the image
    assert cols.mean() == pytest.approx(SIZE * 0.75, abs=1)


def test_grating_orientation():
    params = {"orientation": 0.0, "frequency": 4, "phase": 0.0, "contrast": 1.0,
              "radius": 0.5, "colour": [1, 1, 1]}
    image = FAMILIES["grating"].render(params, SIZE)[..., 0].astype(float)
    centre = slice(SIZE // 2 - 8, SIZE // 2 + 8)
    # 0 degrees: luminance changes across columns, not down rows.
    assert image[centre, centre].std(axis=0).max() < 2
    assert image[SIZE // 2, centre].std() > 40
    turned = FAMILIES["grating"].render({**params, "orientation": 90.0}, SIZE)[..., 0]
    assert turned[centre, centre].std(axis=1).max() < 2  # 90 degrees: rows are constant
    assert turned[centre, SIZE // 2].std() > 40


def test_texture_power_peaks_at_its_frequency():
    family = FAMILIES["texture"]
    for frequency in (4.0, 12.0):
        params = {"seed": 3, "frequency": frequency, "bandwidth": 0.5, "orientation": 0.0,
                  "anisotropy": 0.0, "contrast": 1.0, "radius": 0.5, "colour": [1, 1, 1]}
        image = family.render(params, 128)[..., 0].astype(float) - BACKGROUND
        power = np.abs(np.fft.fft2(image)) ** 2
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(128) * 128, np.fft.fftfreq(128) * 128))
        rings = np.bincount(np.rint(f).astype(int).ravel(), power.ravel())
        assert abs(np.argmax(rings[1:]) + 1 - frequency) <= 0.25 * frequency + 1
