"""The model worker's Learner: a live run (background retraining, swaps whenever ready) is made
again step by step from what its decisions logged."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.config import ModelSpec, SelectionSpec
from closedloop.errors import ClosedLoopError
from closedloop.model.worker import ACCURACY_EVERY, Learner, WorkerConfig
from closedloop.stimuli import generate_pool


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def config(tmp_path) -> WorkerConfig:
    pool = generate_pool({"dot": 30, "grating": 30}, 16, seed=0)
    pool.save(tmp_path / "stimuli.npz")
    heldout = np.arange(0, 60, 6)
    return WorkerConfig(pool_path=tmp_path / "stimuli.npz", units=("a", "b"),
                        model=ModelSpec(members=3, input_px=16, channels=(4, 4, 4, 4, 4), steps_per_update=6),
                        selection=SelectionSpec(strategy="disagreement", warmup=8, batch=4, no_repeat=10),
                        candidates=tuple(np.setdiff1d(np.arange(60), heldout).tolist()),
                        heldout=tuple(heldout.tolist()), seed=5)


def _responses(n: int) -> list[tuple[int, np.ndarray, bool]]:
    rng = np.random.default_rng(9)
    return [(int(i), rng.poisson(3.0, 2), bool(i % 6 == 0)) for i in rng.integers(0, 60, n)]


def test_a_live_learner_is_made_again_from_its_log(config):
    """Batches of varying size; the background thread swaps cores in whenever it is done. The replay
    gets the batches from ``received`` and swaps where ``core_version`` rose: the same decisions
    and the same accuracy reports, bit for bit. Before two of the steps the test waits for the
    retraining in flight, so at least two swaps happen however busy the machine is; the others
    fall wherever the background thread's timing puts them."""
    responses = _responses(80)
    sizes = np.random.default_rng(2).integers(1, 5, 40)
    live_messages: list[tuple[str, dict]] = []
    live = Learner(config, background=True)
    try:
        live.begin(lambda kind, payload: live_messages.append((kind, payload)))
        start = 0
        for step, size in enumerate(sizes):
            if start >= len(responses):
                break
            if step in (8, 16):
                assert live.ensemble.wait_retrained(timeout=120)
            live.step(responses[start:start + size], 0.0, lambda k, p: live_messages.append((k, p)))
            start += size
        live.finish(lambda k, p: live_messages.append((k, p)))
    finally:
        live.ensemble.close()
    decisions = [p for k, p in live_messages if k == "choice"]
    reports = [p for k, p in live_messages if k in ("accuracy", "stopped")]
    assert decisions[-1]["core_version"] >= 2 and len(reports) >= len(responses) // ACCURACY_EVERY

    replayed: list[tuple[str, dict]] = []
    replay = Learner(config, background=False)
    replay.begin(lambda k, p: replayed.append((k, p)))
    for logged in decisions[1:]:
        swap = logged["core_version"] > replay.ensemble.core_version
        replay.step(responses[replay.received:logged["received"]], 0.0, lambda k, p: replayed.append((k, p)),
                    swap=swap)
    replay.finish(lambda k, p: replayed.append((k, p)))
    again = [p for k, p in replayed if k == "choice"]
    keys = ("chosen", "scores", "responses", "received", "core_version", "cores_trained_on", "strategy")
    assert [{k: d[k] for k in keys} for d in again] == [{k: d[k] for k in keys} for d in decisions]
    keys = ("responses", "core_version", "r_observed", "heldout_shown")
    again = [p for k, p in replayed if k in ("accuracy", "stopped")]
    assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in reports]


def test_a_swap_with_no_retraining_in_flight_is_refused(config):
    learner = Learner(config, background=False)
    try:
        learner.begin(lambda k, p: None)
        with pytest.raises(ClosedLoopError, match="no core retraining to swap in at 2 responses"):
            learner.step(_responses(2), 0.0, lambda k, p: None, swap=True)
    finally:
        learner.ensemble.close()


def test_a_decision_never_offers_the_images_of_the_one_before(config):
    """The last choice may still be on screen or awaiting its response: the next decision leaves it out."""
    messages: list[tuple[str, dict]] = []
    learner = Learner(config, background=False)
    try:
        learner.begin(lambda kind, payload: messages.append((kind, payload)))
        for response in _responses(12):  # one response per decision: the batch of four is mostly in flight
            learner.step([response], 0.0, lambda k, p: messages.append((k, p)))
    finally:
        learner.ensemble.close()
    chosen = [set(p["chosen"]) for k, p in messages if k == "choice"]
    assert len(chosen) == 13
    for before, after in zip(chosen, chosen[1:]):
        assert not before & after
