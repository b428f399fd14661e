"""Republish a recording on the network: its spikes and stimulus markers as LSL outlets, in time.

The spike outlet has the live spike stream's format (one int32
``(channel, unit)`` sample per spike, see
:func:`closedloop.acquire.streams.spike_stream_info`), so a live
:class:`closedloop.acquire.spikes.SpikeInlet` reads it as it reads a rig; the
marker outlet sends closedloop's JSON onset and offset markers
(:mod:`closedloop.present.markers`, with its numeric companion). Both describe themselves
as closedloop's live outlets do (channel labels, the recording's units by name, the
recording's folder or file as ``<closedloop><session_id>``). Recording time ``t`` goes out stamped
``start + (t - t_first) / speed`` on this machine's LSL clock, pushed when that
time comes (``t_first``: the earliest spike or onset), so any LSL tool
(LabRecorder, the live system, ``closedloop responses`` on what it recorded)
sees the recording as if it were happening now, ``speed`` times faster.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pylsl

from closedloop.acquire.streams import spike_stream_info
from closedloop.config import StreamSpec
from closedloop.present.markers import MarkerOutlet, offset_marker, onset_marker
from closedloop.replay.recording import Recording

LEAD = 0.2  # s between starting and the first sample's stamp
IDLE = 0.01  # s, the longest wait between checks of the stop event


@dataclass
class Published:
    """What :func:`republish` sent: counts, and the clock mapping (LSL time = ``start`` +
    (recording time - ``first``) / ``speed``)."""

    spikes: int
    markers: int
    start: float
    first: float
    speed: float
    stopped: bool  # stopped before the end


def marker_events(recording: Recording) -> tuple[np.ndarray, list[str]]:
    """Onset and offset markers of every presentation: times (s, recording clock) and texts, in time order."""
    events = [(p["onset"], onset_marker(p["index"], p["stimulus"])) for p in recording.presentations]
    events += [(p["offset"], offset_marker(p["index"])) for p in recording.presentations if p["offset"] is not None]
    events.sort(key=lambda e: e[0])
    return np.array([t for t, _ in events], float), [text for _, text in events]


def republish(recording: Recording, spikes: StreamSpec, markers: StreamSpec, speed: float = 1.0,
              wait: float = 0.0, linger: float = 2.0, stop: threading.Event | None = None) -> Published:
    """Send ``recording`` on two LSL outlets in real time (or ``speed`` times faster).

    Parameters
    ----------
    recording : Recording
        Units are not needed: every spike goes out with its (channel, unit).
    spikes, markers : StreamSpec
        Names and types of the two outlets (``source_id``: as given, else
        ``closedloop-republish-<name>``).
    speed : float
        Multiple of real time (> 0).
    wait : float
        Seconds to wait for a consumer on both outlets before starting (a
        tool that opens its inlets first misses nothing); then it starts anyway.
    linger : float
        Seconds to keep the outlets open after the last sample while a consumer
        is still connected (closing an outlet drops samples still on their way).
    stop : threading.Event, optional
        Set to stop early.

    Returns
    -------
    Published
    """
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    stop = stop or threading.Event()
    own = {"session_id": recording.source.name}
    spike_info = spike_stream_info(spikes, spikes.source_id or f"closedloop-republish-{spikes.name}", recording.units,
                                   model="replay", own=own)
    spike_outlet = pylsl.StreamOutlet(spike_info, chunk_size=0, max_buffered=60)
    pool_index = {p["stimulus"]: p["pool_index"] for p in recording.presentations if "pool_index" in p}
    marker_outlet = MarkerOutlet(markers, markers.source_id or f"closedloop-republish-{markers.name}",
                                 session_id=recording.source.name, pool_index=pool_index.__getitem__)
    try:
        deadline = time.monotonic() + wait
        if wait > 0:
            spike_outlet.wait_for_consumers(wait)
        while time.monotonic() < deadline and not marker_outlet.have_consumers() and not stop.wait(IDLE):
            pass  # nobody listens yet: after ``wait`` s, start anyway
        marker_times, labels = marker_events(recording)
        times = recording.spikes["time"]
        samples = np.stack([recording.spikes["channel"], recording.spikes["unit"]], axis=1).astype(np.int32)
        first = float(min(times[:1].min(initial=np.inf), marker_times[:1].min(initial=np.inf)))
        start = pylsl.local_clock() + LEAD
        sent_spikes = sent_markers = 0
        while sent_spikes < len(times) or sent_markers < len(labels):
            due = first + (pylsl.local_clock() - start) * speed  # recording time that has come
            upto = int(np.searchsorted(times, due, side="right"))
            if upto > sent_spikes:
                spike_outlet.push_chunk(samples[sent_spikes:upto],
                                        (start + (times[sent_spikes:upto] - first) / speed).tolist())
                sent_spikes = upto
            while sent_markers < len(labels) and marker_times[sent_markers] <= due:
                marker_outlet.push(labels[sent_markers], start + (marker_times[sent_markers] - first) / speed)
                sent_markers += 1
            following = min(times[sent_spikes] if sent_spikes < len(times) else np.inf,
                            marker_times[sent_markers] if sent_markers < len(labels) else np.inf)
            if stop.wait(min(IDLE, max(0.0, start + (following - first) / speed - pylsl.local_clock()))):
                return Published(sent_spikes, sent_markers, start, first, speed, stopped=True)
        # Samples still on their way are lost with the outlet: keep it while anyone listens.
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and (spike_outlet.have_consumers() or marker_outlet.have_consumers()) \
                and not stop.wait(IDLE):
            pass
        return Published(sent_spikes, sent_markers, start, first, speed, stopped=False)
    finally:
        marker_outlet.close()
        del spike_outlet
