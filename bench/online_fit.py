"""Online fitting on a real V4 session: held-out accuracy against trials.

Feeds the single-trial spike counts of a real session (``responses_raw_<session>.npy``,
neurons x images x repeats, and ``images_<session>.zip``) to closedloop's online ensemble one
trial at a time, refitting the readouts every few trials as the live loop does once per decision,
with the cores retrained in the background; prints the held-out accuracy as trials accumulate.

The recordings do not keep the order in which images were shown, so trials are fed repeat by
repeat (every image once, in a seeded random order, then every image again, ...). Every
``--heldout-every``-th image is held out: never trained on, and scored against its repeat-averaged
response. Accuracy is the Pearson r between the ensemble's mean prediction and the held-out
responses, per neuron, and the same r divided by the neuron's split-half reliability ceiling
(Spearman-Brown corrected), the noise-corrected accuracy.

    python bench/online_fit.py --session ../shared/v4/sessions --name 210325
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from closedloop.config import ModelSpec
from closedloop.model.online import OnlineEnsemble
from closedloop.stimuli.natural import load_images


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session", type=Path, required=True, help="folder with images_<name>.zip, "
                        "responses_raw_<name>.npy")
    parser.add_argument("--name", default="210325")
    parser.add_argument("--trials", type=int, default=3000, help="trials to feed (at most all of them)")
    parser.add_argument("--report-every", type=int, default=500)
    parser.add_argument("--update-every", type=int, default=8, help="trials between readout refits "
                        "(the live loop refits once per decision, i.e. per trial of several images)")
    parser.add_argument("--heldout-every", type=int, default=10)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--input-px", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images = np.stack([image for _, image in load_images(args.session / f"images_{args.name}.zip", 112)])
    raw = np.load(args.session / f"responses_raw_{args.name}.npy")  # (neurons, images, repeats)
    neurons, n_images, repeats = raw.shape
    assert len(images) == n_images, (len(images), n_images)
    rng = np.random.default_rng(args.seed)
    heldout = np.arange(0, n_images, args.heldout_every)
    train = np.setdiff1d(np.arange(n_images), heldout)
    truth = np.nanmean(raw[:, heldout], axis=2)  # (neurons, heldout)
    limit = ceiling(raw[:, heldout], rng)
    trials = [(i, k) for k in range(repeats) for i in rng.permutation(train) if not np.isnan(raw[0, i, k])]
    trials = trials[:args.trials]
    print(f"session {args.name}: {neurons} neurons, {n_images} images ({len(heldout)} held out), "
          f"{len(trials)} training trials fed one by one; torch threads {torch.get_num_threads()}")

    spec = ModelSpec(members=args.members, input_px=args.input_px)
    ensemble = OnlineEnsemble(images, neurons, spec, seed=args.seed)
    print(f"{'trials':>7} {'median r':>9} {'median r/ceiling':>17} {'update ms (median)':>19}")
    started, update_ms = time.perf_counter(), []
    try:
        for t, (i, k) in enumerate(trials, 1):
            ensemble.add(int(i), raw[:, i, k])
            if t % args.update_every == 0:
                t0 = time.perf_counter()
                ensemble.update()
                update_ms.append((time.perf_counter() - t0) * 1e3)
            if t % args.report_every == 0 or t == len(trials):
                ensemble.sync()
                predicted = ensemble.predictions(heldout).mean(axis=0)
                r = np.array([np.corrcoef(p, o)[0, 1] for p, o in zip(predicted, truth)])
                print(f"{t:>7} {np.nanmedian(r):>9.3f} {np.nanmedian(r / limit):>17.3f} "
                      f"{np.median(update_ms):>19.2f}")
    finally:
        ensemble.close()
    print(f"median split-half ceiling of the held-out responses: {np.nanmedian(limit):.3f}; "
          f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
