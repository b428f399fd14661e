"""Recording any numeric LSL stream over real LSL: every chunk handed on with its outlet's channel
description; a string stream refused."""

from __future__ import annotations

import numpy as np
import pylsl
import pytest

from closedloop.acquire.recorded import RecordedInlet
from closedloop.acquire.streams import stream_header
from closedloop.errors import ClosedLoopError

LABELS = ["force", "position", "licks"]
UNITS = ["newtons", "mm", ""]  # the third channel names no unit


def _described(name: str) -> pylsl.StreamInfo:
    """A 3-channel float stream at 100 Hz whose <desc> labels each channel (and gives two units and a type)."""
    info = pylsl.StreamInfo(name, "Behaviour", 3, 100.0, pylsl.cf_float32, f"{name}-source")
    channels = info.desc().append_child("channels")
    for label, unit in zip(LABELS, UNITS):
        channel = channels.append_child("channel")
        channel.append_child_value("label", label)
        if unit:
            channel.append_child_value("unit", unit)
    channels.child("channel").append_child_value("type", "Force")
    return info


def test_every_chunk_is_handed_on_with_the_outlet_description(stream_name, wait_until):
    outlet = pylsl.StreamOutlet(_described(stream_name))
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    inlet = RecordedInlet(pylsl.resolve_byprop("name", stream_name, timeout=5)[0],
                          lambda times, values: chunks.append((times, values)))
    header = stream_header(inlet.info(), "bench", "record")
    assert header == {"key": "bench", "role": "record", "name": stream_name, "type": "Behaviour",
                      "source_id": f"{stream_name}-source", "hostname": header["hostname"], "channel_count": 3,
                      "nominal_srate": 100.0, "labels": LABELS, "units": UNITS, "types": ["Force", "", ""]}
    inlet.start()
    try:
        now = pylsl.local_clock()
        sent = np.arange(60, dtype=np.float32).reshape(20, 3)
        stamps = now + 0.01 * np.arange(20)
        outlet.push_chunk(sent, stamps)
        wait_until(lambda: inlet.samples == 20, "20 samples pulled")
    finally:
        inlet.stop()
    times = np.concatenate([t for t, _ in chunks])
    values = np.concatenate([v for _, v in chunks])
    np.testing.assert_array_equal(values, sent)
    np.testing.assert_allclose(times, stamps + inlet.offset)  # on this machine's clock


def test_a_stream_without_channel_description_gets_numbered_labels(stream_name):
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(stream_name, "Misc", 2, pylsl.IRREGULAR_RATE, pylsl.cf_int32,
                                                 stream_name))
    inlet = RecordedInlet(pylsl.resolve_byprop("name", stream_name, timeout=5)[0], lambda *_: None)
    header = stream_header(inlet.info(), "misc", "record")
    assert (header["labels"], header["units"], header["types"]) == (["ch1", "ch2"], ["", ""], ["", ""])
    assert header["nominal_srate"] == 0.0
    inlet.stop()
    del outlet


def test_a_string_stream_is_refused_naming_it(stream_name):
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(stream_name, "Markers", 1, 0, pylsl.cf_string, stream_name))
    with pytest.raises(ClosedLoopError, match=rf"^LSL stream '{stream_name}': a recorded stream needs numeric "
                                              r"samples, found strings$"):
        RecordedInlet(pylsl.resolve_byprop("name", stream_name, timeout=5)[0], lambda *_: None)
    del outlet
