"""A digital twin of a session's neurons: an ensemble fitted offline to all its responses.

The twin has the session's model spec and is trained, cores and readouts,
on every trained-on response of the session at once (``epochs`` passes of
minibatches), so it knows more than the online model did at any decision. A
replay asks it what the neurons would have answered to images a strategy
chose, and says how well it predicts the held-out images (which it never saw).
"""

from __future__ import annotations

import math

import numpy as np

from closedloop.config import ModelSpec
from closedloop.model.online import OnlineEnsemble
from closedloop.model.worker import correlations


class Twin:
    """An ensemble fitted to ``responses`` (pool index, counts per unit) on ``images``.

    Parameters
    ----------
    images : ndarray, (K, N, N, 3) uint8
        The pool the responses' indices refer to.
    responses : list of (int, ndarray)
        Trained-on responses: pool index and spike counts per unit.
    spec : ModelSpec
        The session's model spec (architecture, learning rate, batch size).
    seed : int
        Seed of the fit.
    epochs : int
        Passes over the responses (in minibatches of ``spec.batch_size``).
    """

    def __init__(self, images: np.ndarray, responses: list[tuple[int, np.ndarray]], spec: ModelSpec,
                 seed: int, epochs: int):
        units = len(responses[0][1])
        steps = max(1, math.ceil(epochs * len(responses) / spec.batch_size))
        self.ensemble = OnlineEnsemble(images, units, spec.model_copy(update={"steps_per_update": steps}),
                                       seed, background=False)
        for index, counts in responses:
            self.ensemble.add(index, counts)
        self.ensemble.sync()
        self.ensemble.close()
        self.trained_on, self.epochs = len(responses), epochs

    def predict(self, index: np.ndarray) -> np.ndarray:
        """Expected counts per presentation (units, len(index)) of pool images ``index``, members' mean."""
        return self.ensemble.predictions(np.asarray(index, int)).mean(axis=0)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Expected counts (units, B) of (B, N, N, 3) uint8 images outside the pool, members' mean."""
        return self.ensemble.predict_images(images).mean(axis=0)

    def heldout_accuracy(self, heldout: list[tuple[int, np.ndarray]]) -> dict:
        """Pearson r per unit between the twin and the mean observed counts of held-out images."""
        by_image: dict[int, list[np.ndarray]] = {}
        for index, counts in heldout:
            by_image.setdefault(index, []).append(counts)
        images = np.array(sorted(by_image), int)
        observed = np.array([np.mean(by_image[i], axis=0) for i in images]).T if len(images) else None
        r = correlations(self.predict(images), observed) if observed is not None else []
        return {"images": len(images), "responses": len(heldout), "r": r}
