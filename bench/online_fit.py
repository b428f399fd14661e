"""Online fitting on a real V4 session: held-out accuracy against trials, for a core and the baseline.

Feeds the single-trial spike counts of a real session (``responses_raw_<session>.npy``, neurons x
images x repeats, and ``images_<session>.zip``) to the loop's :class:`~closedloop.learn.OnlineLearner`
one trial at a time, as the live model worker does: ``learn`` each training trial, ``add_heldout``
each held-out trial, ``update()`` after every trial. A refresh that ``update()`` starts is run and
swapped in at once (``background=False``), so the run is reproducible; ``--background`` runs them
in the learner's thread as live instead.

Two learners see the same trials in the same run: the chosen core (``--core-kind compact
--core-path DIR [--core-match PATTERN] [--core-limit N]``, or ``--core-file F`` written by
``closedloop core build``), and the baseline, a ``scratch`` core (the compact CNN learned online
from nothing, fine-tuned in the refreshes). Today's learner (the bootstrap ensemble this learner
replaced) is measured in the same run too, by the script of commit ``--today`` run from a git
worktree on the same trials. The core may come only from other sessions' models: a compact folder holding a model
of ``--name`` is refused.

The recordings do not keep the order in which images were shown, so trials are fed repeat by
repeat (every image once, in a seeded random order, then every image again, ...). Every
``--heldout-every``-th image is held out: its trials go to ``add_heldout`` (they judge fine-tuned
cores) and are never learned. "Trials" below count the learned (training) trials. Accuracy is the
Pearson r between the learner's predicted expected counts (:meth:`predictive`) and the held-out
images' repeat means, per neuron, and the same r over the neuron's split-half reliability ceiling
(Spearman-Brown corrected): the noise-corrected accuracy.

    python bench/online_fit.py --session ../shared/v4/sessions --name 210325 --trials 1000 \\
        --core-kind compact --core-path ../shared/v4/compact_models --core-limit 8 --json fit.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from closedloop.config import CoreSpec, ModelSpec
from closedloop.learn import OnlineLearner
from closedloop.model.compact import find_published
from closedloop.stimuli.natural import load_images
from today import TODAY, numbers, run_at  # bench/today.py

CURVE = (250, 500, 1000, 2000)


def ceiling(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per neuron: the split-half correlation of repeat means, Spearman-Brown corrected (at most 1)."""
    out = []
    for counts in raw:  # (images, repeats)
        halves = [[], []]
        for row in counts:
            shown = rng.permutation(np.flatnonzero(~np.isnan(row)))
            halves[0].append(np.mean(row[shown[::2]]) if len(shown) > 1 else np.nan)
            halves[1].append(np.mean(row[shown[1::2]]) if len(shown) > 1 else np.nan)
        a, b = np.array(halves)
        ok = ~np.isnan(a) & ~np.isnan(b)
        r = np.corrcoef(a[ok], b[ok])[0, 1]
        out.append(min(1.0, 2 * r / (1 + r)) if r > 0 else np.nan)
    return np.array(out)


def heldout_r(learner: OnlineLearner, index: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per neuron: Pearson r between predicted expected counts and the repeat means ``truth``."""
    predicted = learner.predictive(index)[0]
    return np.array([np.corrcoef(p, o)[0, 1] if np.std(p) > 0 else np.nan for p, o in zip(predicted, truth)])


def run(name: str, spec: ModelSpec, images: np.ndarray, raw: np.ndarray, trials: list[tuple[int, int, bool]],
        heldout: np.ndarray, truth: np.ndarray, limit: np.ndarray, marks: list[int], seed: int,
        background: bool, cache: Path | None = None) -> dict:
    """One learner fed every trial in order; its accuracy at each of ``marks`` training trials."""
    started = time.perf_counter()
    learner = OnlineLearner(images, raw.shape[0], spec, seed=seed, background=background, cache=cache)
    setup_s = time.perf_counter() - started
    curve, step_ms, learned = [], [], 0
    print(f"{name}: {learner.core.name}; {learner.projection.dims} feature dims; set up in {setup_s:.1f} s")
    print(f"{'trials':>7} {'median r':>9} {'median r/ceiling':>17} {'core version':>13} {'step ms (median)':>17}")
    try:
        for i, k, held in trials:
            t0 = time.perf_counter()
            if held:
                learner.add_heldout(int(i), raw[:, i, k])
            else:
                learner.learn(np.array([i]), raw[None, :, i, k])
                learned += 1
            learner.update()
            if not background and learner.refreshing:
                learner.swap(wait=True)
            step_ms.append((time.perf_counter() - t0) * 1e3)
            if not held and learned in marks:
                r = heldout_r(learner, heldout, truth)
                point = {"trials": learned, "heldout_r_median": float(np.nanmedian(r)),
                         "noise_corrected_median": float(np.nanmedian(r / limit)),
                         "core_version": learner.core_version}
                curve.append(point)
                print(f"{learned:>7} {point['heldout_r_median']:>9.3f} {point['noise_corrected_median']:>17.3f} "
                      f"{learner.core_version:>13} {np.median(step_ms):>17.2f}")
    finally:
        learner.close()
    final = curve[-1]
    return {"core": learner.core.name, "kind": spec.core.kind, "finetune_every": spec.finetune_every, "heldout_r_median": final["heldout_r_median"],
            "noise_corrected_median": final["noise_corrected_median"], "curve": curve,
            "finetunes": learner.comparisons, "refresh_seconds": learner.refresh_seconds,
            "step_ms_median": float(np.median(step_ms)), "step_ms_p99": float(np.percentile(step_ms, 99)),
            "setup_seconds": setup_s, "wall_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", type=Path, required=True, help="folder with images_<name>.zip, "
                        "responses_raw_<name>.npy")
    parser.add_argument("--name", default="210325")
    parser.add_argument("--trials", type=int, default=1000, help="training trials to feed (at most all of them)")
    parser.add_argument("--core-kind", choices=("compact", "network", "file"), default=None,
                        help="the core to measure (without one: only the scratch baseline)")
    parser.add_argument("--core-path", type=Path, default=None, help="its folder or file")
    parser.add_argument("--core-layer", default=None)
    parser.add_argument("--core-match", default="*", help="compact: only the model files matching this pattern")
    parser.add_argument("--core-limit", type=int, default=None, help="compact: the first N models")
    parser.add_argument("--today", default=TODAY, help="commit whose learner is today's baseline ('': skip it)")
    parser.add_argument("--core-file", type=Path, default=None, help="same as --core-kind file --core-path F")
    parser.add_argument("--core-finetune-every", type=int, default=None, help="responses between fine-tunings "
                        "of the chosen core (0: never) [default: the learner's, as for the baseline]")
    parser.add_argument("--heldout-every", type=int, default=10)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--background", action="store_true", help="refresh in the learner's thread, as live")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="pool-feature cache folder [default: the learner's]")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if args.core_file is not None:
        args.core_kind, args.core_path = "file", args.core_file
    if args.core_kind is not None and args.core_path is None:
        parser.error("--core-kind needs --core-path")
    if args.core_kind == "compact":
        own = [p.name for p in find_published(args.core_path) if f"_{args.name}_" in p.name]
        if own:
            parser.error(f"{args.core_path}: holds models of session {args.name} ({own[0]}, ...): the core may "
                         "come only from other sessions")

    torch.set_num_threads(1)
    images = np.stack([image for _, image in load_images(args.session / f"images_{args.name}.zip", 112)])
    raw = np.load(args.session / f"responses_raw_{args.name}.npy")  # (neurons, images, repeats)
    neurons, n_images, repeats = raw.shape
    assert len(images) == n_images, (len(images), n_images)
    rng = np.random.default_rng(args.seed)
    heldout = np.arange(0, n_images, args.heldout_every)
    is_heldout = np.zeros(n_images, bool)
    is_heldout[heldout] = True
    truth = np.nanmean(raw[:, heldout], axis=2)  # (neurons, heldout): repeat means
    limit = ceiling(raw[:, heldout], rng)
    order = [(int(i), k, bool(is_heldout[i])) for k in range(repeats) for i in rng.permutation(n_images)
             if not np.isnan(raw[0, i, k])]
    trials, learned = [], 0
    for trial in order:  # up to the requested training trials, with the held-out trials among them
        if learned == args.trials:
            break
        trials.append(trial)
        learned += not trial[2]
    marks = sorted({m for m in CURVE if m <= learned} | {learned})
    print(f"session {args.name}: {neurons} neurons, {n_images} images ({len(heldout)} held out), "
          f"{learned} training and {len(trials) - learned} held-out trials fed one by one")

    learners = {}
    if args.core_kind is not None:
        core = CoreSpec(kind=args.core_kind, path=args.core_path, layer=args.core_layer, match=args.core_match,
                        limit=args.core_limit)
        tune = {} if args.core_finetune_every is None else {"finetune_every": args.core_finetune_every}
        learners["core"] = ModelSpec(core=core, members=args.members, **tune)
    learners["baseline"] = ModelSpec(core=CoreSpec(kind="scratch"), members=args.members)
    results = {}
    with threadpool_limits(1):
        for name, spec in learners.items():
            results[name] = run(name, spec, images, raw, trials, heldout, truth, limit, marks, args.seed,
                                args.background, args.cache)
    out = {"session": args.name, "neurons": neurons, "heldout_images": len(heldout), "trials": learned,
           "heldout_trials": len(trials) - learned, "ceiling_median": float(np.nanmedian(limit)), **results}
    for name, result in results.items():
        print(f"{name}: median held-out r {result['heldout_r_median']:.3f} after {learned} trials "
              f"(noise-corrected {result['noise_corrected_median']:.3f}); {len(result['finetunes'])} fine-tunings, "
              f"{sum(c['accepted'] for c in result['finetunes'])} accepted; {result['wall_seconds']:.0f} s")
    print(f"median split-half ceiling of the held-out responses: {out['ceiling_median']:.3f}")
    if args.today:
        started = time.perf_counter()
        text = run_at(args.today, "bench/online_fit.py", ["--session", str(args.session.resolve()), "--name", args.name,
                                                          "--trials", str(learned), "--report-every", str(CURVE[0]),
                                                          "--heldout-every", str(args.heldout_every)])
        curve = [{"trials": int(t), "heldout_r_median": r, "noise_corrected_median": c}
                 for t, r, c, _ in numbers(r"(?m)^\s*(\d+)\s+([-\d.]+)\s+([-\d.]+)\s+([\d.]+)\s*$", text)]
        out["today"] = {"commit": args.today, "curve": curve, "heldout_r_median": curve[-1]["heldout_r_median"],
                        "wall_seconds": time.perf_counter() - started}
        print(f"today's learner (commit {args.today}, bootstrap ensemble from scratch): " +
              ", ".join(f"r {c['heldout_r_median']:.3f} after {c['trials']}" for c in curve))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
