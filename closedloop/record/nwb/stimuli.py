"""What was shown in the NWB export: presentations, trials, the images and which one when."""

from __future__ import annotations

import numpy as np

from closedloop.record.nwb.columns import columns, compact_int, typed_columns
from closedloop.record.nwb.streams import timing
from closedloop.record.session import SessionRecord

PARAM_PREFIX = "param_"
"""Presentations columns holding the stimulus parameters: ``param_<name>``, one per parameter name."""


def add_presentations(nwbfile, record: SessionRecord, n_units: int, t0: float, clock: str) -> None:
    """``intervals["presentations"]`` (every column typed, stimulus parameters one column each), and
    ``epochs``: the presentations again as neo's NWBIO reads an Epoch (tags: stimulus ids)."""
    from pynwb.epoch import TimeIntervals

    pool, markers = record.pool, record.markers
    answered = {r["index"]: r for r in record.responses}
    got = [answered.get(m["index"]) for m in markers]
    counts = np.full((len(markers), n_units), np.nan)
    for i, r in enumerate(got):
        if r is not None:
            counts[i] = r["counts"]
    onsets = np.array([m["onset"] for m in markers], np.float64) - t0
    offsets = np.array([m["offset"] for m in markers], np.float64) - t0
    params, left_out = typed_columns([pool.params[m["pool_index"]] for m in markers], PARAM_PREFIX,
                                     "stimulus parameter")
    unexported = f"; parameters not exported (not numbers, text or lists): {', '.join(left_out)}" if left_out else ""
    nwbfile.add_time_intervals(TimeIntervals(name="presentations", description=(
        f"one row per stimulus presentation (markers.jsonl), onset to offset; stimulus parameters in the "
        f"{PARAM_PREFIX}<name> columns, one per parameter name over all families{unexported}; {clock}"),
        columns=columns([
            ("start_time", "onset: first frame of the stimulus, s", onsets, None),
            ("stop_time", "offset: first frame after the stimulus, s", offsets, None),
            ("presentation", "presentation index", compact_int([m["index"] for m in markers]), None),
            ("stimulus_id", "stimulus id (content hash; names the image in stimulus_template 'stimuli')",
             np.array([m["stimulus"] for m in markers], str), None),
            ("pool_index", "position in the session's stimulus pool",
             compact_int([m["pool_index"] for m in markers]), None),
            ("role", "why it was shown: chosen, heldout, control, requeued or fallback",
             np.array([m["role"] for m in markers], str), None),
            ("family", "stimulus family", np.array([pool.families[m["pool_index"]] for m in markers], str), None),
            ("trial", "fixation trial the presentation belongs to (-1: not recorded)",
             compact_int([m.get("trial", -1) for m in markers]), None),
            ("aborted", "a fixation break took the image off before its last frame",
             np.array([m.get("aborted", False) for m in markers], bool), None),
            ("dropped_frames", "frames shown late", compact_int([m.get("dropped_frames", 0) for m in markers]),
             None),
            ("frame_intervals", "s between this presentation's display flips",
             np.array([x for m in markers for x in m.get("frame_intervals", [])], np.float64),
             [len(m.get("frame_intervals", [])) for m in markers]),
            ("responded", "a response (spike counts) was recorded; False: counts are NaN",
             np.array([r is not None for r in got], bool), None),
            ("gap", "the response window overlapped a spike-stream gap: counts are incomplete",
             np.array([r is not None and r.get("gap", False) for r in got], bool), None),
            ("counts", "spikes per recorded unit in the response window, column k = units row k; "
                       "NaN where no response was recorded (never a zero)", counts, None),
            *params,
        ])))
    if markers:
        nwbfile.epochs = TimeIntervals(name="epochs", description=(
            "the presentations again, as neo's NWBIO reads them: one Epoch named 'presentations' labelled "
            f"with stimulus ids (tags); intervals 'presentations' has every column; {clock}"), columns=columns([
                ("start_time", "onset, s", onsets, None),
                ("stop_time", "offset, s", offsets, None),
                ("tags", "stimulus id", np.array([m["stimulus"] for m in markers], str), [1] * len(markers)),
                ("_name", "neo Epoch name", np.full(len(markers), "presentations"), None),
                ("segment", "neo Segment name", np.full(len(markers), "default"), None),
                ("block", "neo Block name", np.full(len(markers), "default"), None),
            ]))


def add_trials(nwbfile, record: SessionRecord, t0: float, first: float, clock: str) -> None:
    """The trials table: one row per fixation trial (``events.jsonl`` ``kind == "trial"``), from the
    previous trial's end (the first: ``first``, s on the LSL clock) to its own."""
    trials = [e for e in record.events if e["kind"] == "trial"]
    if not trials:
        return
    ends = np.array([e["time"] for e in trials], np.float64)
    starts = np.r_[min(first, ends[0]), ends[:-1]]
    shown = [list(e.get("shown", [])) for e in trials]
    requeued = [list(e.get("requeued", [])) for e in trials]
    rewards = [e.get("reward") for e in trials]
    reward_times = np.array([r - t0 if isinstance(r, float) else np.nan for r in rewards])
    from pynwb.epoch import TimeIntervals

    nwbfile.trials = TimeIntervals(name="trials", description=(
        "one row per fixation trial (events.jsonl kind 'trial'), from the previous trial's end (the first "
        f"trial: the session's first display flip) to the moment its end was logged; {clock}"), columns=columns([
            ("start_time", "previous trial's end, s", starts - t0, None),
            ("stop_time", "trial end, s", ends - t0, None),
            ("trial", "trial number (presentations column 'trial')",
             compact_int([e["trial"] for e in trials]), None),
            ("outcome", "how it ended: completed, fixation_break or no_fixation",
             np.array([e["end"] for e in trials], str), None),
            ("presentations", "presentation indices shown in the trial (presentations column 'presentation')",
             np.array([i for s in shown for i in s], np.int64), [len(s) for s in shown]),
            ("requeued", "pool indices put back in the queue: the trial ended before they were shown (no "
                         "column when no trial requeued any)",
             np.array([i for s in requeued for i in s], np.int64), [len(s) for s in requeued]),
            ("rewarded", "the trial was rewarded", np.array([r is not None and r is not False for r in rewards]),
             None),
            ("reward_time", "flip of the reward marker, s; NaN without a reward or its time", reward_times, None),
        ]))


def add_images(nwbfile, module, record: SessionRecord, t0: float, clock: str) -> None:
    """``stimulus_template["stimuli"]``: the distinct images shown, and in ``module`` an IndexSeries
    ``presented_images`` naming the image of each onset (not in ``stimulus``: neo 0.14's NWBIO reads
    every series there and cannot read one that points at images)."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb.base import ImageReferences
    from pynwb.image import Images, IndexSeries, RGBImage

    pool, markers = record.pool, record.markers
    shown = sorted({m["pool_index"] for m in markers})
    if not shown:
        return
    images = [RGBImage(name=pool.ids[i], data=H5DataIO(pool.images[i], compression="gzip"),
                       description=f"{pool.families[i]} image, pool index {i}; rows, columns, RGB")
              for i in shown]
    container = Images(name="stimuli", images=images,
                       description="the distinct stimulus images shown, named by stimulus id, in pool order",
                       order_of_images=ImageReferences(name="order_of_images", data=images))
    nwbfile.add_stimulus_template(container)
    position = {p: k for k, p in enumerate(shown)}
    module.add(IndexSeries(
        name="presented_images", indexed_images=container, unit="N/A",
        data=np.array([position[m["pool_index"]] for m in markers], np.uint32),
        **timing([m["onset"] for m in markers], t0),
        description=f"at each onset, the image shown: its position in stimulus_template 'stimuli' "
                    f"order_of_images; {clock}"))
