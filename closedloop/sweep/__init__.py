"""Sweeps: grids of benchmark sessions or replays run as Ray tasks, on this machine or a cluster.

:mod:`~closedloop.sweep.grid` (settings, combinations, a cell's identity),
:mod:`~closedloop.sweep.runner` (cells as Ray tasks), :mod:`~closedloop.sweep.journal` (results on
disk), :mod:`~closedloop.sweep.files` (files carried to the workers), the kinds
(:mod:`~closedloop.sweep.efficiency`, :mod:`~closedloop.sweep.hypotheses`,
:mod:`~closedloop.sweep.replay`: what a cell is, its table and plot) and the command line
(:mod:`~closedloop.sweep.cli`).
"""

from closedloop.sweep.runner import Outcome, Plan, run_sweep

__all__ = ["Outcome", "Plan", "run_sweep"]
