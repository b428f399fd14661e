"""Rig and protocol files: TOML, validated on load.

A *rig* file describes the hardware (display, LSL streams, recorded units) or,
for a simulated rig, the digital-twin neurons that stand in for the animal.
A *protocol* file describes the experiment (timing, response window, stimulus
pool, model, selection strategy). Both load into frozen pydantic models; any
error names the file and the field.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from closedloop.errors import ClosedLoopError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------- rig --
class StreamSpec(_Strict):
    """An LSL stream pinned by name and type, and optionally by source_id and host.

    Pinning ``source_id`` and ``host`` makes a stray outlet with the same name
    elsewhere on the lab network a refused, reported mismatch.
    """

    name: str
    type: str
    source_id: str | None = None
    host: str | None = None


class SpikeStreamSpec(StreamSpec):
    """The spike stream and its format.

    ``events``: one int32 sample (channel, unit) per spike, irregular rate,
    stamped at the spike. ``counts``: a regular-rate stream with one channel
    per electrode or unit, each sample the spikes counted in the bin that
    ends at its timestamp; ``[[units]]`` entries name stream channels
    (``channel`` counts from 1, ``unit`` is 1).
    """

    format: Literal["events", "counts"] = "events"
    rate: Annotated[float, Field(gt=0, description="bins/s of a simulated rig's counts stream")] = 1000.0


class PatchSpec(_Strict):
    """A photodiode patch: a square in a screen corner, white while an image is on, else black."""

    corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = "bottom-left"
    size_px: Annotated[int, Field(gt=0)] = 40


class DisplaySpec(_Strict):
    """The stimulus monitor and where the eye is (see ``closedloop.present.geometry``)."""

    backend: Literal["auto", "psychopy", "headless"] = "auto"
    refresh_rate: Annotated[float, Field(gt=0, description="Hz")] = 60.0
    size_px: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = (800, 600)
    size_cm: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (40.0, 30.0)
    distance_cm: Annotated[float, Field(gt=0, description="eye to screen centre")] = 57.0
    fullscreen: bool = False
    photodiode_patch: PatchSpec | None = None


class UnitSpec(_Strict):
    """One recorded unit: the spike stream's (channel, unit) pair and a name."""

    name: str
    channel: int
    unit: int = 1


class NeuronSpec(_Strict):
    """A simulated neuron (or, for a folder of models, several).

    ``kind`` is a built-in V4-like unit (``curvature``, ``dot``,
    ``orientation``), ``compact`` (a published compact model file, or a folder
    of them), or ``onnx`` (a model mapping a batch of images to rates).
    Extra keys are the unit's parameters (see ``closedloop.simulate.neurons``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: Literal["curvature", "dot", "orientation", "compact", "onnx"]
    name: str | None = None
    path: Path | None = None
    limit: Annotated[int | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _path_for_models(self) -> NeuronSpec:
        from closedloop.simulate.neurons import check_params

        if self.kind in ("compact", "onnx") and self.path is None:
            raise ValueError(f"a {self.kind!r} neuron needs a 'path'")
        check_params(self)
        return self


class SimulationSpec(_Strict):
    """How simulated neurons turn images into spikes.

    A neuron's model output ``y`` on an image is z-scored over the calibration
    images (the session's stimulus pool), ``z = (y - mean) / std``; its driven
    rate is ``mean_rate * exp(gain * z) / mean_cal(exp(gain * z))`` spikes/s,
    capped at ``max_rate``. While the image is on screen (delayed by
    ``latency``) the neuron fires at that rate, otherwise at ``baseline_rate``.
    """

    seed: int = 0
    latency: Annotated[float, Field(ge=0, description="s")] = 0.05
    baseline_rate: Annotated[float, Field(ge=0, description="spikes/s")] = 4.0
    mean_rate: Annotated[float, Field(gt=0, description="spikes/s")] = 24.0
    gain: Annotated[float, Field(gt=0)] = 1.0
    max_rate: Annotated[float, Field(gt=0, description="spikes/s")] = 200.0
    display_lag: Annotated[float, Field(ge=0, description="s from the flip to the light")] = 0.0
    photodiode_rate: Annotated[float, Field(gt=0, description="samples/s of the photodiode")] = 1000.0
    clock_offset: Annotated[float, Field(description="s the acquisition clock runs ahead")] = 0.0
    clock_drift_ppm: Annotated[float, Field(ge=-1000, le=1000, description="ppm")] = 0.0
    calibration_images: Annotated[int, Field(gt=1)] = 256
    fixation_breaks: Annotated[float, Field(ge=0, description="breaks/s while fixating")] = 0.0
    break_duration: Annotated[float, Field(gt=0, description="s the gaze stays away")] = 0.5
    gaze_noise: Annotated[float, Field(ge=0, description="degrees, SD of the gaze jitter")] = 0.1
    gaze_rate: Annotated[float, Field(gt=0, description="samples/s of the gaze stream")] = 500.0
    neurons: list[NeuronSpec] = Field(min_length=1)


class PhotodiodeSpec(StreamSpec):
    """An optional photodiode stream that times each onset by the light itself.

    ``analog``: a regular stream; a light change is a rise of channel
    ``channel`` (from 0) through ``threshold``, timed by interpolating between
    samples. ``events``: one sample per detected light change. Each onset is
    moved to the first light change within ``max_delay`` seconds after its flip.
    """

    format: Literal["analog", "events"] = "analog"
    channel: Annotated[int, Field(ge=0)] = 0
    threshold: float = 0.5
    max_delay: Annotated[float, Field(gt=0, description="s")] = 0.1


class ClockSpec(_Strict):
    """How spike stamps are put on the stimulus PC's clock.

    ``lsl``: LSL's ``time_correction`` (both hosts stamp with LSL clocks).
    ``events``: the acquisition system stamps a sync event at every onset on
    its own clock, sent on the spike stream as channel ``sync_channel`` with
    the presentation index as its unit; a running offset-and-drift fit maps
    every spike (see ``closedloop.align.clock``).
    """

    sync: Literal["lsl", "events"] = "lsl"
    sync_channel: int = 0


class RigInfo(_Strict):
    name: str
    simulated: bool = False


class Rig(_Strict):
    """A validated rig file."""

    rig: RigInfo
    display: DisplaySpec = DisplaySpec()
    markers: StreamSpec = StreamSpec(name="closedloop-markers", type="Markers")
    spikes: SpikeStreamSpec = SpikeStreamSpec(name="closedloop-spikes", type="Spikes")
    resolve_timeout: Annotated[float, Field(gt=0, description="s")] = 10.0
    max_latency: Annotated[
        float, Field(ge=0, description="s; longest delay of a spike on the network")
    ] = 0.05
    stall_after: Annotated[
        float, Field(gt=0, description="s without a spike sample before the stream counts as gone")
    ] = 2.0
    units: list[UnitSpec] = []
    clock: ClockSpec = ClockSpec()
    photodiode: PhotodiodeSpec | None = None
    gaze: StreamSpec | None = Field(None, description="eye position: channels x, y in degrees "
                                    "right and up of the fixation point")
    simulation: SimulationSpec | None = None
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _units_or_simulation(self) -> Rig:
        if self.rig.simulated and self.simulation is None:
            raise ValueError("a simulated rig needs a [simulation] table")
        if not self.rig.simulated and not self.units:
            raise ValueError("a rig needs at least one [[units]] entry")
        if self.clock.sync == "events" and self.spikes.format != "events":
            raise ValueError("clock.sync = 'events' needs spikes.format = 'events' (sync events ride on it)")
        if self.clock.sync == "events" and any(u.channel == self.clock.sync_channel for u in self.units):
            raise ValueError(f"a unit uses channel {self.clock.sync_channel}, the sync channel")
        return self


# ---------------------------------------------------------------- protocol --
class WindowSpec(_Strict):
    """Response window, seconds after stimulus onset."""

    start: Annotated[float, Field(ge=0)] = 0.05
    end: Annotated[float, Field(gt=0)] = 0.15

    @model_validator(mode="after")
    def _ordered(self) -> WindowSpec:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class StimulusSpec(_Strict):
    """Where and how large images appear, in degrees of visual angle from the fixation point."""

    size_deg: Annotated[float, Field(gt=0, lt=90, description="side of the square image patch")] = 4.0
    position_deg: tuple[float, float] = Field((0.0, 0.0), description="patch centre (the receptive "
                                             "field), degrees right and up of fixation")
    background: Annotated[float, Field(ge=0, le=1, description="screen and patch grey level")] = 0.5

    @model_validator(mode="after")
    def _on_screen_side(self) -> StimulusSpec:
        if any(abs(c) + self.size_deg / 2 >= 90 for c in self.position_deg):
            raise ValueError("the patch reaches 90 degrees from fixation")
        return self


class TrialSpec(_Strict):
    """A fixation trial: several images in rapid succession while the eye holds still.

    Without a gaze stream fixation is not checked, but trials keep their timing.
    """

    images: Annotated[int, Field(ge=1, description="images per fixation")] = 4
    fixation_deg: Annotated[float, Field(gt=0, description="fixation point diameter")] = 0.2
    window_deg: Annotated[float, Field(gt=0, description="fixation window radius")] = 2.0
    hold: Annotated[float, Field(ge=0, description="s of fixation before the first image")] = 0.3
    acquire: Annotated[float, Field(gt=0, description="s to acquire fixation, then retry")] = 5.0
    iti: Annotated[float, Field(ge=0, description="s of blank screen between trials")] = 0.5
    reward: bool = Field(True, description="a reward marker after every completed trial")


class PoolSpec(_Strict):
    """Candidate pool: a stimulus set file, or how many random images of each family."""

    set: Path | None = Field(None, description="stimulus set file (see closedloop.stimuli.sets), "
                             "relative to the protocol file; when given, families is not used")
    families: dict[str, Annotated[int, Field(ge=0)]] = {
        "contour": 400,
        "dot": 300,
        "grating": 300,
        "texture": 300,
    }


class CoreSpec(_Strict):
    """The learner's core: what it knows about images before the first trial (see
    :mod:`closedloop.learn.cores`). ``path`` resolves against the protocol file."""

    kind: Literal["scratch", "compact", "network", "file"] = Field(
        "scratch", description="scratch: a compact CNN learned online; compact: a folder of published "
        "compact models; network: a torch or ONNX model cut at `layer`; file: a `closedloop core build` file")
    path: Path | None = Field(None, description="compact: the folder; network: the model file; file: the core file")
    layer: str | None = Field(None, description="compact: 'output' (the modelled neurons' responses, "
                              "the default) or a layer, 0-4; network: the torch module name or ONNX value "
                              "name to cut at (required)")
    match: str = Field("*", description="compact: only the model files whose names match this pattern "
                       "(e.g. 'compact_model_201025_*')")
    limit: Annotated[int | None, Field(gt=0, description="compact: use the first `limit` models (after `match`)")] = None
    grid: Annotated[int, Field(ge=1, description="feature maps are averaged to grid x grid blocks")] = 7
    dims: Annotated[int, Field(ge=2, description="principal components of the features kept")] = 256

    @model_validator(mode="after")
    def _what_each_kind_needs(self) -> CoreSpec:
        if self.kind != "scratch" and self.path is None:
            raise ValueError(f"a {self.kind!r} core needs a 'path'")
        if self.kind == "network" and not self.layer:
            raise ValueError("a 'network' core needs the 'layer' to cut at")
        if self.kind == "compact" and self.layer is not None and self.layer not in (*"01234", "output"):
            raise ValueError(f"a compact core's layer is 'output' or 0-4, got {self.layer!r}")
        return self

    @property
    def layer_index(self) -> int | None:
        """A compact core's layer, None for the models' outputs (the default)."""
        return None if self.layer in (None, "output") else int(self.layer)


class ModelSpec(_Strict):
    """The online learner: a core, Bayesian readouts per unit, background refinement."""

    core: CoreSpec = CoreSpec()
    members: Annotated[int, Field(ge=2, description="posterior draws strategies see as ensemble members")] = 16
    input_px: Annotated[int, Field(ge=16, description="scratch core: side of its input, pixels")] = 48
    channels: tuple[int, int, int, int, int] = Field((8, 16, 16, 16, 16),
                                                     description="scratch core: filters per layer")
    refresh_every: Annotated[int, Field(ge=1, description="responses between background refits of the "
                                        "readouts' ridge and noise (by the evidence)")] = 64
    finetune_every: Annotated[int, Field(ge=0, description="responses between background fine-tunings of "
                                         "the core (0: never)")] = 256
    learning_rate: Annotated[float, Field(gt=0, description="fine-tuning step size")] = 1e-3
    steps_per_update: Annotated[int, Field(ge=1, description="fine-tuning minibatches")] = 100
    batch_size: Annotated[int, Field(ge=1, description="fine-tuning responses per minibatch")] = 32
    threads: Annotated[int, Field(ge=1)] = 1
    warm_start: Path | None = Field(None, description="a learner checkpoint to start from (e.g. the previous "
                                    "session's checkpoints/learner-final.pt), relative to the protocol file; "
                                    "same units and core")
    checkpoint_every: Annotated[int, Field(ge=0, description="responses between checkpoints in the "
                                           "session's checkpoints/ (0: only the final one)")] = 100


class ProtocolInfo(_Strict):
    name: str
    seed: int = 0
    presentations: Annotated[int, Field(gt=0)] = 300
    on_frames: Annotated[int, Field(gt=0)] = 6
    off_frames: Annotated[int, Field(ge=1)] = 4


class SelectionSpec(_Strict):
    """How the next images are chosen."""

    strategy: str = "disagreement"
    params: dict[str, Any] = Field({}, description="the strategy's settings, checked by the strategy")
    warmup: Annotated[int, Field(ge=0, description="responses before the model chooses")] = 30
    batch: Annotated[int, Field(ge=1, description="images per decision")] = 4
    control_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    no_repeat: Annotated[int, Field(ge=0, description="presentations before an image may return")] = 50
    requeue_gaps: bool = Field(True, description="show again an image whose window a spike gap cut")

    @model_validator(mode="after")
    def _known_strategy(self) -> SelectionSpec:
        from closedloop.select.registry import strategy_params  # strategies may import stimuli

        try:
            strategy_params(self.strategy, self.params)
        except ClosedLoopError as exc:  # pydantic reports ValueErrors with the field's name
            raise ValueError(str(exc)) from None
        return self


class HeldoutSpec(_Strict):
    """Held-out images: shown for accuracy, never trained on nor selected."""

    images: Annotated[int, Field(ge=3)] = 30
    every: Annotated[int, Field(ge=2, description="every n-th presentation is held out")] = 5


class Protocol(_Strict):
    """A validated protocol file."""

    protocol: ProtocolInfo
    window: WindowSpec = WindowSpec()
    stimulus: StimulusSpec = StimulusSpec()
    trial: TrialSpec = TrialSpec()
    pool: PoolSpec = PoolSpec()
    model: ModelSpec = ModelSpec()
    selection: SelectionSpec = SelectionSpec()
    heldout: HeldoutSpec = HeldoutSpec()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _a_decision_fills_a_trial(self) -> Protocol:
        if self.selection.batch < self.trial.images:
            raise ValueError(f"selection.batch ({self.selection.batch}) must be at least trial.images "
                             f"({self.trial.images}): a trial's images are chosen together")
        return self


# ------------------------------------------------------------------ loading --
def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"field '{field}': {first['msg'].removeprefix('Value error, ')}"


def _load(path: Path | str, model: type[BaseModel], what: str):
    """Validate a TOML file, or the resolved JSON a session directory keeps."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            data.pop("recorded_units", None)  # the session's own note, not configuration
        else:
            data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClosedLoopError(f"{what} file {path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ClosedLoopError(f"{what} file {path}: not valid JSON ({exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClosedLoopError(f"{what} file {path}: not valid TOML ({exc})") from None
    try:
        return model.model_validate({**data, "source": path.resolve()})
    except ValidationError as exc:
        raise ClosedLoopError(f"{what} file {path}: {_describe(exc)}") from None


def load_rig(path: Path | str) -> Rig:
    """Load and validate a rig file; relative model paths resolve against it."""
    rig = _load(path, Rig, "rig")
    if rig.simulation is not None:
        base = rig.source.parent
        neurons = [
            n.model_copy(update={"path": (base / n.path).resolve()}) if n.path else n
            for n in rig.simulation.neurons
        ]
        rig = rig.model_copy(
            update={"simulation": rig.simulation.model_copy(update={"neurons": neurons})}
        )
    return rig


def load_protocol(path: Path | str) -> Protocol:
    """Load and validate a protocol file; relative stimulus-set, warm-start and core paths resolve against it."""
    protocol = _load(path, Protocol, "protocol")
    base = protocol.source.parent
    if protocol.pool.set is not None:
        pool = protocol.pool.model_copy(update={"set": (base / protocol.pool.set).resolve()})
        protocol = protocol.model_copy(update={"pool": pool})
    model = protocol.model
    if model.warm_start is not None:
        model = model.model_copy(update={"warm_start": (base / model.warm_start).resolve()})
    if model.core.path is not None:
        model = model.model_copy(update={"core": model.core.model_copy(update={"path": (base / model.core.path).resolve()})})
    return protocol.model_copy(update={"model": model})


def to_jsonable(config: BaseModel) -> dict:
    """The resolved configuration as plain JSON types (for the session record)."""
    return config.model_dump(mode="json")
