"""A session's stimuli: the protocol's candidate pool, and its split into candidates and
held-out images (shared by live sessions, replay and conversions)."""

from __future__ import annotations

import numpy as np

from closedloop.config import Protocol
from closedloop.errors import ClosedLoopError
from closedloop.stimuli.pool import StimulusPool
from closedloop.stimuli.sets import generate_pool, load_stimulus_set


def candidate_pool(protocol: Protocol, size_px: int) -> StimulusPool:
    """The protocol's candidate pool rendered at ``size_px``: its stimulus set, or random
    members of its families."""
    background = protocol.stimulus.background
    if protocol.pool.set is not None:
        return load_stimulus_set(protocol.pool.set).render(size_px, background)
    return generate_pool(protocol.pool.families, size_px, protocol.protocol.seed, background=background)


def split_pool(pool_size: int, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (candidate, held-out) pool indices, drawn reproducibly."""
    if heldout >= pool_size:
        raise ClosedLoopError(f"protocol: heldout.images ({heldout}) must be below the pool size ({pool_size})")
    order = np.random.default_rng(seed).permutation(pool_size)
    return np.sort(order[heldout:]), np.sort(order[:heldout])
