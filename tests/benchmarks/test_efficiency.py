"""The efficiency benchmark: simulated sessions run the loop's own learner and selection policy;
a short run on real twins completes and reports; its parts are right."""

import json

import numpy as np
import pytest

from closedloop.benchmarks import efficiency
from closedloop.benchmarks.efficiency import (Arm, SessionResult, _mix_controls, build_world, core_folder, learner_spec, run_efficiency,
                                              simulate_session, twin_paths)
from closedloop.config import CoreSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn import load_core
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.natural import image_names, load_images


def test_trials_to_a_target_interpolate_between_scored_points():
    run = SessionResult("random", 0, trials=[16, 32, 48], r=[0.2, 0.4, 0.5])
    assert run.trials_to(0.3) == pytest.approx(24.0)
    assert run.trials_to(0.1) == 16
    assert run.trials_to(0.6) == np.inf


def _images(path, count):
    return np.stack([im for _, im in load_images(path, 112, names=image_names(path)[:count])])


@pytest.fixture(scope="module")
def small_world(shared_v4):
    twins, rest = twin_paths(shared_v4 / "compact_models", limit=2, seed=0)
    assert len(twins) == 2 and not set(twins) & set(rest)
    images = _images(shared_v4 / "sessions" / "images_201025.zip", 96)
    pool = StimulusPool(images, ["natural"] * len(images), [{}] * len(images))
    world = build_world(twins, pool, _images(shared_v4 / "sessions" / "images_190923.zip", 30), log=lambda m: None)
    return world, rest


def test_the_core_is_made_of_the_chosen_models_only(small_world, tmp_path):
    world, rest = small_world
    folder = core_folder(rest[3:5], tmp_path / "core")
    assert sorted(p.name for p in folder.glob("*.pt")) == sorted(p.name for p in rest[3:5])
    assert len(list(folder.glob("*.nums_filters.npy"))) == 2
    core = load_core(learner_spec(CoreSpec(kind="compact", path=folder)))
    assert "of 2 models" in core.name


def test_a_session_runs_the_loops_learner_and_policy(small_world, tmp_path, monkeypatch):
    """Every decision goes through SelectionPolicy, every response through OnlineLearner.learn; the
    refreshes run and are swapped in at fixed points, so a session is exactly reproducible."""
    world, rest = small_world
    core = CoreSpec(kind="compact", path=core_folder(rest[:1], tmp_path / "core"), layer="4", dims=16)
    spec = learner_spec(core)
    decided, learned = [], []
    decide, learn = efficiency.SelectionPolicy.decide, efficiency.OnlineLearner.learn
    monkeypatch.setattr(efficiency.SelectionPolicy, "decide",
                        lambda self, n: decided.append(n) or decide(self, n))
    monkeypatch.setattr(efficiency.OnlineLearner, "learn",
                        lambda self, index, counts: learned.append(np.array(index)) or learn(self, index, counts))
    run = simulate_session(world, spec, "disagreement", budget=40, warmup=16, every=8, cache=tmp_path / "f")
    assert decided == list(range(0, 40, 4))  # one decision per batch of 4, told the responses so far
    shown = np.concatenate(learned)
    assert len(shown) == 40 and len(set(shown.tolist())) == 40 and shown.max() < len(world.pool)  # never held out
    assert run.trials == [8, 16, 24, 32, 40] and run.refreshes >= 3  # refreshes at 8, 16, 32 responses
    again = simulate_session(world, spec, "disagreement", budget=40, warmup=16, every=8, cache=tmp_path / "f")
    assert again.r == run.r and again.drive == run.drive


def test_a_short_run_on_real_twins_completes_and_reports(small_world, tmp_path):
    world, rest = small_world
    assert world.pool_rates.shape == (96, 2) and np.all(world.pool_rates > 0)
    assert world.pool_rates.mean() == pytest.approx(2.4, rel=0.3)  # 24 spikes/s in a 100 ms window
    core = CoreSpec(kind="compact", path=core_folder(rest[:1], tmp_path / "core"), layer="4", dims=16)
    arms = [Arm.parse("max_response"), Arm.parse('vr=variance_reduction+0.25:{"target": "heldout"}')]
    report = run_efficiency(world, core, arms, budget=48, seeds=1,
                            log=lambda m: None, warmup=16, every=8, cache=tmp_path / "features")
    rows = {row["strategy"]: row for row in report.rows()}
    assert set(rows) == {"random", "max_response", "vr"}
    assert rows["random"]["fewer_trials_than_random"] == pytest.approx(1.0)
    assert rows["max_response"]["drive_vs_random"] > 1.0  # it shows what the model predicts drives most
    assert all(row["distinct_images"] == 48 for row in rows.values())  # no repeats by default
    curve = report.sessions["max_response"][0].r
    assert curve[-1] > max(0.2, curve[0] + 0.1)  # the learner learns from the counts: r rises past the warm-up
    table = report.table()
    assert "x fewer than random" in table and "vr" in table
    report.write_json(tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert {"strategy": "variance_reduction", "label": "vr", "params": {"target": "heldout"},
            "control": 0.25} in data["arms"]
    assert {"fewer_trials_than_random", "drive_vs_random", "final_r"} <= set(data["rows"][0])


def test_an_arm_names_its_strategy_params_and_random_controls():
    assert Arm.parse("disagreement") == Arm("disagreement", "disagreement")
    assert Arm.parse('vr=variance_reduction+0.2:{"scale": "latent"}') == Arm(
        "vr", "variance_reduction", {"scale": "latent"}, 0.2)
    assert Arm.parse("adept+0.5").label == "adept+0.5"
    for bad, why in (("adept:{nope", "not JSON"), ("adept+many", "not a number"), ("adept+1.0", "control fraction"),
                     ("nope", "unknown strategy 'nope'"), ('adept:{"weight": "x"}', "params.weight"),
                     ("adept:[1]", "JSON object")):
        with pytest.raises(ClosedLoopError, match=why):
            Arm.parse(bad)


def test_random_controls_replace_about_their_fraction_of_the_choices_with_unshown_candidates():
    rng = np.random.default_rng(0)
    allowed = np.arange(100, 1100)
    replaced = 0
    for _ in range(500):
        chosen = np.arange(4)
        _mix_controls(chosen, allowed, 0.25, rng)
        kept = chosen < 4
        assert np.all(chosen[kept] == np.arange(4)[kept]) and np.all(np.isin(chosen[~kept], allowed))
        assert len(set(chosen.tolist())) == 4
        replaced += (~kept).sum()
    assert replaced / 2000 == pytest.approx(0.25, abs=0.03)


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
