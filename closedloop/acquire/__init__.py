"""Acquisition: LSL streams in, clock-corrected spikes out."""
