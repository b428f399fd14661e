"""The model worker as a Ray actor on a local Ray (the ``ray_local`` fixture), with real LSL and the
real simulator: a session learns every response through it, the actor's files land in the session
folder, a replay makes every decision again, a killed actor ends the run in one line, and bad
``[learner]`` settings are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from click.testing import CliRunner

from closedloop.cli import main
from closedloop.config import LearnerSpec, ModelSpec, SelectionSpec, load_protocol, load_rig, with_learner
from closedloop.errors import ClosedLoopError
from closedloop.learn.learner import read_checkpoint
from closedloop.learn.remote import RayWorker, actor_name
from closedloop.learn.worker import WorkerConfig
from closedloop.record import read_session
from closedloop.select.registry import make_strategy
from closedloop.session import run_session
from closedloop.simulate.generate import protocol_text
from closedloop.stimuli import StimulusPool, generate_pool
from closedloop.stimuli.candidates import split_pool

pytestmark = pytest.mark.usefixtures("ray_local", "one_torch_thread")  # tests/conftest.py

PRESENTATIONS = 120  # about 90 trained-on responses: three checkpoints, two fine-tuned cores
CHECKPOINT_EVERY = 25
KILL_AT = 8  # presentations shown before the actor is killed
RAY_LEARNER = '[learner]\nwhere = "ray"\n'


def _files(tmp, sim_files, presentations: int, **overrides) -> tuple:
    """A simulated rig whose learner is a Ray actor, and a short protocol."""
    sim_files.rig(tmp / "rig.toml", f"cltest-ray-{uuid.uuid4().hex[:8]}")
    (tmp / "rig.toml").write_text((tmp / "rig.toml").read_text() + RAY_LEARNER)
    (tmp / "protocol.toml").write_text(protocol_text(presentations, **overrides))
    return load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml")


@pytest.fixture(scope="module")
def session(tmp_path_factory, sim_files, ray_local):
    """A synthesising session whose learner fine-tunes its core every 32 responses: (summary, record)."""
    import ray

    tmp = tmp_path_factory.mktemp("ray-session")
    protocol, rig = _files(tmp, sim_files, PRESENTATIONS,
                           selection={"strategy": "synthesis", "warmup": 12, "params": {"steps": 4}},
                           model={"finetune_every": 32, "steps_per_update": 10,
                                  "checkpoint_every": CHECKPOINT_EVERY})
    summary = run_session(protocol, rig, tmp / "session")
    assert actor_name(tmp / "session") not in ray.util.list_named_actors()  # stopped and killed
    return summary, read_session(tmp / "session")


def test_a_session_whose_learner_is_a_ray_actor_learns_every_response(session, ray_local):
    """Every response handed on (not cut by a gap or a fixation break) was learned: the final
    checkpoint's and the last accuracy report's trained-on count, and the held-out ones it
    received; the session records where the learner ran."""
    summary, record = session
    assert summary["status"] == "complete" and summary["presentations"] == PRESENTATIONS
    sent = [r for r in record.responses if not (r.get("gap") or r.get("aborted"))]
    trained = sum(r["role"] != "heldout" for r in sent)
    final = read_checkpoint(record.path / "checkpoints" / "learner-final.pt")
    assert final["responses"] == record.accuracy[-1]["responses"] == trained > 60
    assert record.accuracy[-1]["heldout_shown"] == len(sent) - trained
    assert record.selections[-1]["received"] <= len(sent)
    assert len(summary["heldout_r_true"]) == 3  # the truth, turned into rates on this host
    learner = summary["learner"]
    assert learner["where"] == "ray" and learner["ray"] == ray_local and learner["node"]
    assert [e["learner"] for e in record.events if e["kind"] == "model_ready"] == [learner]
    assert summary["deadline_misses"] == sum(e["kind"] == "deadline_miss" for e in record.events)


def test_the_actors_files_land_in_the_session_folder(session):
    """Checkpoints, fine-tuned cores and synthesised images, written on the actor's side, are in
    the session folder, whole; the simulator found every synthesised image the presenter showed."""
    summary, record = session
    folder = record.path
    trained = record.accuracy[-1]["responses"]
    assert len(list((folder / "checkpoints").glob("learner-0*.pt"))) == trained // CHECKPOINT_EVERY
    compared = [e["responses"] for e in record.events if e["kind"] == "core_comparison"]
    cores = {p.name for p in (folder / "cores").iterdir()}
    assert compared and {f"finetune-{n:06d}.pt" for n in compared} <= cores
    added = sorted({i for s in record.selections for i in s.get("added", [])})
    assert added and len(list((folder / "synthesized").glob("*.npz"))) >= 1
    assert len(record.pool) == added[-1] + 1 and {record.pool.families[i] for i in added} == {"synthesized"}
    assert "unknown stimulus" not in (folder / "simulator.log").read_text()
    assert not [p for p in folder.rglob("*") if ".partial" in p.name]


def test_replay_reproduces_a_ray_learners_decisions(session, tmp_path):
    """``closedloop replay`` of the session, in this process: every decision and accuracy report as
    logged, the fine-tuned cores read from the session's cores/ (sent back by the actor)."""
    _, record = session
    result = CliRunner().invoke(main, ["replay", str(record.path), "--out", str(tmp_path / "replay")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "replay" / "replay.json").read_text())
    assert report["reproduced"] == report["logged_decisions"] == len(record.selections)
    assert report["first_divergence"] is None
    accuracy = report["accuracy_reports"]
    assert accuracy["equal"] == accuracy["compared"] == accuracy["logged"] > 5


def test_a_killed_actor_ends_the_run_in_one_line_and_keeps_what_was_shown(tmp_path, sim_files):
    """The actor killed mid-run: the run ends with one line naming it, a full summary (status
    failed), and every presentation shown and its response on disk."""
    import ray

    protocol, rig = _files(tmp_path, sim_files, 200)
    path = tmp_path / "session"
    killed = []

    def kill(progress) -> None:
        if progress.presented == KILL_AT and not killed:
            ray.kill(ray.get_actor(actor_name(path)))
            killed.append(True)

    with pytest.raises(ClosedLoopError) as raised:
        run_session(protocol, rig, path, on_progress=kill)
    line = str(raised.value)
    assert killed and line.startswith("model worker (Ray actor on ") and " died: " in line and "\n" not in line
    record = read_session(path)
    assert record.summary["status"] == "failed" and record.summary["error"] == line
    assert record.summary["presentations"] == len(record.markers) >= KILL_AT
    assert record.summary["responses"] == len(record.responses) > 0
    assert actor_name(path) not in ray.util.list_named_actors()


def test_a_session_resumed_with_its_learner_on_ray_gets_what_it_learned_and_made_before(tmp_path, sim_files):
    """A synthesising session with a process learner, stopped by Ctrl-C, resumed with ``--learner
    ray``: the actor is sent the synthesised images (its pool grows in step with the session's: a
    choice that added at another index would end the run) and learns the recorded responses
    first; every response of both runs is learned."""
    protocol, rig = _files(tmp_path, sim_files, 64, selection={"strategy": "synthesis", "warmup": 8,
                                                               "params": {"steps": 4}})
    path = tmp_path / "session"

    def interrupt(progress) -> None:
        if progress.presented == 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_session(protocol, with_learner(rig, "process"), path, on_progress=interrupt)
    made = len(list((path / "synthesized").glob("*.npz")))
    assert made > 0
    summary = run_session(load_protocol(path / "protocol.json"), with_learner(load_rig(path / "rig.json"), "ray"),
                          path, resume=True)
    record = read_session(path)
    assert summary["status"] == "complete" and summary["learner"]["where"] == "ray"
    assert [e["learner"]["where"] for e in record.events if e["kind"] == "model_ready"] == ["process", "ray"]
    sent = [r for r in record.responses if not (r.get("gap") or r.get("aborted"))]
    trained = sum(r["role"] != "heldout" for r in sent)
    assert read_checkpoint(path / "checkpoints" / "learner-final.pt")["responses"] == trained
    assert len(list((path / "synthesized").glob("*.npz"))) > made
    assert len(record.pool) == max(i for s in record.selections for i in s.get("added", [0])) + 1
    # the held-out split is the first run's, though the pool grew (every held-out image shown is one of it)
    base = len(StimulusPool.load(path / "stimuli.npz"))
    _, heldout = split_pool(base, protocol.heldout.images, protocol.protocol.seed)
    shown_heldout = {m["pool_index"] for m in record.markers if m["role"] == "heldout"}
    assert shown_heldout and shown_heldout <= set(heldout.tolist())
    # replay: the resumed lifetime starts from what the first one synthesised, as live
    result = CliRunner().invoke(main, ["replay", str(path), "--out", str(tmp_path / "replay")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "replay" / "replay.json").read_text())
    assert report["reproduced"] == report["logged_decisions"] == len(record.selections)


@pytest.fixture
def config(tmp_path) -> WorkerConfig:
    pool = generate_pool({"dot": 30, "grating": 30}, 16, seed=0)
    pool.save(tmp_path / "stimuli.npz")
    selection = SelectionSpec(strategy="disagreement", warmup=8, batch=4, no_repeat=10)
    return WorkerConfig(pool_path=tmp_path / "stimuli.npz", units=("a", "b"),
                        model=ModelSpec(members=3, input_px=16, channels=(4, 4, 4, 4, 4)), selection=selection,
                        strategy=make_strategy(selection.strategy), candidates=tuple(range(6, 60)),
                        heldout=tuple(range(6)), seed=5, checkpoints=tmp_path / "checkpoints")


def test_an_error_inside_the_actor_names_this_hosts_file(config, tmp_path):
    """A warm-start file that is not a checkpoint travels to the actor by value; the worker's
    one-line error names it by its path on the session's host, not the actor's copy."""
    bad = tmp_path / "elsewhere" / "bad.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    config = dataclasses.replace(config, model=config.model.model_copy(update={"warm_start": bad}))
    worker = RayWorker(config, tmp_path, LearnerSpec(where="ray"))
    try:
        with pytest.raises(ClosedLoopError, match="^model worker failed: ") as raised:
            worker.start()
    finally:
        worker.terminate()
    assert str(bad) in str(raised.value) and "closedloop-learner-" not in str(raised.value)


def test_an_actor_the_cluster_cannot_place_is_refused(config, tmp_path, ray_local):
    worker = RayWorker(config, tmp_path, LearnerSpec(where="ray", gpus=1))
    with pytest.raises(ClosedLoopError, match=r"^\[learner\] asks for 1 CPUs and 1 GPUs; the Ray cluster "
                                              r"\(Ray .*\) has 2 and 0$"):
        worker.start()


UNITS = "[rig]\nname = 'r'\n[[units]]\nname = 'a'\nchannel = 1\n"


@pytest.mark.parametrize("table, message", [
    ("where = 'gpu'", "field 'learner.where': Input should be 'process' or 'ray'"),
    ("where = 'ray'\ncpus = 0", "field 'learner.cpus': Input should be greater than 0"),
    ("where = 'ray'\ngpus = -1", "field 'learner.gpus'"),
    ("where = 'ray'\naddress = 'head'", "field 'learner.address': 'head' is not a Ray address"),
    ("address = 'auto'", "field 'learner': address, cpus and gpus place a Ray actor: they need where = 'ray'"),
    ("where = 'ray'\nhost = 'x'", "field 'learner.host': Extra inputs are not permitted"),
])
def test_bad_learner_tables_name_the_file_and_field(tmp_path, table, message):
    path = tmp_path / "rig.toml"
    path.write_text(f"{UNITS}[learner]\n{table}\n")
    with pytest.raises(ClosedLoopError) as raised:
        load_rig(path)
    assert str(raised.value).startswith(f"rig file {path}: {message}") and "\n" not in str(raised.value)


def test_the_command_line_places_the_learner_over_the_rig(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text(f"{UNITS}[learner]\nwhere = 'ray'\ncpus = 2\n")
    rig = load_rig(path)
    assert with_learner(rig, None, "ray://head:10001").learner == \
        LearnerSpec(where="ray", address="ray://head:10001", cpus=2)
    assert with_learner(rig, "process").learner == LearnerSpec()
    assert with_learner(rig) is rig
    for where, address, message in ((None, "head", "--ray-address: 'head' is not a Ray address"),
                                    ("process", "auto", "--ray-address: needs --learner ray"),
                                    (None, "", "--ray-address: ''")):
        with pytest.raises(ClosedLoopError) as raised:
            with_learner(rig, where, address)
        assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


@pytest.mark.parametrize("options, message", [
    (["--learner", "gpu"], "Invalid value for '--learner': 'gpu' is not one of 'process', 'ray'."),
    (["--ray-address", "head:port"], "closedloop: error: --ray-address: 'head:port' is not a Ray address"),
])
def test_bad_learner_options_are_one_line_errors(tmp_path, sim_files, options, message):
    sim_files.rig(tmp_path / "rig.toml", "cltest-unused")
    sim_files.protocol(tmp_path / "protocol.toml", 10)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "protocol.toml"), "--rig", str(tmp_path / "rig.toml"),
                                       "--out", str(tmp_path / "out"), *options])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()
    if message.startswith("closedloop"):
        assert result.output.strip() == result.output.strip().splitlines()[-1]  # one line
