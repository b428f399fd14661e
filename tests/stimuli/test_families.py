"""Stimulus families: parameters are validated JSON, rendering is deterministic and does what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from closedloop.errors import ClosedLoopError
from closedloop.stimuli import FAMILIES, gaudy, get_family
from closedloop.stimuli.families import grey

SIZE = 64


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("background", [0.5, 0.3, 0.8])
def test_family_contract(name, background):
    family = FAMILIES[name]
    rng = np.random.default_rng(0)
    params = [family.sample(rng) for _ in range(20)]
    level = grey(background)
    for p in params:
        assert json.loads(json.dumps(p)) == p  # JSON-able, losslessly
        assert family.check(p) == p  # complete and valid
        image = family.render(p, SIZE, background)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert np.array_equal(image, family.render(json.loads(json.dumps(p)), SIZE, background))
        for corner in (image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]):
            assert np.all(corner == level)  # corners are background grey
        assert np.any(image != level)  # and something is drawn
    distinct = {family.render(p, SIZE, background).tobytes() for p in params}
    assert len(distinct) >= 18


@pytest.mark.parametrize("name", ["dot", "grating", "texture"])
def test_parameters_are_validated(name):
    family = FAMILIES[name]
    with pytest.raises(ValidationError, match="colours"):
        family.check({"colours": [1, 1, 1]})  # unknown parameter
    with pytest.raises(ValidationError, match="contrast"):
        family.check({"contrast": 1.5})  # out of range
    with pytest.raises(ValidationError):
        family.render({"contrast": -1}, SIZE)
    assert family.check({}) == family.check(family.check({}))  # defaults make a complete member


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ClosedLoopError, match="unknown stimulus family 'faces'; known: contour, dot, grating"):
        get_family("faces")
    assert get_family("dot") is FAMILIES["dot"]


# ------------------------------------------------------------------- dots --
def test_dot_polarity_and_contrast_set_its_grey_level():
    dot = FAMILIES["dot"]
    centre = SIZE // 2
    for polarity, contrast, background, expected in [("light", 1.0, 0.5, 255), ("light", 0.5, 0.5, 191),
                                                     ("dark", 1.0, 0.5, 0), ("dark", 0.5, 0.4, 51),
                                                     ("light", 0.5, 0.2, 153)]:
        image = dot.render({"diameter": 0.4, "polarity": polarity, "contrast": contrast}, SIZE, background)
        assert np.all(image[centre, centre] == expected), (polarity, contrast, background)
        assert np.all(image[0, 0] == grey(background))


def test_dot_diameter_sets_its_area():
    for diameter in (0.1, 0.25, 0.5):
        image = FAMILIES["dot"].render({"diameter": diameter}, SIZE)
        area = (image[..., 0].astype(float) - 128).sum() / (255 - 128)  # antialiased edges count in part
        assert area == pytest.approx(np.pi * (diameter * SIZE / 2) ** 2, rel=0.03)


def test_dots_are_drawn_where_asked_y_up():
    image = FAMILIES["dot"].render({"positions": [[0.25, 0.25]], "diameter": 0.1}, SIZE)
    rows, cols = np.nonzero(image[..., 0] > 128)
    assert rows.mean() == pytest.approx(SIZE * 0.25, abs=0.5)  # y up: upper half of the image
    assert cols.mean() == pytest.approx(SIZE * 0.75, abs=0.5)


def _blobs(mask: np.ndarray) -> int:
    """Connected regions (4-neighbour) of a boolean mask."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            r, c = stack.pop()
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and not seen[r, c]:
                seen[r, c] = True
                stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return count


def test_dot_count():
    dot = FAMILIES["dot"]
    for count in (1, 2, 5, 8):
        params = dot.check({"count": count, "diameter": 0.08})
        assert params["count"] == len(params["positions"]) == count
        assert _blobs(dot.render(params, SIZE)[..., 0] != 128) == count
    params = dot.check({"positions": [[-0.3, 0], [0.3, 0], [0, 0.3]], "diameter": 0.1, "polarity": "dark"})
    assert params["count"] == 3 and _blobs(dot.render(params, SIZE)[..., 0] != 128) == 3
    with pytest.raises(ValidationError, match="count"):
        dot.check({"count": 2, "positions": [[0, 0]]})
    with pytest.raises(ValidationError, match="positions"):
        dot.check({"positions": [[0.7, 0]]})  # outside the image


# --------------------------------------------------------------- gratings --
def _peak(image: np.ndarray) -> tuple[float, float]:
    """Spatial frequency (cycles per image) and orientation (degrees, y up, mod 180) of the power peak."""
    channel = image[..., 0].astype(float)
    power = np.abs(np.fft.fft2(channel - channel.mean())) ** 2
    fy, fx = np.unravel_index(np.argmax(power), power.shape)
    n = channel.shape[0]
    fx, fy = (fx + n // 2) % n - n // 2, -((fy + n // 2) % n - n // 2)  # rows go down: y up is -row
    return float(np.hypot(fx, fy)), float(np.degrees(np.arctan2(fy, fx)) % 180)


@pytest.mark.parametrize("orientation, frequency", [(0, 4), (90, 6), (45, 8 * np.sqrt(2)), (135, 5 * np.sqrt(2)),
                                                    (30, 10)])
def test_grating_orientation_and_frequency_are_the_power_peak(orientation, frequency):
    params = {"orientation": orientation, "frequency": frequency, "radius": 0.75}  # full field
    found_frequency, found_orientation = _peak(FAMILIES["grating"].render(params, 128))
    assert found_frequency == pytest.approx(frequency, abs=0.6)
    assert min(abs(found_orientation - orientation), 180 - abs(found_orientation - orientation)) < 4


def test_grating_phase_contrast_background_and_aperture():
    grating = FAMILIES["grating"]
    size = 65  # odd: a pixel at the centre
    c = size // 2
    peak = grating.render({"frequency": 2, "phase": 0}, size)
    trough = grating.render({"frequency": 2, "phase": 180}, size)
    assert peak[c, c, 0] == 255 and trough[c, c, 0] == 0
    half = grating.render({"frequency": 2, "contrast": 0.5}, size)
    assert half[c, c, 0] == 128 + 64
    dim = grating.render({"frequency": 2, "phase": 0}, size, background=0.2)  # amplitude fits around 0.2
    dark = grating.render({"frequency": 2, "phase": 180}, size, background=0.2)
    assert dim[c, c, 0] == 102 and dark[c, c, 0] == 0 and dim[0, 0, 0] == 51
    small = grating.render({"frequency": 2, "radius": 0.2, "contrast": 1.0}, size)
    drawn = np.hypot(*(np.nonzero(np.any(small != 128, axis=2)) - np.array([[c], [c]])))
    assert drawn.max() == pytest.approx(0.2 * size, abs=1.5)


def test_coloured_grating_modulates_along_its_hue():
    image = FAMILIES["grating"].render({"frequency": 3, "colour": [1, 0, 0]}, SIZE).astype(float)
    red, green, blue = (image[..., k].ravel() - 128 for k in range(3))
    assert np.corrcoef(red, green)[0, 1] < -0.99 and np.allclose(green, blue)
    assert red.std() > 60


def test_texture_power_peaks_at_its_frequency():
    family = FAMILIES["texture"]
    for frequency in (4.0, 12.0):
        params = {"seed": 3, "frequency": frequency, "bandwidth": 0.5, "radius": 0.5}
        image = family.render(params, 128)[..., 0].astype(float) - 128
        power = np.abs(np.fft.fft2(image)) ** 2
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(128) * 128, np.fft.fftfreq(128) * 128))
        rings = np.bincount(np.rint(f).astype(int).ravel(), power.ravel())
        assert abs(np.argmax(rings[1:]) + 1 - frequency) <= 0.25 * frequency + 1
    a = family.render({"seed": 1}, SIZE)
    assert np.array_equal(a, family.render({"seed": 1}, SIZE))
    assert not np.array_equal(a, family.render({"seed": 2}, SIZE))


# ------------------------------------------------------------------ gaudy --
def test_gaudy_thresholds_each_channel_at_its_mean():
    image = np.array([[[10, 200, 7], [20, 100, 7]],
                      [[30, 0, 7], [40, 250, 7]]], np.uint8)  # means: 25, 137.5, 7 (constant)
    out = gaudy(image)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [255, 255]])
    np.testing.assert_array_equal(out[..., 1], [[255, 0], [0, 255]])
    np.testing.assert_array_equal(out[..., 2], 7)  # a constant channel is left as it is
    assert np.array_equal(image[0, 0], [10, 200, 7])  # the input is untouched
    equal_to_mean = np.array([[[0]], [[10]], [[20]]], np.uint8)  # mean 10: not below, so 255
    np.testing.assert_array_equal(gaudy(equal_to_mean).ravel(), [0, 255, 255])
    with pytest.raises(ValueError, match="uint8"):
        gaudy(image.astype(float))
