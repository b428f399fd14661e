"""The online learner: its per-response pool state is exact, background and synchronous refreshes
agree, fine-tuned cores are kept only when they predict held-out responses better, checkpoints
round-trip, and with a core of published compact models it learns a V4 twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import closedloop.learn.learner as learner_module
from closedloop.config import CoreSpec, ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn.learner import MIN_HELDOUT, OnlineLearner
from closedloop.learn.readout import INTERCEPT_PRECISION, with_intercept

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNITS = 3
SPEC = dict(input_px=16, channels=(4, 4, 4, 4, 4), core=CoreSpec(grid=2, dims=6), refresh_every=8,
            finetune_every=0, steps_per_update=4, batch_size=8, members=4)


def _images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 3, 3, 3)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(16, 16),
                                             mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


POOL = _images(70)


def _rates(images: np.ndarray) -> np.ndarray:
    """Expected counts (B, UNITS) that depend on the images: each unit prefers a colour."""
    mean = images.reshape(len(images), -1, 3).mean(1) / 255.0  # (B, 3)
    return 1.0 + 8.0 * mean ** 2


def _counts(index, seed) -> np.ndarray:
    return np.random.default_rng(seed).poisson(_rates(POOL[np.atleast_1d(index)])).astype(float)


def _learner(tmp_path, background=False, seed=1, units=UNITS, images=None, store=None, recorded=None,
             **spec) -> OnlineLearner:
    return OnlineLearner(POOL[:60] if images is None else images, units, ModelSpec(**{**SPEC, **spec}), seed,
                         background=background, store=store, recorded=recorded, cache=tmp_path / "cache")


def _session(learner: OnlineLearner) -> None:
    """A fixed call sequence: responses one and four at a time, held-out responses, two refreshes
    swapped in after more responses came, and images appended to the pool and learned."""
    rng = np.random.default_rng(7)
    for i in range(50, 60):  # held out: never learned
        for repeat in range(2):
            learner.add_heldout(i, _counts(i, 100 * i + repeat)[0])
    for step in range(12):
        learner.add(int(rng.integers(50)), _counts(step % 50, step)[0])
    for step in range(4):
        index = rng.choice(50, 4, replace=False)
        learner.learn(index, _counts(index, 50 + step))
    assert learner.refresh()
    for step in range(5):  # while it runs
        index = rng.choice(50, 4, replace=False)
        learner.learn(index, _counts(index, 60 + step))
    assert learner.swap(wait=True)
    added = learner.extend(POOL[60:70])
    np.testing.assert_array_equal(added, np.arange(60, 70))
    for step in range(6):
        index = rng.choice(np.r_[:50, 60:70], 3, replace=False)
        learner.learn(index, np.random.default_rng(80 + step).poisson(_rates(POOL[index])).astype(float))
    assert learner.refresh(force=True)
    learner.extend(POOL[65:70])  # appended while the refresh runs (its features are computed anew)
    for step in range(3):
        index = rng.choice(50, 2, replace=False)
        learner.learn(index, _counts(index, 90 + step))
    assert learner.swap(wait=True)
    for step in range(5):
        learner.add(int(rng.integers(75)), np.random.default_rng(95 + step).poisson(3.0, UNITS).astype(float))


def _assert_pool_state_is_exact(learner: OnlineLearner) -> None:
    """The kept pool state equals one recomputed from scratch: features of every pool image by the
    current core; the posterior from every learned response at the current ridge; the latent means
    and variances from those."""
    x = with_intercept(learner.features(learner._images)).astype(np.float64)
    np.testing.assert_allclose(learner._x, x, rtol=1e-5, atol=1e-5)
    index, y = learner.history()
    precision = np.full(x.shape[1], learner.posterior.ridge)
    precision[0] = INTERCEPT_PRECISION
    s = np.linalg.inv(x[index].T @ x[index] + np.diag(precision))
    m = s @ x[index].T @ y
    assert np.abs(learner.posterior.S - s).max() < 1e-4 * np.abs(s).max()
    assert np.abs(learner.posterior.M - m).max() < 1e-4 * np.abs(m).max()
    mu, tau2 = learner.latent()
    expected_mu, expected_tau2 = (x @ m).T, learner.posterior.noise[:, None] * ((x @ s) * x).sum(1)[None, :]
    assert mu.shape == (UNITS, len(x))
    assert np.abs(mu - expected_mu).max() < 1e-4 * np.abs(expected_mu).max()
    assert np.abs(tau2 - expected_tau2).max() < 1e-3 * np.abs(expected_tau2).max()


def test_the_kept_pool_state_equals_a_recomputation(tmp_path):
    learner = _learner(tmp_path)
    _session(learner)
    assert learner.core_version == 2 and learner.n_responses == 12 + 16 + 20 + 18 + 6 + 5
    assert learner.trained_on == 12 + 16 + 20 + 18
    assert len(learner._x) == 75
    _assert_pool_state_is_exact(learner)
    mean, variance = learner.predictive()
    assert mean.shape == variance.shape == (UNITS, 75) and (mean > 0).all() and (variance >= 0).all()
    assert learner.predictions(np.arange(5)).shape == (4, UNITS, 5)
    learner.close()


def test_the_pool_state_stays_exact_when_a_finetuned_core_is_swapped_in(tmp_path, monkeypatch):
    scores = iter([0.1, 0.5, 0.1, 0.5])  # every fine-tuned core predicts held-out responses better
    monkeypatch.setattr(learner_module, "_heldout_r", lambda *args: next(scores))
    learner = _learner(tmp_path, finetune_every=16)
    before = {k: v.clone() for k, v in learner.core.network.state_dict().items()}
    _session(learner)
    assert [c["accepted"] for c in learner.comparisons] == [True, True]
    assert any(not torch.equal(before[k], v) for k, v in learner.core.network.state_dict().items())
    _assert_pool_state_is_exact(learner)  # features of all 75 images by the fine-tuned core
    learner.close()


def test_background_and_synchronous_refreshes_give_the_same_learner(tmp_path):
    results = []
    for background in (False, True):
        learner = _learner(tmp_path, background=background, finetune_every=16)
        _session(learner)
        learner.sync()
        results.append((learner.predictive(), learner.posterior, learner.comparisons,
                        {k: v.clone() for k, v in learner.core.network.state_dict().items()}, learner.core_version))
        learner.close()
    (sync_predictive, sync_posterior, sync_comparisons, sync_state, sync_version), \
        (bg_predictive, bg_posterior, bg_comparisons, bg_state, bg_version) = results
    assert len(sync_comparisons) == 2 and sync_comparisons == bg_comparisons and sync_version == bg_version == 3
    for a, b in zip(sync_predictive, bg_predictive):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sync_posterior.M, bg_posterior.M)
    np.testing.assert_array_equal(sync_posterior.noise, bg_posterior.noise)
    assert sync_posterior.ridge == bg_posterior.ridge
    for key in sync_state:
        assert torch.equal(sync_state[key], bg_state[key]), key


def _finetune_once(tmp_path, monkeypatch, scores, heldout=8):
    if scores is not None:
        it = iter(scores)
        monkeypatch.setattr(learner_module, "_heldout_r", lambda *args: next(it))
    learner = _learner(tmp_path, finetune_every=10)
    for i in range(50, 50 + heldout):
        learner.add_heldout(i, _counts(i, i)[0])
    for step in range(12):
        learner.learn(np.array([step * 3 % 50, step * 7 % 50]), _counts([step * 3 % 50, step * 7 % 50], step))
    before = (learner.core.identity, {k: v.clone() for k, v in learner.core.network.state_dict().items()})
    learner.sync()
    return learner, before


def _same_network(learner, before) -> bool:
    return all(torch.equal(before[1][k], v) for k, v in learner.core.network.state_dict().items())


def test_a_finetuned_core_is_kept_only_when_its_heldout_r_is_higher(tmp_path, monkeypatch):
    learner, before = _finetune_once(tmp_path, monkeypatch, [0.2, 0.35])
    (comparison,) = learner.comparisons
    assert comparison == {"responses": 24, "heldout_images": 8, "r_current": 0.2, "r_finetuned": 0.35,
                          "accepted": True}
    assert learner.core.identity == f"{before[0]}+24" and not _same_network(learner, before)
    _assert_pool_state_is_exact(learner)
    learner.close()

    learner, before = _finetune_once(tmp_path, monkeypatch, [0.35, 0.2])
    assert [c["accepted"] for c in learner.comparisons] == [False]
    assert learner.core.identity == before[0] and _same_network(learner, before)
    learner.close()

    learner, before = _finetune_once(tmp_path, monkeypatch, [0.3, 0.3])  # equal is not better
    assert [c["accepted"] for c in learner.comparisons] == [False] and _same_network(learner, before)
    learner.close()

    # too few held-out images to judge: never kept, however good it looks
    learner, before = _finetune_once(tmp_path, monkeypatch, [0.1, 0.9], heldout=MIN_HELDOUT - 1)
    assert learner.comparisons[0]["heldout_images"] == MIN_HELDOUT - 1
    assert [c["accepted"] for c in learner.comparisons] == [False] and _same_network(learner, before)
    learner.close()


def test_real_comparisons_are_recorded_and_decide(tmp_path, monkeypatch):
    learner, before = _finetune_once(tmp_path, monkeypatch, None, heldout=10)
    (comparison,) = learner.comparisons
    assert isinstance(comparison["r_current"], float) and isinstance(comparison["r_finetuned"], float)
    assert comparison["accepted"] == (comparison["r_finetuned"] > comparison["r_current"])
    assert _same_network(learner, before) != comparison["accepted"]
    learner.close()


def test_finetuned_cores_are_stored_and_replayed(tmp_path, monkeypatch):
    monkeypatch.setattr(learner_module, "_heldout_r", lambda *args: 0.5 if args[1] is args[2].x else 0.6)
    first = _learner(tmp_path, finetune_every=10, store=tmp_path / "store")
    for step in range(12):
        first.learn(np.array([step]), _counts(step, step))
    first.sync()
    stored = sorted((tmp_path / "store").glob("finetune-*.pt"))
    assert [p.name for p in stored] == ["finetune-000012.pt"]
    replay = _learner(tmp_path, finetune_every=10, recorded=tmp_path / "store")

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded fine-tune was trained again")

    monkeypatch.setattr(torch.optim, "Adam", no_training)
    monkeypatch.setattr(learner_module.Core, "raw", no_training)  # nor its features computed again
    for step in range(12):
        replay.learn(np.array([step]), _counts(step, step))
    replay.sync()
    for a, b in zip(first.predictive(), replay.predictive()):
        np.testing.assert_array_equal(a, b)
    first.close()
    replay.close()


# ------------------------------------------------------------------ checkpoints --
def test_checkpoint_round_trip_predicts_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_CACHE", str(tmp_path / "cache"))
    scores = iter([0.1, 0.5])
    monkeypatch.setattr(learner_module, "_heldout_r", lambda *args: next(scores))
    learner, _ = _finetune_once(tmp_path, monkeypatch, None)  # a fine-tuned core is in the checkpoint
    assert learner.comparisons[0]["accepted"]
    path = tmp_path / "checkpoints" / "learner-final.pt"
    learner.save(path)
    restored = OnlineLearner.from_checkpoint(path, POOL[:60])
    assert restored.units == UNITS and restored.core.name == learner.core.name
    np.testing.assert_allclose(restored._x, learner._x, rtol=1e-5, atol=1e-6)
    for a, b in zip(restored.predictive(), learner.predictive()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    np.testing.assert_array_equal(restored.posterior.M, learner.posterior.M)
    # it goes on learning from there
    restored.learn(np.array([3, 4]), _counts([3, 4], 999))
    assert restored.n_responses == 2
    learner.close()
    restored.close()


def test_warm_start_with_other_units_or_a_bad_file_is_one_line(tmp_path):
    learner = _learner(tmp_path)
    learner.learn(np.arange(4), _counts(np.arange(4), 0))
    path = tmp_path / "learner.pt"
    learner.save(path)
    learner.close()
    with pytest.raises(ClosedLoopError) as info:
        _learner(tmp_path, units=UNITS + 1, warm_start=path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and f"{UNITS} units" in text and f"{UNITS + 1}" in text
    # a core of another kind (ONNX has no network) is refused too
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:100])
    for bad, message in ((tmp_path / "bad.pt", "corrupt"), (tmp_path / "absent.pt", "not found")):
        with pytest.raises(ClosedLoopError, match=message) as info:
            _learner(tmp_path, warm_start=bad)
        assert "\n" not in str(info.value) and str(bad) in str(info.value)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ClosedLoopError, match="not a closedloop learner checkpoint"):
        _learner(tmp_path, warm_start=tmp_path / "other.pt")
    # the same units: it starts from the checkpoint's readouts
    warm = _learner(tmp_path, warm_start=path)
    np.testing.assert_array_equal(warm.posterior.M, learner.posterior.M)
    warm.close()


# ------------------------------------------------------------------ a V4 twin --
TWIN_R = 0.35  # mean over twins of Pearson r with the true rates on held-out images (measured 0.46)


def test_a_compact_core_learns_a_v4_twin(shared_v4, tmp_path):
    """A core of four published compact models of session 190923 (layer 4, 7 x 7 blocks, 64 principal
    components) and Bayesian readouts learn three twins of session 201025 (other neurons, another
    session) from 240 Poisson responses: held-out r above TWIN_R."""
    from closedloop.config import NeuronSpec, SimulationSpec
    from closedloop.model.compact import find_published
    from closedloop.simulate.neurons import CompactNeuron, Population
    from closedloop.stimuli.natural import image_names, load_images

    folder = shared_v4 / "compact_models"
    twins = [p for p in find_published(folder) if "201025" in p.name][:3]
    zip_path = shared_v4 / "sessions" / "images_190923.zip"
    images = np.stack([image for _, image in load_images(zip_path, 112, names=image_names(zip_path)[:400])])
    sim = SimulationSpec(seed=0, latency=0.0, neurons=[NeuronSpec(kind="compact", path=twins[0])])
    population = Population([CompactNeuron(p) for p in twins], sim, images)
    expected = population.rates(images) * 0.1  # counts per 100 ms window, (400, 3)
    spec = ModelSpec(core=CoreSpec(kind="compact", path=folder, limit=4, layer="4", grid=7, dims=64), finetune_every=0,
                     refresh_every=32, members=4)
    learner = OnlineLearner(images, len(twins), spec, seed=0, background=False, cache=tmp_path)
    assert all("190923" in p.name for p in find_published(folder, 4))  # the core never saw a 201025 neuron
    rng = np.random.default_rng(0)
    train, heldout = np.arange(320), np.arange(320, 400)
    for _ in range(60):
        index = rng.choice(train, 4, replace=False)
        learner.learn(index, rng.poisson(expected[index]))
        learner.refresh()
        learner.swap(wait=True)
    mean, _ = learner.predictive(heldout)
    r = [np.corrcoef(mean[u], expected[heldout, u])[0, 1] for u in range(len(twins))]
    print(f"held-out r per twin: {np.round(r, 3)}")
    assert np.mean(r) > TWIN_R, r
    learner.close()
