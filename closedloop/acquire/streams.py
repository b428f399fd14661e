"""Find LSL streams by name, type, source_id and host, with errors that say what was found."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pylsl

from closedloop.config import SpikeStreamSpec, StreamSpec
from closedloop.errors import ClosedLoopError

SPIKE_CHANNELS = ("channel", "unit")
GATHER = 1.0  # s to collect every outlet answering to a name once one has
ANSWER_ALL = 1000  # "as many as answer": resolve until GATHER runs out
OPEN_TIMEOUT = 5.0  # s for a resolved outlet to answer an inlet
CLOCK_REFRESH = 2.0  # s between two readings of LSL's clock offset (liblsl re-measures it about as often)
OFFSET_MOVED = 0.005  # s: an offset move reported as clock_offset_changed (LSL's own jitter: well under 1 ms)

log = logging.getLogger(__name__)


def session_stream(spec: StreamSpec, role: str, session_id: str) -> StreamSpec:
    """``spec`` pinned to the outlet of ``role`` (``markers``, ``spikes``, ``photodiode``, ``gaze``)
    in session ``session_id``: ``source_id`` ``closedloop-<role>-<session_id>``.

    A session and its simulator find each other's outlets by these ids, so an orphaned or foreign
    outlet of the same name is never picked up.
    """
    return spec.model_copy(update={"source_id": f"closedloop-{role}-{session_id}"})


def describe(info: pylsl.StreamInfo) -> str:
    """``name (type, source_id 'x' on host 'h')``: enough to tell two outlets apart."""
    return f"{info.name()} ({info.type()}, source_id {info.source_id()!r} on host {info.hostname()!r})"


def _mismatch(spec: StreamSpec, info: pylsl.StreamInfo) -> str | None:
    """Why ``info`` is not the pinned stream, or None when it is."""
    for field, value in (("type", info.type()), ("source_id", info.source_id()), ("host", info.hostname())):
        wanted = getattr(spec, field)
        if wanted is not None and wanted != value:
            return f"{field} {value!r}, not {wanted!r}"
    return None


def resolve_stream(spec: StreamSpec, timeout: float) -> pylsl.StreamInfo:
    """The one stream matching every pinned field of ``spec``.

    Raises
    ------
    ClosedLoopError
        When none appears within ``timeout`` seconds (listing the streams that
        are on the network and why same-named ones were refused), or when
        several match (pin ``source_id`` or ``host`` to choose).
    """
    deadline = time.monotonic() + timeout
    found = pylsl.resolve_byprop("name", spec.name, minimum=1, timeout=timeout)
    if found:  # give every same-named outlet on the network a moment to answer
        found = pylsl.resolve_byprop("name", spec.name, minimum=ANSWER_ALL, timeout=GATHER) or found
    matching = [info for info in found if _mismatch(spec, info) is None]
    while not matching and found and time.monotonic() < deadline:  # the pinned one may come later
        found = pylsl.resolve_byprop("name", spec.name, minimum=len(found) + 1,
                                     timeout=deadline - time.monotonic()) or found
        matching = [info for info in found if _mismatch(spec, info) is None]
    if len(matching) == 1:
        return matching[0]
    if len(matching) > 1:
        listed = "; ".join(describe(i) for i in matching)
        raise ClosedLoopError(f"LSL stream {spec.name!r}: {len(matching)} outlets match ({listed}); "
                              "pin source_id or host in the rig file")
    if found:
        refused = "; ".join(f"{describe(i)}: {_mismatch(spec, i)}" for i in found)
        raise ClosedLoopError(f"LSL stream {spec.name!r}: refused same-named outlets that are not "
                              f"the one wanted: {refused}")
    others = pylsl.resolve_streams(wait_time=0.5)
    listed = ", ".join(sorted(f"{i.name()} ({i.type()})" for i in others)) or "none"
    raise ClosedLoopError(
        f"LSL stream {spec.name!r} of type {spec.type!r} not found within {timeout:g} s; "
        f"streams found: {listed}"
    )


def check_spike_stream(info: pylsl.StreamInfo, spec: SpikeStreamSpec, channels: int = 0) -> None:
    """Refuse a spike stream whose layout does not match its declared format.

    ``events``: two int32 channels (channel, unit), irregular rate.
    ``counts``: a regular rate and at least ``channels`` numeric channels
    (the highest stream channel the rig's units name).
    """
    name = info.name()
    if spec.format == "events":
        if info.channel_count() != len(SPIKE_CHANNELS):
            raise ClosedLoopError(f"LSL stream {name!r}: expected {len(SPIKE_CHANNELS)} channels "
                                  f"(channel, unit) for format 'events', found {info.channel_count()}")
        if info.channel_format() != pylsl.cf_int32:
            raise ClosedLoopError(f"LSL stream {name!r}: expected int32 samples for format 'events'")
        return
    if info.nominal_srate() <= 0:
        raise ClosedLoopError(f"LSL stream {name!r}: format 'counts' needs a regular sampling rate, "
                              "found an irregular stream")
    if info.channel_format() == pylsl.cf_string:
        raise ClosedLoopError(f"LSL stream {name!r}: format 'counts' needs numeric samples, found strings")
    if info.channel_count() < channels:
        raise ClosedLoopError(f"LSL stream {name!r}: the rig's units name channel {channels}, "
                              f"but the stream has {info.channel_count()} channels")


def spike_stream_info(spec: StreamSpec, source_id: str) -> pylsl.StreamInfo:
    """Description of an event stream carrying one (channel, unit) sample per spike."""
    info = pylsl.StreamInfo(spec.name, spec.type, len(SPIKE_CHANNELS), pylsl.IRREGULAR_RATE,
                            pylsl.cf_int32, source_id)
    channels = info.desc().append_child("channels")
    for label in SPIKE_CHANNELS:
        channels.append_child("channel").append_child_value("label", label)
    return info


def count_stream_info(spec: StreamSpec, source_id: str, channels: int, rate: float) -> pylsl.StreamInfo:
    """Description of a binned-count stream: ``channels`` int32 counts, ``rate`` bins per second."""
    info = pylsl.StreamInfo(spec.name, spec.type, channels, rate, pylsl.cf_int32, source_id)
    described = info.desc().append_child("channels")
    for k in range(channels):
        described.append_child("channel").append_child_value("label", f"ch{k + 1}")
    return info


class InletThread:
    """An LSL inlet pulled on its own thread (subclasses write ``_pull``).

    ``start`` opens the stream and takes LSL's clock offset (``offset``, s to add to a stamp for
    this machine's clock); an exception in the thread is kept in ``error`` for the session loop
    to raise, never swallowed. ``stop`` may follow a ``start`` that failed.

    Clock offset. ``_pull`` calls :meth:`_refresh_offset` after every pull: every
    :data:`CLOCK_REFRESH` s it reads liblsl's latest offset estimate (liblsl re-measures it in the
    background; reading never blocks the thread, and while there is none, as just after a
    reconnection, the last one stays) and applies it to every stamp pulled from then on. A move
    of more than :data:`OFFSET_MOVED` s is logged and reported to ``on_event`` as
    ``clock_offset_changed``.

    What this handles: a step of the sending host's LSL clock, or another host behind the same
    source_id after a reconnection, within about ``CLOCK_REFRESH`` s plus liblsl's own update
    interval (stamps pulled before then carry the old offset). What it cannot: a step of the
    stamps alone (acquisition software stamping on a clock of its own that is set or restarted,
    on an unchanged LSL clock) leaves the offset where it was; only event sync
    (:class:`~closedloop.align.clock.ClockMap`) can see and follow it.

    Parameters
    ----------
    info : pylsl.StreamInfo
        The resolved stream.
    max_buflen : int
        liblsl's buffer: seconds of a regular stream, hundreds of samples of an irregular one.
    thread_name : str
        The pulling thread's name.
    on_event : callable(dict), optional
        Receives ``clock_offset_changed`` (``offset``, ``previous``, ``seconds`` moved, s).
    """

    def __init__(self, info: pylsl.StreamInfo, max_buflen: int, thread_name: str,
                 on_event: Callable[[dict], None] | None = None):
        self.name = info.name()
        self._inlet = pylsl.StreamInlet(info, max_buflen=max_buflen, recover=True)
        self.offset = 0.0
        self.error: BaseException | None = None
        self._on_event = on_event
        self._next_refresh = 0.0  # s, monotonic: when the offset is read again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Open the stream, take its clock offset and start pulling.

        Raises
        ------
        ClosedLoopError
            The outlet did not answer within ``timeout`` s.
        """
        try:
            self._inlet.open_stream(timeout=timeout)
            self.offset = self._inlet.time_correction(timeout=timeout)
        except pylsl.util.TimeoutError:
            raise ClosedLoopError(f"LSL stream {self.name!r}: its outlet did not answer within "
                                  f"{timeout:g} s") from None
        self._next_refresh = time.monotonic() + CLOCK_REFRESH
        self._thread.start()

    def stop(self) -> None:
        """Stop pulling (if it started) and close the stream."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        self._inlet.close_stream()

    def reconnected(self) -> bool:
        """Whether liblsl reconnected the inlet (the outlet restarted, or the connection broke and
        was made again) since the last call; from the pulling thread only."""
        return self._inlet.was_clock_reset()

    def _refresh_offset(self) -> None:
        """Every :data:`CLOCK_REFRESH` s, take liblsl's latest clock offset, without waiting."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + CLOCK_REFRESH
        try:
            offset = self._inlet.time_correction(timeout=0.0)
        except pylsl.util.TimeoutError:  # being re-measured (a reconnection): keep the last one
            return
        previous, self.offset = self.offset, offset
        if abs(offset - previous) > OFFSET_MOVED:
            log.warning("LSL stream %r: clock offset moved by %+.6f s", self.name, offset - previous)
            if self._on_event is not None:
                self._on_event({"kind": "clock_offset_changed", "stream": self.name, "offset": offset,
                                "previous": previous, "seconds": offset - previous,
                                "time": pylsl.local_clock()})

    def _run(self) -> None:
        try:
            self._pull()
        except BaseException as exc:  # surfaced by the session loop
            self.error = exc

    def _pull(self) -> None:
        """Pull until ``self._stop`` is set."""
        raise NotImplementedError
