"""A real V4 recording with single-trial counts, as a closedloop session directory.

The shared V4 data (see ``../shared/v4/README.md``) keeps, for session 210325,
the spike count of every neuron on every trial: ``responses_raw_<session>.npy``,
(neurons, images, repeats), NaN where a repeat was not shown, counted in a
100 ms window; and the images, ``images_<session>.zip``. :func:`convert_v4`
writes them as the live loop writes a session (``SessionWriter``), so replay,
export and report read it like any other session:

* the pool is the images, in file order (natural images, rendered at their
  own size, 112 px);
* every (image, repeat) that was shown is one presentation, in an order drawn
  with ``seed`` (the recording does not keep the order it was shown in), at a
  fixed timing: ``on_frames`` frames on, ``off_frames`` off at ``refresh_rate``
  Hz, ``images_per_trial`` presentations a trial, starting at ``START`` s;
* a count of ``k`` spikes becomes ``k`` spike times drawn uniformly (with
  ``seed``) in the response window ``[onset + 0.05, onset + 0.15)`` s, the
  protocol's window, so the live counting rule gives back exactly the
  recorded counts. The original spike times are unknown: within the window
  these times carry no information, and there are no spikes outside it (no
  baseline, no latency), so rasters and PSTHs of a converted session show
  the counts, not the neurons' timing;
* held-out images are drawn as the live loop draws them (``split_pool`` with
  the protocol's seed); their presentations have role ``heldout``, the rest
  ``control`` (shown in a random order, not chosen by a model);
* ``conversion.json`` in the session says all this, with the source files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from closedloop.config import Protocol, UnitSpec, to_jsonable
from closedloop.errors import ClosedLoopError
from closedloop.stimuli.candidates import split_pool
from closedloop.model.files import load_array
from closedloop.record import SessionWriter
from closedloop.stimuli import NATURAL, StimulusPool
from closedloop.stimuli.natural import load_images

START = 10.0  # s, LSL clock of the converted session: the first onset
WINDOW = (0.05, 0.15)  # s after onset: the 100 ms counting window
IMAGE_PX = 112  # the images' own size
HELDOUT = 64  # images held out (a tenth of 210325's 640)


def read_v4(data: Path | str, session: str, images: int | None = None) -> tuple[np.ndarray, StimulusPool]:
    """Single-trial counts (neurons, images, repeats; NaN: not shown) and the images as a pool,
    the first ``images`` of them (all by default)."""
    folder = Path(data) / "sessions"
    raw_path, zip_path = folder / f"responses_raw_{session}.npy", folder / f"images_{session}.zip"
    if not raw_path.is_file():
        raise ClosedLoopError(f"{raw_path}: not found (single-trial counts exist for session 210325 only)")
    raw = load_array(raw_path, "single-trial counts file")
    if raw.ndim != 3 or 0 in raw.shape:
        raise ClosedLoopError(f"{raw_path}: expected (neurons, images, repeats), found shape {raw.shape}")
    count = raw.shape[1] if images is None else min(images, raw.shape[1])
    loaded = list(load_images(zip_path, IMAGE_PX))
    if len(loaded) != raw.shape[1]:
        raise ClosedLoopError(f"{zip_path}: {len(loaded)} images, but {raw_path.name} has {raw.shape[1]}")
    shown = ~np.isnan(raw[:, :count])
    if not (shown == shown[:1]).all():
        raise ClosedLoopError(f"{raw_path}: neurons differ in which repeats were shown")
    counts = raw[:, :count]
    values = counts[shown]
    if not np.isfinite(values).all() or np.any(values < 0) or not np.array_equal(values, np.round(values)):
        raise ClosedLoopError(f"{raw_path}: counts must be whole numbers >= 0")
    pool = StimulusPool(np.stack([image for _, image in loaded[:count]]), [NATURAL] * count,
                        [{"source": zip_path.name, "file": name} for name, _ in loaded[:count]])
    return counts, pool


def convert_v4(data: Path | str, session: str, out: Path | str, seed: int = 0, images: int | None = None,
               on_frames: int = 6, off_frames: int = 6, refresh_rate: float = 60.0,
               images_per_trial: int = 4) -> dict:
    """Write session ``session`` of the shared V4 data as a closedloop session directory ``out``.

    Parameters
    ----------
    data : Path or str
        The shared V4 folder (holding ``sessions/``).
    session : str
        Its name (``210325``: the one with single-trial counts).
    out : Path or str
        The session directory to create (must not exist).
    seed : int
        Seed of the presentation order, the spike times and the held-out split.
    images : int, optional
        Only the first ``images`` images (and their trials).
    on_frames, off_frames : int
        Frames each image is on and the blank after it, at ``refresh_rate`` Hz.
    images_per_trial : int
        Presentations per trial (the ``trial`` numbers in the markers).

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    counts, pool = read_v4(data, session, images)
    neurons, n_images, _ = counts.shape
    out = Path(out)
    if out.exists():
        raise ClosedLoopError(f"session {out}: already exists (not overwritten)")
    heldout_images = min(HELDOUT, n_images // 10)
    protocol = Protocol.model_validate({
        "protocol": {"name": f"v4-{session}", "seed": seed, "presentations": int((~np.isnan(counts[0])).sum()),
                     "on_frames": on_frames, "off_frames": off_frames},
        "window": dict(zip(("start", "end"), WINDOW)), "pool": {"families": {}},
        "trial": {"images": images_per_trial, "hold": 0.0, "iti": 0.0},
        "selection": {"strategy": "random", "batch": images_per_trial},
        "heldout": {"images": max(3, heldout_images), "every": 10}})
    units = [UnitSpec(name=f"{session}-n{k:02d}", channel=k + 1, unit=1) for k in range(neurons)]
    rig = {"rig": {"name": f"v4-{session} (converted)", "simulated": False},
           "display": {"refresh_rate": refresh_rate}, "units": [u.model_dump() for u in units],
           "recorded_units": [u.model_dump() for u in units]}
    rng = np.random.default_rng(seed)
    trials = np.argwhere(~np.isnan(counts[0]))  # (image, repeat) pairs shown
    trials = trials[rng.permutation(len(trials))]
    _, heldout = split_pool(n_images, protocol.heldout.images, seed)
    held = set(heldout.tolist())
    frame = 1.0 / refresh_rate
    period = (on_frames + off_frames) * frame
    writer = SessionWriter(out, to_jsonable(protocol), rig, pool)
    total = 0
    for index, (image, repeat) in enumerate(trials):
        onset = START + index * period
        k = counts[:, image, repeat].astype(int)
        info = {"stimulus": pool.ids[image], "pool_index": int(image),
                "role": "heldout" if image in held else "control", "trial": index // images_per_trial}
        writer.log("markers", {"index": index, **info, "onset": onset, "offset": onset + on_frames * frame,
                               "dropped_frames": 0, "frame_intervals": [frame] * on_frames})
        times = onset + rng.uniform(*WINDOW, k.sum())
        order = np.argsort(times)
        writer.spikes(times[order], np.repeat(np.arange(1, neurons + 1), k)[order], np.ones(k.sum(), int))
        writer.frames(onset + frame * np.arange(on_frames + off_frames))
        writer.log("responses", {"index": index, "onset": onset, "counts": k.tolist(), **info})
        total += int(k.sum())
    (out / "conversion.json").write_text(json.dumps({
        "source": {"counts": str(Path(data) / "sessions" / f"responses_raw_{session}.npy"),
                   "images": str(Path(data) / "sessions" / f"images_{session}.zip")},
        "seed": seed, "images": n_images, "presentations": len(trials), "period_s": period,
        "spike_times": f"each count of k spikes: k times drawn uniformly in [onset + {WINDOW[0]}, onset + "
                       f"{WINDOW[1]}) s with the seed; the original spike times are unknown",
        "order": "every shown (image, repeat) once, in a random order drawn with the seed",
    }, indent=2))
    summary = {"status": "complete", "session": str(out), "protocol": protocol.protocol.name,
               "rig": rig["rig"]["name"], "strategy": "none (converted recording)",
               "presentations": len(trials), "responses": len(trials), "spikes": total,
               "units": [u.name for u in units], "duration_s": round(len(trials) * period, 3)}
    writer.close(summary)
    return summary
