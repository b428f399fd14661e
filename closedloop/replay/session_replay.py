"""Replay: a recording through the live loop's own alignment, model worker and strategy.

Spikes and onsets go through :class:`closedloop.align.windows.ResponseAligner`
in time order, as the ingestion thread feeds it live; the counted responses go
through the model worker's :class:`closedloop.learn.worker.WorkerState`, in this
thread, as fast as the machine allows.

Two pacings:

* **recorded** (a session directory whose decisions log ``received`` and
  ``core_version``): the responses are handed over in the live batches and
  learner refreshes are swapped in at the live steps, so every decision is
  made again exactly (see the reproducibility contract in
  ``closedloop.learn.worker``); fine-tuned cores are read from the session's
  ``cores/`` instead of being trained again. Each decision is checked against
  the log, and so is each accuracy report.
* **cadence** (any other recording, or when asked): a decision every
  ``every`` responses, refreshes swapped in every ``refresh_every``
  responses, an accuracy report every ``accuracy_every``. This is the fast
  mode: it does not reproduce live decisions, and it fine-tunes cores itself.
  ``bench/replay_speed.py`` measures both.

With an alternative strategy, each decision also asks it what it would have
chosen in the same context (its own random stream; stimuli it synthesises go
to a scratch copy of the pool), and a :class:`closedloop.replay.twin.Twin`
fitted to the whole recording scores both choices.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from closedloop.align.windows import ResponseAligner
from closedloop.errors import ClosedLoopError
from closedloop.learn.worker import (ACCURACY_EVERY, Accuracy, Choice, Message, Response, Stopped, WorkerConfig,
                                     WorkerState, cores_folder)
from closedloop.record.session import ADDED
from closedloop.replay.sources import ReplaySource
from closedloop.replay.twin import Twin
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext, Strategy
from closedloop.stimuli import StimulusPool

ALTERNATIVE_STREAM = 7  # the alternative strategy draws from default_rng(seed + 7)
REPLAYABLE = ("received", "core_version", "cores_trained_on", "responses")  # what a decision logs to be made again


@dataclass(frozen=True)
class Cadence:
    """The fast pacing: a decision every ``every`` responses, the learner's refresh in flight
    swapped in every ``refresh_every`` responses, an accuracy report every ``accuracy_every``
    (live: 10)."""

    every: int
    refresh_every: int
    accuracy_every: int = ACCURACY_EVERY

    @classmethod
    def of(cls, source: ReplaySource, every: int | None, refresh_every: int,
           accuracy_every: int = ACCURACY_EVERY) -> Cadence | None:
        """The pacing asked for; None (the recorded decisions) when ``every`` is None and ``source``
        logged decisions; a recording without them is paced by its protocol's ``selection.batch``."""
        if every is None and not source.selections:
            every = source.protocol.selection.batch
        return None if every is None else cls(every, refresh_every, accuracy_every)


def align(source: ReplaySource) -> list[dict]:
    """Every presentation's counts, through the live aligner, in the order its windows close.

    Onsets, photodiode lights and spikes are fed in time order and the aligner
    is asked at each window's end, so it holds seconds of spikes, not hours.
    Returns ``index``, ``onset``, ``counts`` (ndarray), ``pool_index``,
    ``role``, ``aborted`` and ``gap`` per presentation.
    """
    window = source.protocol.window
    aligner = ResponseAligner([(u.channel, u.unit) for u in source.units], window.start, window.end,
                              source.light_window)
    for start, end in source.gaps:
        aligner.add_gap(start, end)
    times, spikes = source.spikes["time"], source.spikes
    lights = np.sort(source.lights)
    onsets = [p["onset"] for p in source.presentations] + [math.inf]
    done, fed, lit = [], 0, 0
    for k, p in enumerate(source.presentations):
        aligner.add_onset(p["index"], p["onset"], {key: p[key] for key in ("pool_index", "role", "aborted")})
        while lit < len(lights) and lights[lit] < onsets[k + 1]:
            aligner.add_light(float(lights[lit]))
            lit += 1
        now = p["onset"] + window.end
        upto = int(np.searchsorted(times, now))
        aligner.add_spikes(times[fed:upto], spikes["channel"][fed:upto], spikes["unit"][fed:upto])
        fed = upto
        done += aligner.complete(now)
    aligner.add_spikes(times[fed:], spikes["channel"][fed:], spikes["unit"][fed:])
    done += aligner.complete(math.inf)
    return [{"index": r.index, "onset": r.onset, "counts": r.counts, "gap": bool(r.info.get("gap")),
             **{key: r.info[key] for key in ("pool_index", "role", "aborted")}} for r in done]


class _Run:
    """One replay's state: the worker state of the current lifetime, what was decided and logged.

    ``alternative`` (built once) is copied afresh for every lifetime, as the session's strategy is.
    """

    def __init__(self, source: ReplaySource, config: WorkerConfig, alternative: Strategy | None):
        self.source, self.config = source, config
        self.alternative_strategy = alternative
        self.decisions: list[dict] = []  # one record per replayed decision
        self.accuracy: list[dict] = []  # replayed accuracy reports
        self.alternative_images: dict[int, np.ndarray] = {}  # decision -> images the alternative synthesised
        self.state: WorkerState | None = None
        self.alternative: Strategy | None = None
        self.seconds = {"model": 0.0, "selection": 0.0, "alternative": 0.0, "refresh": 0.0}

    def start(self, recorded: Path | None = None) -> None:
        """A new worker lifetime: a fresh worker state (and alternative), and its first decision;
        fine-tuned cores are read from ``recorded`` when given."""
        if self.state is not None:
            self.close()
        self.state = WorkerState(dataclasses.replace(self.config, recorded=recorded), background=False)
        self.state.on_decision = self._decided
        if self.alternative_strategy is not None:
            self.alternative = copy.deepcopy(self.alternative_strategy)
            self.alternative_rng = np.random.default_rng(self.config.seed + ALTERNATIVE_STREAM)
        started = time.perf_counter()
        self.state.begin(self._send)
        self.seconds["model"] += time.perf_counter() - started

    def step(self, batch: list[Response], swap: bool) -> None:
        if self.alternative is not None:
            for r in batch:
                if not r.heldout:
                    self.alternative.observe(r.pool_index, r.counts)
        started = time.perf_counter()
        self.state.step(batch, self._send, swap=swap)
        self.seconds["model"] += time.perf_counter() - started

    def close(self, finish: bool = False) -> None:
        """End the lifetime: with ``finish``, as the worker stops (its last accuracy report)."""
        if finish:
            self.state.finish(self._send)
        else:
            self.state.learner.close()
        self.seconds["refresh"] += self.state.learner.refresh_seconds

    def _send(self, message: Message) -> None:
        if isinstance(message, Accuracy):
            self.accuracy.append(message.record())
        elif isinstance(message, Stopped):
            self.accuracy.append(message.accuracy.record())
        elif isinstance(message, Choice):
            self.seconds["selection"] += message.choose_ms / 1000.0
            self.seconds["model"] -= message.choose_ms / 1000.0

    def _decided(self, context: SelectionContext, choice: Choice) -> None:
        record = {"decision": len(self.decisions),
                  **{k: getattr(choice, k) for k in ("strategy", "received", "responses", "core_version",
                                                      "cores_trained_on", "chosen")}}
        if self.alternative is not None and choice.strategy == self.config.strategy.name:
            started = time.perf_counter()
            record["alternative"] = self._ask_alternative(context, record["decision"])
            asking = time.perf_counter() - started
            self.seconds["alternative"] += asking
            self.seconds["model"] -= asking  # it ran inside the worker's step
        self.decisions.append(record)

    def _ask_alternative(self, context: SelectionContext, decision: int) -> list[int]:
        """What the alternative strategy chooses in ``context``, leaving the learner untouched: its
        new images go to a scratch pool, and the learner's stream of posterior draws (members come
        from it) is put back as it was."""
        scratch = _scratch(context.pool)
        asked = dataclasses.replace(context, pool=scratch, add_images=scratch.append)
        with self.state.learner.draws_kept(), torch.random.fork_rng():  # torch's stream too
            chosen, _ = self.alternative.choose(asked, self.config.selection.batch, self.alternative_rng)
        added = chosen[chosen >= len(context.pool)]
        if len(added):
            self.alternative_images[decision] = scratch.images[added]
        return chosen.tolist()


def _scratch(pool: StimulusPool) -> StimulusPool:
    """A copy of ``pool`` that can grow without touching it (the images array is shared)."""
    return copy.deepcopy(pool, memo={id(pool.images): pool.images})


def replay(source: ReplaySource, out: Path, strategy: str | None = None, seed: int | None = None,
           cadence: Cadence | None = None, twin_epochs: int = 20) -> dict:
    """Replay ``source`` and write ``replay.json`` and ``decisions.jsonl`` to ``out``.

    Parameters
    ----------
    source : ReplaySource
        What :func:`closedloop.replay.sources.open_source` read.
    out : Path
        Folder for the report (created; files in it are replaced).
    strategy : str, optional
        An alternative strategy to ask at every decision the session's
        strategy made (not during warm-up), scored by a digital twin.
    seed : int, optional
        Seed of the model and strategy streams (default: the session's; the
        held-out split stays the session's). With another seed, cores are
        fine-tuned again instead of read from the session's ``cores/``.
    cadence : Cadence, optional
        Pace by rule (fast; decisions are not reproduced). Required for a
        source without a decision log that has ``received`` counts.
    twin_epochs : int
        Passes over the responses when fitting the twin.

    Returns
    -------
    dict
        The report (also ``out/replay.json``); see the keys it holds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = source.protocol
    units = [u.name for u in source.units]
    alternative = None
    if strategy is not None:
        alternative = make_strategy(strategy, protocol.selection.params if strategy == protocol.selection.strategy
                                    else {})
        alternative.check(units, source.pool)
    recorded = cadence is None
    lacking = next((k for s in source.selections for k in REPLAYABLE if k not in s), None)
    if recorded and (not source.selections or lacking):
        what = "has no logged decisions" if not source.selections else "logged its decisions without " \
            f"{lacking!r} counts (before decisions were replayable)"
        raise ClosedLoopError(f"{source.source}: {what}; replay it at a cadence (--every N)")
    pool_path = source.pool_path
    if pool_path is None:
        pool_path = out / "stimuli.npz"
        source.pool.save(pool_path)
    session_seed = protocol.protocol.seed
    added = out / ADDED  # what the replay's strategy synthesises: a resumed lifetime starts with it, as live
    shutil.rmtree(added, ignore_errors=True)
    config = WorkerConfig(pool_path=pool_path, units=tuple(units), model=protocol.model,
                          selection=protocol.selection,
                          strategy=make_strategy(protocol.selection.strategy, protocol.selection.params),
                          candidates=tuple(source.candidates.tolist()), heldout=tuple(source.heldout.tolist()),
                          seed=session_seed if seed is None else seed, truth=source.truth, added=added,
                          accuracy_every=cadence.accuracy_every if cadence else ACCURACY_EVERY)
    # The session's fine-tuned cores, when the replay would make the same ones.
    session = source.source if recorded and source.source.is_dir() and config.seed == session_seed else None

    started = time.perf_counter()
    counted = align(source)
    align_s = time.perf_counter() - started
    responses, notes = _live_order(source, counted)
    run = _Run(source, config, alternative)
    with threadpool_limits(protocol.model.threads):  # as the worker runs: the same sums, bit for bit
        if recorded:
            check = _replay_recorded(run, source, responses, notes, session)
        else:
            check = _replay_at_cadence(run, responses, cadence)
    total_s = time.perf_counter() - started

    report = {
        "source": str(source.source), "pacing": "recorded" if recorded else dataclasses.asdict(cadence),
        "seed": config.seed, "strategy": protocol.selection.strategy, "units": units,
        "presentations": len(source.presentations), "responses": len(responses),
        "trained_on": sum(not r["heldout"] for r in responses),
        "decisions": len(run.decisions), **check,
        "accuracy": run.accuracy[-1] if run.accuracy else None,
        "session_s": round(source.duration, 3),
        "seconds": {"total": round(total_s, 3), "alignment": round(align_s, 3),
                    **{k: round(v, 3) for k, v in run.seconds.items()}},
        "speed": round(source.duration / total_s, 2) if total_s else None,
        "notes": source.notes + notes,
    }
    if strategy is not None:
        started = time.perf_counter()
        report["alternative"] = _compare(run, responses, strategy, twin_epochs)
        report["seconds"]["twin"] = round(time.perf_counter() - started, 3)
    (out / "decisions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in run.decisions))
    (out / "replay.json").write_text(json.dumps(report, indent=2))
    return report


def _live_order(source: ReplaySource, counted: list[dict]) -> tuple[list[dict], list[str]]:
    """The recounted responses in the order the live loop handed them on (a session's
    ``responses.jsonl``; else as the windows closed), with ``heldout`` and ``sent`` (not cut
    by a gap or a fixation break, the stimulus in the pool); notes on recounts that differ."""
    notes = []
    if source.responses is None:
        ordered = counted
    else:
        by_index = {r["index"]: r for r in counted}
        ordered, differ = [], 0
        for logged in source.responses:
            r = {**by_index[logged["index"]], "gap": bool(logged.get("gap"))}  # the live flags decide
            differ += r["counts"].tolist() != logged["counts"]
            ordered.append(r)
        if differ:
            notes.append(f"{differ} responses recounted from spikes.bin differ from responses.jsonl")
    return [{**r, "heldout": r["role"] == "heldout",
             "sent": not (r["gap"] or r["aborted"]) and r["pool_index"] is not None} for r in ordered], notes


def _feed(responses: list[dict]) -> list[Response]:
    """The responses the worker got, as it got them (not timed: ``completed_at`` is NaN)."""
    return [Response(r["pool_index"], r["counts"], r["heldout"], math.nan) for r in responses if r["sent"]]


def _replay_recorded(run: _Run, source: ReplaySource, responses: list[dict], notes: list[str],
                     session: Path | None) -> dict:
    """Each worker lifetime (one, plus one per resume) with its logged batches and swaps; fine-tuned
    cores are read from ``session``'s :func:`~closedloop.learn.worker.cores_folder` when given."""
    lifetimes = [k for k, s in enumerate(source.selections) if s["received"] == 0] + [len(source.selections)]
    if len(lifetimes) - 1 != len(source.resumes) + 1:
        raise ClosedLoopError(f"session {source.source}: selections.jsonl shows {len(lifetimes) - 1} model worker "
                              f"runs, events.jsonl {len(source.resumes)} resumes")
    starts = source.resumes + [math.inf]
    reproduced, divergence = 0, None
    for life, (first, end) in enumerate(zip(lifetimes, lifetimes[1:])):
        lo, hi = (starts[life - 1] if life else -math.inf), starts[life]
        feed = _feed([r for r in responses if lo <= r["index"] < hi])
        if life:  # a resumed worker first learns every recorded response, as the loop sends them
            feed = _feed([r for r in responses if r["index"] < lo]) + feed
        run.start(None if session is None else cores_folder(session, life))
        for logged in source.selections[first:end]:
            if logged["received"] > len(feed):
                notes.append(f"decisions after {len(feed)} responses are not replayed: their responses "
                             "are not in responses.jsonl (the run was cut short)")
                break
            if logged["received"]:  # the first decision of a lifetime comes before any response
                behind = logged["core_version"] - run.state.learner.core_version
                run.step(feed[run.state.received:logged["received"]], swap=behind > 0)
            made = run.decisions[-1]
            same = all(made[k] == logged[k] for k in ("chosen", "core_version", "cores_trained_on", "responses"))
            made["logged_chosen"], made["reproduced"] = logged["chosen"], same
            reproduced += same
            if not same and divergence is None:
                divergence = made["decision"]
        last = life == len(lifetimes) - 2
        if last and source.complete and run.state.received < len(feed):
            notes.append(f"{len(feed) - run.state.received} responses after the last logged decision")
        run.close(finish=last and source.complete)
    compared = len(source.accuracy) if len(lifetimes) == 2 else 0  # reports carry no lifetime mark
    equal = sum(_same_report(a, b) for a, b in zip(run.accuracy, source.accuracy[:compared]))
    return {"logged_decisions": len(source.selections), "reproduced": reproduced, "first_divergence": divergence,
            "accuracy_reports": {"logged": len(source.accuracy), "replayed": len(run.accuracy),
                                 "compared": min(compared, len(run.accuracy)), "equal": equal}}


def _same_report(replayed: dict, logged: dict) -> bool:
    return all(replayed.get(k) == logged.get(k) for k in ("responses", "core_version", "r_observed", "r_true"))


def _replay_at_cadence(run: _Run, responses: list[dict], cadence: Cadence) -> dict:
    feed = _feed(responses)
    run.start()
    swapped_at = 0
    for start in range(0, len(feed), cadence.every):
        batch = feed[start:start + cadence.every]
        swap = run.state.learner.refreshing and start + len(batch) - swapped_at >= cadence.refresh_every
        swapped_at = start + len(batch) if swap else swapped_at
        run.step(batch, swap=swap)
    run.close(finish=True)
    return {}


def _compare(run: _Run, responses: list[dict], strategy: str, epochs: int) -> dict:
    """The twin's predicted response to the online choice and to the alternative's, per decision
    (written into the decision records) and in total."""
    trained = [(r["pool_index"], r["counts"]) for r in responses if r["sent"] and not r["heldout"]]
    if not trained:
        raise ClosedLoopError(f"{run.source.source}: no trained-on responses to fit a digital twin to")
    heldout = [(r["pool_index"], r["counts"]) for r in responses if r["sent"] and r["heldout"]]
    pool = run.state.pool
    twin = Twin(pool.images, trained, run.config.model, run.config.seed, epochs, heldout)
    online, alternative, same = [], [], []
    for d in run.decisions:
        if "alternative" not in d:
            continue
        mine = np.array(d["alternative"])
        known = mine[mine < len(pool)]
        predicted = twin.predict(known)
        if d["decision"] in run.alternative_images:
            predicted = np.concatenate([predicted, twin.predict_images(run.alternative_images[d["decision"]])], axis=1)
        theirs = twin.predict(d["chosen"]).mean(axis=1)
        d["twin_online"], d["twin_alternative"] = theirs.tolist(), predicted.mean(axis=1).tolist()
        online.append(theirs)
        alternative.append(predicted.mean(axis=1))
        same.append(len(set(d["chosen"]) & set(d["alternative"])) / max(len(d["chosen"]), 1))
    summary = {"strategy": strategy, "decisions": len(online),
               "twin": {"trained_on": twin.trained_on, "epochs": twin.epochs,
                        "heldout": twin.heldout_accuracy(heldout)}}
    if online:
        online_mean, alternative_mean = np.mean(online, axis=0), np.mean(alternative, axis=0)
        summary.update(online_per_unit=online_mean.tolist(), alternative_per_unit=alternative_mean.tolist(),
                       online=float(online_mean.mean()), alternative=float(alternative_mean.mean()),
                       alternative_higher=float(np.mean([a.mean() > o.mean() for a, o in zip(alternative, online)])),
                       overlap=float(np.mean(same)))
    return summary
