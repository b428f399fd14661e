"""Selection turnaround: from a response window closing to the next images chosen.

For each response the model worker does exactly this: add the response, refit
the readouts on cached core features, rescore every candidate, choose the next
batch. The core retrains in its background thread meanwhile, as in the live
loop. Baseline, measured in the same run: rescoring the pool through every
member's full network after each response (no feature cache).

    python bench/selection_turnaround.py --neurons 32 --candidates 5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from closedloop.config import ModelSpec
from closedloop.model.ensemble import to_model_input
from closedloop.model.online import OnlineEnsemble
from closedloop.select.registry import make_strategy
from closedloop.select.strategies import SelectionContext
from closedloop.stimuli import generate_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--responses", type=int, default=200, help="responses timed")
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--strategy", default="disagreement")
    parser.add_argument("--batch", type=int, default=4, help="images per decision")
    args = parser.parse_args()

    torch.set_num_threads(1)
    per_family = args.candidates // 4 + 1
    t = time.perf_counter()
    pool = generate_pool({"contour": per_family, "dot": per_family, "grating": per_family,
                          "texture": per_family}, 112, seed=0)
    images = pool.images[:args.candidates]
    print(f"pool: {len(images)} candidates rendered in {time.perf_counter() - t:.1f} s; "
          f"{args.neurons} neurons")

    spec = ModelSpec()
    rng = np.random.default_rng(0)
    ensemble = OnlineEnsemble(images, args.neurons, spec, seed=0)
    strategy = make_strategy(args.strategy)
    candidates = np.arange(len(images))
    times = []
    for _ in range(args.responses):
        start = time.perf_counter()
        ensemble.add(int(rng.integers(len(images))), rng.poisson(2.4, args.neurons))
        ensemble.update()
        strategy.choose(SelectionContext(candidates, predictions=ensemble.predictions()), args.batch, rng)
        times.append((time.perf_counter() - start) * 1000)
    core_versions = ensemble.core_version
    ensemble.close()
    times = np.array(times)

    x = to_model_input(images, spec.input_px)
    model = ensemble.model.eval()
    baseline = []
    for _ in range(args.baseline_repeats):
        start = time.perf_counter()
        with torch.no_grad():
            predictions = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
        strategy.choose(SelectionContext(candidates, predictions=predictions.permute(1, 2, 0).numpy()),
                        args.batch, rng)
        baseline.append((time.perf_counter() - start) * 1000)

    median, p99, base = np.median(times), np.percentile(times, 99), np.median(baseline)
    print(f"turnaround over {len(times)} responses ({core_versions} core retrains swapped in): "
          f"median {median:.1f} ms, p99 {p99:.1f} ms")
    print(f"baseline (full rescoring, median of {len(baseline)}): {base:.0f} ms")
    print(f"speed-up of the median over the baseline: {base / median:.1f}x")


if __name__ == "__main__":
    main()
