"""Degrees of visual angle to screen pixels, and back.

The eye looks straight at the screen centre (the fixation point) from
``distance_cm``. A point ``x`` degrees right and ``y`` degrees up of fixation
lies ``distance * tan(x)`` cm right and ``distance * tan(y)`` cm up of the
centre (horizontal and vertical angles taken separately). A span of
``size`` degrees centred ``c`` degrees from fixation covers
``distance * (tan(c + size/2) - tan(c - size/2))`` cm, so the same angle
takes more pixels away from fixation. No small-angle approximation is used
anywhere: conversions are exact and invert each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from closedloop.config import DisplaySpec, StimulusSpec, TrialSpec
from closedloop.errors import ClosedLoopError

MIN_PATCH_PX = 8  # px: the smallest image patch shown; fewer pixels hold no shape a neuron could tell apart


@dataclass(frozen=True)
class Geometry:
    """A monitor seen from a fixed eye position.

    Parameters
    ----------
    distance_cm : float
        Eye to screen centre, along the line of sight.
    size_cm : (float, float)
        Visible screen width and height.
    size_px : (int, int)
        Screen resolution, width and height.
    """

    distance_cm: float
    size_cm: tuple[float, float]
    size_px: tuple[int, int]

    @classmethod
    def of(cls, display: DisplaySpec) -> Geometry:
        return cls(display.distance_cm, tuple(display.size_cm), tuple(display.size_px))

    @property
    def px_per_cm(self) -> tuple[float, float]:
        return self.size_px[0] / self.size_cm[0], self.size_px[1] / self.size_cm[1]

    def position_px(self, x_deg: float, y_deg: float) -> tuple[float, float]:
        """Pixels right and up of the screen centre of the point at (x, y) degrees."""
        sx, sy = self.px_per_cm
        return (self.distance_cm * math.tan(math.radians(x_deg)) * sx,
                self.distance_cm * math.tan(math.radians(y_deg)) * sy)

    def position_deg(self, x_px: float, y_px: float) -> tuple[float, float]:
        """Inverse of :meth:`position_px`: degrees right and up of fixation."""
        sx, sy = self.px_per_cm
        return (math.degrees(math.atan(x_px / sx / self.distance_cm)),
                math.degrees(math.atan(y_px / sy / self.distance_cm)))

    def span_px(self, size_deg: float, centre_deg: float = 0.0, axis: int = 0) -> float:
        """Pixels covered by ``size_deg`` degrees centred ``centre_deg`` from fixation along
        ``axis`` (0 horizontal, 1 vertical)."""
        half = size_deg / 2
        cm = self.distance_cm * (math.tan(math.radians(centre_deg + half))
                                 - math.tan(math.radians(centre_deg - half)))
        return cm * self.px_per_cm[axis]

    def patch_px(self, size_deg: float, position_deg: tuple[float, float]) -> int:
        """Side (whole pixels, at least 1) of the square image patch of ``size_deg`` degrees at
        ``position_deg``: its horizontal span there, rounded."""
        return max(1, round(self.span_px(size_deg, position_deg[0], axis=0)))


@dataclass(frozen=True)
class Layout:
    """Where things go on the screen: pixels from the screen centre, x right and y up.

    Parameters
    ----------
    patch_px : int
        Side of the square stimulus patch; images are shown 1:1 at this size.
    patch_centre_px : (float, float)
        Centre of the patch (the receptive field).
    fixation_px : float
        Diameter of the fixation point.
    background : float
        Grey level of the screen, 0-1.
    """

    patch_px: int
    patch_centre_px: tuple[float, float]
    fixation_px: float
    background: float

    @classmethod
    def of(cls, display: DisplaySpec, stimulus: StimulusSpec, trial: TrialSpec) -> Layout:
        """The layout of a protocol's stimulus and trial on a rig's display.

        The patch centre is moved (by at most half a pixel) so the patch's
        edges fall on pixel boundaries and images are drawn 1:1, unresampled.
        A patch smaller than ``MIN_PATCH_PX`` or off the screen is a
        ``ClosedLoopError`` (:func:`patch_problem`).
        """
        problem = patch_problem(display, stimulus)
        if problem is not None:
            raise ClosedLoopError(f"protocol [stimulus]: {problem}")
        geometry = Geometry.of(display)
        side, snapped = _patch(geometry, stimulus)
        return cls(side, snapped, geometry.span_px(trial.fixation_deg), stimulus.background)


def _patch(geometry: Geometry, stimulus: StimulusSpec) -> tuple[int, tuple[float, float]]:
    """Side (px) and snapped centre (px right and up of the screen centre) of the image patch."""
    side = geometry.patch_px(stimulus.size_deg, stimulus.position_deg)
    centre = geometry.position_px(*stimulus.position_deg)
    # Pixel edges lie at k - screen/2 from the centre, for whole k.
    snapped = tuple(round(c - side / 2 + screen / 2) - screen / 2 + side / 2
                    for c, screen in zip(centre, geometry.size_px))
    return side, snapped


def patch_problem(display: DisplaySpec, stimulus: StimulusSpec) -> str | None:
    """Why the stimulus's image patch cannot be shown on the display (one line), or None.

    The patch must be at least ``MIN_PATCH_PX`` pixels a side and lie wholly on the screen.
    """
    geometry = Geometry.of(display)
    side, snapped = _patch(geometry, stimulus)
    patch = f"a {stimulus.size_deg} degree patch at {tuple(stimulus.position_deg)} degrees ({side} px)"
    screen = (f"the rig's {geometry.size_px[0]}x{geometry.size_px[1]} px screen ({geometry.size_cm[0]}x"
              f"{geometry.size_cm[1]} cm) at {geometry.distance_cm} cm")
    if side < MIN_PATCH_PX:
        return f"{patch} is smaller than {MIN_PATCH_PX} px on {screen}"
    if any(abs(c) + side / 2 > px / 2 for c, px in zip(snapped, geometry.size_px)):
        return f"{patch} does not fit {screen}"
    return None
