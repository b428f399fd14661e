"""The online learner: a core from prior knowledge, Bayesian readouts, background refinement.

Data flow: :mod:`~closedloop.learn.cores` (images -> features) -> :mod:`~closedloop.learn.readout`
(features -> spike counts, closed-form posterior) -> :mod:`~closedloop.learn.learner` (both, kept
current per response for the whole pool). The offline model toolbox (compress, inspect, export)
is :mod:`closedloop.model`.
"""

from closedloop.learn.cores import Core, Projection, load_core, read_core, save_core
from closedloop.learn.learner import OnlineLearner, open_image_model, read_checkpoint
from closedloop.learn.readout import Posterior, fit, stabilise

__all__ = ["Core", "OnlineLearner", "Posterior", "Projection", "fit", "load_core", "open_image_model",
           "read_checkpoint", "read_core", "save_core", "stabilise"]
