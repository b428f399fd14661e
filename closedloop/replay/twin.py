"""A digital twin of a session's neurons: an online learner fitted offline to all its responses.

The twin has the session's model spec (core and readouts) and learns every trained-on response of
the session at once; its core is fine-tuned on them all (``epochs`` passes of minibatches) and kept
if it predicts the held-out responses better than the core it started from (the learner's own
rule, :class:`closedloop.learn.learner.OnlineLearner`), so it knows more than the online model
did at any decision. A replay asks it what the neurons would have answered to images a strategy
chose, and says how well it predicts the held-out images (never trained on; they only chose
between the two cores).
"""

from __future__ import annotations

import math

import numpy as np

from closedloop.config import ModelSpec
from closedloop.learn.learner import OnlineLearner
from closedloop.learn.worker import correlations


class Twin:
    """An online learner fitted to ``responses`` (pool index, counts per unit) on ``images``.

    Parameters
    ----------
    images : ndarray, (K, N, N, 3) uint8
        The pool the responses' indices refer to.
    responses : list of (int, ndarray)
        Trained-on responses: pool index and spike counts per unit.
    spec : ModelSpec
        The session's model spec (core, learning rate, batch size).
    seed : int
        Seed of the fit.
    epochs : int
        Passes over the responses when fine-tuning the core (in minibatches of ``spec.batch_size``).
    heldout : list of (int, ndarray)
        Held-out responses: judge the fine-tuned core, never trained on.
    """

    def __init__(self, images: np.ndarray, responses: list[tuple[int, np.ndarray]], spec: ModelSpec,
                 seed: int, epochs: int, heldout: list[tuple[int, np.ndarray]] = ()):
        units = len(responses[0][1])
        steps = max(1, math.ceil(epochs * len(responses) / spec.batch_size))
        self.learner = OnlineLearner(images, units, spec.model_copy(update={
            "steps_per_update": steps, "finetune_every": 1}), seed, background=False)
        self.learner.learn(np.array([index for index, _ in responses]), np.stack([c for _, c in responses]))
        for index, counts in heldout:
            self.learner.add_heldout(index, counts)
        self.learner.sync()
        self.learner.close()
        self.trained_on, self.epochs = len(responses), epochs

    def predict(self, index: np.ndarray) -> np.ndarray:
        """Expected counts per presentation (units, len(index)) of pool images ``index``."""
        return self.learner.predictive(np.asarray(index, int))[0]

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Expected counts (units, B) of (B, N, N, 3) uint8 images outside the pool."""
        return self.learner.predictive_images(images)[0]

    def heldout_accuracy(self, heldout: list[tuple[int, np.ndarray]]) -> dict:
        """Pearson r per unit between the twin and the mean observed counts of held-out images."""
        by_image: dict[int, list[np.ndarray]] = {}
        for index, counts in heldout:
            by_image.setdefault(index, []).append(counts)
        images = np.array(sorted(by_image), int)
        observed = np.array([np.mean(by_image[i], axis=0) for i in images]).T if len(images) else None
        r = correlations(self.predict(images), observed) if observed is not None else []
        return {"images": len(images), "responses": len(heldout), "r": r}
