"""Opening the presenter a rig's display asks for."""

from __future__ import annotations

import os

from closedloop.config import DisplaySpec
from closedloop.present.base import Presenter
from closedloop.present.geometry import Layout
from closedloop.present.markers import MarkerOutlet


def open_presenter(display: DisplaySpec, layout: Layout, markers: MarkerOutlet) -> Presenter:
    """The presenter the display asks for; ``auto`` means PsychoPy when a display exists."""
    backend = display.backend
    if backend == "auto":
        backend = "psychopy" if os.environ.get("DISPLAY") else "headless"
    if backend == "psychopy":
        from closedloop.present.window import PsychoPyPresenter

        return PsychoPyPresenter(display, layout, markers)
    from closedloop.present.headless import HeadlessPresenter

    return HeadlessPresenter(display, layout, markers)
