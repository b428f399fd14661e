"""Continuous records in the NWB export: display flips, gaze, photodiode and the rig's other streams."""

from __future__ import annotations

import numpy as np

from closedloop.record.naming import archive_id
from closedloop.record.session import SessionRecord

GAZE_FRAME = "degrees from fixation point; x right, y up"


def timing(times: np.ndarray, t0: float) -> dict:
    """A TimeSeries' time arguments for ``times`` (s, LSL clock): ``starting_time`` and ``rate`` when
    they are regular to the nanosecond (as an archive asks), else ``timestamps`` (s after ``t0``)."""
    times = np.asarray(times, np.float64) - t0
    steps = np.diff(times)
    if len(times) > 2 and steps[0] > 0 and np.all(np.round(steps - steps[0], 9) == 0):
        return {"starting_time": float(times[0]), "rate": float((len(times) - 1) / (times[-1] - times[0]))}
    return {"timestamps": times}


def add_frames(module, record: SessionRecord, t0: float, clock: str) -> None:
    """Every display flip (``frames.bin``) as a TimeSeries of flip numbers in ``module``."""
    from pynwb import TimeSeries

    if len(record.frames):
        module.add(TimeSeries(name="display_flips", data=np.arange(len(record.frames), dtype=np.uint64),
                              unit="flips", **timing(record.frames, t0), description=(
                                  f"every display flip of the stimulus display (frames.bin): flip number "
                                  f"from 0 at the time of the flip; {clock}")))


def add_streams(nwbfile, record: SessionRecord, t0: float, clock: str) -> None:
    """Gaze as EyeTracking in the ``behavior`` module (degrees); the photodiode and every other
    recorded stream as a TimeSeries in acquisition."""
    from pynwb import TimeSeries
    from pynwb.behavior import EyeTracking, SpatialSeries

    for key, stream in sorted(getattr(record, "streams", {}).items()):
        if not len(stream.times):
            continue
        what = (f"LSL stream {stream.name!r} (type {stream.header['type']!r}, source_id "
                f"{stream.header['source_id']!r}, {stream.rate:g} Hz nominal, 0: irregular), recorded as it arrived")
        if stream.role == "gaze":
            gaze = SpatialSeries(name="gaze", data=stream.values[:, :2], reference_frame=GAZE_FRAME, unit="degrees",
                                 description=f"eye position, x and y, degrees; {what}; {clock}",
                                 **timing(stream.times, t0))
            behavior = nwbfile.processing.get("behavior") or nwbfile.create_processing_module(
                name="behavior", description="eye position")
            behavior.add(EyeTracking(name="eye_tracking", spatial_series=gaze))
            continue
        units = {u for u in stream.units if u}
        channels = ", ".join(f"{label} ({unit or 'no unit given'})" for label, unit in zip(stream.labels, stream.units))
        nwbfile.add_acquisition(TimeSeries(
            name="photodiode" if stream.role == "photodiode" else archive_id(key),
            data=stream.values[:, 0] if stream.values.shape[1] == 1 else stream.values,
            unit=units.pop() if len(units) == 1 and len(set(stream.units)) == 1 else "a.u.",
            **timing(stream.times, t0),
            description=(f"{'photodiode on the stimulus display; ' if stream.role == 'photodiode' else ''}"
                         f"channels: {channels}; unit a.u. where the channels' units differ or none was "
                         f"given; {what}; {clock}")))
