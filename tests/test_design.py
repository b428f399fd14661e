"""``closedloop design``: a model chooses the next session's stimulus set from a pool."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from closedloop.cli import main
from closedloop.design import Design, FixedModel, design, parse_params, unit_names, write_design
from closedloop.errors import ClosedLoopError
from closedloop.model.ensemble import CompactEnsemble
from closedloop.model.models import load_model, save_model
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import Strategy, top_k
from closedloop.stimuli import gaudy, load_stimulus_set, stimulus_id
from closedloop.stimuli.load import load_pool
from closedloop.stimuli.pool import gallery_size

SIZE = 32
MEMBERS, NEURONS = 3, 2


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """An untrained ensemble (its members disagree), a one-member one, and a set with natural images."""
    tmp = tmp_path_factory.mktemp("design")
    for name, members in (("ensemble", MEMBERS), ("single", 1)):
        save_model(CompactEnsemble(NEURONS, members, 16, (4, 4, 4, 4, 4), seed=1), tmp / f"{name}.pt")
    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photos / f"p{k}.png")
    (tmp / "pool.toml").write_text(
        '[set]\nname = "pool"\nseed = 4\n'
        '[[entry]]\nfamily = "dot"\ncount = 10\n'
        '[[entry]]\nfamily = "grating"\ncount = 10\n'
        '[[entry]]\nfamily = "contour"\nstandard = [0, 5, 9, 30]\ngaudy = "both"\n'
        '[[entry]]\nnatural = "photos"\n')
    return {"ensemble": tmp / "ensemble.pt", "single": tmp / "single.pt", "set": tmp / "pool.toml",
            "photos": photos}


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["design", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_disagreement_chooses_the_top_images_and_the_set_renders_them(files, tmp_path):
    out = tmp_path / "next"
    code, stdout, stderr = run("--model", files["ensemble"], "--pool", files["set"], "-n", 12, "--strategy",
                               "disagreement", "--control-fraction", 0.25, "--control", "gaudy", "--batch", 4,
                               "--size", SIZE, "--out", out, "--seed", 3)
    assert code == 0, stderr
    assert "12 stimuli (9 chosen by disagreement, 3 gaudy controls)" in stdout
    pool, _ = load_pool(files["set"], SIZE)
    provenance = json.loads((out / "provenance.json").read_text())
    stimuli = provenance["stimuli"]
    # the set file renders exactly the designed images, in the provenance's order
    rendered = load_stimulus_set(out / "set.toml").render(SIZE)
    assert rendered.ids == [s["id"] for s in stimuli]
    # the nine chosen are the pool's nine highest disagreement scores (variance over mean, across members)
    predictions = load_model(files["ensemble"]).predict(pool.images).reshape(len(pool), MEMBERS, NEURONS)
    disagreement = (predictions.var(axis=1) / (predictions.mean(axis=1) + 1e-3)).mean(axis=1)
    chosen = [s for s in stimuli if s["role"] == "chosen"]
    assert {s["pool_index"] for s in chosen} == set(np.argsort(-disagreement)[:9].tolist())
    assert {s["id"] for s in chosen} == {pool.ids[s["pool_index"]] for s in chosen}
    assert [len(d["chosen"]) for d in provenance["decisions"]] == [4, 4, 1]
    # the controls are gaudy versions of pool images the strategy did not choose
    controls = [s for s in stimuli if s["role"] == "control"]
    assert len(controls) == 3
    for s in controls:
        assert s["params"]["gaudy"] and s["pool_index"] not in {c["pool_index"] for c in chosen}
        assert s["id"] == stimulus_id(gaudy(pool.images[s["pool_index"]]))
    assert provenance["model"]["members"] == MEMBERS and provenance["strategy"]["name"] == "disagreement"
    assert provenance["seed"] == 3 and provenance["control"] == {"kind": "gaudy", "fraction": 0.25}
    with Image.open(out / "gallery.png") as sheet:
        assert sheet.size == gallery_size(12, SIZE, 16)
        assert np.array_equal(np.asarray(sheet.convert("RGB"))[18:18 + SIZE, 4:4 + SIZE], rendered.images[0])


def test_images_without_parameters_are_saved_as_files_of_a_natural_entry(files, tmp_path):
    """Natural images and their gaudy versions have no family parameters: they become PNG files."""
    out = tmp_path / "photos-design"
    code, _, stderr = run("--model", files["ensemble"], "--pool", files["photos"], "-n", 4, "--strategy", "random",
                          "--control-fraction", 0.5, "--control", "gaudy", "--size", SIZE, "--out", out)
    assert code == 0, stderr
    table = tomllib.loads((out / "set.toml").read_text())
    assert table["entry"] == [{"natural": "images"}]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert load_stimulus_set(out / "set.toml").render(SIZE).ids == [s["id"] for s in provenance["stimuli"]]
    assert [s["role"] for s in provenance["stimuli"]].count("control") == 2


def test_the_same_seed_gives_the_same_set(files, tmp_path):
    def text(seed: int, name: str) -> str:
        code, _, stderr = run("--model", files["ensemble"], "--pool", files["set"], "-n", 10, "--strategy", "random",
                              "--control-fraction", 0.3, "--size", SIZE, "--out", tmp_path / name, "--seed", seed)
        assert code == 0, stderr
        return (tmp_path / name / "set.toml").read_text().split("\n", 2)[2]  # after the [set] name line

    first = text(5, "a")
    assert text(5, "b") == first
    assert text(6, "c") != first


class Synthesise(Strategy):
    """Makes one new image per decision by a gradient step on the model's mean prediction."""

    name = "synthesise-test"

    def scores(self, context, rng):
        return context.mean().mean(axis=0)

    def choose(self, context, k, rng):
        pixels = torch.full((1, SIZE, SIZE, 3), 128.0, requires_grad=True)
        context.model.torch_mean(pixels).mean().backward()
        image = np.clip(128 + 100 * np.sign(pixels.grad[0].numpy()), 0, 255).astype(np.uint8)
        image[0, 0] = len(context.pool) % 256  # each decision's image differs
        added = context.add_images(image[None], ["synthesized"], [{"decision": len(context.pool)}])
        best, scores = top_k(context.allowed, self.scores(context, rng), k - 1)
        return np.concatenate([added, best]), np.concatenate([[np.inf], scores])


def test_synthesised_images_join_the_design_as_files(files, tmp_path):
    pool, _ = load_pool(files["set"], SIZE)
    model = FixedModel(load_model(files["ensemble"]), pool.images)
    result = design(model, unit_names(model.name, model.units), pool, 6, Synthesise(), batch=3, seed=0)
    assert result.stimuli[0].family == result.stimuli[3].family == "synthesized"  # first of each decision
    synthesized = [s for s in result.stimuli if s.family == "synthesized"]
    assert len(synthesized) == 2 and all(s.pool_index >= len(pool) for s in synthesized)
    rendered = write_design(result, tmp_path / "synth", {"strategy": {"name": "synthesise-test"},
                                                         "model": {"name": model.name},
                                                         "control": {"kind": "random"}, "seed": 0})
    provenance = json.loads((tmp_path / "synth" / "provenance.json").read_text())
    ids = {stimulus_id(s.image) for s in result.stimuli}
    assert set(rendered.ids) == ids and len(rendered) == 6
    assert [s["family"] for s in provenance["stimuli"]][-2:] == ["synthesized", "synthesized"]  # files go last
    assert len(list((tmp_path / "synth" / "images").iterdir())) == 2


def test_the_model_adapter_predicts_and_differentiates_alike(files):
    images = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    model = FixedModel(load_model(files["ensemble"]), images[:3])
    assert model.members == MEMBERS and model.units == NEURONS
    pixels = torch.tensor(images, dtype=torch.float32, requires_grad=True)
    predicted = model.torch_mean(pixels)
    assert predicted.shape == (NEURONS, 5)
    members = model.predict_images(images)
    np.testing.assert_allclose(predicted.detach().numpy(), members.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.predictive_images(images)[1], members.var(0))
    predicted.sum().backward()
    assert pixels.grad.abs().sum() > 0
    # the pool's predictions, their mean and variance over the members, and the pool grown in step
    np.testing.assert_allclose(model.predictions(), model.predict_images(images[:3]))
    assert model.extend(images[3:]).tolist() == [3, 4]
    np.testing.assert_allclose(model.predictions(np.array([4, 0])), model.predict_images(images[[4, 0]]))
    mean, variance = model.predictive()
    np.testing.assert_allclose(mean, members.mean(0), rtol=1e-6)
    np.testing.assert_allclose(variance, members.var(0), rtol=1e-6)
    for needs_features in (lambda: model.embedding(np.arange(2)), lambda: model.ridge):
        with pytest.raises(ClosedLoopError, match="plain image model .* needs a learner checkpoint"):
            needs_features()


def test_parse_params_reads_json_and_key_value():
    assert parse_params(['{"a": 1, "b": [2, 3]}', "c=0.5", "d=curvature", "e=true"]) == {
        "a": 1, "b": [2, 3], "c": 0.5, "d": "curvature", "e": True}
    with pytest.raises(ClosedLoopError, match="--params 'oops'"):
        parse_params(["oops"])


@pytest.mark.parametrize("change, message", [
    ({"--model": "garbage"}, "unreadable or corrupt model file"),
    ({"--pool": "empty"}, "empty pool"),
    ({"-n": 999}, "-n 999: the pool holds 34 images"),
    ({"--strategy": "best"}, "unknown strategy 'best'"),
    ({"--model": "single"}, "one member"),
    ({"--params": "x"}, "--params 'x'"),
    ({"--strategy": "random", "--params": "k=1"}, "strategy 'random': params.k"),
    ({"--out": "taken"}, "already holds a design"),
])
def test_bad_input_is_one_line_and_status_2(files, tmp_path, change, message):
    (tmp_path / "garbage").write_bytes(b"not a model at all")
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "set.toml").write_text("")
    paths = {"garbage": tmp_path / "garbage", "empty": tmp_path / "empty", "single": files["single"],
             "taken": tmp_path / "taken"}
    options = {"--model": files["ensemble"], "--pool": files["set"], "-n": 8, "--strategy": "disagreement",
               "--size": SIZE, "--out": tmp_path / "out"}
    options.update({k: paths.get(v, v) if isinstance(v, str) else v for k, v in change.items()})
    code, _, stderr = run(*[str(x) for item in options.items() for x in item])
    assert code == 2, stderr
    assert stderr.startswith("closedloop: error: ") and stderr.count("\n") == 1 and message in stderr
    assert not (tmp_path / "out" / "set.toml").exists()


def test_design_refuses_a_strategy_without_predictions_to_rank_by(files):
    """A single member has no disagreement: every score would be equal, so design says so."""
    pool, _ = load_pool(files["set"], SIZE)
    single = FixedModel(load_model(files["single"]), pool.images)
    units = unit_names(single.name, single.units)
    with pytest.raises(ClosedLoopError, match="single model"):
        design(single, units, pool, 4, make_strategy("disagreement"))
    result = design(single, units, pool, 4, make_strategy("random"))
    assert isinstance(result, Design) and len(result.stimuli) == 4


# ------------------------------------------------------------------- learner checkpoints --
@pytest.fixture(scope="module")
def learner_checkpoint(files, tmp_path_factory) -> Path:
    """A small learner's checkpoint: a scratch core, two units, readouts fitted on 16 responses."""
    from closedloop.config import CoreSpec, ModelSpec
    from closedloop.learn import OnlineLearner

    tmp = tmp_path_factory.mktemp("learner")
    images = np.random.default_rng(2).integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)
    spec = ModelSpec(core=CoreSpec(dims=8, grid=2), input_px=16, channels=(4, 4, 4, 4, 4), finetune_every=0,
                     members=8)
    learner = OnlineLearner(images, NEURONS, spec, seed=0, background=False, cache=tmp / "cache")
    learner.learn(np.arange(16), np.random.default_rng(3).poisson(4.0, (16, NEURONS)))
    learner.sync()
    learner.save(tmp / "learner-final.pt")
    return tmp / "learner-final.pt"


@pytest.fixture
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_CACHE", str(tmp_path / "cache"))


def test_a_learner_checkpoint_ranks_with_its_posterior(learner_checkpoint, files, tmp_path, feature_cache):
    from closedloop.learn import OnlineLearner

    out = tmp_path / "next"
    code, stdout, stderr = run("--model", learner_checkpoint, "--pool", files["set"], "-n", 6, "--strategy",
                               "disagreement", "--batch", 4, "--size", SIZE, "--out", out)
    assert code == 0, stderr
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["model"]["kind"] == "learner" and provenance["model"]["members"] == 8
    assert provenance["model"]["units"] == ["learner-final:0", "learner-final:1"]
    pool, _ = load_pool(files["set"], SIZE)
    mean, variance = OnlineLearner.from_checkpoint(learner_checkpoint, pool.images).predictive()
    disagreement = (variance / (mean + 1e-3)).mean(axis=0)  # the closed-form posterior's, not members'
    assert np.ptp(disagreement) > 0
    chosen = [s["pool_index"] for s in provenance["stimuli"] if s["role"] == "chosen"]
    assert sorted(chosen) == sorted(np.argsort(-disagreement)[:6].tolist())
    decisions = provenance["decisions"]
    assert [len(d["chosen"]) for d in decisions] == [4, 2]
    np.testing.assert_allclose(decisions[0]["scores"], np.sort(disagreement)[::-1][:4], rtol=1e-5)


def test_variance_reduction_needs_a_learner_and_complements_earlier_decisions(learner_checkpoint, files, tmp_path,
                                                                             feature_cache):
    from closedloop.design import run_design
    from closedloop.learn import OnlineLearner
    from closedloop.select.strategies import SelectionContext

    with pytest.raises(ClosedLoopError, match="plain image model .* needs a learner checkpoint"):
        run_design(files["ensemble"], files["set"], 4, "variance_reduction", {}, tmp_path / "a", size_px=SIZE)
    result, _ = run_design(learner_checkpoint, files["set"], 4, "variance_reduction", {}, tmp_path / "b",
                           batch=2, size_px=SIZE)
    first, second = result.decisions[0]["chosen"], result.decisions[1]["chosen"]
    # the second decision is the one the strategy makes having seen the first decision's images
    pool, _ = load_pool(files["set"], SIZE)
    learner = OnlineLearner.from_checkpoint(learner_checkpoint, pool.images)
    allowed = np.setdiff1d(np.arange(len(pool)), first)
    context = SelectionContext(allowed, pool, None, learner, ("u0", "u1"), np.array(first), np.zeros((2, 2)))
    expected, _ = make_strategy("variance_reduction").choose(context, 2, np.random.default_rng(0))
    fresh = SelectionContext(allowed, pool, None, learner, ("u0", "u1"))
    forgetting, _ = make_strategy("variance_reduction").choose(fresh, 2, np.random.default_rng(0))
    assert second == expected.tolist()
    assert second != forgetting.tolist()  # without the first decision it would choose otherwise


def test_a_fixed_order_is_followed_across_decisions(files, tmp_path):
    pool, _ = load_pool(files["set"], SIZE)
    model = FixedModel(load_model(files["ensemble"]), pool.images)
    order = [5, 3, 30, 1, 12]
    result = design(model, unit_names(model.name, model.units), pool, 5, make_strategy("fixed", {"order": order}),
                    batch=2)
    assert [s.pool_index for s in result.stimuli] == order
    assert [d["chosen"] for d in result.decisions] == [[5, 3], [30, 1], [12]]
