"""Find LSL streams by name, type, source_id and host, with errors that say what was found."""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Sequence

import pylsl

from closedloop.config import Rig, SpikeStreamSpec, StreamSpec, UnitSpec
from closedloop.errors import ClosedLoopError

VERSION = importlib.metadata.version("closedloop")  # written into every outlet's <desc><closedloop>
SPIKE_CHANNELS = ("channel", "unit")
GATHER = 1.0  # s to collect every outlet answering to a name once one has
ANSWER_ALL = 1000  # "as many as answer": resolve until GATHER runs out
OPEN_TIMEOUT = 5.0  # s for a resolved outlet to answer an inlet
CLOCK_REFRESH = 2.0  # s between two readings of LSL's clock offset (liblsl re-measures it about as often)
OFFSET_MOVED = 0.005  # s: an offset move reported as clock_offset_changed (LSL's own jitter: well under 1 ms)
DESC_TIMEOUT = 1.0  # s for an outlet to send its full description (<desc> included)

Channel = tuple[str, str, str]  # a channel's (label, unit, type) as <desc><channels><channel> holds them

log = logging.getLogger(__name__)


def session_stream(spec: StreamSpec, role: str, session_id: str) -> StreamSpec:
    """``spec`` pinned to the outlet of ``role`` (``spikes``, ``photodiode``, ``gaze``) of a simulated
    rig in session ``session_id``: ``source_id`` ``closedloop-<role>-<session_id>``.

    A session finds its simulator's outlets by these ids, so an orphaned or foreign outlet of the
    same name is never picked up. (The marker outlet's is the rig's: :func:`marker_stream`.)
    """
    return spec.model_copy(update={"source_id": f"closedloop-{role}-{session_id}"})


def marker_stream(rig: Rig) -> StreamSpec:
    """The rig's marker stream pinned to a source_id that stays the same from session to session (so
    a recorder can pin it in advance): ``[markers] source_id``, else ``closedloop-markers-<rig name>``.
    Which session sent it says its ``<desc><closedloop><session_id>``."""
    if rig.markers.source_id is not None:
        return rig.markers
    return rig.markers.model_copy(update={"source_id": f"closedloop-markers-{rig.rig.name}"})


def append_tree(parent: pylsl.info.XMLElement, name: str, value: object) -> None:
    """Append ``value`` to the XML element ``parent`` (a ``pylsl`` desc element) as element ``name``:
    a dict as an element of child elements, a list as one element ``name`` per item, anything
    else as text."""
    if isinstance(value, list):
        for item in value:
            append_tree(parent, name, item)
    elif isinstance(value, dict):
        element = parent.append_child(name)
        for key, item in value.items():
            append_tree(element, key, item)
    else:
        parent.append_child_value(name, str(value))


def desc_value(info: pylsl.StreamInfo, path: str) -> str:
    """The text at ``path`` (``closedloop/session_id``) in ``info``'s ``<desc>``; ``""`` when absent."""
    *parents, leaf = path.split("/")
    element = info.desc()
    for name in parents:
        element = element.child(name)
    return element.child_value(leaf)


def outlet_info(spec: StreamSpec, source_id: str, channels: Sequence[Channel], rate: float, channel_format: int,
                model: str, own: dict | None = None, units: Sequence[UnitSpec] = ()) -> pylsl.StreamInfo:
    """The description of an outlet closedloop opens, laid out as the XDF meta-data conventions ask
    (https://github.com/sccn/xdf/wiki/Meta-Data), so that any LSL tool can read what it carries.

    ``<desc>`` holds ``<channels>`` (each ``<channel>``: ``<label>``, ``<unit>``, ``<type>``),
    ``<acquisition>`` (``<manufacturer>`` closedloop, ``<model>``), ``<units>`` when ``units`` are
    given (each ``<unit>``: ``<name>``, ``<channel>``, ``<unit>``: a recorded unit and its
    (channel, unit) pair), and ``<closedloop>``: ``<version>`` (the package's) and ``own``'s
    entries (None left out; dicts become nested elements).

    Parameters
    ----------
    spec : StreamSpec
        The stream's name and type.
    source_id : str
        Its source_id.
    channels : sequence of (label, unit, type)
        One per channel.
    rate : float
        Nominal rate (Hz), ``pylsl.IRREGULAR_RATE`` for an event stream.
    channel_format : int
        ``pylsl.cf_*``.
    model : str
        What sends it (``simulated rig``, ``stimulus presentation``, ``replay``).
    own : dict, optional
        closedloop's own keys (``session_id``, ``rig``, ...).
    units : sequence of UnitSpec
        The units a spike stream carries.
    """
    info = pylsl.StreamInfo(spec.name, spec.type, len(channels), rate, channel_format, source_id)
    desc = info.desc()
    append_tree(desc, "channels", {"channel": [{"label": label, "unit": unit, "type": kind}
                                               for label, unit, kind in channels]})
    append_tree(desc, "acquisition", {"manufacturer": "closedloop", "model": model})
    if units:
        append_tree(desc, "units", {"unit": [{"name": u.name, "channel": u.channel, "unit": u.unit} for u in units]})
    append_tree(desc, "closedloop", {"version": VERSION, **{k: v for k, v in (own or {}).items() if v is not None}})
    return info


def describe(info: pylsl.StreamInfo) -> str:
    """``name (type, source_id 'x' on host 'h')``: enough to tell two outlets apart."""
    return f"{info.name()} ({info.type()}, source_id {info.source_id()!r} on host {info.hostname()!r})"


def _mismatch(spec: StreamSpec, info: pylsl.StreamInfo, desc: dict[str, str]) -> str | None:
    """Why ``info`` is not the pinned stream, or None when it is (``desc``: see :func:`resolve_stream`)."""
    for field, value in (("type", info.type()), ("source_id", info.source_id()), ("host", info.hostname())):
        wanted = getattr(spec, field)
        if wanted is not None and wanted != value:
            return f"{field} {value!r}, not {wanted!r}"
    if not desc:
        return None
    try:  # a resolved stream carries no <desc>: ask its outlet for the full description
        described = pylsl.StreamInlet(info).info(timeout=DESC_TIMEOUT)
    except (pylsl.util.TimeoutError, pylsl.util.LostError):
        return f"its description could not be read within {DESC_TIMEOUT:g} s"
    for path, wanted in desc.items():
        value = desc_value(described, path)
        if value != wanted:
            return f"desc {path} {value!r}, not {wanted!r}"
    return None


def resolve_stream(spec: StreamSpec, timeout: float, desc: dict[str, str] | None = None) -> pylsl.StreamInfo:
    """The one stream matching every pinned field of ``spec`` and every entry of ``desc``.

    Parameters
    ----------
    spec : StreamSpec
        Name, type, and optionally source_id and host.
    timeout : float
        Seconds to wait for it.
    desc : dict, optional
        Texts the stream's ``<desc>`` must hold, by path (``{"closedloop/session_id": "s1"}``).

    Raises
    ------
    ClosedLoopError
        When none appears within ``timeout`` seconds (listing the streams that
        are on the network and why same-named ones were refused), or when
        several match (pin ``source_id`` or ``host`` to choose).
    """
    deadline = time.monotonic() + timeout
    reasons: dict[str, str | None] = {}  # by the outlet's uid: each one's description is asked once

    def refusal(info: pylsl.StreamInfo) -> str | None:
        if info.uid() not in reasons:
            reasons[info.uid()] = _mismatch(spec, info, desc or {})
        return reasons[info.uid()]

    found = pylsl.resolve_byprop("name", spec.name, minimum=1, timeout=timeout)
    if found:  # give every same-named outlet on the network a moment to answer
        found = pylsl.resolve_byprop("name", spec.name, minimum=ANSWER_ALL, timeout=GATHER) or found
    matching = [info for info in found if refusal(info) is None]
    while not matching and found and time.monotonic() < deadline:  # the pinned one may come later
        found = pylsl.resolve_byprop("name", spec.name, minimum=len(found) + 1,
                                     timeout=deadline - time.monotonic()) or found
        matching = [info for info in found if refusal(info) is None]
    if len(matching) == 1:
        return matching[0]
    if len(matching) > 1:
        listed = "; ".join(describe(i) for i in matching)
        raise ClosedLoopError(f"LSL stream {spec.name!r}: {len(matching)} outlets match ({listed}); "
                              "pin source_id or host in the rig file")
    if found:
        refused = "; ".join(f"{describe(i)}: {refusal(i)}" for i in found)
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


def spike_stream_info(spec: StreamSpec, source_id: str, units: Sequence[UnitSpec] = (), model: str = "simulated rig",
                      own: dict | None = None) -> pylsl.StreamInfo:
    """Description of an event stream carrying one int32 (channel, unit) sample per spike; ``<desc>``
    lists ``units`` (:func:`outlet_info`: ``model``, ``own``)."""
    return outlet_info(spec, source_id, [("channel", "", "ChannelIndex"), ("unit", "", "UnitIndex")],
                       pylsl.IRREGULAR_RATE, pylsl.cf_int32, model, own, units)


def count_stream_info(spec: StreamSpec, source_id: str, channels: int, rate: float, units: Sequence[UnitSpec] = (),
                      model: str = "simulated rig", own: dict | None = None) -> pylsl.StreamInfo:
    """Description of a binned-count stream: ``channels`` int32 counts (spikes per bin), ``rate`` bins per
    second. Stream channel ``c`` is labelled with the names of the ``units`` on channel ``c`` (joined by
    ``+``), else ``ch<c>``; ``<desc>`` lists the units too (:func:`outlet_info`: ``model``, ``own``)."""
    names: dict[int, list[str]] = {}
    for u in units:
        names.setdefault(u.channel, []).append(u.name)
    labels = ["+".join(names.get(c, [f"ch{c}"])) for c in range(1, channels + 1)]
    return outlet_info(spec, source_id, [(label, "spikes", "SpikeCount") for label in labels], rate,
                       pylsl.cf_int32, model, own, units)


def gaze_stream_info(spec: StreamSpec, source_id: str, rate: float, model: str = "simulated rig",
                     own: dict | None = None) -> pylsl.StreamInfo:
    """Description of a gaze stream: float32 x, y (degrees from the fixation point), ``rate`` samples/s."""
    return outlet_info(spec, source_id, [("x", "degrees", "ScreenX"), ("y", "degrees", "ScreenY")], rate,
                       pylsl.cf_float32, model, own)


def photodiode_stream_info(spec: StreamSpec, source_id: str, rate: float, unit: str = "a.u.",
                           model: str = "simulated rig", own: dict | None = None) -> pylsl.StreamInfo:
    """Description of an analog photodiode stream: one float32 channel ``light`` (``unit``: ``V`` for a
    voltage, ``a.u.`` for a trace scaled otherwise), ``rate`` samples/s."""
    return outlet_info(spec, source_id, [("light", unit, "Light")], rate, pylsl.cf_float32, model, own)


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

    def info(self, timeout: float = OPEN_TIMEOUT) -> pylsl.StreamInfo:
        """The stream's full description, its ``<desc>`` included (a resolved one has none);
        asked of the outlet, before or after ``start``.

        Raises
        ------
        ClosedLoopError
            The outlet did not answer within ``timeout`` s.
        """
        try:
            return self._inlet.info(timeout=timeout)
        except pylsl.util.TimeoutError:
            raise ClosedLoopError(f"LSL stream {self.name!r}: its outlet did not answer within "
                                  f"{timeout:g} s") from None

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


def stream_header(info: pylsl.StreamInfo, key: str, role: str) -> dict:
    """A recorded stream's header (:class:`closedloop.record.schema.StreamHeader`) from its full
    description (:meth:`InletThread.info`): each channel's ``label``, ``unit`` and ``type`` from
    ``<desc><channels><channel>``, else ``ch1``.., ``""``, ``""``.

    Parameters
    ----------
    info : pylsl.StreamInfo
        The stream's full description.
    key : str
        Its file name's stem in the session (``gaze``, ``photodiode``, or its file-safe name).
    role : str
        ``gaze``, ``photodiode`` or ``record``.
    """
    count = info.channel_count()
    described = {"label": [], "unit": [], "type": []}
    channel = info.desc().child("channels").child("channel")
    while not channel.empty() and len(described["label"]) < count:
        for field, values in described.items():
            values.append(channel.child_value(field))
        channel = channel.next_sibling("channel")
    labels = [label or f"ch{k + 1}" for k, label in enumerate(described["label"])]
    labels += [f"ch{k + 1}" for k in range(len(labels), count)]
    pad = [""] * (count - len(described["unit"]))
    return {"key": key, "role": role, "name": info.name(), "type": info.type(), "source_id": info.source_id(),
            "hostname": info.hostname(), "channel_count": count, "nominal_srate": info.nominal_srate(),
            "labels": labels, "units": described["unit"] + pad, "types": described["type"] + pad}
