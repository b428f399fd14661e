"""Stimuli: parametric families, natural images, stimulus sets and the candidate pool built from them."""

from closedloop.stimuli.families import Family, gaudy
from closedloop.stimuli.pool import Stimulus, StimulusPool, read_added, stimulus_id, write_added
from closedloop.stimuli.registry import FAMILIES, NATURAL, get_family, render_stimulus
from closedloop.stimuli.sets import Entry, SetInfo, StimulusSet, generate_pool, load_stimulus_set

__all__ = [
    "FAMILIES", "NATURAL", "Entry", "Family", "SetInfo", "Stimulus", "StimulusPool", "StimulusSet",
    "gaudy", "generate_pool", "get_family", "load_stimulus_set", "read_added", "render_stimulus",
    "stimulus_id", "write_added",
]
