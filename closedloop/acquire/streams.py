"""Find LSL streams by name and type, with errors that list what was found."""

from __future__ import annotations

import pylsl

from closedloop.config import StreamSpec
from closedloop.errors import ClosedLoopError

SPIKE_CHANNELS = ("channel", "unit")


def resolve_stream(spec: StreamSpec, timeout: float) -> pylsl.StreamInfo:
    """The stream named ``spec.name`` with type ``spec.type``.

    Raises
    ------
    ClosedLoopError
        When no such stream appears within ``timeout`` seconds; the message
        lists the streams that are on the network.
    """
    found = pylsl.resolve_byprop("name", spec.name, minimum=1, timeout=timeout)
    matching = [info for info in found if info.type() == spec.type]
    if matching:
        return matching[0]
    others = pylsl.resolve_streams(wait_time=0.5)
    listed = ", ".join(sorted(f"{i.name()} ({i.type()})" for i in others)) or "none"
    raise ClosedLoopError(
        f"LSL stream {spec.name!r} of type {spec.type!r} not found within {timeout:g} s; "
        f"streams found: {listed}"
    )


def check_spike_stream(info: pylsl.StreamInfo) -> None:
    """Refuse a spike stream that is not one int32 (channel, unit) sample per spike."""
    if info.channel_count() != len(SPIKE_CHANNELS):
        raise ClosedLoopError(
            f"LSL stream {info.name()!r}: expected {len(SPIKE_CHANNELS)} channels "
            f"(channel, unit), found {info.channel_count()}"
        )
    if info.channel_format() != pylsl.cf_int32:
        raise ClosedLoopError(f"LSL stream {info.name()!r}: expected int32 samples")


def spike_stream_info(spec: StreamSpec, source_id: str) -> pylsl.StreamInfo:
    """Description of an event stream carrying one (channel, unit) sample per spike."""
    info = pylsl.StreamInfo(spec.name, spec.type, len(SPIKE_CHANNELS), pylsl.IRREGULAR_RATE,
                            pylsl.cf_int32, source_id)
    channels = info.desc().append_child("channels")
    for label in SPIKE_CHANNELS:
        channels.append_child("channel").append_child_value("label", label)
    return info
