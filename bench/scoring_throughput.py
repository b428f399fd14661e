"""Candidate scoring throughput: torch eager, onnxruntime and the cached-core path.

Scores a pool of 112x112x3 uint8 candidate images (random pixels: the cost of
these dense networks does not depend on image content) and prints images per
second per neuron for each path, each the median of ``--repeats`` timed runs
after one untimed warm-up, with its ratio against naive torch eager measured
in the same run.

Published models (one core per neuron, the first ``--limit`` in ``--models``):

- naive torch eager: what one writes first. Each candidate is scored on its
  own (batch 1), through the BatchNorm modules as published (not folded into
  the convolutions), float32 weights, under ``torch.no_grad``. Measured on the
  first ``--naive-images`` images only, to keep the run short. (Running the
  weights as stored, float64, is ~100x slower again on CPU and not measured.)
- optimized torch: :class:`CompactModel` in eval mode (BatchNorm folded into
  the convolutions), batches of ``--batch``, ``torch.inference_mode``.
- onnxruntime: the model exported with :func:`export_onnx`, scored with
  :class:`OnnxScorer` (CPU provider, ``--threads`` intra-op threads, batches
  of ``--batch``; onnxruntime fuses Conv+BatchNorm+ReLU itself).
- cached core, re-score: layer-4 features of the pool already cached, only
  the ``Beta`` readout runs. The published models do not share cores, so this
  applies only when the same model re-scores the same pool (e.g. with a
  refitted readout); computing the cache costs one full core pass.

Shared-core ensembles (a :class:`CompactEnsemble`: ``members`` cores shared by
``--neurons`` neurons, each with a factorised readout per member), by default
both ``live`` (the live loop's default architecture, ``ModelSpec()``) and
``published`` (one core of the published architecture at 112 px with the
median published filter counts, shared by all neurons); the 112 px pool is
resized to the model's input:

- torch eager and onnxruntime full forward (core and all readouts);
- cached core, first scoring: the core's features of the pool with
  onnxruntime (:class:`CachedCoreScorer`; the one-off core export is timed
  separately), then every neuron's readout as one batched matrix product;
- re-score from the cache (readout only; what a readout update between trials
  costs);
- first scoring with 4x the neurons on the same cached core: extra neurons
  cost only their readout.

Images/s per neuron = images x neurons scored / seconds. For an ensemble
every member's prediction is computed, so a "neuron" costs ``members``
readouts.

Usage::

    python bench/scoring_throughput.py --models ../shared/v4/compact_models --limit 3 \\
        --images 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout, not another installed copy

from closedloop.config import ModelSpec  # noqa: E402
from closedloop.model.compact import CompactModel, find_published, load_published, published_name  # noqa: E402
from closedloop.model.ensemble import CompactEnsemble  # noqa: E402
from closedloop.model.export import (CachedCoreScorer, OnnxScorer, export_onnx,  # noqa: E402
                                     relative_error)
from closedloop.model.models import as_image_model, default_threads  # noqa: E402


PUBLISHED_MEDIAN_FILTERS = (48, 57, 3, 7, 3)
"""Median filter counts of the 122 published models (../shared/v4/README.md)."""


def naive_forward(model: CompactModel, images: torch.Tensor) -> torch.Tensor:
    """The published network layer by layer, BatchNorm modules unfused (eval: running statistics)."""
    layers = model.layers
    x = images.permute(0, 3, 1, 2) - model.channel_means
    x = F.relu(layers["layer0_bn"](layers["layer0_conv"](F.pad(x, (2, 2, 2, 2)))))
    for i in range(1, 5):
        pad = (1, 2, 1, 2) if i <= 2 else (2, 2, 2, 2)
        x = layers[f"layer{i}_conv_depth"](F.pad(x, pad))
        x = F.relu(layers[f"layer{i}_bn"](layers[f"layer{i}_conv_point"](x)))
    return layers["Beta"](x.permute(0, 2, 3, 1).flatten(1))[:, 0]


def timed(run: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder of published compact models")
    parser.add_argument("--limit", type=int, default=3, help="published models (neurons) to time")
    parser.add_argument("--images", type=int, default=256, help="candidate pool size")
    parser.add_argument("--naive-images", type=int, default=32, help="images for the slow naive path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="images per batch (optimized paths)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch and onnxruntime intra-op threads (default: this process's cores)")
    parser.add_argument("--neurons", type=int, default=33, help="neurons sharing the ensemble's core")
    parser.add_argument("--ensemble", default="live,published",
                        help="comma-separated shared-core ensembles to time: 'live' (the live loop's "
                             "default ModelSpec) and/or 'published' (one published-size core: 1 member, "
                             "112 px, the median published filters 48, 57, 3, 7, 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    pool = rng.integers(0, 256, (args.images, 112, 112, 3), dtype=np.uint8)
    pool_t = torch.from_numpy(pool).float()
    naive_n = min(args.naive_images, args.images)
    paths = find_published(args.models, args.limit)
    models = [load_published(p) for p in paths]
    started = time.perf_counter()

    import onnxruntime

    print(f"scoring throughput: {len(models)} published models ({published_name(paths[0])} .. "
          f"{published_name(paths[-1])}), pool {args.images} x 112x112x3 uint8 (random pixels), "
          f"median of {args.repeats} repeats, {args.threads} threads, batch {args.batch}; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")

    rows: list[tuple[str, float, str]] = []  # (path, images/s per neuron, note)

    # ----------------------------------------------------------------- published models --
    def naive() -> None:
        with torch.no_grad():
            for model in models:
                for i in range(naive_n):
                    naive_forward(model, pool_t[i:i + 1])

    seconds = timed(naive, args.repeats)
    naive_rate = naive_n * len(models) / seconds
    rows.append(("published: naive torch eager (batch 1, unfused BN, fp32)", naive_rate,
                 f"{naive_n} images"))

    def optimized() -> list[np.ndarray]:
        with torch.inference_mode():
            return [torch.cat([m(pool_t[i:i + args.batch]) for i in range(0, len(pool_t), args.batch)]).numpy()
                    for m in models]

    seconds = timed(optimized, args.repeats)
    torch_out = optimized()
    rows.append(("published: torch (folded BN, batched, inference_mode)",
                 args.images * len(models) / seconds, ""))

    with tempfile.TemporaryDirectory() as tmp:
        scorers = [OnnxScorer(export_onnx(m, Path(tmp) / f"m{i}.onnx"), threads=args.threads,
                              batch_size=args.batch) for i, m in enumerate(models)]
        seconds = timed(lambda: [s.score(pool) for s in scorers], args.repeats)
        onnx_out = [s.score(pool)[:, 0] for s in scorers]
    parity = max(relative_error(t, o) for t, o in zip(torch_out, onnx_out))
    rows.append(("published: onnxruntime", args.images * len(models) / seconds,
                 f"max |onnx - torch| / std = {parity:.1e}"))

    caches = [CachedCoreScorer(m, batch_size=args.batch).cache(pool) for m in models]
    seconds = timed(lambda: [c.score() for c in caches], args.repeats)
    parity = max(relative_error(t, c.score()[:, 0, 0]) for t, c in zip(torch_out, caches))
    rows.append(("published: cached core, re-score (readout only)", args.images * len(models) / seconds,
                 f"same model + pool only; diff {parity:.1e}"))

    # ------------------------------------------------------------- shared-core ensembles --
    for which in args.ensemble.split(","):
        rows += ensemble_rows(which, pool, args)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'path':<{width}}  {'images/s/neuron':>15}  {'x naive':>9}  note")
    for name, rate, note in rows:
        print(f"{name:<{width}}  {rate:>15,.0f}  {rate / naive_rate:>9.1f}  {note}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def ensemble_rows(which: str, pool: np.ndarray, args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """Timings of one shared-core ensemble: torch, onnxruntime, cached core."""
    if which == "live":
        spec = ModelSpec()
        members, px, channels = spec.members, spec.input_px, tuple(spec.channels)
    elif which == "published":
        members, px, channels = 1, 112, PUBLISHED_MEDIAN_FILTERS
    else:
        raise SystemExit(f"--ensemble: unknown architecture {which!r} (live, published)")
    n, k = args.neurons, len(pool)
    ensemble = CompactEnsemble(n, members=members, input_px=px, channels=channels, seed=args.seed).eval()
    label = f"{which} ensemble"
    print(f"{label}: {members} member(s) x filters {channels}, input {px} px "
          f"(pool resized from 112), {n} neurons sharing the core")
    rows = []
    image_model = as_image_model(ensemble)
    seconds = timed(lambda: image_model.predict(pool, args.batch), args.repeats)
    full = image_model.predict(pool, args.batch)
    rows.append((f"{label}: torch full forward", k * n / seconds, ""))

    with tempfile.TemporaryDirectory() as tmp:
        scorer = OnnxScorer(export_onnx(ensemble, Path(tmp) / "ensemble.onnx"), threads=args.threads,
                            batch_size=args.batch)
        seconds = timed(lambda: scorer.score(pool), args.repeats)
        parity = relative_error(full, scorer.score(pool).reshape(k, -1))
    rows.append((f"{label}: onnxruntime full forward", k * n / seconds, f"diff {parity:.1e}"))

    cached = CachedCoreScorer(ensemble, batch_size=args.batch, threads=args.threads)
    start = time.perf_counter()
    cached.cache(pool[:1])  # exports the core to ONNX once
    t_export = time.perf_counter() - start
    t_features = timed(lambda: cached.cache(pool), args.repeats)
    t_readout = timed(cached.score, args.repeats)
    parity = relative_error(full, cached.score().reshape(k, -1))
    rows.append((f"{label}: cached core, first scoring (features + readout)",
                 k * n / (t_features + t_readout),
                 f"features {t_features * 1e3:.0f} ms + readout {t_readout * 1e3:.1f} ms "
                 f"(+ {t_export:.1f} s core export once); diff {parity:.1e}"))
    rows.append((f"{label}: cached core, re-score (readout only)", k * n / t_readout, ""))

    bigger = CompactEnsemble(4 * n, members=members, input_px=px, channels=channels, seed=args.seed).eval()
    cached_big = CachedCoreScorer(bigger, batch_size=args.batch)
    cached_big.features = cached.features  # the same core (same seed) on the same pool
    t_readout_big = timed(cached_big.score, args.repeats)
    rows.append((f"{label}, {4 * n} neurons: cached core, first scoring",
                 k * 4 * n / (t_features + t_readout_big),
                 f"readout {t_readout_big * 1e3:.1f} ms for {4 * n} neurons vs {t_readout * 1e3:.1f} ms "
                 f"for {n}, features {t_features * 1e3:.0f} ms"))
    return rows


if __name__ == "__main__":
    main()
