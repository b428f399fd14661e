"""The loop through disturbances: a model that falls behind, a spike stream that drops out, and
the session's own process killed.

One session on the simulated rig (real LSL, a real simulator and model worker, headless
presenter) is disturbed from ``on_progress``, which runs in the presentation loop:

* after presentation ``FREEZE`` the model worker is stopped (SIGSTOP): it cannot answer, so once
  its last choice is used up the presenter must fall back to random images; it goes on
  (SIGCONT) after presentation ``THAW``; meanwhile ``control_fraction`` puts random controls
  among the images;
* after presentation ``CUT`` the simulator is killed (SIGKILL) while the windows of the last
  presentations are still open; once the loop has declared the stream gone, a new simulator
  takes the stream over (as restarted acquisition software would), and the loop goes on when
  the gap is closed and the windows it cut are handled.

Another session runs as ``closedloop run`` and is killed with SIGKILL after ``KILL_AFTER``
responses: the processes it started must end with it, and ``closedloop resume`` must remove the
records the kill cut mid-write and finish the session.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import psutil
import pytest
from scipy.stats import binom

from closedloop import loop
from closedloop.config import load_protocol, load_rig
from closedloop.record import read_session

PRESENTATIONS = 96
FREEZE, THAW, CUT = 16, 40, 64  # presentations shown before each disturbance (whole 4-image trials)
CONTROL_FRACTION = 0.25
BATCH = 4  # images per model decision
WINDOW_END = 0.5  # s after onset: the last presentations' windows are open when the simulator dies
TAIL = 1e-5  # chance of a control count outside the accepted range, on either side
KILLED_PRESENTATIONS = 60
KILL_AFTER = 20  # responses on disk when `closedloop run` is killed
EXIT_DEADLINE = 60.0  # s for the killed run's processes to end
STREAM_WAIT = 120.0  # s at most for the disturbed session's processes and streams to react


def _capture(patch: pytest.MonkeyPatch, name: str) -> list:
    """Every object that ``closedloop.loop.<name>(...)`` makes from now on, in order."""
    made, make = [], getattr(loop, name)

    def recording(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    patch.setattr(loop, name, recording)
    return made


@pytest.fixture(scope="module")
def disturbed(tmp_path_factory, sim_files, wait_until):
    """The disturbed session: (summary, record, held-out pool indices)."""
    tmp = tmp_path_factory.mktemp("disturbed")
    sim_files.rig(tmp / "rig.toml", f"cltest-disturbed-{uuid.uuid4().hex[:8]}")
    sim_files.protocol(tmp / "protocol.toml", PRESENTATIONS)
    text = (tmp / "protocol.toml").read_text()
    for old, new in ((f"batch = {BATCH}\n", f"batch = {BATCH}\ncontrol_fraction = {CONTROL_FRACTION}\n"),
                     ("[stimulus]", f"[window]\nend = {WINDOW_END}\n[stimulus]")):
        assert old in text
        text = text.replace(old, new)
    (tmp / "protocol.toml").write_text(text)
    protocol, rig, session = load_protocol(tmp / "protocol.toml"), load_rig(tmp / "rig.toml"), tmp / "session"
    start_simulator = loop.start_simulator
    replacement = []  # the simulator started after the kill

    with pytest.MonkeyPatch.context() as patch:
        workers, simulators, inlets = (_capture(patch, name)
                                       for name in ("ModelWorker", "start_simulator", "SpikeInlet"))

        def disturb(progress: loop.Progress) -> None:
            if progress.presented == FREEZE:
                worker = psutil.Process(workers[0].process.pid)
                worker.suspend()
                wait_until(lambda: worker.status() == psutil.STATUS_STOPPED,
                           "the model worker stops", timeout=STREAM_WAIT)
            elif progress.presented == THAW:
                psutil.Process(workers[0].process.pid).resume()
            elif progress.presented == CUT:
                simulators[0].kill()
                simulators[0].wait()
                wait_until(lambda: inlets[0].in_gap_since is not None,
                           "the loop declares the stream gone", timeout=STREAM_WAIT)
                replacement.append(start_simulator(rig.source, session / "stimuli.npz",
                                                   session / "simulator.log"))
                wait_until(lambda: inlets[0].gaps or inlets[0].error is not None,
                           "the spike stream returns", timeout=STREAM_WAIT)
                assert inlets[0].error is None, f"the spike inlet failed: {inlets[0].error!r}"
                wait_until(lambda: progress.gap_responses > 0,
                           "the cut windows are handled", timeout=STREAM_WAIT)

        try:
            summary = loop.run_session(protocol, rig, session, on_progress=disturb)
        finally:
            if workers and workers[0].process.is_alive():
                psutil.Process(workers[0].process.pid).resume()
            for simulator in replacement:
                simulator.terminate()
                simulator.wait(timeout=30)
    record = read_session(session)
    _, heldout = loop.split_pool(len(record.pool), protocol.heldout.images, protocol.protocol.seed)
    return summary, record, set(heldout.tolist())


def test_a_late_model_gets_a_fallback_image_counted_and_logged(disturbed):
    summary, record, heldout = disturbed
    assert summary["status"] == "complete" and summary["presentations"] == PRESENTATIONS
    fallbacks = [m for m in record.markers if m["role"] == "fallback"]
    misses = [e for e in record.events if e["kind"] == "deadline_miss"]
    assert summary["deadline_misses"] == len(misses) == len(fallbacks)
    assert [e["index"] for e in misses] == [m["index"] for m in fallbacks]
    # While the worker was stopped, nothing but its last choice (one batch) could come from it:
    # every other image it should have chosen was a fallback.
    frozen = [m for m in record.markers if FREEZE <= m["index"] < THAW]
    chosen = [m for m in frozen if m["role"] == "chosen"]
    assert len(chosen) <= BATCH
    assert sum(m["role"] == "fallback" for m in frozen) == \
        sum(m["role"] not in ("heldout", "control") for m in frozen) - len(chosen) > 0
    for m in fallbacks:  # a random candidate, shown and answered like any other image
        assert m["pool_index"] not in heldout and m["stimulus"] == record.pool.ids[m["pool_index"]]
    answered = {r["index"]: r["role"] for r in record.responses}
    assert all(answered[m["index"]] == "fallback" for m in fallbacks)
    assert any(m["role"] == "chosen" for m in record.markers if m["index"] >= THAW)  # the model is back


def test_control_images_are_shown_in_their_share(disturbed):
    """Each image the schedule does not reserve (held out, re-queued) is a random control with
    probability ``control_fraction``: the count lies in the binomial's central range, all but a
    ``TAIL`` chance on either side."""
    _, record, heldout = disturbed
    drawn = [m for m in record.markers if m["role"] in ("control", "chosen", "fallback")]
    controls = [m for m in drawn if m["role"] == "control"]
    low, high = binom.ppf(TAIL, len(drawn), CONTROL_FRACTION), binom.isf(TAIL, len(drawn), CONTROL_FRACTION)
    assert low <= len(controls) <= high, (len(controls), len(drawn))
    assert not any(m["pool_index"] in heldout for m in controls)
    answered = {r["index"]: r["role"] for r in record.responses}
    assert all(answered[m["index"]] == "control" for m in controls)


def test_images_a_spike_gap_cut_are_shown_again_and_never_trained_on(disturbed):
    summary, record, _ = disturbed
    (gap,) = summary["spike_gaps"]
    assert [(e["start"], e["end"]) for e in record.events if e["kind"] == "spike_gap"] == [(gap["start"], gap["end"])]
    assert len(record.responses) == PRESENTATIONS  # the cut ones too, flagged
    window = record.protocol["window"]
    cut = [r for r in record.responses if r.get("gap")]
    assert summary["gap_responses"] == len(cut)
    assert {CUT - 2, CUT - 1} <= {r["index"] for r in cut}  # the last two before the kill lost spikes
    for r in cut:  # flagged: its window overlaps the gap
        assert r["onset"] + window["start"] < gap["end"] and r["onset"] + window["end"] > gap["start"]
    for r in (r for r in cut if r["role"] != "heldout"):  # shown again after the stream came back
        assert any(m["role"] == "requeued" and m["pool_index"] == r["pool_index"] and m["onset"] > gap["end"]
                   for m in record.markers)
    assert sum(m["role"] == "requeued" for m in record.markers) == sum(r["role"] != "heldout" for r in cut) > 0
    # The worker learned every other response of a trained role, and none of the cut ones.
    learned = sum(r["role"] != "heldout" and not r.get("gap") for r in record.responses)
    assert record.accuracy[-1]["responses"] == learned


def _running(process: psutil.Process) -> bool:
    """Still running (a zombie has ended: nobody may be left to reap it once its parent died)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def killed(tmp_path_factory, sim_files, wait_until):
    """``closedloop run`` killed with SIGKILL once ``KILL_AFTER`` responses are on disk:
    (session directory, its record as the kill left it, the processes the run had started
    (children and theirs, by parentage), the command lines of those still running
    ``EXIT_DEADLINE`` s later)."""
    tmp = tmp_path_factory.mktemp("killed")
    sim_files.rig(tmp / "rig.toml", f"cltest-killed-{uuid.uuid4().hex[:8]}")
    sim_files.protocol(tmp / "protocol.toml", KILLED_PRESENTATIONS)
    with open(tmp / "run.log", "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "closedloop", "run", tmp / "protocol.toml", "--rig",
                                tmp / "rig.toml", "--out", tmp / "sessions"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def recorded() -> bool:
            found = list((tmp / "sessions").glob("*/responses.jsonl"))
            return bool(found) and found[0].read_bytes().count(b"\n") >= KILL_AFTER or run.poll() is not None

        wait_until(recorded, f"{KILL_AFTER} responses on disk", timeout=300)
        assert run.poll() is None, (tmp / "run.log").read_text()[-2000:]
        children = psutil.Process(run.pid).children(recursive=True)
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + EXIT_DEADLINE
    while any(_running(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    lingering = []
    for process in filter(_running, children):  # leave nothing behind, whatever the test says
        try:
            lingering.append(" ".join(process.cmdline()))
            process.kill()
        except psutil.Error:  # it ended just now
            pass
    (session,) = (tmp / "sessions").iterdir()
    return session, read_session(session), children, lingering


def test_no_process_outlives_a_killed_run(killed):
    _, _, children, lingering = killed
    assert len(children) >= 2  # the simulator and the model worker at least
    assert not lingering, f"still running {EXIT_DEADLINE:g} s after the run was killed: {lingering}"


def test_resume_removes_records_cut_mid_write_and_finishes_the_session(killed):
    session, before, _, lingering = killed
    assert not lingering  # else a leftover simulator would answer the resumed session too
    assert len(before.responses) >= KILL_AFTER and before.summary is None
    # Whatever the kill cut, each log now ends in a record cut mid-write.
    cut = {"markers": '{"index": %d, "stimulus": "cut-' % len(before.markers),
           "responses": '{"index": %d, "onset": "cut-' % before.responses[-1]["index"]}
    for name, text in cut.items():
        with open(session / f"{name}.jsonl", "a") as f:
            f.write(text)
    result = subprocess.run([sys.executable, "-m", "closedloop", "resume", session],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    after = read_session(session)  # every line whole JSON: the cut records were removed first
    for name, text in cut.items():
        assert text not in (session / f"{name}.jsonl").read_text()
    assert [m["index"] for m in after.markers] == list(range(KILLED_PRESENTATIONS))
    assert after.markers[:len(before.markers)] == before.markers  # nothing whole was lost
    assert after.responses[:len(before.responses)] == before.responses
    (resumed,) = [e for e in after.events if e["kind"] == "resumed"]
    assert resumed["from_presentation"] == len(before.markers)
    assert set(resumed["unanswered"]) == {m["index"] for m in before.markers} - {r["index"] for r in before.responses}
    assert set(range(len(before.markers), KILLED_PRESENTATIONS)) <= {r["index"] for r in after.responses}
    # The new model worker learned the recorded responses, then the new ones.
    learned = sum(r["role"] != "heldout" and not r.get("gap") for r in after.responses)
    assert after.accuracy[-1]["responses"] == learned
    assert after.summary["status"] == "complete" and after.summary["presentations"] == KILLED_PRESENTATIONS
    assert len(after.spikes) > len(before.spikes)
    assert np.array_equal(after.spikes[:len(before.spikes)], before.spikes)
    again = subprocess.run([sys.executable, "-m", "closedloop", "resume", session],
                           capture_output=True, text=True, timeout=300)  # a finished session refuses to go on
    assert again.returncode == 2, again.stderr
    assert f"all {KILLED_PRESENTATIONS} presentations are recorded" in again.stderr
