"""Curved contours: the Pasupathy & Connor (2001) set, curvature variants, boundary descriptions."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from closedloop.stimuli.contours import (
    CURVATURE_MAX,
    CURVATURE_MIN,
    Contour,
    boundary,
    control_points,
    elements,
    standard_set,
    variant,
)

CONTOUR = Contour()
GREY = 128  # the 0.5 background


@pytest.fixture(scope="module")
def standard() -> list[dict]:
    return standard_set()


def _wrap(degrees):
    """Angles to [-180, 180)."""
    return (np.asarray(degrees) + 180) % 360 - 180


def test_standard_set_has_the_published_count(standard):
    assert len(standard) == 366
    counts = Counter(p["shape"] for p in standard)
    assert sorted(counts) == list(range(1, 52))
    # The rotational symmetries (about the published centre) decide what is shown once.
    assert {shape: n for shape, n in counts.items() if n < 8} == {
        1: 1, 2: 1, 32: 2, 37: 2, 5: 4, 7: 4, 34: 4, 45: 4}
    order = [(p["shape"], p["rotation"]) for p in standard]
    assert order == sorted(set(order))  # deterministic: by shape, then rotation, no repeats
    assert all(p["rotation"] == 45 * i for shape in counts
               for i, p in enumerate(q for q in standard if q["shape"] == shape))
    for p in standard[:40]:
        assert CONTOUR.check(p) == p and json.loads(json.dumps(p)) == p
    assert all(p["fill"] and p["contrast"] == 1.0 and p["x"] == p["y"] == 0 for p in standard)
    assert standard_set(size=0.2, fill=False)[100]["size"] == 0.2


def test_the_shapes_are_the_published_control_points():
    # Shape 3, a teardrop, as published (units of 1.6 = size), in either direction.
    published = np.array([[-0.4, 0], [-0.375, 0.416], [-0.3, 0.825], [-0.174, 1.221], [0, 1.6],
                          [0.174, 1.221], [0.3, 0.825], [0.375, 0.416], [0.4, 0], [0.283, -0.283],
                          [0, -0.4], [-0.283, -0.283]])
    points = control_points({"shape": 3}) * 1.6
    assert len(points) == len(published)
    assert min(np.abs(np.roll(points[::sign], shift, axis=0) - published).max()
               for sign in (1, -1) for shift in range(len(points))) < 1e-12
    # Every standard stimulus is a published shape, turned: no element moved.
    for p in standard_set()[::7]:
        unturned = control_points({**p, "rotation": 0})
        assert np.array_equal(unturned, control_points({"shape": p["shape"]}))
        turned = np.radians(p["rotation"])
        rotation = np.array([[np.cos(turned), np.sin(turned)], [-np.sin(turned), np.cos(turned)]])
        np.testing.assert_allclose(control_points(p), unturned @ rotation, atol=1e-12)


def test_standard_stimuli_are_distinct_images(standard):
    assert len({CONTOUR.render(p, 48).tobytes() for p in standard}) == 366


def test_the_rotations_left_out_repeat_one_shown(standard):
    counts = Counter(p["shape"] for p in standard)
    for shape, n in counts.items():
        if n == 8:
            continue
        first = CONTOUR.render({"shape": shape}, 48).astype(int)
        repeat = CONTOUR.render({"shape": shape, "rotation": 45 * n}, 48).astype(int)
        assert np.abs(first - repeat).max() <= 2, shape
        if n > 1:
            turned = CONTOUR.render({"shape": shape, "rotation": 45}, 48).astype(int)
            assert np.sum(np.abs(first - turned).max(axis=-1) > 60) > 50, shape


def test_samples_are_valid_json_and_render_deterministically():
    rng = np.random.default_rng(0)
    samples = [CONTOUR.sample(rng) for _ in range(60)]
    published = {p["shape"]: p["curvatures"] for p in standard_set()}
    assert sum(p["curvatures"] != published[p["shape"]] for p in samples) >= 5  # some variants
    for p in samples[:15]:
        assert json.loads(json.dumps(p)) == p and CONTOUR.check(p) == p
        image = CONTOUR.render(p, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert np.array_equal(image, CONTOUR.render(json.loads(json.dumps(p)), 64))
        assert np.all(image[0, 0] == GREY) and np.any(image != GREY)


def test_a_variant_moves_only_the_targeted_element():
    params = CONTOUR.check({"shape": 23, "size": 0.4})
    before = elements(params)
    target = next(k for k, e in enumerate(before) if e["curvature"] < -0.2)  # a concavity
    changed = variant(params, target, 0.3)
    after = elements(changed)
    assert after[target]["curvature"] == pytest.approx(0.3, abs=1e-9)
    for k, (old, new) in enumerate(zip(before, after)):
        if k != target:
            assert new["curvature"] == pytest.approx(old["curvature"], abs=1e-12)
            assert new["angle"] == pytest.approx(old["angle"], abs=1e-12)
    moved = np.flatnonzero(np.any(control_points(params) != control_points(changed), axis=1))
    assert moved.tolist() == [before[target]["point"]]
    # Setting the published value back gives the published shape exactly.
    restored = variant(changed, target, params["curvatures"][target])
    assert np.array_equal(control_points(restored), control_points(params))

    # Pixels change only in the angular sector of the outline the moved point shapes: from
    # the knot two before it to the knot two after it (old and new outline alike).
    size_px = 96
    a = CONTOUR.render(params, size_px).astype(int)
    b = CONTOUR.render(changed, size_px).astype(int)
    rows, cols = np.nonzero(np.abs(a - b).max(axis=-1) > 0)
    assert len(rows) > 20
    apex_angle = before[target]["angle"]
    pixel_angles = np.degrees(np.arctan2(size_px / 2 - (rows + 0.5), cols + 0.5 - size_px / 2))
    point = before[target]["point"]
    span = []
    for p in (params, changed):
        q = control_points(p)
        n = len(q)
        knots = [(q[(i - 1) % n] + 4 * q[i % n] + q[(i + 1) % n]) / 6
                 for i in (point - 2, point + 2)]
        span += [np.degrees(np.arctan2(k[1], k[0])) for k in knots]
    low, high = min(_wrap(np.array(span) - apex_angle)), max(_wrap(np.array(span) - apex_angle))
    assert high - low < 150  # a sector, not the whole shape
    offsets = _wrap(pixel_angles - apex_angle)
    assert offsets.min() > low - 6 and offsets.max() < high + 6
    # ... and the other elements' surroundings are untouched.
    q = control_points(params)
    for k, e in enumerate(before):
        if k != target:
            i = e["point"]
            x, y = (q[i - 1] + 4 * q[i] + q[(i + 1) % len(q)]) / 6 * params["size"]
            r, c = int(size_px * (0.5 - y)), int(size_px * (0.5 + x))
            assert np.array_equal(a[r - 4:r + 5, c - 4:c + 5], b[r - 4:r + 5, c - 4:c + 5])


def test_variant_rejects_what_it_cannot_make():
    with pytest.raises(ValueError, match="element 9 out of range"):
        variant({"shape": 3}, 9, 0.2)
    with pytest.raises(ValidationError, match="curvatures"):
        variant({"shape": 3}, 0, 1.2)
    with pytest.raises(ValidationError, match="curvatures.*would reach"):
        variant({"shape": 51}, 4, 1.0)  # a sharp point out of a broad convexity: a long spike


def test_boundary_signs_follow_the_elements():
    params = {"shape": 23}
    angles, curvature = boundary(params, samples=720)
    assert angles.shape == curvature.shape == (720,)
    assert np.all(np.diff(np.unwrap(np.radians(angles))) > 0)  # star-shaped: a function of angle
    assert CURVATURE_MIN - 1e-9 <= curvature.min() < -0.2
    assert 0.5 < curvature.max() <= CURVATURE_MAX
    found = elements(params)
    assert {e["curvature"] > 0 for e in found} == {True, False}
    for e in found:
        at = curvature[np.argmin(np.abs(_wrap(angles - e["angle"])))]
        assert np.sign(at) == np.sign(e["curvature"]) and abs(at - e["curvature"]) < 0.1


def test_boundary_is_normalized_and_turns_with_the_shape():
    # The big circle: radius 0.9 of size (its B-spline runs inside the control points).
    _, circle = boundary({"shape": 2})
    assert np.all((circle > np.tanh(1 / 0.95 / 6.76)) & (circle < np.tanh(1 / 0.85 / 6.76)))
    # Size and position leave the description alone; rotation shifts it.
    a_angles, a = boundary({"shape": 20})
    b_angles, b = boundary({"shape": 20, "size": 0.1, "x": 0.3, "y": -0.2})
    np.testing.assert_allclose(b_angles, a_angles, atol=1e-9)
    np.testing.assert_allclose(b, a, atol=1e-9)
    c_angles, c = boundary({"shape": 20, "rotation": 90})
    np.testing.assert_allclose(c, a, atol=1e-9)
    assert np.abs(_wrap(c_angles - a_angles - 90)).max() < 1e-6
    turned = [e["angle"] for e in elements({"shape": 20, "rotation": 90})]
    assert np.abs(_wrap(np.array(turned) - [e["angle"] for e in elements({"shape": 20})] - 90)
                  ).max() < 1e-6


def test_fill_or_outline():
    filled = CONTOUR.render({"shape": 2, "size": 0.4}, 64)
    outline = CONTOUR.render({"shape": 2, "size": 0.4, "fill": False}, 64)
    assert np.all(filled[32, 32] == 255) and np.all(outline[32, 32] == GREY)
    drawn_filled = np.any(filled != GREY, axis=-1).sum()
    drawn_outline = np.any(outline != GREY, axis=-1).sum()
    assert 0 < 3 * drawn_outline < drawn_filled
    rows, cols = np.nonzero(np.any(outline != GREY, axis=-1))
    radius = np.hypot(rows + 0.5 - 32, cols + 0.5 - 32)  # the circle: 0.9 x size = 23 px
    assert 20 < radius.min() and radius.max() < 26


def test_contrast_sign_brighter_or_darker():
    def centre(background=0.5, **params):
        return CONTOUR.render({"shape": 2, "size": 0.4, **params}, 32, background)[16, 16]

    assert np.all(centre(contrast=1.0) == 255) and np.all(centre(contrast=-1.0) == 0)
    assert np.all(centre(contrast=0.5) == 191) and np.all(centre(contrast=-0.5) == 64)
    assert np.all(centre(background=0.2, contrast=0.5) > 51)
    assert np.all(centre(background=0.2, contrast=-0.5) < 51)
    assert centre(colour=[1.0, 0.0, 0.0]).tolist() == [255, 0, 0]
    assert centre(colour=[1.0, 0.0, 0.0], contrast=-1.0).tolist() == [0, 255, 255]


@pytest.mark.parametrize("bad, field", [
    ({"shape": 3, "radius": 0.2}, "radius"),
    ({"size": 0.2}, "shape"),
    ({"shape": 52}, "shape"),
    ({"shape": 3, "rotation": 30}, "rotation"),
    ({"shape": 3, "rotation": 360}, "rotation"),
    ({"shape": 3, "curvatures": [0.5, 0.1, 1.2, 0.1]}, "curvatures"),
    ({"shape": 3, "curvatures": [-0.4, 0.1, 1.0, 0.1]}, "curvatures"),
    ({"shape": 3, "curvatures": [0.5]}, "curvatures"),
    ({"shape": 3, "size": 0.0}, "size"),
    ({"shape": 3, "size": 0.6}, "size"),
    ({"shape": 3, "x": 0.7}, "x"),
    ({"shape": 3, "contrast": -1.5}, "contrast"),
    ({"shape": 3, "colour": [1.0, 0.5]}, "colour"),
])
def test_bad_params_name_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        CONTOUR.check(bad)
    with pytest.raises(ValidationError, match=field):
        CONTOUR.render(bad, 16)
