"""PsychoPy presenter: images as ImageStim, markers pushed with ``win.callOnFlip``."""

from __future__ import annotations

import numpy as np
import pylsl

from closedloop.present.base import Presenter

CORNERS = {"top-left": (-1, 1), "top-right": (1, 1), "bottom-left": (-1, -1), "bottom-right": (1, -1)}


class PsychoPyPresenter(Presenter):
    """Draws in a PsychoPy window; every flip waits for the vertical blank.

    Images are drawn 1:1 (one image pixel per screen pixel) in the layout's
    patch. Markers are pushed from ``win.callOnFlip``, so they are stamped
    right after the buffer swap that shows the frame. With a photodiode patch
    its corner square is white on every frame that shows an image, else black.
    """

    def __init__(self, display, layout, markers):
        super().__init__(display, layout, markers)
        from psychopy import logging, visual

        logging.console.setLevel(logging.ERROR)
        grey = 2.0 * layout.background - 1.0
        self.win = visual.Window(size=display.size_px, fullscr=display.fullscreen, units="pix",
                                 color=(grey, grey, grey), colorSpace="rgb", allowGUI=False,
                                 waitBlanking=True, checkTiming=False)
        self._stim = visual.ImageStim(self.win, image=np.zeros((2, 2, 3)), size=(layout.patch_px,) * 2,
                                      pos=layout.patch_centre_px, colorSpace="rgb", interpolate=False)
        self._fixation = visual.Circle(self.win, radius=layout.fixation_px / 2, edges=32,
                                       fillColor=(1, 1, 1), lineColor=None, colorSpace="rgb")
        self._patch = None
        if display.photodiode_patch is not None:
            side = display.photodiode_patch.size_px
            sx, sy = CORNERS[display.photodiode_patch.corner]
            w, h = self.win.size
            self._patch = visual.Rect(self.win, width=side, height=side, lineColor=None, colorSpace="rgb",
                                      pos=(sx * (w - side) / 2, sy * (h - side) / 2))
        self._flip_time = 0.0

    def _load(self, image: np.ndarray) -> None:
        # PsychoPy takes float RGB in [0, 1] with the first row at the bottom.
        self._stim.image = np.flipud(image.astype(np.float32) / 255.0)

    def _stamp(self, markers: list[str]) -> None:
        self._flip_time = pylsl.local_clock()
        self._flipped(markers, self._flip_time)

    def _draw(self, show_image: bool) -> None:
        if show_image:
            self._stim.draw()
        if self.fixation_point:
            self._fixation.draw()
        if self._patch is not None:
            self._patch.fillColor = (1, 1, 1) if show_image else (-1, -1, -1)
            self._patch.draw()

    def _flip(self, show_image: bool, markers: list[str]) -> float:
        self._draw(show_image)
        self.win.callOnFlip(self._stamp, markers)
        self.win.flip()
        return self._flip_time

    def screenshot(self, show_image: bool = True) -> np.ndarray:
        """The next frame as a flip would show it: an (H, W, 3) uint8 window capture."""
        self._draw(show_image)
        frame = np.asarray(self.win.getMovieFrame(buffer="back"))[..., :3]
        self.win.clearBuffer()
        return frame

    def close(self) -> None:
        self.win.close()
