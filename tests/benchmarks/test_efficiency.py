"""The efficiency benchmark: a short run on real twins completes and reports; its parts are right."""

import numpy as np
import pytest

from closedloop.benchmarks.efficiency import (BayesianReadout, FeatureCore, SessionResult, build_world,
                                              heldout_r, run_efficiency, twin_paths)
from closedloop.errors import ClosedLoopError
from closedloop.model.compact import load_published
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.natural import image_names, load_images


def test_trials_to_a_target_interpolate_between_scored_points():
    run = SessionResult("random", 0, trials=[16, 32, 48], r=[0.2, 0.4, 0.5])
    assert run.trials_to(0.3) == pytest.approx(24.0)
    assert run.trials_to(0.1) == 16
    assert run.trials_to(0.6) == np.inf


def test_the_readout_recovers_a_linear_truth_and_its_uncertainty_shrinks():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 20))
    w = rng.normal(size=(20, 3))
    truth = np.exp(0.6 * z @ w / np.sqrt(20)) * 2.0
    readout = BayesianReadout(20, 3, members=8, seed=0)
    readout.fit(z[:40], rng.poisson(truth[:40]).astype(float))
    early = heldout_r(readout.mean(z[200:]), truth[200:])
    spread_early = readout.draws(z[200:]).std(0).mean()
    readout.fit(z[:200], rng.poisson(truth[:200]).astype(float))
    assert heldout_r(readout.mean(z[200:]), truth[200:]) > max(early, 0.8)
    assert readout.draws(z[200:]).std(0).mean() < spread_early


def _images(path, count):
    return np.stack([im for _, im in load_images(path, 112, names=image_names(path)[:count])])


def test_a_short_run_on_real_twins_completes_and_reports(shared_v4):
    twins, rest = twin_paths(shared_v4 / "compact_models", limit=2, seed=0)
    assert len(twins) == 2 and not set(twins) & set(rest)
    images = _images(shared_v4 / "sessions" / "images_201025.zip", 96)
    pool = StimulusPool(images, ["natural"] * len(images), [{}] * len(images))
    world = build_world(twins, pool, _images(shared_v4 / "sessions" / "images_190923.zip", 30), log=lambda m: None)
    assert world.pool_rates.shape == (96, 2) and np.all(world.pool_rates > 0)
    assert world.pool_rates.mean() == pytest.approx(2.4, rel=0.3)  # 24 spikes/s in a 100 ms window
    core = FeatureCore([load_published(rest[0])], pool.images, dims=16)
    report = run_efficiency(world, core, {"max_response": {}, "variance_reduction": {}}, budget=48, seeds=1,
                            log=lambda m: None, warmup=16, every=8)
    rows = {row["strategy"]: row for row in report.rows()}
    assert set(rows) == {"random", "max_response", "variance_reduction"}
    assert rows["random"]["fewer_trials_than_random"] == pytest.approx(1.0)
    assert rows["max_response"]["drive_vs_random"] > 1.0  # it shows what the model predicts drives most
    assert all(row["distinct_images"] == 48 for row in rows.values())  # no repeats by default
    table = report.table()
    assert "x fewer than random" in table and "variance_reduction" in table


def test_a_twin_folder_without_models_is_named(tmp_path):
    with pytest.raises(ClosedLoopError, match=f"{tmp_path}: no compact_model"):
        twin_paths(tmp_path, 2, 0)


def test_an_unreadable_twin_is_named(tmp_path):
    pool = StimulusPool(np.zeros((4, 112, 112, 3), np.uint8) + np.arange(4)[:, None, None, None].astype(np.uint8),
                        ["natural"] * 4, [{}] * 4)
    for i in (1, 2):
        (tmp_path / f"compact_model_000000_neuron{i}.pt").write_bytes(b"not a state dict")
        np.save(tmp_path / f"compact_model_000000_neuron{i}.nums_filters.npy", np.array([48, 57, 3, 7, 3]))
    twins, _ = twin_paths(tmp_path, 1, 0)
    with pytest.raises(ClosedLoopError, match=r"compact_model_000000_neuron\d\.pt: unreadable"):
        build_world(twins, pool, pool.images, log=lambda m: None)
