"""Stimuli: generated image families and the candidate pool built from them."""

from closedloop.stimuli.pool import Stimulus, StimulusPool, generate_pool, stimulus_id

__all__ = ["Stimulus", "StimulusPool", "generate_pool", "stimulus_id"]
