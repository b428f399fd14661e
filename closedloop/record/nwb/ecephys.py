"""Spikes in the NWB export: the recording device, its electrodes and the units table."""

from __future__ import annotations

import numpy as np

from closedloop.config import RecordingSpec
from closedloop.record.checks import recorded_units
from closedloop.record.nwb.columns import columns
from closedloop.record.session import SessionRecord


def spikes_by_unit(spikes: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Sorted spike times (s, LSL clock) of each (channel, unit) pair in ``spikes``."""
    if not len(spikes):
        return {}
    s = spikes[np.lexsort((spikes["time"], spikes["unit"], spikes["channel"]))]
    change = np.flatnonzero((np.diff(s["channel"]) != 0) | (np.diff(s["unit"]) != 0)) + 1
    starts, stops = np.r_[0, change], np.r_[change, len(s)]
    return {(int(s["channel"][a]), int(s["unit"][a])): s["time"][a:b].astype(np.float64)
            for a, b in zip(starts, stops)}


def unit_rows(record: SessionRecord) -> tuple[list[tuple[str, int, int]], list[tuple[int, int, int]]]:
    """The units table's rows, (name, channel, unit): ``rig.json``'s ``recorded_units`` in order, then
    the (channel, unit) pairs the spike stream sent but the rig does not list; and those unlisted
    pairs with their spike counts."""
    units = [(u["name"], u["channel"], u["unit"]) for u in recorded_units(record)]
    listed = {(c, u) for _, c, u in units}
    unlisted = [(c, u, len(t)) for (c, u), t in sorted(spikes_by_unit(record.spikes).items()) if (c, u) not in listed]
    return [*units, *((f"unlisted channel {c} unit {u}", c, u) for c, u, _ in unlisted)], unlisted


def resolution(spikes: np.ndarray) -> float:
    """The spike times' resolution (s): the smallest positive difference between two of them.

    A binned-count stream's spikes lie on its bin grid, so this is the bin width; an event stream's
    are its LSL stamps, as fine as the acquisition system stamped them (at most this). With fewer
    than two distinct times, the spacing of a float64 LSL stamp at the last one.
    """
    steps = np.diff(np.unique(spikes["time"]))
    return float(steps.min()) if len(steps) else float(np.spacing(np.max(spikes["time"], initial=1.0)))


def add_units(nwbfile, record: SessionRecord, recording: RecordingSpec, t0: float, t_end: float, clock: str) -> None:
    """Device, electrode group, one electrode per spike-stream channel the units use, and the units
    table (spike times in s after ``t0``, observed over ``[0, t_end]``), each unit linked to its
    electrode."""
    from hdmf.common import DynamicTableRegion
    from pynwb.misc import Units

    rows, _ = unit_rows(record)
    if not rows:
        return
    n_listed = len(recorded_units(record))
    model = (nwbfile.create_device_model(name=f"{recording.device} model", manufacturer=recording.manufacturer,
                                         description=f"the model of {recording.device}")
             if recording.manufacturer else None)
    device = nwbfile.create_device(name=recording.device, description="spike source of the session", model=model)
    group = nwbfile.create_electrode_group(name="electrode_group", description=recording.description,
                                           location=recording.location, device=device)
    channels = sorted({c for _, c, _ in rows})
    nwbfile.add_electrode_column(name="channel", description="spike-stream channel")
    for channel in channels:
        nwbfile.add_electrode(location=recording.location, group=group, channel=channel)
    by_unit = spikes_by_unit(record.spikes)
    trains = [by_unit.get((channel, unit), np.empty(0)) - t0 for _, channel, unit in rows]
    names = np.array([name for name, _, _ in rows], str)
    specs = [
        ("spike_times", "spike times of each unit, s", np.concatenate(trains), [len(t) for t in trains]),
        ("obs_intervals", "observation interval of each unit: the exported span, s",
         np.tile([0.0, t_end], (len(rows), 1)), [1] * len(rows)),
        ("unit_name", "unit name from rig.json recorded_units", names, None),
        ("channel", "spike-stream channel", np.array([c for _, c, _ in rows], np.int64), None),
        ("unit", "unit id on the channel (spike stream)", np.array([u for _, _, u in rows], np.int64), None),
        ("recorded", "listed in rig.json recorded_units (False: a (channel, unit) pair the spike stream sent "
                     "but the rig does not list)", np.arange(len(rows)) < n_listed, None),
        ("_name", "the unit name again, where neo's NWBIO looks for it", names, None),
    ]
    table = columns(specs)
    table.append(DynamicTableRegion(name="electrodes", description="the unit's electrode (its channel)",
                                    data=np.array([channels.index(c) for _, c, _ in rows]),
                                    table=nwbfile.electrodes))
    table.insert(-1, _single_index("electrodes_index", table[-1], len(rows)))
    nwbfile.units = Units(
        name="units", resolution=resolution(record.spikes) if len(record.spikes) else None,
        electrode_table=nwbfile.electrodes, columns=table, description=(
            f"the first {n_listed} rows: rig.json recorded_units in order (row k is column k of presentations "
            f"counts); later rows: (channel, unit) pairs the rig does not list; spike times sorted; "
            f"resolution: the smallest difference between two spike times (a binned-count stream's bin "
            f"width; an event stream's LSL stamps); {clock}"))


def _single_index(name: str, target, rows: int):
    """A ragged index giving each row one element of ``target``."""
    from hdmf.common import VectorIndex

    return VectorIndex(name=name, target=target, data=np.arange(1, rows + 1, dtype=np.uint64))
