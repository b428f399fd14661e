"""The loop through disturbances: a model that falls behind, a spike stream that drops out, and
the session's own process killed.

One session on a real rig (real LSL, a real acquisition system and model worker, headless
presenter) is disturbed from ``on_progress``, which runs in the presentation loop:

* after presentation ``FREEZE`` the model worker is stopped (SIGSTOP): it cannot answer, so once
  its last choice is used up the presenter must fall back to random images; it goes on
  (SIGCONT) after presentation ``THAW``; meanwhile ``control_fraction`` puts random controls
  among the images;
* after presentation ``CUT`` the acquisition system is killed (SIGKILL) while the windows of the
  last presentations are still open; once the loop has declared the stream gone, a new one
  takes the stream over (as restarted acquisition software would), and the loop goes on when
  the gap is closed and the windows it cut are handled.

The acquisition system there is a real rig's: ``closedloop simulate`` started by the test for the
session's id (a session's own simulator that dies ends the run instead: tests/test_session_faults.py).
The same rig's stream, killed for good, is lost: the run ends cleanly, or goes on flagged.

Another session runs as ``closedloop run`` and is killed with SIGKILL after ``KILL_AFTER``
responses: the processes it started must end with it, and ``closedloop resume`` must remove the
records the kill cut mid-write and finish the session.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import psutil
import pylsl
import pytest
from scipy.stats import binom

from closedloop import session as session_module
from closedloop.stimuli.candidates import candidate_pool, split_pool
from closedloop.config import load_protocol, load_rig
from closedloop.present.geometry import Layout
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
SESSION = "session"  # the session directory's name: its id, which the acquisition serves
LOST_AT = 16  # presentations shown before the acquisition is killed for good
LOST_PRESENTATIONS = 80
STALL_AFTER, LOST_AFTER = 0.5, 1.5  # s of silence before a gap, and before the stream is lost


def _capture(patch: pytest.MonkeyPatch, name: str) -> list:
    """Every object that ``closedloop.session.<name>(...)`` makes from now on, in order."""
    made, make = [], getattr(session_module, name)

    def recording(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    patch.setattr(session_module, name, recording)
    return made


class Acquisition:
    """A real rig (``rig.toml``, three units) whose acquisition system is ``closedloop simulate``
    serving session ``SESSION`` (``sim.toml``), started and killed by the test."""

    def __init__(self, tmp, sim_files, protocol_path, rig_extra: str = "", spikes_extra: str = ""):
        self.tmp = tmp
        sim_files.rig(tmp / "sim.toml", f"cltest-acquired-{uuid.uuid4().hex[:8]}")
        text = "resolve_timeout = 120.0\n" + rig_extra + (tmp / "sim.toml").read_text()
        text = text.replace('type = "Spikes"\n', 'type = "Spikes"\n' + spikes_extra)
        (tmp / "sim.toml").write_text(text)
        units = "".join(f'[[units]]\nname = "{name}"\nchannel = {k + 1}\nunit = 1\n'
                        for k, name in enumerate(("curvature", "dot", "orientation")))
        real = text.replace("simulated = true", "simulated = false").replace(
            'type = "Spikes"\n', f'type = "Spikes"\nsource_id = "closedloop-spikes-{SESSION}"\n')
        (tmp / "rig.toml").write_text(real.replace("[simulation]", units + "[simulation]"))
        self.protocol, self.rig = load_protocol(protocol_path), load_rig(tmp / "rig.toml")
        layout = Layout.of(self.rig.display, self.protocol.stimulus, self.protocol.trial)
        candidate_pool(self.protocol, layout.patch_px).save(tmp / "pool.npz")  # the session's pool
        self.processes: list[subprocess.Popen] = []
        self.start()

    def start(self) -> None:
        with open(self.tmp / "acquisition.log", "ab") as log:
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "closedloop", "simulate", "--rig", self.tmp / "sim.toml", "--stimuli",
                 self.tmp / "pool.npz", "--session-id", SESSION], stdout=log, stderr=subprocess.STDOUT))

    def kill(self) -> None:
        self.processes[-1].kill()
        self.processes[-1].wait()

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def disturbed(tmp_path_factory, sim_files, wait_until):
    """The disturbed session: (summary, record, held-out pool indices)."""
    tmp = tmp_path_factory.mktemp("disturbed")
    sim_files.protocol(tmp / "protocol.toml", PRESENTATIONS)
    text = (tmp / "protocol.toml").read_text()
    for old, new in ((f"batch = {BATCH}\n", f"batch = {BATCH}\ncontrol_fraction = {CONTROL_FRACTION}\n"),
                     ("[stimulus]", f"[window]\nend = {WINDOW_END}\n[stimulus]")):
        assert old in text
        text = text.replace(old, new)
    (tmp / "protocol.toml").write_text(text)
    acquisition = Acquisition(tmp, sim_files, tmp / "protocol.toml")
    protocol, rig, session = acquisition.protocol, acquisition.rig, tmp / SESSION

    with pytest.MonkeyPatch.context() as patch:
        workers, inlets = (_capture(patch, name) for name in ("ModelWorker", "SpikeInlet"))

        def disturb(progress: session_module.Progress) -> None:
            if progress.presented == FREEZE:
                worker = psutil.Process(workers[0].process.pid)
                worker.suspend()
                wait_until(lambda: worker.status() == psutil.STATUS_STOPPED,
                           "the model worker stops", timeout=STREAM_WAIT)
            elif progress.presented == THAW:
                psutil.Process(workers[0].process.pid).resume()
            elif progress.presented == CUT:
                acquisition.kill()
                wait_until(lambda: inlets[0].in_gap_since is not None,
                           "the loop declares the stream gone", timeout=STREAM_WAIT)
                acquisition.start()
                wait_until(lambda: inlets[0].gaps or inlets[0].error is not None,
                           "the spike stream returns", timeout=STREAM_WAIT)
                assert inlets[0].error is None, f"the spike inlet failed: {inlets[0].error!r}"
                wait_until(lambda: progress.gap_responses > 0,
                           "the cut windows are handled", timeout=STREAM_WAIT)

        try:
            summary = session_module.run_session(protocol, rig, session, on_progress=disturb)
        finally:
            if workers and workers[0].process.is_alive():
                psutil.Process(workers[0].process.pid).resume()
            acquisition.close()
    record = read_session(session)
    _, heldout = split_pool(len(record.pool), protocol.heldout.images, protocol.protocol.seed)
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


@pytest.fixture(scope="module", params=["end", "flag"])
def lost(request, tmp_path_factory, sim_files):
    """A session whose acquisition is killed for good after ``LOST_AT`` presentations, with
    ``[spikes] on_lost`` = the param: (on_lost, summary, record, local time of the kill)."""
    tmp = tmp_path_factory.mktemp(f"lost-{request.param}")
    sim_files.protocol(tmp / "protocol.toml", LOST_PRESENTATIONS)
    acquisition = Acquisition(tmp, sim_files, tmp / "protocol.toml", rig_extra=f"stall_after = {STALL_AFTER}\n",
                              spikes_extra=f'lost_after = {LOST_AFTER}\non_lost = "{request.param}"\n')
    killed = []

    def kill(progress: session_module.Progress) -> None:
        if progress.presented == LOST_AT and not killed:
            acquisition.kill()
            killed.append(pylsl.local_clock())

    try:
        summary = session_module.run_session(acquisition.protocol, acquisition.rig, tmp / SESSION, on_progress=kill)
    finally:
        acquisition.close()
    return request.param, summary, read_session(tmp / SESSION), killed[0]


def test_a_lost_stream_ends_the_run_cleanly_or_flags_every_window(lost):
    on_lost, summary, record, killed = lost
    assert summary["spike_stream"] == "lost" and summary == record.summary
    (event,) = [e for e in record.events if e["kind"] == "spike_stream_lost"]
    assert event["on_lost"] == on_lost and killed - 0.1 < event["since"] < killed
    assert event["time"] - event["since"] >= LOST_AFTER
    window = record.protocol["window"]
    assert all(not r.get("gap") for r in record.responses if r["onset"] + window["end"] < event["since"])
    if on_lost == "end":  # ended within a trial of the loss, the windows the silence cut left open
        assert summary["status"] == "stream_lost" and summary["presentations"] == len(record.markers)
        assert len(record.markers) < LOST_PRESENTATIONS and max(m["onset"] for m in record.markers) < \
            event["time"] + 1.0
        assert not any(r.get("gap") for r in record.responses)
    else:  # presentation went on; every window the silence touched is flagged
        assert summary["status"] == "complete" and len(record.markers) == LOST_PRESENTATIONS
        assert {r["index"] for r in record.responses} == {m["index"] for m in record.markers}
        assert all(r.get("gap") for r in record.responses if r["onset"] + window["end"] > event["since"])
        assert summary["gap_responses"] >= LOST_PRESENTATIONS - LOST_AT - 2


@pytest.fixture(scope="module")
def killed(tmp_path_factory, sim_files, wait_until, processes):
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
    lingering = processes.left_after(children, EXIT_DEADLINE)
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
    in_flight = [m["pool_index"] for m in before.markers
                 if m["index"] in resumed["unanswered"] and m["role"] != "heldout"]
    requeued = [m["pool_index"] for m in after.markers[len(before.markers):] if m["role"] == "requeued"]
    assert requeued[:len(in_flight)] == in_flight  # shown again first
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
    assert "nothing to resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
