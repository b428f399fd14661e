"""Students: a tiny teacher of two generated neurons distilled and pruned per neuron, within the
parameter budget, then used: a shared core built from them, a warm start, ``inspect``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from closedloop.cli import main
from closedloop.config import ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn.learner import OnlineLearner
from closedloop.model.compact import find_published, load_published
from closedloop.model.compress import (CompressConfig, compact_parameters, count_parameters, distil,
                                       generated_images, new_student, predict, prune_to_budget)
from closedloop.model.generate import generate_sessions
from closedloop.model.recorded import find_sessions
from closedloop.distil.students import REPORT, STUDENTS, DistilSettings, distil_session
from closedloop.model.teacher_training import TeacherSettings, train_teacher

BUDGET = 4000
PRUNING_R = 0.85
"""The stated tolerance: on held-out images a pruned student's predictions correlate with the
unpruned student's at least this well (for a target the student can learn)."""

STUDENT = CompressConfig(filters=8, images_n=300, steps=30, prune_steps=20, final_steps=60, batch=8, lr=3e-3,
                         prune_images=32, calibration_images=32, budget=BUDGET)
SETTINGS = DistilSettings(student=STUDENT, gaudy=20, synthesized=1, synthesis_steps=3, shared_steps=150, shared_batch=8)


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """Generated sessions a (two neurons) and b (one, single trials) and a tiny teacher of them."""
    folder = tmp_path_factory.mktemp("distil")
    data = generate_sessions(folder / "data", {"a": 2, "b": 1}, images=80, trials=("b",), seed=5)
    settings = TeacherSettings(widths=(16, 16, 16, 16), blocks=(1, 1, 1, 1), epochs=3, batch=8, heldout=0.2)
    train_teacher(data, folder / "teacher.pt", settings, log=lambda _: None)
    return data, folder / "teacher.pt"


@pytest.fixture(scope="module")
def distilled(taught, tmp_path_factory, ray_local):
    data, teacher = taught
    out = tmp_path_factory.mktemp("students")
    lines = []
    report = distil_session(teacher, data, "a", out, SETTINGS, workers=2, log=lines.append)
    return out, report, lines


def test_every_neuron_gets_a_student_within_the_budget(distilled, taught):
    out, report, lines = distilled
    assert [n["name"] for n in report["neurons"]] == ["a_n0", "a_n1"]
    assert all(n["status"] == "done" for n in report["neurons"]), report["neurons"]
    paths = find_published(out / STUDENTS)
    assert [p.name for p in paths] == ["compact_model_a_neuron0.pt", "compact_model_a_neuron1.pt"]
    held = find_sessions(taught[0], ["a"])[0].images[report_heldout(taught[1], "a")]
    for row, path in zip(report["neurons"], paths):
        student = load_published(path)
        assert count_parameters(student) == row["parameters"] <= BUDGET < row["parameters_unpruned"]
        assert list(student.nums_filters) == row["filters"]
        # the file is the student the figures describe: its R2 against the teacher, computed again
        teacher = load_teacher_outputs(taught[1], held)[:, row["output"]]
        predicted = student.predict(held)
        r2 = 1 - np.sum((predicted - teacher) ** 2) / np.sum((teacher - teacher.mean()) ** 2)
        assert r2 == pytest.approx(row["r2_teacher"], abs=1e-4)
        assert -1 <= row["pruned_vs_unpruned_r"] <= 1
    assert json.loads((out / REPORT).read_text())["summary"]["students"] == 2
    assert [line.split(":")[0] for line in lines if line.startswith(("data:", "pool:", "teacher:"))] == [
        "data", "pool", "pool", "teacher"]
    assert any(line.startswith("time per stage: data") for line in lines)
    assert report["summary"]["ratio"] == pytest.approx(report["teacher_parameters"] / report["summary"]["parameters"])


def report_heldout(teacher, session):
    from closedloop.model.models import load_model

    return next(s["heldout"] for s in load_model(teacher).metadata["sessions"] if s["name"] == session)


def load_teacher_outputs(teacher, images):
    from closedloop.model.models import load_model

    return load_model(teacher).predict(images)


def test_a_rerun_skips_the_finished_students(distilled, taught):
    out, report, _ = distilled
    before = {p.name: p.read_bytes() for p in (out / STUDENTS).iterdir()}
    again = distil_session(taught[1], taught[0], "a", out, SETTINGS, workers=2, log=lambda _: None)
    assert again["summary"] == report["summary"]
    assert {p.name: p.read_bytes() for p in (out / STUDENTS).iterdir()} == before


def test_pruning_to_the_budget_keeps_the_predictions_of_the_unpruned_student():
    """distil's whole path (distil, threshold pruning, the budget pass, retraining) on a target a
    compact model can learn: the contrast of red against blue in the image's centre."""
    images = generated_images(360, seed=2)
    centre = images[:, 28:84, 28:84].astype(float)
    target = (centre[..., 0] - centre[..., 2]).std(axis=(1, 2))
    config = CompressConfig(filters=12, steps=200, prune_steps=20, final_steps=100, batch=16, lr=3e-3,
                            prune_images=32, calibration_images=64, budget=3000, seed=1)
    result = distil(images[:300], target[:300], images[300:], target[300:], config)
    assert compact_parameters(result.student.nums_filters) == result.parameters_after <= 3000
    assert result.parameters_before == compact_parameters((12,) * 5)
    assert result.r_before > 0.9  # the unpruned student learned the target
    assert np.corrcoef(result.heldout_after, result.heldout_before)[0, 1] >= PRUNING_R
    assert result.r_after >= result.r_before - 0.1, (result.r_after, result.r_before)  # and it is about as good
    np.testing.assert_allclose(predict(result.student, images[300:]), result.heldout_after, rtol=1e-5, atol=1e-5)


def test_the_budget_pass_removes_the_cheapest_filters_until_it_fits():
    student = new_student(12, seed=1)
    images = generated_images(32, seed=3)
    removed = prune_to_budget(student, images, 3000)
    assert compact_parameters(student.nums_filters) == count_parameters(student) <= 3000
    assert 0 < removed <= sum(12 - k for k in student.nums_filters)  # a step may drop dead filters too
    assert student.nums_filters[4] < 12  # a layer-4 filter saves its 784 readout weights: cut first


def test_a_teacher_of_other_data_or_a_missing_session_is_refused(taught, tmp_path):
    data, teacher = taught
    with pytest.raises(ClosedLoopError, match="no session 'zz'"):
        distil_session(teacher, data, "zz", tmp_path, SETTINGS)
    other = generate_sessions(tmp_path / "other", {"a": 2, "b": 1}, images=80, trials=("b",), seed=6)
    with pytest.raises(ClosedLoopError, match="not the data"):
        distil_session(teacher, other, "a", tmp_path, SETTINGS)
    result = CliRunner().invoke(main, ["teacher", "distil", "--teacher", str(tmp_path / "none.pt"), "--data",
                                       str(data), "--session", "a", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "none.pt" in result.output


def test_students_feed_a_shared_core(distilled, taught, tmp_path):
    out, _, _ = distilled
    pool = tmp_path / "pool"
    pool.mkdir()
    from PIL import Image

    for i, image in enumerate(find_sessions(taught[0], ["b"])[0].images[:30]):
        Image.fromarray(image).save(pool / f"p{i:02d}.png")
    core = tmp_path / "core.pt"
    result = CliRunner().invoke(main, ["core", "build", str(core), "--students", str(out / STUDENTS), "--images",
                                       str(pool), "--channels", "4,4,4,4,4", "--input-px", "32", "--epochs", "2",
                                       "--grid", "2"])
    assert result.exit_code == 0, result.output
    assert "2 students on 30 images" in result.output
    shown = CliRunner().invoke(main, ["core", "show", str(core)])
    assert "students" in shown.output and "2 neurons, 30 images" in shown.output
    alone = CliRunner().invoke(main, ["core", "build", str(core), "--students", str(out / STUDENTS)])
    assert alone.exit_code != 0 and "--students and --images go together" in alone.output


def test_a_session_starts_from_a_students_predictions(distilled, taught):
    out, _, _ = distilled
    images = find_sessions(taught[0], ["b"])[0].images
    path = out / STUDENTS / "compact_model_a_neuron1.pt"
    spec = ModelSpec(core={"kind": "compact", "path": str(out / STUDENTS), "match": "*neuron1*"}, warm_start=path)
    learner = OnlineLearner(images, 1, spec, seed=0, background=False)
    mean, _ = learner.predictive()
    student = np.maximum(load_published(path).predict(images), 0)
    # its core is the student itself: the readout's fit is linear in the student's output on the learner's
    # stabilised scale, so the learner's expected counts rank the images exactly as the student does
    assert spearmanr(mean[0], student).statistic > 0.99
    cold = OnlineLearner(images, 1, spec.model_copy(update={"warm_start": None}), seed=0, background=False)
    # and on the student's scale (spikes per window), where a learner without it knows nothing yet
    assert np.median(np.abs(mean[0] - student)) < 0.5 < 100 < np.median(np.abs(cold.predictive()[0][0] - student))
    both = ModelSpec(core={"kind": "scratch"}, warm_start=out / STUDENTS)
    with pytest.raises(ClosedLoopError, match="2 outputs, this session 1 units"):
        OnlineLearner(images, 1, both, seed=0, background=False)
    two = OnlineLearner(images, 2, both, seed=0, background=False)  # a folder: one student per unit
    assert two.predictive()[0].shape == (2, len(images))


def test_inspect_shows_a_student(distilled, tmp_path):
    out, report, _ = distilled
    result = CliRunner().invoke(main, ["inspect", str(out / STUDENTS / "compact_model_a_neuron0.pt"), "--out",
                                       str(tmp_path / "s.png"), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert f"{report['neurons'][0]['parameters']:,}" in result.output
