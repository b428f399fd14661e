"""The presenter interface: one image for ``on_frames``, then blank for ``off_frames``.

Timing contract, shared by every implementation:

* the onset marker is stamped with the time of the flip that first shows the
  image, the offset marker with the flip of the first blank frame (seconds,
  LSL local clock);
* durations are whole frames; a frame interval longer than 1.5 refresh
  periods counts as dropped.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from closedloop.config import DisplaySpec
from closedloop.present.markers import MarkerOutlet, offset_marker, onset_marker

DROPPED_FRAME = 1.5  # refresh periods


@dataclass(frozen=True)
class Timing:
    """When a presentation happened, seconds on the LSL clock."""

    onset: float
    offset: float
    frame_intervals: tuple[float, ...]  # s, between this presentation's flips
    dropped_frames: int


class Presenter(ABC):
    """Shows images and publishes markers at the flips.

    Parameters
    ----------
    display : DisplaySpec
        Refresh rate, window size, background and on-screen image size.
    markers : MarkerOutlet
        Where onset and offset markers go.
    """

    def __init__(self, display: DisplaySpec, markers: MarkerOutlet):
        self.display = display
        self.frame_period = 1.0 / display.refresh_rate
        self._markers = markers

    def present(self, image: np.ndarray, index: int, stimulus: str,
                on_frames: int, off_frames: int) -> Timing:
        """Show ``image`` (N x N x 3 uint8) for ``on_frames``, then blank for ``off_frames``."""
        self._load(image)
        flips = [self._flip(True, onset_marker(index, stimulus))]
        flips += [self._flip(True) for _ in range(on_frames - 1)]
        flips.append(self._flip(False, offset_marker(index)))
        flips += [self._flip(False) for _ in range(off_frames - 1)]
        intervals = np.diff(flips)
        dropped = int(np.sum(intervals > DROPPED_FRAME * self.frame_period))
        return Timing(flips[0], flips[on_frames], tuple(intervals.tolist()), dropped)

    def _publish(self, marker: str | None, timestamp: float) -> None:
        if marker is not None:
            self._markers.push(marker, timestamp)

    @abstractmethod
    def _load(self, image: np.ndarray) -> None:
        """Prepare ``image`` for drawing (texture upload)."""

    @abstractmethod
    def _flip(self, show_image: bool, marker: str | None = None) -> float:
        """Draw the next frame, flip, publish ``marker`` at the flip; return the flip time."""

    def close(self) -> None:
        """Release the display."""


def open_presenter(display: DisplaySpec, markers: MarkerOutlet) -> Presenter:
    """The presenter the display asks for; ``auto`` means PsychoPy when a display exists."""
    backend = display.backend
    if backend == "auto":
        backend = "psychopy" if os.environ.get("DISPLAY") else "headless"
    if backend == "psychopy":
        from closedloop.present.window import PsychoPyPresenter

        return PsychoPyPresenter(display, markers)
    from closedloop.present.headless import HeadlessPresenter

    return HeadlessPresenter(display, markers)
