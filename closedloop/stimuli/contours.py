"""Curved-contour stimuli: the Pasupathy & Connor (2001) shape set and its curvature variants.

A contour is a closed, uniform cubic B-spline through the control points of one of the 51
shapes of Pasupathy & Connor (2001, J Neurophysiol 86:2505), shown at rotations in 45-degree
steps, at a size and position, filled or as an outline, at a signed luminance contrast.

Where the shapes come from
    The control points are the published ones: the coordinates supplied by Anitha Pasupathy,
    as distributed with the shape-set demo of Taekjun Kim, Anitha Pasupathy and Wyeth Bair
    (2020; including Bair's 2014 correction to shape 29). They are kept here as data (the
    repeated closing point dropped, the order reversed to run counter-clockwise), numbered
    1-51 in the published order. Every shape lies within a circle of radius 1.6 around the
    origin of those coordinates, its *centre*: rotations turn a shape about its centre,
    angular positions are measured from it, and ``size`` is that circle's radius. Which
    rotations are distinct is decided from the geometry, the control polygon turned about
    the centre against every cyclic shift of the original, and it gives the published 366
    stimuli. (Several shapes are not centred on their area centroid: shape 4, an ellipse
    above the centre, has eight distinct rotations; symmetries about the centroids would
    leave 362.)

Curvature
    The curvature of the spline is computed analytically from its derivatives, in units of
    ``1 / size`` (so a circle of radius ``size`` has curvature 1), and squashed to the
    paper's normalized range with ``tanh(curvature / CURVATURE_SCALE)``: 0 is straight,
    positive convex, negative concave, a sharp point approaches 1.0, and a circle of radius
    ``size`` has ``tanh(1 / 6.76) = 0.147``. The scale is calibrated so that the deepest
    concavity along any published outline is -0.3, as in the paper; the paper's own
    squashing function is not reproduced.

Boundary elements
    A shape's elements are the extremes of curvature along its outline, found at the knots
    of the spline (where one cubic piece meets the next; knot ``i`` belongs to control point
    ``i``): runs of knots within 0.01 of each other are merged, the runs curved more (or
    less) than both neighbouring runs are peaks (or troughs), and of two extremes on
    adjacent knots only the more prominent is kept. An element sits at the middle knot of
    its run, its *apex*; its curvature is the spline's there. The circles, of constant
    curvature, get an element at every other knot.

Variants
    ``variant`` sets one element's curvature by moving its apex control point along the
    outward normal of the chord between the two neighbouring control points, by the
    distance that gives exactly the requested curvature at the apex. The curvature at a
    knot depends only on its own control point and the two beside it, and apexes are never
    adjacent, so no other element's curvature changes and no other control point moves; the
    outline changes only between the knots two before and two after the apex (a cubic
    B-spline's control point shapes two pieces on each side). A requested 1.0 is made as
    0.9999. A variant whose outline would cross itself or reach more than ``REACH`` times
    ``size`` from the centre is refused with a ``ValueError`` (inside pydantic's
    ``ValidationError`` when validating): making a sharp point of a broad convexity, say,
    takes a long spike.
"""

from __future__ import annotations

import functools
from typing import Annotated, NamedTuple

import numpy as np
from PIL import ImageDraw
from pydantic import Field, field_validator, model_validator

from closedloop.config import Settings
from closedloop.stimuli.families import Family, draw

__all__ = ["Contour", "ContourParams", "boundary", "control_points", "elements",
           "standard_set", "variant"]

DESIGN_RADIUS = 1.6  # radius (published units) of the circle holding every shape: one ``size``
CURVATURE_SCALE = 6.76  # normalized curvature = tanh(curvature in 1/size / CURVATURE_SCALE)
CURVATURE_MIN, CURVATURE_MAX = -0.3, 1.0  # the normalized range of the paper
SHARPEST = 0.9999  # a requested curvature of 1.0 (a sharp point) is made as this
PLATEAU = 0.01  # knots whose normalized curvatures differ by less are one run
REACH = 1.25  # a variant's outline stays within this many ``size`` of the centre
ROTATIONS = tuple(range(0, 360, 45))  # degrees, counter-clockwise
OUTLINE = 0.02  # outline width, fraction of the image side
PIECE_SAMPLES = 32  # points drawn per cubic piece of the spline

# The published control points (x0, y0, x1, y1, ...) of shapes 1-51; see the module docstring.
_PUBLISHED: tuple[tuple[float, ...], ...] = (
    (  # 1
        -0.4, 0, -0.283, 0.283, 0, 0.4, 0.283, 0.283, 0.4, 0, 0.283, -0.283, 0, -0.4, -0.283, -0.283
    ),
    (  # 2
        -1.6, 0, -1.131, 1.131, 0, 1.6, 1.131, 1.131, 1.6, 0, 1.131, -1.131, 0, -1.6, -1.131, -1.131
    ),
    (  # 3
        -0.4, 0, -0.375, 0.416, -0.3, 0.825, -0.174, 1.221, 0, 1.6, 0.174, 1.221, 0.3, 0.825, 0.375,
        0.416, 0.4, 0, 0.283, -0.283, 0, -0.4, -0.283, -0.283
    ),
    (  # 4
        -0.481, 0.215, -0.518, 0.6, -0.481, 0.983, -0.369, 1.354, 0, 1.6, 0.369, 1.354, 0.481,
        0.983, 0.518, 0.6, 0.481, 0.215, 0.369, -0.154, 0, -0.4, -0.369, -0.154
    ),
    (  # 5
        -0.373, 0, -0.266, 0.828, -0.069, 1.37, 0, 1.6, 0.069, 1.37, 0.266, 0.828, 0.373, 0, 0.266,
        -0.828, 0.069, -1.37, 0, -1.6, -0.069, -1.37, -0.266, -0.828
    ),
    (  # 6
        -0.438, 0.195, -0.277, 0.916, -0.182, 1.19, -0.102, 1.387, 0, 1.6, 0.102, 1.387, 0.182,
        1.19, 0.277, 0.916, 0.438, 0.195, 0.477, -0.543, 0.393, -1.278, 0, -1.6, -0.393, -1.278,
        -0.477, -0.543
    ),
    (  # 7
        -0.64, 0, -0.571, 0.689, -0.369, 1.354, 0, 1.6, 0.369, 1.354, 0.571, 0.689, 0.64, 0, 0.571,
        -0.689, 0.369, -1.354, 0, -1.6, -0.369, -1.354, -0.571, -0.689
    ),
    (  # 8
        -0.266, 0.82, 0, 1.6, 0.122, 0.988, 0.468, 0.468, 0.988, 0.122, 1.6, 0, 0.82, -0.266, 0.066,
        0.066
    ),
    (  # 9
        -0.386, 0.589, -0.386, 1.303, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635,
        0.894, 0.461, 1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.303, -0.386, 0.589, -0.386, -0.029, -0.029
    ),
    (  # 10
        -0.082, 0.186, -0.289, 0.884, 0, 1.6, 0.1, 1.14, 0.351, 0.751, 0.74, 0.5, 1.2, 0.4, 1.483,
        0.283, 1.6, 0, 1.278, -0.393, 0.467, -0.294
    ),
    (  # 11
        -1.6, 0, -1.483, 0.283, -1.2, 0.4, -0.74, 0.5, -0.351, 0.751, -0.1, 1.14, 0, 1.6, 0.289,
        0.884, 0.082, 0.186, -0.467, -0.294, -1.278, -0.393
    ),
    (  # 12
        -0.245, 0.781, 0, 1.6, 0.075, 0.846, 0.294, 0.122, 0.651, -0.546, 1.131, -1.131, 0.385,
        -0.733, -0.108, -0.051
    ),
    (  # 13
        -0.427, 0.573, -0.393, 1.278, -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.393, 1.122, 0.373,
        0.652, 0.487, 0.198, 0.727, -0.203, 1.071, -0.516, 1.248, -0.848, 1.131, -1.131, 0.85,
        -1.25, 0.626, -1.181, 0.106, -0.713, -0.256, -0.11
    ),
    (  # 14
        -0.123, 0.149, -0.167, 0.883, 0, 1.6, 0.054, 0.983, 0.257, 0.401, 0.605, -0.111, 1.071,
        -0.516, 1.216, -0.848, 1.131, -1.131, 0.85, -1.25, 0.57, -1.131, 0.13, -0.542
    ),
    (  # 15
        -0.605, -0.111, -0.257, 0.401, -0.054, 0.983, 0, 1.6, 0.167, 0.883, 0.123, 0.149, -0.13,
        -0.542, -0.57, -1.131, -0.85, -1.25, -1.131, -1.131, -1.216, -0.848, -1.071, -0.516
    ),
    (  # 16
        -0.533, 0, -0.397, 0.843, -0.176, 1.333, 0, 1.6, 0.122, 0.988, 0.468, 0.468, 0.988, 0.122,
        1.6, 0, 0.988, -0.122, 0.468, -0.468, 0.122, -0.988, 0, -1.6, -0.176, -1.333, -0.397, -0.843
    ),
    (  # 17
        -0.533, 0, -0.397, 0.843, -0.176, 1.333, 0, 1.6, 0.1, 1.14, 0.351, 0.751, 0.74, 0.5, 1.2,
        0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.74, -0.5, 0.351, -0.751, 0.1, -1.14,
        0, -1.6, -0.176, -1.333, -0.397, -0.843
    ),
    (  # 18
        -0.575, 0.172, -0.381, 0.923, -0.212, 1.273, 0, 1.6, 0.122, 0.988, 0.468, 0.468, 0.988,
        0.122, 1.6, 0, 1.14, -0.092, 0.752, -0.352, 0.492, -0.74, 0.4, -1.2, 0.283, -1.483, 0, -1.6,
        -0.369, -1.354, -0.571, -0.605
    ),
    (  # 19
        -0.571, 0.605, -0.369, 1.354, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.492, 0.74, 0.752, 0.352,
        1.14, 0.092, 1.6, 0, 0.988, -0.122, 0.468, -0.468, 0.122, -0.988, 0, -1.6, -0.212, -1.273,
        -0.381, -0.923, -0.575, -0.172
    ),
    (  # 20
        -0.575, 0.172, -0.381, 0.923, -0.212, 1.273, 0, 1.6, 0.1, 1.14, 0.351, 0.751, 0.74, 0.5,
        1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.894, -0.461, 0.635, -0.635,
        0.461, -0.894, 0.4, -1.2, 0.283, -1.483, 0, -1.6, -0.369, -1.354, -0.571, -0.605
    ),
    (  # 21
        -0.571, 0.605, -0.369, 1.354, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635,
        0.894, 0.461, 1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.74, -0.5, 0.351,
        -0.751, 0.1, -1.14, 0, -1.6, -0.212, -1.273, -0.381, -0.923, -0.575, -0.172
    ),
    (  # 22
        -0.64, 0, -0.571, 0.689, -0.369, 1.354, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.492, 0.74, 0.752,
        0.352, 1.14, 0.092, 1.6, 0, 1.14, -0.092, 0.752, -0.352, 0.492, -0.74, 0.4, -1.2, 0.283,
        -1.483, 0, -1.6, -0.369, -1.354, -0.571, -0.689
    ),
    (  # 23
        -0.64, 0, -0.571, 0.689, -0.369, 1.354, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635,
        0.635, 0.894, 0.461, 1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.894,
        -0.461, 0.635, -0.635, 0.461, -0.894, 0.4, -1.2, 0.283, -1.483, 0, -1.6, -0.369, -1.354,
        -0.571, -0.689
    ),
    (  # 24
        -0.294, 0.122, -0.075, 0.846, 0, 1.6, 0.075, 0.846, 0.294, 0.122, 0.651, -0.546, 1.131,
        -1.131, 0.612, -0.785, 0, -0.663, -0.612, -0.785, -1.131, -1.131, -0.651, -0.546
    ),
    (  # 25
        -0.467, 0.102, -0.35, 0.505, -0.393, 1.122, -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.393,
        1.122, 0.35, 0.505, 0.467, -0.102, 0.751, -0.688, 1.131, -1.131, 0.612, -0.785, 0, -0.663,
        -0.612, -0.785, -1.131, -1.131, -0.751, -0.688
    ),
    (  # 26
        -0.294, 0.122, -0.075, 0.846, 0, 1.6, 0.054, 0.983, 0.257, 0.401, 0.605, -0.111, 1.071,
        -0.516, 1.248, -0.848, 1.131, -1.131, 0.85, -1.25, 0.57, -1.131, 0.179, -0.871, -0.282,
        -0.78, -0.742, -0.871, -1.131, -1.131, -0.651, -0.546
    ),
    (  # 27
        -0.257, 0.401, -0.054, 0.983, 0, 1.6, 0.075, 0.846, 0.294, 0.122, 0.651, -0.546, 1.131,
        -1.131, 0.742, -0.871, 0.282, -0.78, -0.179, -0.871, -0.571, -1.131, -0.85, -1.25, -1.131,
        -1.131, -1.248, -0.848, -1.071, -0.516, -0.605, -0.111
    ),
    (  # 28
        -0.257, 0.401, -0.054, 0.983, 0, 1.6, 0.054, 0.983, 0.257, 0.401, 0.605, -0.111, 1.071,
        -0.516, 1.248, -0.848, 1.131, -1.131, 0.85, -1.25, 0.57, -1.131, 0.308, -0.957, 0, -0.896,
        -0.308, -0.957, -0.57, -1.131, -0.85, -1.25, -1.131, -1.131, -1.248, -0.848, -1.071, -0.516,
        -0.605, -0.111
    ),
    (  # 29
        -0.487, 0.198, -0.373, 0.652, -0.393, 1.122, -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.393,
        1.122, 0.35, 0.505, 0.467, -0.102, 0.751, -0.688, 1.131, -1.131, 0.742, -0.871, 0.282,
        -0.78, -0.179, -0.871, -0.571, -1.131, -0.85, -1.25, -1.131, -1.131, -1.248, -0.848, -1.071,
        -0.516, -0.727, -0.203
    ),
    (  # 30
        -0.467, -0.102, -0.35, 0.505, -0.393, 1.122, -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.393,
        1.122, 0.373, 0.652, 0.487, 0.198, 0.727, -0.203, 1.071, -0.516, 1.248, -0.848, 1.131,
        -1.131, 0.85, -1.25, 0.571, -1.131, 0.179, -0.871, -0.282, -0.78, -0.742, -0.871, -1.131,
        -1.131, -0.751, -0.688
    ),
    (  # 31
        -0.487, 0.198, -0.373, 0.652, -0.393, 1.122, -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.393,
        1.122, 0.373, 0.652, 0.487, 0.198, 0.727, -0.203, 1.071, -0.516, 1.248, -0.848, 1.131,
        -1.131, 0.85, -1.25, 0.57, -1.131, 0.308, -0.957, 0, -0.896, -0.308, -0.957, -0.57, -1.131,
        -0.85, -1.25, -1.131, -1.131, -1.248, -0.848, -1.071, -0.516, -0.727, -0.203
    ),
    (  # 32
        -1.6, 0, -0.988, 0.122, -0.468, 0.468, -0.122, 0.988, 0, 1.6, 0.122, 0.988, 0.468, 0.468,
        0.988, 0.122, 1.6, 0, 0.988, -0.122, 0.468, -0.468, 0.122, -0.988, 0, -1.6, -0.122, -0.988,
        -0.468, -0.468, -0.988, -0.122
    ),
    (  # 33
        -1.6, 0, -0.988, 0.122, -0.468, 0.468, -0.122, 0.988, 0, 1.6, 0.122, 0.988, 0.468, 0.468,
        0.988, 0.122, 1.6, 0, 1.14, -0.1, 0.751, -0.351, 0.5, -0.74, 0.4, -1.2, 0.283, -1.483, 0,
        -1.6, -0.283, -1.483, -0.4, -1.2, -0.5, -0.74, -0.751, -0.351, -1.14, -0.1
    ),
    (  # 34
        -1.6, 0, -1.483, 0.283, -1.2, 0.4, -0.74, 0.5, -0.351, 0.751, -0.1, 1.14, 0, 1.6, 0.1, 1.14,
        0.351, 0.751, 0.74, 0.5, 1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.74,
        -0.5, 0.351, -0.751, 0.1, -1.14, 0, -1.6, -0.1, -1.14, -0.351, -0.751, -0.74, -0.5, -1.2,
        -0.4, -1.483, -0.283
    ),
    (  # 35
        -1.6, 0, -0.988, 0.122, -0.468, 0.468, -0.122, 0.988, 0, 1.6, 0.1, 1.14, 0.351, 0.751, 0.74,
        0.5, 1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.894, -0.461, 0.635, -0.635,
        0.461, -0.894, 0.4, -1.2, 0.283, -1.483, 0, -1.6, -0.283, -1.483, -0.4, -1.2, -0.5, -0.74,
        -0.751, -0.351, -1.14, -0.1
    ),
    (  # 36
        -1.6, 0, -1.483, 0.283, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2,
        -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635, 0.894, 0.461,
        1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.74, -0.5, 0.351, -0.751, 0.1,
        -1.14, 0, -1.6, -0.1, -1.14, -0.351, -0.751, -0.74, -0.5, -1.2, -0.4, -1.483, -0.283
    ),
    (  # 37
        -1.6, 0, -1.483, 0.283, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2,
        -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635, 0.894, 0.461,
        1.2, 0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.894, -0.461, 0.635, -0.635,
        0.461, -0.894, 0.4, -1.2, 0.283, -1.483, 0, -1.6, -0.283, -1.483, -0.4, -1.2, -0.461,
        -0.894, -0.635, -0.635, -0.894, -0.461, -1.2, -0.4, -1.483, -0.283
    ),
    (  # 38
        -0.571, 0.605, 0, 1.6, 1.131, 1.131, 1.6, 0, 1.2, -0.4, 0.74, -0.5, 0.351, -0.751, 0.1,
        -1.14, 0, -1.6, -0.212, -1.273, -0.381, -0.923, -0.575, -0.172
    ),
    (  # 39
        -0.575, 0.172, -0.381, 0.923, -0.212, 1.273, 0, 1.6, 0.1, 1.14, 0.351, 0.751, 0.74, 0.5,
        1.2, 0.4, 1.6, 0, 1.131, -1.131, 0, -1.6, -0.571, -0.605
    ),
    (  # 40
        -0.257, 0.401, -0.054, 0.983, 0, 1.6, 0.054, 0.983, 0.257, 0.401, 0.605, -0.111, 1.071,
        -0.516, 1.131, -1.131, 0, -1.6, -1.131, -1.131, -1.071, -0.516, -0.605, -0.111
    ),
    (  # 41
        -0.64, 0, -0.571, 0.689, 0, 1.6, 1.131, 1.131, 1.6, 0, 1.2, -0.4, 0.894, -0.461, 0.635,
        -0.635, 0.461, -0.894, 0.4, -1.2, 0.283, -1.483, 0, -1.6, -0.369, -1.354, -0.571, -0.689
    ),
    (  # 42
        -0.64, 0, -0.571, 0.689, -0.369, 1.354, 0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635,
        0.635, 0.894, 0.461, 1.2, 0.4, 1.6, 0, 1.131, -1.131, 0, -1.6, -0.571, -0.689
    ),
    (  # 43
        -0.487, 0.198, -0.373, 0.652, -0.393, 1.122, -0.283, 1.483, 0, 1.6, 0.283, 1.483, 0.393,
        1.122, 0.373, 0.652, 0.487, 0.198, 0.727, -0.203, 1.071, -0.516, 1.131, -1.131, 0, -1.6,
        -1.131, -1.131, -1.071, -0.516, -0.727, -0.203
    ),
    (  # 44
        -1.6, 0, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2, -0.283, 1.483,
        0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635, 0.894, 0.461, 1.2, 0.4, 1.483,
        0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.894, -0.461, 0.635, -0.635, 0.461, -0.894, 0.4,
        -1.2, 0, -1.6, -1.131, -1.131
    ),
    (  # 45
        -1.6, 0, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2, 0, 1.6, 1.131,
        1.131, 1.6, 0, 1.2, -0.4, 0.894, -0.461, 0.635, -0.635, 0.461, -0.894, 0.4, -1.2, 0, -1.6,
        -1.131, -1.131
    ),
    (  # 46
        -1.6, 0, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2, 0, 1.6, 1.131,
        1.131, 1.6, 0, 1.131, -1.131, 0, -1.6, -1.131, -1.131
    ),
    (  # 47
        -1.6, 0, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2, -0.283, 1.483,
        0, 1.6, 0.283, 1.483, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635, 0.894, 0.461, 1.2, 0.4, 1.6, 0,
        1.131, -1.131, 0, -1.6, -1.131, -1.131
    ),
    (  # 48
        -1.6, 0, -1.131, 1.131, 0, 1.6, 0.4, 1.2, 0.461, 0.894, 0.635, 0.635, 0.894, 0.461, 1.2,
        0.4, 1.483, 0.283, 1.6, 0, 1.483, -0.283, 1.2, -0.4, 0.74, -0.5, 0.351, -0.751, 0.1, -1.14,
        0, -1.6, -0.1, -1.14, -0.351, -0.751, -0.74, -0.5, -1.2, -0.4
    ),
    (  # 49
        -1.6, 0, -1.483, 0.283, -1.2, 0.4, -0.894, 0.461, -0.635, 0.635, -0.461, 0.894, -0.4, 1.2,
        0, 1.6, 1.131, 1.131, 1.6, 0, 1.2, -0.4, 0.74, -0.5, 0.351, -0.751, 0.1, -1.14, 0, -1.6,
        -0.1, -1.14, -0.351, -0.751, -0.74, -0.5, -1.2, -0.4, -1.483, -0.283
    ),
    (  # 50
        -1.6, 0, -1.131, 1.131, 0, 1.6, 1.131, 1.131, 1.6, 0, 1.2, -0.4, 0.74, -0.5, 0.351, -0.751,
        0.1, -1.14, 0, -1.6, -0.1, -1.14, -0.351, -0.751, -0.74, -0.5, -1.2, -0.4
    ),
    (  # 51
        -1.6, 0, -0.988, 0.122, -0.468, 0.468, -0.122, 0.988, 0, 1.6, 0.1, 1.14, 0.351, 0.751, 0.74,
        0.5, 1.2, 0.4, 1.6, 0, 1.131, -1.131, 0, -1.6, -0.4, -1.2, -0.5, -0.74, -0.751, -0.351,
        -1.14, -0.1
    ),
)


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """``points`` (n, 2) turned counter-clockwise by ``degrees`` about the origin."""
    a = np.deg2rad(degrees)
    return points @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])


def _evaluate(points: np.ndarray, u: np.ndarray) -> list[np.ndarray]:
    """The closed uniform cubic B-spline of ``points`` and its first two derivatives at ``u``.

    ``u`` runs from 0 to n (the number of control points): piece ``i`` spans ``[i, i + 1)``
    and is shaped by control points ``i - 1 ... i + 2``; ``u = i`` is knot ``i``, at
    ``(P[i-1] + 4 P[i] + P[i+1]) / 6``. Returns three (len(u), 2) arrays: position, first
    and second derivative with respect to ``u``.
    """
    piece = np.floor(u).astype(int)
    t = (u - piece)[:, None]
    window = points[(piece[:, None] + np.arange(-1, 3)) % len(points)]  # (m, 4, 2)
    weights = (
        [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3],
        [-3 * (1 - t) ** 2, 9 * t**2 - 12 * t, -9 * t**2 + 6 * t + 3, 3 * t**2],
        [6 * (1 - t), 18 * t - 12, -18 * t + 6, 6 * t],
    )
    return [(np.stack(w, axis=1) * window).sum(axis=1) / 6 for w in weights]


def _normalize(curvature: np.ndarray) -> np.ndarray:
    """Curvature in units of 1 / size squashed to the paper's range (module docstring)."""
    return np.tanh(np.asarray(curvature) / CURVATURE_SCALE)


def _knots(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curvature (1 / size), outward unit normal (n, 2) and half-chord length at every knot.

    At knot ``i`` the first derivative is ``T = (P[i+1] - P[i-1]) / 2`` and the second is
    ``-2 b`` with ``b = P[i] - (P[i-1] + P[i+1]) / 2``, so the curvature is
    ``2 (b . normal) / |T|**2``: linear in how far ``P[i]`` stands out from the chord of its
    neighbours, and independent of every other control point.
    """
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    tangent = (after - before) / 2
    length = np.hypot(*tangent.T)
    normal = np.column_stack([tangent[:, 1], -tangent[:, 0]]) / length[:, None]
    bulge = points - (before + after) / 2
    return 2 * np.sum(bulge * normal, axis=1) / length**2, normal, length


def _gap(a: int, b: int, n: int) -> int:
    return min((a - b) % n, (b - a) % n)


def _apexes(curvature: np.ndarray) -> tuple[int, ...]:
    """The knots of a contour's elements, from its normalized knot curvatures (cyclic)."""
    n = len(curvature)
    fallback = tuple(range(0, n - 1, 2))  # constant curvature: every other knot
    breaks = np.abs(curvature - np.roll(curvature, -1)) >= PLATEAU  # knot i+1 starts a run
    if not breaks.any():
        return fallback
    first = (int(np.argmax(breaks)) + 1) % n
    runs: list[list[int]] = []  # [start, length]
    for k in range(n):
        i = (first + k) % n
        if breaks[(i - 1) % n]:
            runs.append([i, 1])
        else:
            runs[-1][1] += 1
    level = [float(np.mean(curvature[(s + np.arange(m)) % n])) for s, m in runs]
    candidates = []  # (prominence, apex)
    for r, (start, length) in enumerate(runs):
        here, left, right = level[r], level[r - 1], level[(r + 1) % len(runs)]
        if (here > left and here > right) or (here < left and here < right):
            candidates.append((min(abs(here - left), abs(here - right)),
                               (start + (length - 1) // 2) % n))
    chosen: list[int] = []
    for _, apex in sorted(candidates, key=lambda c: (-c[0], c[1])):
        if all(_gap(apex, other, n) >= 2 for other in chosen):
            chosen.append(apex)
    return tuple(sorted(chosen)) or fallback


def _distinct_rotations(points: np.ndarray) -> tuple[int, ...]:
    """The rotations (degrees) giving distinct shapes: up to the first that maps it onto itself."""
    for step in ROTATIONS[1:]:
        turned = _rotate(points, step)
        if any(np.abs(np.roll(turned, shift, axis=0) - points).max() < 0.01
               for shift in range(len(points))):
            return ROTATIONS[: step // 45]
    return ROTATIONS


class _Shape(NamedTuple):
    points: np.ndarray  # (n, 2) control points, counter-clockwise, in units of size
    apexes: tuple[int, ...]  # the apex knot (and control point) of each element
    curvatures: tuple[float, ...]  # published normalized curvature of each element (4 decimals)
    rotations: tuple[int, ...]  # distinct rotations, degrees


@functools.cache
def _shape(number: int) -> _Shape:
    """Published shape ``number`` (1-51) and its elements."""
    points = np.asarray(_PUBLISHED[number - 1], dtype=float).reshape(-1, 2)[::-1] / DESIGN_RADIUS
    points.setflags(write=False)
    curvature = _normalize(_knots(points)[0])
    apexes = _apexes(curvature)
    return _Shape(
        points=points,
        apexes=apexes,
        curvatures=tuple(round(float(curvature[apex]), 4) for apex in apexes),
        rotations=_distinct_rotations(points),
    )


def _crosses(xy: np.ndarray, first: np.ndarray) -> bool:
    """Whether any segment starting at ``first`` of the closed polyline ``xy`` crosses another."""
    ends = np.roll(xy, -1, axis=0)
    a, b = xy[first][:, None], ends[first][:, None]
    c, d = xy[None], ends[None]

    def side(p, q, r):
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
                       - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    return bool(np.any((side(a, b, c) * side(a, b, d) < 0) & (side(c, d, a) * side(c, d, b) < 0)))


@functools.lru_cache(maxsize=4096)
def _variant_points(number: int, curvatures: tuple[float, ...]) -> np.ndarray:
    """Control points of shape ``number`` with its elements at ``curvatures`` (unrotated).

    Raises ``ValueError`` when the outline would cross itself or leave ``REACH``.
    """
    shape = _shape(number)
    curvature, normal, length = _knots(shape.points)
    points = shape.points.copy()
    changed = [(k, apex, wanted) for k, (apex, published, wanted)
               in enumerate(zip(shape.apexes, shape.curvatures, curvatures))
               if wanted != published]
    for _, apex, wanted in changed:
        target = CURVATURE_SCALE * np.arctanh(np.clip(wanted, -SHARPEST, SHARPEST))
        points[apex] += (target - curvature[apex]) * length[apex] ** 2 / 2 * normal[apex]
    if changed:
        per = 16
        xy = _evaluate(points, np.arange(len(points) * per) / per)[0]
        what = ", ".join(f"element {k} at {wanted:g}" for k, _, wanted in changed)
        reach = float(np.hypot(*xy.T).max())
        if reach > REACH:
            raise ValueError(f"curvatures: shape {number} with {what} would reach {reach:.2f} "
                             f"x size from its centre (at most {REACH})")
        pieces = {(apex + d) % len(points) for _, apex, _ in changed for d in (-2, -1, 0, 1)}
        if _crosses(xy, np.concatenate([np.arange(p * per, (p + 1) * per) for p in pieces])):
            raise ValueError(f"curvatures: shape {number} with {what} would cross itself")
    points.setflags(write=False)
    return points


Curvature = Annotated[float, Field(ge=CURVATURE_MIN, le=CURVATURE_MAX)]
Level = Annotated[float, Field(ge=0.0, le=1.0)]


class ContourParams(Settings):
    """Parameters of one contour stimulus (sizes and positions are fractions of the image side).

    Attributes
    ----------
    shape : int
        The published shape, 1-51.
    curvatures : list of float, optional
        Normalized curvature (-0.3 concave ... 1.0 sharp point) of each of the shape's
        elements, in the order of ``elements``; the published values when left out. A value
        other than the published one moves that element's apex (see ``variant``).
    rotation : int
        Degrees counter-clockwise about the shape's centre: 0, 45, ..., 315.
    size : float
        Radius of the circle holding the shape (0 < size <= 0.5); the published shapes reach
        at most 0.98 of it.
    x, y : float
        Offset of the shape's centre from the image centre (-0.5 ... 0.5; y up).
    fill : bool
        A filled shape, or its outline (``OUTLINE`` of the side wide).
    contrast : float
        Signed contrast against the background (-1 ... 1): the figure is the background
        moved ``|contrast|`` of the way to white (+) or black (-).
    colour : tuple of 3 floats, optional
        RGB (0-1) to use instead of white, and its complement ``1 - colour`` instead of black.
    """

    shape: int = Field(ge=1, le=len(_PUBLISHED))
    curvatures: list[Curvature] | None = None
    rotation: int = Field(0, ge=0, le=315)
    size: float = Field(0.3, gt=0.0, le=0.5)
    x: float = Field(0.0, ge=-0.5, le=0.5)
    y: float = Field(0.0, ge=-0.5, le=0.5)
    fill: bool = True
    contrast: float = Field(1.0, ge=-1.0, le=1.0)
    colour: tuple[Level, Level, Level] | None = None

    @field_validator("rotation")
    @classmethod
    def _in_steps_of_45(cls, rotation: int) -> int:
        if rotation % 45:
            raise ValueError("rotation must be a multiple of 45 degrees (0, 45, ..., 315)")
        return rotation

    @model_validator(mode="after")
    def _one_curvature_per_element(self) -> ContourParams:
        published = _shape(self.shape).curvatures
        if self.curvatures is None:
            self.curvatures = list(published)
        elif len(self.curvatures) != len(published):
            raise ValueError(f"curvatures: shape {self.shape} has {len(published)} elements, "
                             f"got {len(self.curvatures)} curvatures")
        _variant_points(self.shape, tuple(self.curvatures))  # raises when out of reach
        return self


def _parse(params: dict | ContourParams) -> ContourParams:
    if isinstance(params, ContourParams):
        return params
    return ContourParams.model_validate(params)


def control_points(params: dict) -> np.ndarray:
    """The contour's control points, (n, 2), in units of ``size`` about its centre (y up).

    Variants included (each changed element's apex moved), then rotated. Point ``i`` is the
    same point of the shape in every variant and rotation.
    """
    p = _parse(params)
    return _rotate(_variant_points(p.shape, tuple(p.curvatures)), p.rotation)


def elements(params: dict) -> list[dict]:
    """The contour's boundary elements, in counter-clockwise order.

    Returns
    -------
    list of dict
        One per element: ``angle`` (degrees counter-clockwise from the right, of the apex
        about the shape's centre, rotation included), ``curvature`` (normalized, at the
        apex) and ``point`` (index of the apex control point, the one a variant moves).
    """
    p = _parse(params)
    shape = _shape(p.shape)
    points = control_points(p)
    curvature = _normalize(_knots(points)[0])
    n = len(points)
    found = []
    for apex in shape.apexes:
        knot = (points[apex - 1] + 4 * points[apex] + points[(apex + 1) % n]) / 6
        found.append({"angle": float(np.degrees(np.arctan2(knot[1], knot[0])) % 360),
                      "curvature": float(curvature[apex]), "point": apex})
    return found


def boundary(params: dict, samples: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """The boundary description: curvature along the outline against angular position.

    Parameters
    ----------
    params : dict
        Contour parameters.
    samples : int
        Number of points, equally spaced in arc length, counter-clockwise from knot 0.

    Returns
    -------
    angles : (samples,) ndarray
        Angular position of each point about the shape's centre, degrees in [0, 360),
        counter-clockwise from the right, rotation included. For a shape that is not
        star-shaped about its centre, angles can run back and revisit a direction.
    curvature : (samples,) ndarray
        Normalized curvature there (module docstring), from the spline's derivatives.
    """
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    points = control_points(params)
    n = len(points)
    u = np.arange(n * 64) / 64
    xy = _evaluate(points, u)[0]
    steps = np.hypot(*np.diff(np.vstack([xy, xy[:1]]), axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    where = np.interp(np.arange(samples) * arc[-1] / samples, arc, np.append(u, n))
    xy, d1, d2 = _evaluate(points, where)
    curvature = (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / np.hypot(*d1.T) ** 3
    return np.degrees(np.arctan2(xy[:, 1], xy[:, 0])) % 360, _normalize(curvature)


@functools.cache
def _standard_stimuli() -> tuple[tuple[int, int], ...]:
    """(shape, rotation) of the standard set, in order."""
    return tuple((number, rotation) for number in range(1, len(_PUBLISHED) + 1)
                 for rotation in _shape(number).rotations)


def standard_set(**common) -> list[dict]:
    """The standard set: every published shape at each of its distinct rotations (366).

    Parameters
    ----------
    **common
        Parameters shared by all (``size``, ``x``, ``y``, ``fill``, ``contrast``,
        ``colour``); the defaults otherwise.

    Returns
    -------
    list of dict
        Validated parameters ordered by ``shape`` (1-51), then ``rotation``; ``shape`` and
        ``rotation`` say where each came from, ``curvatures`` are the published ones.
    """
    return [ContourParams(shape=number, rotation=rotation, **common).model_dump(mode="json")
            for number, rotation in _standard_stimuli()]


def variant(params: dict, element: int, curvature: float) -> dict:
    """The same stimulus with one element's curvature changed, the rest of the shape unchanged.

    Parameters
    ----------
    params : dict
        Contour parameters.
    element : int
        Index of the element (0-based, as in ``elements``).
    curvature : float
        Its new normalized curvature, -0.3 ... 1.0.

    Returns
    -------
    dict
        Validated parameters. Only the element's apex control point moves
        (``elements(params)[element]["point"]``), so the outline changes only near it.

    Raises
    ------
    ValueError
        For an element that does not exist; ``pydantic.ValidationError`` (a ``ValueError``)
        for a curvature out of range or out of reach (module docstring).
    """
    p = _parse(params)
    count = len(p.curvatures)
    if not 0 <= element < count:
        raise ValueError(f"element {element} out of range: shape {p.shape} has {count} "
                         f"elements (0-{count - 1})")
    curvatures = list(p.curvatures)
    curvatures[element] = curvature
    return ContourParams.model_validate(
        {**p.model_dump(), "curvatures": curvatures}).model_dump(mode="json")


def _figure_colour(p: ContourParams, background: float) -> tuple[int, int, int]:
    """The figure's 0-255 RGB: the background moved |contrast| of the way to its target."""
    target = np.ones(3) if p.colour is None else np.asarray(p.colour, dtype=float)
    if p.contrast < 0:
        target = 1 - target
    rgb = background + abs(p.contrast) * (target - background)
    return tuple(int(round(255 * v)) for v in rgb)


class Contour(Family):
    """Closed curved contours: the Pasupathy & Connor (2001) shapes and their variants.

    Parameters are ``ContourParams``; ``standard_set``, ``variant``, ``elements``,
    ``boundary`` and ``control_points`` are module functions.
    """

    name = "contour"
    Params = ContourParams

    def sample(self, rng: np.random.Generator) -> dict:
        """A standard stimulus at a random size, position, fill and contrast; 30% a variant.

        The variant gives a random element a random curvature (up to ten tries at one in
        reach; the standard shape when none is).
        """
        stimuli = _standard_stimuli()
        number, rotation = stimuli[int(rng.integers(len(stimuli)))]
        colour = None
        if rng.random() < 0.2:
            hue = rng.uniform(0, 2 * np.pi)
            colour = [round(float(c), 3)
                      for c in 0.5 + 0.5 * np.cos(hue - np.array([0, 2, 4]) * np.pi / 3)]
        params = {
            "shape": number,
            "rotation": rotation,
            "size": round(float(rng.uniform(0.15, 0.35)), 3),
            "x": round(float(rng.uniform(-0.1, 0.1)), 3),
            "y": round(float(rng.uniform(-0.1, 0.1)), 3),
            "fill": bool(rng.random() < 0.7),
            "contrast": round(float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)), 3),
            "colour": colour,
        }
        curvatures = list(_shape(number).curvatures)
        if rng.random() < 0.3:
            element = int(rng.integers(len(curvatures)))
            for _ in range(10):
                trial = list(curvatures)
                trial[element] = round(float(rng.uniform(CURVATURE_MIN, CURVATURE_MAX)), 3)
                try:
                    _variant_points(number, tuple(trial))
                except ValueError:
                    continue
                curvatures = trial
                break
        return self.check({**params, "curvatures": curvatures})

    def render(self, params: dict, size_px: int, background: float = 0.5) -> np.ndarray:
        """The contour on a ``background`` grey (0-1): a (size_px, size_px, 3) uint8 image."""
        p = _parse(params)
        points = control_points(p)
        outline = _evaluate(points, np.arange(len(points) * PIECE_SAMPLES) / PIECE_SAMPLES)[0]
        colour = _figure_colour(p, background)

        def paint(canvas: ImageDraw.ImageDraw, side: int) -> None:
            xy = outline * p.size * side
            xy[:, 1] *= -1  # y up
            xy += side * (0.5 + np.array([p.x, -p.y]))
            vertices = [tuple(v) for v in xy.tolist()]
            if p.fill:
                canvas.polygon(vertices, fill=colour)
            else:
                canvas.line(vertices + vertices[:1], fill=colour,
                            width=max(1, round(OUTLINE * side)), joint="curve")

        return draw(size_px, paint, background)
