"""Fixation trials: acquire fixation, rapid serial presentation while it holds, reward, rest.

A trial, frame by frame:

1. the fixation point appears (a ``trial_start`` marker at that flip); the eye
   must stay in the fixation window for ``hold`` s, within ``acquire`` s,
   else the trial ends as ``no_fixation``;
2. up to ``images`` presentations follow; every frame asks the gaze whether
   fixation holds, and a break takes the image off at once (see
   :meth:`Presenter.present`) and ends the trial as ``fixation_break``;
3. a completed trial gets a ``reward`` marker at the next flip;
4. ``iti`` s of blank screen without the fixation point.

Without a gaze stream, ``fixating`` is None: fixation is assumed, the timing
stays the same. Every marker here is JSON with an ``event`` key, stamped at
its flip like the onset markers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from closedloop.config import TrialSpec
from closedloop.present.base import Presenter, Timing


@dataclass(frozen=True)
class Item:
    """One image a trial may show: its pixels, presentation index and stimulus id."""

    image: np.ndarray = field(repr=False)
    index: int
    stimulus: str
    info: Any = None  # the caller's (pool index, role, ...), handed back untouched


@dataclass
class TrialOutcome:
    """What a trial did: ``shown`` presentations (the last one aborted after a break),
    ``unshown`` items, how it ended and the flip of its reward marker (s, or None)."""

    number: int
    end: Literal["completed", "fixation_break", "no_fixation"]
    shown: list[tuple[Item, Timing]]
    unshown: list[Item]
    reward: float | None = None


def trial_marker(event: str, number: int, **more) -> str:
    """Marker for trial event ``event`` of trial ``number``."""
    return json.dumps({"event": event, "trial": number, **more})


def acquire_fixation(presenter: Presenter, spec: TrialSpec, number: int,
                     fixating: Callable[[], bool] | None) -> bool:
    """Show the fixation point until the eye holds it ``spec.hold`` s; False after ``spec.acquire`` s."""
    presenter.fixation_point = True
    presenter.blank(1, trial_marker("trial_start", number))
    hold, held = presenter.frames(spec.hold), 0
    for _ in range(presenter.frames(spec.acquire)):
        held = held + 1 if fixating is None or fixating() else 0
        if held >= hold:
            return True
        presenter.blank(1)
    return False


def run_trial(presenter: Presenter, spec: TrialSpec, number: int, pick: Callable[[], Sequence[Item]],
              on_frames: int, off_frames: int, fixating: Callable[[], bool] | None = None,
              on_shown: Callable[[Item, Timing], None] | None = None) -> TrialOutcome:
    """Run trial ``number``; ``pick`` is asked for its images once fixation is acquired.

    ``on_shown(item, timing)`` is called right after each presentation, so
    its onset reaches the aligner while the trial goes on.
    """
    if not acquire_fixation(presenter, spec, number, fixating):
        presenter.fixation_point = False
        presenter.blank(max(1, presenter.frames(spec.iti)), trial_marker("no_fixation", number))
        return TrialOutcome(number, "no_fixation", [], [])
    items = list(pick())
    shown: list[tuple[Item, Timing]] = []
    end = "completed"
    for k, item in enumerate(items):
        timing = presenter.present(item.image, item.index, item.stimulus, on_frames, off_frames, fixating)
        shown.append((item, timing))
        if on_shown is not None:
            on_shown(item, timing)
        if timing.aborted:
            end = "fixation_break"
            break
    presenter.fixation_point = False
    reward = end == "completed" and spec.reward
    flips = presenter.blank(max(1 if reward else 0, presenter.frames(spec.iti)),
                            trial_marker("reward", number) if reward else None)
    return TrialOutcome(number, end, shown, items[len(shown):], flips[0] if reward else None)
