"""The schema of every record a session directory holds, declared once.

:class:`closedloop.record.SessionWriter` checks each record against it before
writing it, and :func:`closedloop.record.read_session` checks each one it reads,
so every reader can rely on the keys below. Records may carry more keys than
declared (the loop logs diagnostics freely); the declared ones are strict: no
coercion (``1.0`` is not an int, ``true`` is not 1), times finite.

Times are seconds on the stimulus PC's LSL clock; counts are spikes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from closedloop.record.manifest import FIXED, MANIFEST
from closedloop.stimuli import StimulusPool

SPIKE_DTYPE = np.dtype([("time", "<f8"), ("channel", "<i4"), ("unit", "<i4")])  # spikes.bin: s, LSL clock
FRAME_DTYPE = np.dtype("<f8")  # frames.bin: every flip, s, LSL clock
BINARY = {"spikes": SPIKE_DTYPE, "frames": FRAME_DTYPE}  # name.bin: fixed-size records
STREAMS = "streams"  # folder of the recorded LSL streams: <key>.json (header) and <key>.bin (samples)


def stream_dtype(channels: int) -> np.dtype:
    """``streams/<key>.bin``'s rows: time (s, LSL clock) and one float64 value per channel, little-endian."""
    return np.dtype([("time", "<f8"), ("values", "<f8", (channels,))])

INT32 = 2**31  # indices and counts fit int32 (the arrays readers build from them)
Index = Annotated[int, Field(ge=0, lt=INT32)]
Count = Annotated[int, Field(ge=0, lt=INT32)]
Time = Annotated[float, Field(allow_inf_nan=False)]
Role = Literal["chosen", "heldout", "control", "requeued", "fallback"]


class _Record(BaseModel):
    """Declared keys strict, undeclared keys kept. A key with a default may be absent; when
    present it has its declared type (null only where the type says ``| None``)."""

    model_config = ConfigDict(extra="allow", strict=True)


class Marker(_Record):
    """``markers.jsonl``: one per presentation, written when its image left the screen."""

    index: Index = Field(description="presentation number, from 0, unique in the session")
    stimulus: str = Field(description="stimulus id: the pool's id at pool_index")
    pool_index: Index = Field(description="position in the pool (synthesized stimuli included)")
    role: Role = Field(description="why it was shown")
    onset: Time = Field(description="flip of the first frame with the image, s")
    offset: Time = Field(description="flip of the first frame without it, s (not before onset)")
    trial: Index = Field(None, description="fixation trial")
    dropped_frames: Count = Field(0, description="frames shown late")
    frame_intervals: list[Time] = Field([], description="s between the presentation's flips")
    aborted: bool = Field(False, description="a fixation break took the image off early")

    @field_validator("offset")
    @classmethod
    def _not_before_onset(cls, offset: float, info: ValidationInfo) -> float:
        onset = info.data.get("onset")
        if onset is not None and offset < onset:
            raise ValueError(f"{offset!r} is before the onset {onset!r}")
        return offset


class Response(_Record):
    """``responses.jsonl``: one per presentation whose response window closed."""

    index: Index = Field(description="the presentation (a marker's index), answered once")
    onset: Time = Field(description="window start reference: the flip, photodiode-corrected where measured, s")
    counts: list[Count] = Field(description="spikes in the window per rig.json recorded unit, in its order")
    pool_index: Index = Field(description="the marker's pool index")
    role: Role = Field(description="the marker's role")
    stimulus: str = Field(None, description="the marker's stimulus id")
    gap: bool = Field(False, description="the window overlapped a spike-stream gap: counts incomplete")
    aborted: bool = Field(False, description="the presentation was cut by a fixation break")
    flip: Time = Field(None, description="the uncorrected flip when a photodiode moved the onset, s")
    photodiode_correction: Time = Field(None, description="light minus flip, s")
    photodiode_missed: bool = Field(False, description="a photodiode rig saw no light change")


class Selection(_Record):
    """``selections.jsonl``: one per model decision."""

    chosen: list[Index] = Field(description="pool indices to show next, best first")
    strategy: str = Field(None, description="the strategy that chose")
    responses: Count = Field(None, description="trained-on responses the decision knew of")
    received: Count = Field(None, description="responses handed to the worker so far")
    core_version: Count = Field(None, description="learner refreshes swapped in so far")
    cores_trained_on: Count = Field(None, description="responses the current core was fitted on")
    turnaround_ms: float = Field(None, description="last response to decision, ms")
    added: list[Index] = Field(None, description="pool indices of stimuli the strategy made")
    state: dict | None = Field(None, description="what the strategy logs (e.g. a posterior)")
    predicted: list[list[Annotated[float, Field(allow_inf_nan=False)]]] | None = Field(
        None, description="the model's expected count per chosen image (as chosen) per rig.json recorded unit "
                          "(in its order) at the decision, spikes in the response window")

    @field_validator("predicted")
    @classmethod
    def _one_per_chosen(cls, predicted: list[list[float]] | None, info: ValidationInfo) -> list[list[float]] | None:
        chosen = info.data.get("chosen")
        if predicted is not None and chosen is not None and len(predicted) != len(chosen):
            raise ValueError(f"{len(predicted)} entries for {len(chosen)} chosen images")
        return predicted


class Accuracy(_Record):
    """``accuracy.jsonl``: held-out prediction accuracy over time."""

    responses: Count = Field(description="trained-on responses the model had learned")
    r_observed: list[float | None] = Field(None, description="Pearson r per unit, observed counts")
    r_true: list[float | None] = Field(None, description="Pearson r per unit, true rates (simulated)")


class Event(_Record):
    """``events.jsonl``: anything else that happened; the kinds below carry what readers use."""

    kind: str = Field(description="what happened")


class SpikeGap(Event):
    """A stretch of lost spikes: windows overlapping it are flagged ``gap``."""

    start: Time = Field(description="first moment without spikes, s")
    end: Time = Field(description="end of the gap, s")


class Resumed(Event):
    """``closedloop resume`` went on from here (a new model worker lifetime)."""

    from_presentation: Index = Field(description="first presentation of the resumed run")


class Trial(Event):
    """How a fixation trial ended."""

    trial: Index = Field(description="trial number")
    end: str = Field(description="how it ended: completed, fixation_break, no_fixation")


class DeadlineMiss(Event):
    """The model had no image ready: a random fallback was shown."""

    index: Index = Field(description="presentation that showed a fallback image")


EVENTS: dict[str, type[Event]] = {"spike_gap": SpikeGap, "resumed": Resumed, "trial": Trial,
                                  "deadline_miss": DeadlineMiss}
LOGS: dict[str, type[_Record]] = {"markers": Marker, "responses": Response, "selections": Selection,
                                  "accuracy": Accuracy, "events": Event}


class _ProtocolHead(_Record):
    """``protocol.json``'s ``protocol`` table."""

    name: str
    seed: int
    presentations: Annotated[int, Field(gt=0, lt=INT32)]
    on_frames: Count = Field(None)


class _Window(_Record):
    """The response window."""

    start: Annotated[float, Field(ge=0, allow_inf_nan=False, description="s after onset")]
    end: Annotated[float, Field(gt=0, allow_inf_nan=False, description="s after onset")]


class _Selection(_Record):
    """``protocol.json``'s ``selection`` table."""

    strategy: str


class Protocol(_Record):
    """``protocol.json``: the resolved protocol (:class:`closedloop.config.Protocol`); only the
    keys the session's readers use are checked here."""

    protocol: _ProtocolHead
    window: _Window
    selection: _Selection


class RecordedUnit(_Record):
    """A unit whose spikes the responses count."""

    name: str
    channel: int
    unit: int


class _RigHead(_Record):
    """``rig.json``'s ``rig`` table."""

    name: str = Field(None)
    simulated: bool = Field(None)


class _Display(_Record):
    """``rig.json``'s ``display`` table."""

    refresh_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(None, description="Hz")


class _Clock(_Record):
    """``rig.json``'s ``clock`` table."""

    sync: str = Field(None)


class Rig(_Record):
    """``rig.json``: the resolved rig (:class:`closedloop.config.Rig`) and ``recorded_units``, the
    order of every response's counts; only the keys the session's readers use are checked here."""

    rig: _RigHead
    display: _Display = Field(None)
    clock: _Clock = Field(None)
    recorded_units: list[RecordedUnit] = Field(None, description="units in the order of the counts")


class _SummaryClock(_Record):
    """How spikes were put on the stimulus clock, and how well (us)."""

    pairs: Count | None = None
    residual_median_us: float | None = None
    residual_max_us: float | None = None


class Summary(_Record):
    """``summary.json``: written when the run ended."""

    status: str = Field(None, description="complete, or aborted (the run failed)")
    duration_s: float = Field(None, description="s")
    clock: _SummaryClock = Field(None)


class Manifest(_Record):
    """``session.json``: written once when the session is created."""

    id: str = Field(description="random session id")
    created: str = Field(description="creation time, ISO 8601 UTC")
    sha256: dict[str, Annotated[str, Field(pattern="^[0-9a-f]{64}$")]] = Field(
        description="hex digest of protocol.json, rig.json and stimuli.npz as first written")

    @field_validator("sha256")
    @classmethod
    def _every_fixed_file(cls, digests: dict[str, str]) -> dict[str, str]:
        if sorted(digests) != sorted(FIXED):
            raise ValueError(f"needs exactly {', '.join(FIXED)}")
        return digests


class StreamHeader(_Record):
    """``streams/<key>.json``: a recorded LSL stream as its outlet described it, written when the
    stream is opened, before any of its samples."""

    key: Annotated[str, Field(pattern="^[A-Za-z0-9-]+$", description="the file name's stem")]
    role: Literal["gaze", "photodiode", "record"] = Field(description="what the session uses it for")
    name: str
    type: str
    source_id: str
    hostname: str
    channel_count: Annotated[int, Field(gt=0, le=1024)]
    nominal_srate: Annotated[float, Field(ge=0, allow_inf_nan=False, description="Hz, 0: irregular")]
    labels: list[str] = Field(description="one per channel")
    units: list[str] = Field(description="one per channel, '' when the outlet gave none")
    types: list[str] = Field(description="one per channel, '' when the outlet gave none")

    @field_validator("labels", "units", "types")
    @classmethod
    def _one_per_channel(cls, values: list[str], info: ValidationInfo) -> list[str]:
        channels = info.data.get("channel_count")
        if channels is not None and len(values) != channels:
            raise ValueError(f"{len(values)} entries for {channels} channels")
        return values


JSON_FILES: dict[str, type[_Record]] = {"protocol.json": Protocol, "rig.json": Rig, "summary.json": Summary,
                                        MANIFEST: Manifest}


def problem(model: type[_Record], record: object) -> str | None:
    """What is wrong with ``record`` for ``model``, as ``"field 'x': why"``; None if nothing.

    Parameters
    ----------
    model : type
        One of the record models of this module (``LOGS``, ``JSON_FILES``).
    record : object
        A record as ``json.loads`` returns it.
    """
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    if model is Event and isinstance(record.get("kind"), str):
        model = EVENTS.get(record["kind"], Event)
    try:
        model.model_validate(record)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        value = "" if error["type"] == "missing" else f" (got {_short(error['input'])})"
        return f"field '{where}': {error['msg']}{value}"
    return None


def binary_problem(records: np.ndarray) -> str | None:
    """What is wrong with the records of ``<name>.bin`` (a time that is not finite), or None."""
    times = records["time"] if records.dtype.names else records
    bad = np.flatnonzero(~np.isfinite(times))
    return f"record {bad[0]}: time {float(times[bad[0]])!r} is not finite" if len(bad) else None


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class RecordedStream:
    """A recorded LSL stream: its header (:class:`StreamHeader`) and its samples."""

    header: dict
    times: np.ndarray  # (n,) float64, s, LSL clock of the stimulus PC
    values: np.ndarray  # (n, channel_count) float64

    @property
    def labels(self) -> list[str]:
        return self.header["labels"]

    @property
    def units(self) -> list[str]:
        return self.header["units"]

    @property
    def role(self) -> str:
        """``gaze``, ``photodiode`` or ``record`` (a rig's ``[[record]]`` stream)."""
        return self.header["role"]

    @property
    def name(self) -> str:
        return self.header["name"]

    @property
    def rate(self) -> float:
        """Nominal sampling rate, Hz (0: irregular)."""
        return self.header["nominal_srate"]


@dataclass
class SessionRecord:
    """Everything a session directory holds, read back and checked
    (:mod:`closedloop.record.schema`, :func:`closedloop.record.checks.check_consistent`)."""

    path: Path
    protocol: dict
    rig: dict
    pool: StimulusPool  # stimuli.npz, then the stimuli added in synthesized/
    markers: list[dict]
    responses: list[dict]
    selections: list[dict]
    accuracy: list[dict]
    events: list[dict]
    spikes: np.ndarray  # SPIKE_DTYPE records
    frames: np.ndarray  # every flip, s (float64)
    summary: dict | None  # None when the run was killed before it ended
    manifest: dict | None = None  # session.json; None for sessions from before it was written
    streams: dict[str, RecordedStream] = field(default_factory=dict)  # streams/, by key; {} for older sessions
