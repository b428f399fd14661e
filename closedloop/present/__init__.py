"""Presentation: show images frame-accurately and publish onsets as LSL markers."""

from closedloop.present.base import Presenter, Timing
from closedloop.present.open import open_presenter

__all__ = ["Presenter", "Timing", "open_presenter"]
