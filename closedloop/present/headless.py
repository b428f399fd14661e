"""A presenter without a display: a software frame clock with the same timing contract."""

from __future__ import annotations

import time

import numpy as np
import pylsl

from closedloop.present.base import Presenter


class HeadlessPresenter(Presenter):
    """Flips on a virtual refresh clock (``display.refresh_rate``).

    A flip waits for the next frame boundary and is stamped with that
    boundary's time, as a real flip is stamped with its vertical blank. When
    the caller is late the missed boundaries are skipped, which shows up as a
    long frame interval (a dropped frame), exactly as on a monitor.
    """

    def __init__(self, display, layout, markers):
        super().__init__(display, layout, markers)
        self._last_flip = pylsl.local_clock()
        self.image: np.ndarray | None = None

    def _load(self, image: np.ndarray) -> None:
        self.image = image

    def _flip(self, show_image: bool, markers: list[str]) -> float:
        now = pylsl.local_clock()
        frames_ahead = max(1, int(np.ceil((now - self._last_flip) / self.frame_period)))
        flip = self._last_flip + frames_ahead * self.frame_period
        time.sleep(max(0.0, flip - pylsl.local_clock()))
        self._last_flip = flip
        self._flipped(markers, flip)
        return flip
