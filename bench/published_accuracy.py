"""Accuracy of the published compact models on their neurons' recorded responses.

For each session with models in ``--models`` (``compact_model_<session>_neuron<i>.pt``) and
responses in ``--sessions`` (``responses_repeat_averaged_<session>.npy``, ``images_<session>.zip``),
prints the median, range and quartiles of the Pearson r between each model's outputs and its
neuron's repeat-averaged responses, and the time per image per neuron.

    python bench/published_accuracy.py --models ../shared/v4/compact_models --sessions ../shared/v4/sessions
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from closedloop.model.compact import find_published, load_published, published_name
from closedloop.stimuli.natural import load_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--sessions", type=Path, required=True)
    parser.add_argument("--images", type=int, default=None, help="score only the first N images")
    args = parser.parse_args()

    by_session = defaultdict(list)
    for path in find_published(args.models):
        session, neuron = published_name(path).rsplit("_n", 1)
        by_session[session].append((int(neuron), path))
    print(f"{'session':>8} {'neurons':>8} {'images':>7} {'median r':>9} {'q25':>6} {'q75':>6} "
          f"{'min':>6} {'max':>6} {'ms/image/neuron':>16}")
    for session, models in sorted(by_session.items()):
        responses = np.load(args.sessions / f"responses_repeat_averaged_{session}.npy")
        images = np.stack([im for _, im in load_images(args.sessions / f"images_{session}.zip", 112)])
        images, responses = images[:args.images], responses[:, :args.images]
        r, started = [], time.perf_counter()
        for neuron, path in models:
            r.append(np.corrcoef(load_published(path).predict(images, batch_size=64), responses[neuron])[0, 1])
        ms = (time.perf_counter() - started) * 1e3 / (len(models) * len(images))
        q = np.percentile(r, [25, 50, 75])
        print(f"{session:>8} {len(models):>8} {len(images):>7} {q[1]:>9.3f} {q[0]:>6.3f} {q[2]:>6.3f} "
              f"{min(r):>6.3f} {max(r):>6.3f} {ms:>16.2f}")


if __name__ == "__main__":
    main()
