"""Selection turnaround: from a response window closing to the next images chosen.

For each response this times exactly what the model worker does on the choice path, with the
loop's own parts, inside :meth:`OnlineLearner.choosing` as the worker: :meth:`OnlineLearner.swap`
(a finished refresh), :meth:`OnlineLearner.learn` (one Woodbury step, which also updates the latent
mean and variance of every pool image), then :meth:`SelectionPolicy.decide`: every allowed candidate rescored
(predictive mean and variance, :meth:`OnlineLearner.predictive`) and the next batch chosen by the
strategy (default ``disagreement``). Refreshes (evidence refits, and the core's fine-tuning every
``finetune_every`` responses) run in the learner's background thread meanwhile, as live. Each
response is to an image the previous decision chose (Poisson counts at about 2.4 spikes), and
responses arrive every ``--interval`` seconds (default 25 ms: 40 responses/s, several times a rig's
rate of about 6-10), as the worker waits on its queue between them; only the work is timed.

For information, the same path with ``info_gain``, which needs posterior draws (members x units x
candidates expected counts, :meth:`OnlineLearner.predictions`), over fewer responses.

Baselines, measured in the same run: today's learner (the bootstrap ensemble of compact CNNs this
learner replaced, by the script of commit ``--today``, run from a git worktree: readouts refitted
by gradient steps and the pool rescored per response), and, on the same responses, this learner
without rank-one updates: per response a batch :func:`closedloop.learn.readout.fit` on every
response so far (the evidence search over the ridge) and the whole pool rescored from that
posterior, then the same policy decision. The next refresh starts after each choice, untimed, as
in the worker.

With ``--learners N`` it times instead, end to end as the session sees it, the model worker as a
child process and as a Ray actor (local Ray, or the cluster at ``--ray-address``: the learner on
another host), one after the other in the same run on the same responses: from a response handed
on (:meth:`~closedloop.learn.worker.Worker.send_response`) to its decision in
:meth:`~closedloop.learn.worker.Worker.messages` (polled every 0.2 ms), for ``N`` responses after
``--before`` untimed ones, one response at a time every ``--interval`` s; it prints each one's
median and p99 and the actor's median over the process's.

    python bench/selection_turnaround.py --neurons 96 --candidates 10000 --json turnaround.json
    python bench/selection_turnaround.py --neurons 96 --candidates 2000 --learners 300 [--ray-address ray://gpu:10001]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pylsl
import torch
from threadpoolctl import threadpool_limits

from closedloop.config import LearnerSpec, ModelSpec, SelectionSpec
from closedloop.learn import OnlineLearner
from closedloop.learn.worker import Choice, ModelWorker, Worker, WorkerConfig
from closedloop.learn.readout import count_variance, expected_counts, fit, stabilise, with_intercept
from closedloop.select.policy import SelectionPolicy
from closedloop.select.registry import make_strategy
from closedloop.stimuli import generate_pool
from today import TODAY, numbers, run_at  # bench/today.py


class RefitEverything:
    """The baseline predictor: the readouts fitted afresh on every response so far, the pool
    rescored from that posterior (what each response costs without Woodbury steps)."""

    def __init__(self, features: np.ndarray):
        self.x = with_intercept(features).astype(np.float32)
        self.mean = self.variance = None

    def refit(self, index: np.ndarray, counts: np.ndarray) -> None:
        posterior = fit(self.x[index].astype(np.float64), stabilise(counts))
        mu = self.x @ posterior.M.astype(np.float32)  # (K, units)
        v = np.maximum(((self.x @ posterior.S.astype(np.float32)) * self.x).sum(1), 0.0)  # (K,)
        tau2 = posterior.noise.astype(np.float32)[:, None] * v[None, :]
        self.mean = expected_counts(mu.T, tau2, posterior.noise.astype(np.float32)[:, None])
        self.variance = count_variance(mu.T, tau2)

    def predictive(self, index=None):
        return (self.mean, self.variance) if index is None else (self.mean[:, index], self.variance[:, index])


def stats(times: list[float]) -> dict:
    times = np.asarray(times)
    return {"responses": len(times), "median_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)),
            "max_ms": float(times.max())}


def through(worker: Worker, rates: np.ndarray, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Round trips (ms) from a response handed on to its decision seen in ``worker.messages()``, and
    the decisions' own ``turnaround_ms``, over ``args.learners`` responses after ``args.before``;
    each response is to an image the decision before chose (seeded: the same for every worker)."""
    rng = np.random.default_rng(1)

    def decision(received: int) -> Choice:
        while True:
            choice = next((m for m in worker.messages() if isinstance(m, Choice) and m.received == received), None)
            if choice is not None:
                return choice
            worker.check_alive()
            time.sleep(0.0002)

    worker.start()
    try:
        chosen, trips, turnarounds = list(decision(0).chosen), [], []
        for n in range(args.before + args.learners):
            index = chosen.pop(0) if chosen else int(rng.integers(len(rates)))
            started = time.perf_counter()
            worker.send_response(index, rng.poisson(rates[index]), False, pylsl.local_clock())
            choice = decision(n + 1)
            trip = (time.perf_counter() - started) * 1e3
            chosen = list(choice.chosen)
            if n >= args.before:
                trips.append(trip)
                turnarounds.append(choice.turnaround_ms)
            time.sleep(max(0.0, args.interval - trip / 1e3))
    finally:
        worker.stop()
    return trips, turnarounds


def learners(args: argparse.Namespace, pool, spec: ModelSpec) -> dict:
    """The model worker as a process and as a Ray actor, timed end to end on the same responses."""
    from closedloop.cluster import connect
    from closedloop.learn.remote import RayWorker

    print(f"Ray: {connect(args.ray_address)}")
    heldout = 30
    rates = np.random.default_rng(0).gamma(2.0, 1.2, (len(pool), args.neurons))  # about 2.4 spikes per window
    selection = SelectionSpec(strategy=args.strategy, batch=args.batch, warmup=0, no_repeat=args.no_repeat)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pool.save(Path(tmp) / "stimuli.npz")
        for name in ("process", "ray"):
            folder = Path(tmp) / name
            config = WorkerConfig(pool_path=Path(tmp) / "stimuli.npz", units=tuple(f"unit{i}" for i in range(args.neurons)),
                                  model=spec, selection=selection, strategy=make_strategy(args.strategy),
                                  candidates=tuple(range(heldout, len(pool))), heldout=tuple(range(heldout)), seed=0,
                                  checkpoints=folder / "checkpoints", cores=folder / "cores")
            worker = ModelWorker(config) if name == "process" else \
                RayWorker(config, folder, LearnerSpec(where="ray", address=args.ray_address))
            trips, turnarounds = through(worker, rates, args)
            results[name] = {**stats(trips), "where": worker.where,
                             "turnaround_ms_median": float(np.median(turnarounds))}
            print(f"{name}: over {len(trips)} responses, handed on to decision seen: median "
                  f"{results[name]['median_ms']:.2f} ms, p99 {results[name]['p99_ms']:.2f} ms (decisions' own "
                  f"turnaround_ms: median {results[name]['turnaround_ms_median']:.2f} ms)")
    ratio = results["ray"]["median_ms"] / results["process"]["median_ms"]
    print(f"Ray actor over process: median {ratio:.2f}x (+{results['ray']['median_ms'] - results['process']['median_ms']:.2f} "
          f"ms), p99 {results['ray']['p99_ms'] / results['process']['p99_ms']:.2f}x")
    return {**results, "ratio_median": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=96)
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--responses", type=int, default=400, help="responses timed")
    parser.add_argument("--before", type=int, default=50, help="responses learned before timing starts")
    parser.add_argument("--info-responses", type=int, default=20, help="responses timed with info_gain")
    parser.add_argument("--baseline-responses", type=int, default=20, help="responses timed for the baseline")
    parser.add_argument("--strategy", default="disagreement")
    parser.add_argument("--interval", type=float, default=0.025, help="s from one response to the next")
    parser.add_argument("--finetune-every", type=int, default=None, help="responses between the core's "
                        "background fine-tunings (0: never) [default: the learner's]")
    parser.add_argument("--batch", type=int, default=4, help="images per decision")
    parser.add_argument("--no-repeat", type=int, default=50)
    parser.add_argument("--today", default=TODAY, help="commit whose learner is today's baseline ('': skip it)")
    parser.add_argument("--today-responses", type=int, default=50, help="responses timed for today's learner")
    parser.add_argument("--learners", type=int, default=0, help="responses timed through the model worker as a "
                        "process and as a Ray actor, instead of the rest (0: the rest)")
    parser.add_argument("--ray-address", default=None, help="with --learners: the Ray cluster (default: a local Ray)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    per_family = args.candidates // 4 + 1
    t = time.perf_counter()
    pool = generate_pool({"contour": per_family, "dot": per_family, "grating": per_family,
                          "texture": per_family}, 112, seed=0)
    pool.images = pool.images[:args.candidates]
    pool.families, pool.params, pool.ids = (pool.families[:args.candidates], pool.params[:args.candidates],
                                            pool.ids[:args.candidates])
    units = tuple(f"unit{i}" for i in range(args.neurons))
    candidates = np.arange(len(pool))
    print(f"pool: {len(pool)} candidates rendered in {time.perf_counter() - t:.1f} s; {args.neurons} neurons")

    spec = ModelSpec() if args.finetune_every is None else ModelSpec(finetune_every=args.finetune_every)
    if args.learners:
        result = learners(args, pool, spec)
        if args.json is not None:
            args.json.write_text(json.dumps({"neurons": args.neurons, "candidates": len(pool), "strategy": args.strategy,
                                             "batch": args.batch, "interval_s": args.interval, **result}, indent=1))
        return
    t = time.perf_counter()
    learner = OnlineLearner(pool.images, args.neurons, spec, seed=0, background=True)
    print(f"learner: {learner.core.name}, {learner.projection.dims} dims, fine-tuned every {spec.finetune_every} "
          f"responses (0: never), features in {time.perf_counter() - t:.1f} s")
    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 1.2, (len(pool), args.neurons))  # about 2.4 spikes per window

    def session(strategy: str, responses: int, learner: OnlineLearner, baseline: RefitEverything | None = None):
        policy = SelectionPolicy(make_strategy(strategy), learner if baseline is None else baseline, pool,
                                 candidates, units, args.batch, warmup=0, no_repeat=args.no_repeat, seed=1)
        shown, counts, times = [], [], []
        queue = list(rng.choice(len(pool), args.before, replace=False))
        for n in range(args.before + responses):
            index = queue.pop(0) if queue else int(rng.integers(len(pool)))
            count = rng.poisson(rates[index]).astype(float)
            start = time.perf_counter()
            with learner.choosing():  # as the worker does: the background refresh waits meanwhile
                if baseline is None:
                    learner.swap()
                    learner.learn(np.array([index]), count[None])
                else:
                    baseline.refit(np.array(shown + [index]), np.array(counts + [count]))
                policy.observe(index, count)
                if n >= args.before - 1:
                    decision = policy.decide(len(shown) + 1)
                    queue = list(decision.chosen)
            elapsed = (time.perf_counter() - start) * 1e3
            if baseline is None:
                learner.refresh()  # after the choice, as the worker starts the next refresh
            shown.append(int(index))
            counts.append(count)
            if n >= args.before:
                times.append(elapsed)
            time.sleep(max(0.0, args.interval - elapsed / 1e3))  # the worker waits for the next response
        return times

    with threadpool_limits(1):
        times = session(args.strategy, args.responses, learner)
        swapped = learner.core_version
        learner.close()
        main_stats = {**stats(times), "refreshes_swapped": swapped, "finetunes": len(learner.comparisons)}
        print(f"{args.strategy}: over {len(times)} responses ({swapped} refreshes swapped in): "
              f"median {main_stats['median_ms']:.2f} ms, p99 {main_stats['p99_ms']:.2f} ms")

        info = OnlineLearner(pool.images, args.neurons, spec, seed=0, background=True)
        info_times = session("info_gain", args.info_responses, info)
        info.close()
        info_stats = stats(info_times)
        print(f"info_gain ({spec.members} posterior draws): over {len(info_times)} responses: median "
              f"{info_stats['median_ms']:.1f} ms, p99 {info_stats['p99_ms']:.1f} ms")

        refit = RefitEverything(learner.embedding(candidates))
        base_times = session(args.strategy, args.baseline_responses, learner, refit)
        base_stats = stats(base_times)
        print(f"baseline (refit every response from scratch, rescore the pool): over {len(base_times)} responses: "
              f"median {base_stats['median_ms']:.1f} ms, p99 {base_stats['p99_ms']:.1f} ms")
    print(f"speed-up of the median over the baseline: {base_stats['median_ms'] / main_stats['median_ms']:.0f}x")
    today = None
    if args.today:
        out = run_at(args.today, "bench/selection_turnaround.py",
                     ["--neurons", str(args.neurons), "--candidates", str(args.candidates), "--responses",
                      str(args.today_responses), "--baseline-repeats", "1", "--strategy", args.strategy])
        (median, p99), = numbers(r"median ([\d.]+) ms, p99 ([\d.]+) ms", out)
        today = {"commit": args.today, "responses": args.today_responses, "median_ms": median, "p99_ms": p99}
        print(f"today's learner (commit {args.today}, bootstrap ensemble): over {args.today_responses} responses: "
              f"median {median:.1f} ms, p99 {p99:.1f} ms; this learner's median is {median / main_stats['median_ms']:.0f}x "
              f"faster, its p99 {p99 / main_stats['p99_ms']:.0f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({"neurons": args.neurons, "candidates": len(pool), "strategy": args.strategy,
                                         "batch": args.batch, "interval_s": args.interval,
                                         "finetune_every": spec.finetune_every, **main_stats, "info_gain": info_stats,
                                         "baseline": base_stats, "today": today}, indent=1))


if __name__ == "__main__":
    main()
