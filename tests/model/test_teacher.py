"""The teacher: trained on generated sessions, held-out images never trained on, resumed after an
interruption exactly where it stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from closedloop.cli import main
from closedloop.errors import ClosedLoopError
from closedloop.model import teacher_training
from closedloop.model.generate import generate_sessions
from closedloop.model.models import load_model
from closedloop.model.recorded import find_sessions, heldout_split
from closedloop.model.teacher_training import TeacherSettings, train_teacher

TINY = TeacherSettings(widths=(16, 16, 16, 16), blocks=(1, 1, 1, 1), epochs=3, batch=8, heldout=0.2, shift=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two generated sessions, two neurons in all; session b keeps single trials."""
    return generate_sessions(tmp_path_factory.mktemp("v4"), {"a": 1, "b": 1}, images=40, trials=("b",), seed=3)


def test_sessions_are_read_with_their_single_trials(data):
    a, b = find_sessions(data)
    assert (a.name, a.neurons, len(a.images), a.trials) == ("a", 1, 40, None)
    assert b.trials.shape == (1, 40, 6) and np.isnan(b.trials[:, 1::2, -1]).all()
    np.testing.assert_allclose(np.nanmean(b.trials, axis=2), b.responses)


def test_teacher_trains_on_every_session_and_never_on_held_out_images(data, tmp_path, monkeypatch):
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    real = teacher_training._Part.targets

    def spy(part, index, rng):  # the training targets of every minibatch, as trained on
        if rng is not None:
            seen[part.session.name].update(int(i) for i in index)
        return real(part, index, rng)

    monkeypatch.setattr(teacher_training._Part, "targets", spy)
    lines = []
    metadata = train_teacher(data, tmp_path / "teacher.pt", TINY, log=lines.append)
    teacher = load_model(tmp_path / "teacher.pt")
    assert teacher.outputs == 2 and teacher.predict(np.zeros((3, 112, 112, 3), np.uint8)).shape == (3, 2)
    for record in metadata["sessions"]:
        held = set(record["heldout"])
        assert held == set(heldout_split(record["name"], 40, TINY.heldout, TINY.seed).tolist())
        assert len(held) == 8 and not held & seen[record["name"]]
        assert seen[record["name"]] == set(range(40)) - held  # every training image was trained on
    assert [n["name"] for n in metadata["neurons"]] == ["a_n0", "b_n0"]
    assert metadata["sessions"][1]["noise_corrected_r2"] is not None or metadata["neurons"][1]["noise_ceiling"]
    assert [h["epoch"] for h in metadata["history"]] == [1, 2, 3]
    assert any(line.startswith("epoch 3/3") for line in lines)
    assert not (tmp_path / "teacher.pt.checkpoint").exists()
    assert dict(teacher.metadata)["parameters"] == sum(p.numel() for p in teacher.torch_module().parameters())


def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_teacher(data, tmp_path):
    train_teacher(data, tmp_path / "whole.pt", TINY, log=lambda _: None)

    def interrupt(line: str) -> None:
        if line.startswith("epoch 2/3"):  # the checkpoint of epoch 2 is on disk: Ctrl-C now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_teacher(data, tmp_path / "cut.pt", TINY, log=interrupt)
    assert (tmp_path / "cut.pt.checkpoint").exists() and not (tmp_path / "cut.pt").exists()
    with pytest.raises(ClosedLoopError, match="epochs=3, not 4"):
        train_teacher(data, tmp_path / "cut.pt", TeacherSettings(**{**TINY.__dict__, "epochs": 4}))
    lines = []
    metadata = train_teacher(data, tmp_path / "cut.pt", TINY, log=lines.append)
    assert any("after epoch 2/3" in line for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 1  # only epoch 3 ran again
    assert [h["epoch"] for h in metadata["history"]] == [1, 2, 3]
    whole = load_model(tmp_path / "whole.pt").torch_module().state_dict()
    cut = load_model(tmp_path / "cut.pt").torch_module().state_dict()
    for key, value in whole.items():
        torch.testing.assert_close(cut[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_finished_teacher_is_not_overwritten_without_fresh(data, tmp_path):
    out = tmp_path / "t.pt"
    out.write_bytes(b"keep me")
    result = CliRunner().invoke(main, ["teacher", "train", "--data", str(data), "--out", str(out), "--widths",
                                       "16,16,16,16", "--blocks", "1,1,1,1", "--epochs", "1"])
    assert result.exit_code != 0 and "already exists" in result.output and "--fresh" in result.output
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "nowhere: data folder not found"),
    (["--data", "{tmp}"], "no sessions"),
    (["--data", "{data}", "--session", "zz"], "no session zz (found a, b)"),
    (["--data", "{data}", "--widths", "16,16"], "--widths"),
    (["--data", "{data}", "--widths", "8,16,16,16"], "widths=(8, 16, 16, 16)"),
])
def test_bad_input_is_one_line_naming_it(data, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, data=data) for a in args]
    result = CliRunner().invoke(main, ["teacher", "train", *args, "--out", str(tmp_path / "t.pt")])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "t.pt").exists()
