"""The model worker's state: a live run (background refreshes, swaps whenever ready) is made again
step by step from what its decisions logged, fine-tuned cores read back instead of trained."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from closedloop.config import ModelSpec, NeuronSpec, SelectionSpec, SimulationSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn.worker import (ACCURACY_EVERY, Accuracy, Choice, Comparison, Ready, Response, Stopped,
                                     WorkerConfig, WorkerState)
from closedloop.record.schema import Selection, problem
from closedloop.select.registry import make_strategy
from closedloop.simulate.neurons import Population, build_neurons
from closedloop.stimuli import generate_pool

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def config(tmp_path) -> WorkerConfig:
    pool = generate_pool({"dot": 30, "grating": 30}, 16, seed=0)
    pool.save(tmp_path / "stimuli.npz")
    heldout = np.arange(0, 60, 6)
    selection = SelectionSpec(strategy="disagreement", warmup=8, batch=4, no_repeat=10)
    return WorkerConfig(pool_path=tmp_path / "stimuli.npz", units=("a", "b"),
                        model=ModelSpec(members=3, input_px=16, channels=(4, 4, 4, 4, 4), refresh_every=8,
                                        finetune_every=16, steps_per_update=6, checkpoint_every=20),
                        selection=selection, strategy=make_strategy(selection.strategy),
                        candidates=tuple(np.setdiff1d(np.arange(60), heldout).tolist()),
                        heldout=tuple(heldout.tolist()), seed=5, checkpoints=tmp_path / "checkpoints",
                        cores=tmp_path / "cores")


def _responses(n: int) -> list[Response]:
    rng = np.random.default_rng(9)
    return [Response(int(i), rng.poisson(3.0, 2), bool(i % 6 == 0), 0.0) for i in rng.integers(0, 60, n)]


def test_a_live_worker_is_made_again_from_its_log(config, tmp_path):
    """Batches of varying size; the background thread finishes refreshes (some with a fine-tuned
    core) whenever it can. The replay gets the batches from ``received``, swaps where
    ``core_version`` rose and reads the fine-tuned cores from ``cores/``: the same decisions,
    accuracy reports and core comparisons, bit for bit. Before some of the steps the test waits
    for the refresh in flight, so swaps and fine-tunings happen however busy the machine is; the
    others fall wherever the background thread's timing puts them."""
    responses = _responses(80)
    sizes = np.random.default_rng(2).integers(1, 5, 40)
    live_messages: list = []
    live = WorkerState(config, background=True)
    try:
        live.begin(live_messages.append)
        start = 0
        for step, size in enumerate(sizes):
            if start >= len(responses):
                break
            if step % 6 == 5 and live.learner.refreshing:
                assert live.learner.wait_refreshed(timeout=120)
            live.step(responses[start:start + size], live_messages.append)
            start += size
        live.finish(live_messages.append)
    finally:
        live.learner.close()
    ready, decisions = live_messages[0], [m for m in live_messages if isinstance(m, Choice)]
    reports = [m.record() for m in live_messages if isinstance(m, Accuracy)]
    reports.append(live_messages[-1].accuracy.record())
    comparisons = [m for m in live_messages if isinstance(m, Comparison)]
    assert isinstance(ready, Ready) and ready.core.startswith("scratch") and isinstance(live_messages[-1], Stopped)
    assert decisions[-1].core_version >= 3 and len(reports) >= len(responses) // ACCURACY_EVERY
    assert comparisons and sorted(p.name for p in (tmp_path / "cores").iterdir()) == \
        [f"finetune-{c.responses:06d}.pt" for c in comparisons]
    assert (tmp_path / "checkpoints" / "learner-final.pt").is_file()  # and one per 20 trained-on responses
    assert len(list((tmp_path / "checkpoints").glob("learner-0*.pt"))) == decisions[-1].responses // 20 > 0

    replayed: list = []
    replay = WorkerState(dataclasses.replace(config, checkpoints=None, cores=None, recorded=tmp_path / "cores"),
                         background=False)
    replay.begin(replayed.append)
    for logged in decisions[1:]:
        swap = logged.core_version > replay.learner.core_version
        replay.step(responses[replay.received:logged.received], replayed.append, swap=swap)
    replay.finish(replayed.append)
    assert replay.learner.refresh_seconds < live.learner.refresh_seconds  # cores were read, not trained
    keys = ("chosen", "scores", "responses", "received", "core_version", "cores_trained_on", "strategy")
    again = [m for m in replayed if isinstance(m, Choice)]
    assert [{k: getattr(d, k) for k in keys} for d in again] == [{k: getattr(d, k) for k in keys} for d in decisions]
    again = [m.record() for m in replayed if isinstance(m, Accuracy)] + [replayed[-1].accuracy.record()]
    assert again == reports
    assert [m for m in replayed if isinstance(m, Comparison)] == comparisons


def test_a_swap_with_no_refresh_in_flight_is_refused(config):
    learner = WorkerState(config, background=False)
    try:
        learner.begin(lambda message: None)
        with pytest.raises(ClosedLoopError, match="no learner refresh to swap in at 2 responses"):
            learner.step(_responses(2), lambda message: None, swap=True)
    finally:
        learner.learner.close()


def test_a_decision_never_offers_the_images_of_the_one_before(config):
    """The last choice may still be on screen or awaiting its response: the next decision leaves it out."""
    messages: list = []
    learner = WorkerState(config, background=False)
    try:
        learner.begin(messages.append)
        for response in _responses(12):  # one response per decision: the batch of four is mostly in flight
            learner.step([response], messages.append)
    finally:
        learner.learner.close()
    chosen = [set(m.chosen) for m in messages if isinstance(m, Choice)]
    assert len(chosen) == 13
    for before, after in zip(chosen, chosen[1:]):
        assert not before & after


def test_a_strategy_that_needs_no_model_chooses_before_learning(config):
    """Random choices do not wait on the learner: the responses of a batch are learned after it."""
    selection = config.selection.model_copy(update={"strategy": "random"})
    learner = WorkerState(dataclasses.replace(config, selection=selection, strategy=make_strategy("random")),
                          background=False)
    seen = []
    learner.on_decision = lambda context, choice: seen.append((choice.responses, learner.learner.n_responses))
    try:
        learner.begin(lambda message: None)
        batch = [r for r in _responses(12) if not r.heldout][:3]
        learner.step(batch, lambda message: None)
    finally:
        learner.learner.close()
    assert seen == [(0, 0), (3, 0)] and learner.learner.n_responses == 3



# A closed loop of the worker and two simulated units it can learn (a curvature unit and a small-dot
# detector, driven at 120 spikes/s, 0.1 s windows: about 10 spikes per response), 160 responses.
# After the first 40 responses, each unit's expected counts logged with the decisions must
# correlate with the counts those images then drew by more than MIN_R (about 120 images). A
# learner that learned nothing predicts a constant (r undefined) or, if it predicted at random,
# r would spread about 0 by 1/sqrt(117) = 0.09: MIN_R is over 3 of those. Over seeds 1-7 the
# smaller of the two units' r was 0.49-0.71.
LOOP_RESPONSES, LEARNED, MIN_R = 160, 40, 0.3
WINDOW = 0.1  # s: expected counts (images, units) are the true rates times this


def test_each_decision_logs_what_the_model_expects_of_its_images(tmp_path):
    """Every decision once the learner has learned a response, warm-up ones too, carries one
    expected count per chosen image and unit, as ``selections.jsonl`` takes it; the prior's are left
    out. Once the learner has learned, they foretell the counts."""
    pool = generate_pool({"contour": 40, "dot": 40, "grating": 40}, 32, seed=3)
    pool.save(tmp_path / "stimuli.npz")
    heldout = np.arange(0, len(pool), 6)
    simulation = SimulationSpec(seed=3, mean_rate=120.0, neurons=[NeuronSpec(kind="curvature"),
                                                                  NeuronSpec(kind="dot", radius=0.1)])
    expected = Population(build_neurons(simulation), simulation, pool.images).rates(pool.images) * WINDOW
    selection = SelectionSpec(strategy="disagreement", warmup=12, batch=4, no_repeat=10)
    state = WorkerState(WorkerConfig(
        pool_path=tmp_path / "stimuli.npz", units=("curvature", "dot"),
        model=ModelSpec(members=3, input_px=32, channels=(4, 4, 4, 4, 4)), selection=selection,
        strategy=make_strategy(selection.strategy), heldout=tuple(heldout.tolist()),
        candidates=tuple(np.setdiff1d(np.arange(len(pool)), heldout).tolist()), seed=3), background=False)
    rng = np.random.default_rng(3)
    choices: list[Choice] = []

    def keep(message) -> None:
        if isinstance(message, Choice):
            choices.append(message)

    predicted, observed = [], []
    try:
        state.begin(keep)
        while state.received < LOOP_RESPONSES:
            choice = choices[-1]
            batch = [Response(i, rng.poisson(expected[i]), False, 0.0) for i in choice.chosen]
            if choice.responses >= LEARNED:
                predicted += choice.predicted
                observed += [r.counts for r in batch]
            state.step(batch, keep, swap=state.learner.refreshing)  # refreshes swapped in as soon as started
    finally:
        state.learner.close()
    # The first decision comes before any response, the second (random: it does not wait on learning)
    # before the first batch is learned; the warm-up's others are predicted.
    assert [c.predicted is None for c in choices[:3]] == [True, True, False] and choices[2].strategy == "random"
    assert "predicted" not in choices[0].record()
    for choice in choices[2:]:
        assert np.shape(choice.predicted) == (len(choice.chosen), 2)
        assert np.isfinite(choice.predicted).all() and problem(Selection, choice.record()) is None
        assert choice.record()["predicted"] == choice.predicted
    predicted, observed = np.array(predicted), np.array(observed, float)
    assert len(predicted) >= 110
    for unit in range(2):
        assert np.corrcoef(predicted[:, unit], observed[:, unit])[0, 1] > MIN_R
