"""The presenter interface: frames with or without an image, every flip stamped.

Timing contract, shared by every implementation:

* the onset marker is stamped with the time of the flip that first shows the
  image, the offset marker with the flip of the first frame without it
  (seconds, LSL local clock);
* durations are whole frames; a frame interval longer than 1.5 refresh
  periods counts as dropped;
* every flip's time is kept in ``flips`` until the caller takes it, so the
  session records the frame intervals of the whole run.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from closedloop.config import DisplaySpec
from closedloop.present.geometry import Layout
from closedloop.present.markers import MarkerOutlet, offset_marker, onset_marker

DROPPED_FRAME = 1.5  # refresh periods


@dataclass(frozen=True)
class Timing:
    """When a presentation happened, seconds on the LSL clock."""

    onset: float
    offset: float
    frame_intervals: tuple[float, ...]  # s, between this presentation's flips
    dropped_frames: int
    aborted: bool = False  # fixation broke before its last frame


class Presenter(ABC):
    """Shows images and publishes markers at the flips.

    Parameters
    ----------
    display : DisplaySpec
        Refresh rate, window size and photodiode patch.
    layout : Layout
        Patch size and position, fixation point, background, in pixels.
    markers : MarkerOutlet
        Where onset, offset and trial event markers go.
    """

    def __init__(self, display: DisplaySpec, layout: Layout, markers: MarkerOutlet):
        self.display, self.layout = display, layout
        self.frame_period = 1.0 / display.refresh_rate
        self.fixation_point = False  # drawn on every frame while True
        self.flips: list[float] = []  # s, every flip not yet taken by :meth:`take_flips`
        self._markers = markers

    def frames(self, seconds: float) -> int:
        """Whole frames in ``seconds``."""
        return round(seconds / self.frame_period)

    def present(self, image: np.ndarray, index: int, stimulus: str, on_frames: int, off_frames: int,
                holding: Callable[[], bool] | None = None) -> Timing:
        """Show ``image`` (N x N x 3 uint8) for ``on_frames``, then no image for ``off_frames``.

        ``holding`` is asked before every frame after the first; when it turns
        False the image goes at once (the offset and a ``fixation_break``
        marker at that flip) and the timing says ``aborted``.
        """
        self._load(image)
        flips = [self._flip(True, [onset_marker(index, stimulus)])]
        for frame in range(1, on_frames + off_frames):
            if holding is not None and not holding():
                flips.append(self._flip(False, ([offset_marker(index)] if frame <= on_frames else [])
                                        + [json.dumps({"event": "fixation_break", "index": index})]))
                return self._timing(flips, min(frame, on_frames), aborted=True)
            marker = [offset_marker(index)] if frame == on_frames else []
            flips.append(self._flip(frame < on_frames, marker))
        return self._timing(flips, on_frames)

    def blank(self, frames: int, marker: str | None = None) -> list[float]:
        """``frames`` frames without an image; ``marker`` is stamped at the first flip."""
        return [self._flip(False, [marker] if marker and k == 0 else []) for k in range(frames)]

    def take_flips(self) -> np.ndarray:
        """Every flip time (s) since the last call."""
        flips, self.flips = self.flips, []
        return np.array(flips)

    def _timing(self, flips: list[float], on_frames: int, aborted: bool = False) -> Timing:
        intervals = np.diff(flips)
        dropped = int(np.sum(intervals > DROPPED_FRAME * self.frame_period))
        return Timing(flips[0], flips[on_frames], tuple(intervals.tolist()), dropped, aborted)

    def _flipped(self, markers: list[str], timestamp: float) -> None:
        """Record a flip and publish its markers (call from the flip itself)."""
        self.flips.append(timestamp)
        for marker in markers:
            self._markers.push(marker, timestamp)

    @abstractmethod
    def _load(self, image: np.ndarray) -> None:
        """Prepare ``image`` for drawing (texture upload)."""

    @abstractmethod
    def _flip(self, show_image: bool, markers: list[str]) -> float:
        """Draw the next frame, flip, publish ``markers`` at the flip; return the flip time."""

    def close(self) -> None:
        """Release the display."""
