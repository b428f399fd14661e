"""PsychoPy presenter: images as ImageStim, markers pushed with ``win.callOnFlip``."""

from __future__ import annotations

import numpy as np
import pylsl

from closedloop.present.base import Presenter


class PsychoPyPresenter(Presenter):
    """Draws in a PsychoPy window; every flip waits for the vertical blank.

    The onset marker is pushed from ``win.callOnFlip``, so it is stamped
    right after the buffer swap that shows the image.
    """

    def __init__(self, display, markers):
        super().__init__(display, markers)
        from psychopy import logging, visual

        logging.console.setLevel(logging.ERROR)
        grey = 2.0 * display.background - 1.0
        self.win = visual.Window(size=display.size_px, fullscr=display.fullscreen, units="pix",
                                 color=(grey, grey, grey), colorSpace="rgb", allowGUI=False,
                                 waitBlanking=True, checkTiming=False)
        size = (display.stimulus_px, display.stimulus_px)
        self._stim = visual.ImageStim(self.win, image=np.zeros((2, 2, 3)), size=size,
                                      colorSpace="rgb", interpolate=False)
        self._flip_time = 0.0

    def _load(self, image: np.ndarray) -> None:
        # PsychoPy takes float RGB in [0, 1] with the first row at the bottom.
        self._stim.image = np.flipud(image.astype(np.float32) / 255.0)

    def _stamp(self, marker: str | None) -> None:
        self._flip_time = pylsl.local_clock()
        self._publish(marker, self._flip_time)

    def _flip(self, show_image: bool, marker: str | None = None) -> float:
        if show_image:
            self._stim.draw()
        self.win.callOnFlip(self._stamp, marker)
        self.win.flip()
        return self._flip_time

    def screenshot(self) -> np.ndarray:
        """The loaded image as the next flip will show it: an (H, W, 3) uint8 window capture."""
        self._stim.draw()
        frame = np.asarray(self.win.getMovieFrame(buffer="back"))[..., :3]
        self.win.clearBuffer()
        return frame

    def close(self) -> None:
        self.win.close()
