"""``closedloop core build`` and ``core show``: a shared core from tiny synthetic sessions, end to
end; the file it writes is a core the learner uses; bad inputs are one line naming the file."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from closedloop.cli import main
from closedloop.config import CoreSpec, ModelSpec
from closedloop.errors import ClosedLoopError
from closedloop.learn.build import build_core
from closedloop.model.recorded import read_session, v4_sessions
from closedloop.learn.cores import load_core, read_core
from closedloop.learn.learner import OnlineLearner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--channels", "4,4,4,4,4", "--input-px", "16", "--grid", "2", "--epochs", "3", "--threads", "1"]


def _session(folder, name, count=40, neurons=4, seed=0, duplicates=0):
    """A zip of ``count`` PNGs (32 px; the last ``duplicates`` repeat the first ones) and
    (neurons, count) Poisson counts driven by the images' colours."""
    rng = np.random.default_rng(seed)
    distinct = rng.integers(0, 256, (count - duplicates, 4, 4, 3)).astype(np.uint8)
    images = np.concatenate([distinct, distinct[:duplicates]])
    zip_path, npy_path = folder / f"images_{name}.zip", folder / f"responses_repeat_averaged_{name}.npy"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for i, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).resize((32, 32), Image.Resampling.NEAREST).save(buffer, "PNG")
            archive.writestr(f"image{i + 1:04d}.png", buffer.getvalue())
    colour = images.reshape(count, -1, 3).mean(1) / 255.0
    rates = 1.0 + 6.0 * colour[:, rng.integers(0, 3, neurons)].T  # (neurons, count)
    np.save(npy_path, rng.poisson(rates).astype(float))
    return zip_path, npy_path


def closedloop(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "closedloop", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_core_build_end_to_end_and_show(tmp_path):
    a = _session(tmp_path, "a", seed=1)
    b = _session(tmp_path, "b", count=30, neurons=3, seed=2)
    out = tmp_path / "cores" / "shared.pt"
    result = closedloop("core", "build", out, "--session", *a, "--session", *b, *TINY, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert f"core written to {out}: held-out r" in result.stdout
    assert "session images_a: 4 neurons, 40 images" in result.stderr and "epoch   3" in result.stderr
    header = torch.load(out, weights_only=True)
    provenance = header["provenance"]
    assert header["nums_filters"] == [4] * 5 and header["input_px"] == 16
    assert [s["name"] for s in provenance["sessions"]] == ["images_a", "images_b"]
    assert [s["neurons"] for s in provenance["sessions"]] == [4, 3]
    assert [s["heldout_images"] for s in provenance["sessions"]] == [4, 3]
    assert provenance["neurons"] == 7 and provenance["images"] == 70 and provenance["epochs"] == 3
    assert -1 <= provenance["heldout_r"] <= 1 and "2 sessions (images_a, images_b)" in provenance["summary"]
    assert str(a[1]) == provenance["sessions"][0]["responses_file"]

    shown = closedloop("core", "show", out)
    assert shown.returncode == 0, shown.stderr
    for text in ("4-4-4-4-4", "16 px", "session images_a", "4 neurons, 40 images (4 held out", "epochs"):
        assert text in shown.stdout, shown.stdout


def test_the_v4_shortcut_and_merged_duplicates(tmp_path):
    (tmp_path / "v4" / "sessions").mkdir(parents=True)
    _session(tmp_path / "v4" / "sessions", "190925", count=30, duplicates=6, seed=4)
    session = read_session(*v4_sessions(tmp_path / "v4", ["190925"])[0])
    assert session.name == "190925" and session.files == 30 and len(session.images) == 24
    raw = np.load(tmp_path / "v4" / "sessions" / "responses_repeat_averaged_190925.npy")
    np.testing.assert_allclose(session.responses[:, :6], (raw[:, :6] + raw[:, 24:]) / 2)
    np.testing.assert_array_equal(session.responses[:, 6:], raw[:, 6:24])
    assert v4_sessions(tmp_path / "v4" / "sessions", ["x"])[0][0].name == "images_x.zip"  # the sessions folder too
    runner = CliRunner()
    result = runner.invoke(main, ["core", "build", str(tmp_path / "core.pt"), "--v4", str(tmp_path / "v4"),
                                  "--name", "190925", *TINY[:-2], "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "(6 repeated files merged)" in result.output or "6 repeated files merged" in result.stderr
    assert torch.load(tmp_path / "core.pt", weights_only=True)["provenance"]["images"] == 24


def test_a_built_core_is_reproducible_and_feeds_the_learner(tmp_path):
    sessions = [read_session(*_session(tmp_path, "a", seed=1)), read_session(*_session(tmp_path, "b", seed=2))]
    kwargs = dict(channels=(4, 4, 4, 4, 4), input_px=16, grid=2, epochs=2, seed=5, log=lambda _line: None)
    first = build_core(sessions, tmp_path / "one.pt", **kwargs)
    second = build_core(sessions, tmp_path / "two.pt", **kwargs)
    one, two = (torch.load(tmp_path / n, weights_only=True)["state_dict"] for n in ("one.pt", "two.pt"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert first["heldout_r"] == second["heldout_r"] and first["best_epoch"] in (1, 2)
    core = read_core(tmp_path / "one.pt", grid=2)
    assert core.raw(sessions[0].images[:3]).shape == (3, 4 * 4)
    spec = ModelSpec(core=CoreSpec(kind="file", path=tmp_path / "one.pt", grid=2, dims=4), finetune_every=0)
    assert load_core(spec).identity == core.identity
    learner = OnlineLearner(sessions[0].images, 4, spec, background=False, cache=tmp_path / "cache")
    learner.learn(np.arange(6), sessions[0].responses[:, :6].T)
    assert learner.predictive()[0].shape == (4, 40)
    learner.close()


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()  # progress lines may come first; the error is one line, last
    assert lines and lines[-1].startswith("closedloop: error:"), result.stderr
    assert not any("Traceback" in line or "error" in line for line in lines[:-1]), result.stderr
    return lines[-1]


@pytest.mark.parametrize("damage, message", [
    ("fewer columns", "{npy}: 39 images (columns), but {zip} has 40 images"),
    ("no responses", "{npy}: responses file not found"),
    ("no images", "{zip}: images file not found"),
    ("one dimension", "{npy}: expected (neurons, images) responses, found shape (40,)"),
    ("nan", "{npy}: 1 responses are not finite"),
    ("negative", "{npy}: responses must be spike counts >= 0"),
    ("text", "{npy}: unreadable responses file"),
    ("strings", "{npy}: responses file must hold real numbers"),
    ("bad image", "{zip}:image0003.png: unreadable image"),
    ("few images", "{npy}: 5 distinct images; a core needs at least 8"),
])
def test_bad_sessions_are_one_line_naming_the_file(tmp_path, damage, message):
    zip_path, npy_path = _session(tmp_path, "s", seed=6)
    responses = np.load(npy_path)
    if damage == "fewer columns":
        np.save(npy_path, responses[:, 1:])
    elif damage == "no responses":
        npy_path.unlink()
    elif damage == "no images":
        zip_path.unlink()
    elif damage == "one dimension":
        np.save(npy_path, responses[0])
    elif damage == "nan":
        responses[1, 2] = np.nan
        np.save(npy_path, responses)
    elif damage == "negative":
        responses[1, 2] = -1
        np.save(npy_path, responses)
    elif damage == "text":
        npy_path.write_text("neuron,image\n")
    elif damage == "strings":
        np.save(npy_path, responses.astype(str))
    elif damage == "bad image":
        with zipfile.ZipFile(zip_path) as archive:
            entries = {name: archive.read(name) for name in archive.namelist()}
        with zipfile.ZipFile(zip_path, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, b"not a png" if name == "image0003.png" else data)
    elif damage == "few images":
        zip_path, npy_path = _session(tmp_path, "s", count=5, seed=6)
    result = CliRunner().invoke(main, ["core", "build", str(tmp_path / "core.pt"), "--session", str(zip_path),
                                       str(npy_path), *TINY])
    assert message.format(npy=npy_path, zip=zip_path) in _error(result)
    assert not (tmp_path / "core.pt").exists()


def test_bad_options_are_refused(tmp_path):
    runner = CliRunner()
    zip_path, npy_path = _session(tmp_path, "s")
    for args, text in ((["--channels", "4,4,4"], "--channels"), (["--name", "190923"], "--name needs --v4"),
                       (["--v4", str(tmp_path)], "--v4 needs at least one --name"),
                       ([], "give at least one --session")):
        session = ["--session", str(zip_path), str(npy_path)] if args and args[0] == "--channels" else []
        result = runner.invoke(main, ["core", "build", str(tmp_path / "c.pt"), *session, *args])
        assert result.exit_code == 2 and text in result.stderr, result.stderr
    result = runner.invoke(main, ["core", "build", str(tmp_path / "c.pt"), "--v4", str(tmp_path / "none"),
                                  "--name", "190923"])
    assert f"{tmp_path / 'none'}: V4 data folder not found" in _error(result)
    result = runner.invoke(main, ["core", "show", str(tmp_path / "absent.pt")])
    assert f"{tmp_path / 'absent.pt'}: core file not found" in _error(result)
    with pytest.raises(ClosedLoopError, match="no sessions given"):
        build_core([], tmp_path / "c.pt")


def test_core_show_on_a_protocol(tmp_path):
    protocol = tmp_path / "p.toml"
    protocol.write_text("[protocol]\nname = 'x'\n[model]\ninput_px = 16\nchannels = [4, 4, 4, 4, 4]\n"
                        "[model.core]\ngrid = 3\ndims = 12\n")
    result = CliRunner().invoke(main, ["core", "show", str(protocol)])
    assert result.exit_code == 0, result.output
    for text in ("scratch", "grid", "12", "trainable", "yes", "parameters"):
        assert text in result.stdout, result.stdout
