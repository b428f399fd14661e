"""Rig and protocol files: TOML, validated on load.

A *rig* file describes the hardware (display, LSL streams, recorded units) or,
for a simulated rig, the digital-twin neurons that stand in for the animal.
A *protocol* file describes the experiment (timing, response window, stimulus
pool, model, selection strategy). Both load into frozen pydantic models; any
error names the file and the field.

The schema alone decides what a value may be: every float is finite, physical
quantities are positive, and sizes, durations and counts are bounded where a
larger value would exhaust the machine or stop meaning anything. What needs
the registries (strategies, neuron kinds, stimulus sets) or both files at once
is checked in :mod:`closedloop.checks`. This module imports nothing of
closedloop but :mod:`closedloop.errors`.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from closedloop.errors import ClosedLoopError


POOL_LIMIT = 20_000
"""Most images a stimulus pool may hold: rendering takes up to about 6 ms an image (contours,
128 px), so 2 minutes at most, and 20,000 images of 128 px take 1 GB (see ``POOL_BYTES``)."""
POOL_BYTES = 4 * 2**30
"""Most bytes a rendered pool may take (images x side^2 x 3): 4 GiB, so a session's pool, the
simulator's copy and the learner fit a workstation."""
MANY = 1_000_000
"""Bound on presentation and response counts: more than a week of presentations at one a second."""


class Settings(BaseModel):
    """A table of settings: unknown keys are refused and every float is finite (no inf, no NaN)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Strict(Settings):
    """Settings that do not change once loaded."""

    model_config = ConfigDict(frozen=True)


def _printable(text: str) -> str:
    if not text.strip() or not text.isprintable():
        raise ValueError("must be a non-blank, printable string")
    return text


Name = Annotated[str, Field(max_length=200), AfterValidator(_printable)]
"""A name (a stream's, a unit's, a file's): non-blank, printable, at most 200 characters."""
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="seed of the random draws, 0 to 2**32 - 1")]
Channel = Annotated[int, Field(ge=-(2**31), le=2**31 - 1, description="a channel or unit number: an int32, "
                               "as spike events carry it")]


# --------------------------------------------------------------------- rig --
class StreamSpec(Strict):
    """An LSL stream pinned by name and type, and optionally by source_id and host.

    Pinning ``source_id`` and ``host`` makes a stray outlet with the same name
    elsewhere on the lab network a refused, reported mismatch.
    """

    name: Name
    type: Name
    source_id: Name | None = None
    host: Name | None = None


class SpikeStreamSpec(StreamSpec):
    """The spike stream and its format.

    ``events``: one int32 sample (channel, unit) per spike, irregular rate,
    stamped at the spike. ``counts``: a regular-rate stream with one channel
    per electrode or unit, each sample the spikes counted in the bin that
    ends at its timestamp; ``[[units]]`` entries name stream channels
    (``channel`` counts from 1, ``unit`` is 1).
    """

    format: Literal["events", "counts"] = "events"
    rate: Annotated[float, Field(ge=1, le=100_000, description="bins/s of a simulated rig's counts "
                                 "stream, 1-100000")] = 1000.0
    lost_after: Annotated[float, Field(gt=0, le=3600, description="s without a spike sample before the stream "
                                       "counts as lost (a shorter silence is a gap); more than the rig's "
                                       "stall_after, at most an hour")] = 10.0
    on_lost: Literal["end", "flag"] = Field("end", description="end: the run ends cleanly with a summary; "
                                            "flag: presentation goes on, every window flagged as a gap")


class PatchSpec(Strict):
    """A photodiode patch: a square in a screen corner, white while an image is on, else black."""

    corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = "bottom-left"
    size_px: Annotated[int, Field(gt=0, le=1024, description="side, px; at most the screen's height")] = 40


ScreenPx = Annotated[int, Field(ge=16, le=16384)]
ScreenCm = Annotated[float, Field(ge=1, le=1000)]


class DisplaySpec(Strict):
    """The stimulus monitor and where the eye is (see ``closedloop.present.geometry``)."""

    backend: Literal["auto", "psychopy", "headless"] = "auto"
    refresh_rate: Annotated[float, Field(ge=20, le=1000, description="Hz, 20-1000 (monitors run 24-500)")] = 60.0
    size_px: tuple[ScreenPx, ScreenPx] = Field((800, 600), description="resolution, width and height, "
                                               "16-16384 px (a larger frame buffer does not fit memory)")
    size_cm: tuple[ScreenCm, ScreenCm] = Field((40.0, 30.0), description="visible width and height, 1-1000 cm")
    distance_cm: Annotated[float, Field(ge=1, le=10_000, description="eye to screen centre, 1-10000 cm")] = 57.0
    fullscreen: bool = False
    photodiode_patch: PatchSpec | None = None


class UnitSpec(Strict):
    """One recorded unit: the spike stream's (channel, unit) pair and a name."""

    name: Name
    channel: Channel
    unit: Channel = 1


class NeuronSpec(Strict):
    """A simulated neuron (or, for a folder of models, several).

    ``kind`` is a built-in V4-like unit (``curvature``, ``dot``,
    ``orientation``), ``compact`` (a published compact model file, or a folder
    of them), or ``onnx`` (a model mapping a batch of images to rates).
    Extra keys are the unit's parameters (see ``closedloop.simulate.neurons``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: Literal["curvature", "dot", "orientation", "compact", "onnx"]
    name: Name | None = None
    path: Path | None = None
    limit: Annotated[int | None, Field(gt=0, le=10_000, description="models of a folder used, at most 10000")] = None

    @model_validator(mode="after")
    def _path_for_models(self) -> NeuronSpec:
        if self.kind in ("compact", "onnx") and self.path is None:
            raise ValueError(f"a {self.kind!r} neuron needs a 'path'")
        return self


class SimulationSpec(Strict):
    """How simulated neurons turn images into spikes.

    A neuron's model output ``y`` on an image is z-scored over the calibration
    images (the session's stimulus pool), ``z = (y - mean) / std``; its driven
    rate is ``mean_rate * exp(gain * z) / mean_cal(exp(gain * z))`` spikes/s,
    capped at ``max_rate``. While the image is on screen (delayed by
    ``latency``) the neuron fires at that rate, otherwise at ``baseline_rate``.
    """

    seed: Seed = 0
    latency: Annotated[float, Field(ge=0, le=1, description="s, 0-1")] = 0.05
    baseline_rate: Annotated[float, Field(ge=0, le=1000, description="spikes/s, 0-1000")] = 4.0
    mean_rate: Annotated[float, Field(ge=0.1, le=1000, description="spikes/s, 0.1-1000")] = 24.0
    gain: Annotated[float, Field(gt=0, le=10, description="at most 10: with z at most sqrt(calibration_images) "
                                 "= 64, exp(gain * z) stays finite")] = 1.0
    max_rate: Annotated[float, Field(ge=1, le=1000, description="spikes/s, 1-1000 (a neuron's refractory "
                                     "period allows no more)")] = 200.0
    display_lag: Annotated[float, Field(ge=0, le=1, description="s from the flip to the light, 0-1")] = 0.0
    photodiode_rate: Annotated[float, Field(ge=1, le=100_000, description="samples/s of the photodiode, "
                                            "1-100000")] = 1000.0
    clock_offset: Annotated[float, Field(ge=-1e6, le=1e6, description="s the acquisition clock runs ahead, "
                                         "at most 10^6 (11 days)")] = 0.0
    clock_drift_ppm: Annotated[float, Field(ge=-1000, le=1000, description="ppm")] = 0.0
    calibration_images: Annotated[int, Field(gt=1, le=4096)] = 256
    fixation_breaks: Annotated[float, Field(ge=0, le=10, description="breaks/s while fixating, 0-10")] = 0.0
    break_duration: Annotated[float, Field(ge=0.001, le=60, description="s the gaze stays away, "
                                           "0.001-60")] = 0.5
    gaze_noise: Annotated[float, Field(ge=0, le=45, description="degrees, SD of the gaze jitter, 0-45")] = 0.1
    gaze_rate: Annotated[float, Field(ge=1, le=10_000, description="samples/s of the gaze stream, "
                                      "1-10000")] = 500.0
    neurons: list[NeuronSpec] = Field(min_length=1, max_length=1000)


class PhotodiodeSpec(StreamSpec):
    """An optional photodiode stream that times each onset by the light itself.

    ``analog``: a regular stream; a light change is a rise of channel
    ``channel`` (from 0) through ``threshold``, timed by interpolating between
    samples. ``events``: one sample per detected light change. Each onset is
    moved to the first light change within ``max_delay`` seconds after its flip.
    """

    format: Literal["analog", "events"] = "analog"
    channel: Annotated[int, Field(ge=0, le=1023)] = 0
    threshold: float = 0.5
    max_delay: Annotated[float, Field(ge=0.001, le=1, description="s, 0.001-1")] = 0.1


class ClockSpec(Strict):
    """How spike stamps are put on the stimulus PC's clock.

    ``lsl``: LSL's ``time_correction`` (both hosts stamp with LSL clocks).
    ``events``: the acquisition system stamps a sync event at every onset on
    its own clock, sent on the spike stream as channel ``sync_channel`` with
    the presentation index as its unit; a running offset-and-drift fit maps
    every spike (see ``closedloop.align.clock``).
    """

    sync: Literal["lsl", "events"] = "lsl"
    sync_channel: Channel = 0


class RigInfo(Strict):
    name: Name
    simulated: bool = False


def _duration(text: str) -> str:
    if not re.fullmatch(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?", text):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as P7Y (years), P30D (days)")
    return text


ArchiveId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$",
                                 description="letters, digits and hyphens: it goes into file names "
                                 "(sub-<id>_ses-<id>) as DANDI's organize makes them")]
"""A subject or session id an archive accepts in a file name."""


class SubjectSpec(Strict):
    """The animal: what an archive (DANDI) needs to know about whose cortex this is.

    ``species`` is a Latin binomial (``Macaca mulatta``) or an NCBI taxonomy URL; ``age`` an
    ISO 8601 duration (``P7Y``: seven years, ``P30D``: thirty days); ``sex`` M, F, U (unknown) or O
    (other). Every field may also come from the command line (``--subject-id`` ...).
    """

    id: ArchiveId | None = None
    species: Annotated[str, Field(pattern=r"^([A-Z][a-z]+ [a-z]+|https?://\S+)$",
                                  description="Latin binomial or NCBI taxonomy URL")] | None = None
    sex: Literal["M", "F", "U", "O"] | None = None
    age: Annotated[str, AfterValidator(_duration), Field(description="ISO 8601 duration, e.g. P7Y")] | None = None
    description: Name | None = None


class LabSpec(Strict):
    """Who recorded, where: ``experimenter`` as ``Last, First`` names."""

    experimenter: list[Name] = Field([], max_length=50)
    institution: Name | None = None
    lab: Name | None = None


class RecordingSpec(Strict):
    """The recording hardware, for the NWB file's Device, ElectrodeGroup and electrodes table: one
    electrode per spike-stream channel the units use."""

    device: Name = "acquisition system"
    manufacturer: Name | None = None
    location: Name = Field("V4", description="brain area of the electrodes")
    description: Name = "electrode array"


def _ray_address(text: str) -> str:
    if not re.fullmatch(r"auto|(ray://)?[^\s/:]+:\d{1,5}", text):
        raise ValueError(f"{text!r} is not a Ray address: auto, HOST:PORT (the head's GCS, 6379) or "
                         "ray://HOST:PORT (Ray Client, 10001)")
    return text


class LearnerSpec(Strict):
    """Where the model worker (the online learner and the selection policy) runs: a child process
    of the session, or a Ray actor on this machine or on a cluster's node (a GPU machine in the
    next room), fed over the network while the presenter never waits on it (see
    :mod:`closedloop.learn.remote`)."""

    where: Literal["process", "ray"] = Field("process", description="process: a child process of the "
                                             "session; ray: a Ray actor")
    address: Annotated[str, AfterValidator(_ray_address)] | None = Field(
        None, description="ray: the cluster (auto, HOST:6379, ray://HOST:10001); none: a local Ray on this machine")
    cpus: Annotated[float, Field(gt=0, le=1024, description="ray: CPUs the actor reserves")] = 1.0
    gpus: Annotated[float, Field(ge=0, le=64, description="ray: GPUs the actor reserves (a fraction "
                                 "shares one)")] = 0.0

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> LearnerSpec:
        if self.where == "process" and (self.address is not None or self.cpus != 1 or self.gpus):
            raise ValueError("address, cpus and gpus place a Ray actor: they need where = 'ray' "
                             "(a process learner runs beside the session)")
        return self


class Rig(Strict):
    """A validated rig file."""

    rig: RigInfo
    display: DisplaySpec = DisplaySpec()
    markers: StreamSpec = StreamSpec(name="closedloop-markers", type="Markers")
    spikes: SpikeStreamSpec = SpikeStreamSpec(name="closedloop-spikes", type="Spikes")
    resolve_timeout: Annotated[float, Field(ge=0.01, le=600, description="s, 0.01-600")] = 10.0
    max_latency: Annotated[
        float, Field(ge=0, le=10, description="s; longest delay of a spike on the network, 0-10")
    ] = 0.05
    stall_after: Annotated[
        float, Field(ge=0.01, le=600, description="s without a spike sample before the stream counts as "
                     "gone, 0.01-600")
    ] = 2.0
    units: list[UnitSpec] = []
    clock: ClockSpec = ClockSpec()
    photodiode: PhotodiodeSpec | None = None
    gaze: StreamSpec | None = Field(None, description="eye position: channels x, y in degrees "
                                    "right and up of the fixation point")
    record: list[StreamSpec] = Field([], max_length=64, description="more LSL streams recorded as they "
                                     "arrive, beside spikes, gaze and photodiode (any numeric stream)")
    subject: SubjectSpec = SubjectSpec()
    lab: LabSpec = LabSpec()
    recording: RecordingSpec = RecordingSpec()
    simulation: SimulationSpec | None = None
    learner: LearnerSpec = LearnerSpec()
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
        if self.spikes.lost_after <= self.stall_after:
            raise ValueError(f"spikes.lost_after ({self.spikes.lost_after} s) must be more than stall_after "
                             f"({self.stall_after} s): a lost stream has stalled first")
        names = [s.name for s in (self.spikes, self.photodiode, self.gaze, *self.record) if s is not None]
        if len(set(names)) < len(names):
            raise ValueError(f"a stream is named twice among spikes, photodiode, gaze and record: {names}")
        patch = self.display.photodiode_patch
        if patch is not None and patch.size_px > min(self.display.size_px):
            raise ValueError(f"display.photodiode_patch.size_px ({patch.size_px}) is larger than the screen")
        return self


# ---------------------------------------------------------------- protocol --
MIN_WINDOW = 0.001  # s: a shorter response window counts no spikes


class WindowSpec(Strict):
    """Response window, seconds after stimulus onset."""

    start: Annotated[float, Field(ge=0, le=5, description="s, 0-5")] = 0.05
    end: Annotated[float, Field(gt=0, le=5, description="s, at most 5: responses come within it")] = 0.15

    @model_validator(mode="after")
    def _ordered(self) -> WindowSpec:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end - self.start < MIN_WINDOW:
            raise ValueError(f"the window must be at least {MIN_WINDOW * 1000:g} ms long")
        return self


class StimulusSpec(Strict):
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


class TrialSpec(Strict):
    """A fixation trial: several images in rapid succession while the eye holds still.

    Without a gaze stream fixation is not checked, but trials keep their timing.
    """

    images: Annotated[int, Field(ge=1, le=256, description="images per fixation")] = 4
    fixation_deg: Annotated[float, Field(gt=0, le=10, description="fixation point diameter, at most 10")] = 0.2
    window_deg: Annotated[float, Field(gt=0, le=90, description="fixation window radius, at most 90")] = 2.0
    hold: Annotated[float, Field(ge=0, le=10, description="s of fixation before the first image, 0-10")] = 0.3
    acquire: Annotated[float, Field(ge=0.01, le=60, description="s to acquire fixation, then retry; "
                                    "0.01-60")] = 5.0
    iti: Annotated[float, Field(ge=0, le=60, description="s of blank screen between trials, 0-60")] = 0.5
    reward: bool = Field(True, description="a reward marker after every completed trial")


class PoolSpec(Strict):
    """Candidate pool: a stimulus set file, or how many random images of each family."""

    set: Path | None = Field(None, description="stimulus set file (see closedloop.stimuli.sets), "
                             "relative to the protocol file; when given, families is not used")
    families: dict[str, Annotated[int, Field(ge=0, le=POOL_LIMIT)]] = Field({
        "contour": 400,
        "dot": 300,
        "grating": 300,
        "texture": 300,
    }, description=f"random images of each family, at most {POOL_LIMIT} in all (see POOL_LIMIT)")

    @model_validator(mode="after")
    def _bounded(self) -> PoolSpec:
        total = sum(self.families.values())
        if self.set is None and total > POOL_LIMIT:
            raise ValueError(f"families ask for {total} images; a pool holds at most {POOL_LIMIT}")
        return self


class CoreSpec(Strict):
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
    limit: Annotated[int | None, Field(gt=0, le=10_000, description="compact: use the first `limit` models "
                                       "(after `match`)")] = None
    grid: Annotated[int, Field(ge=1, le=64, description="feature maps are averaged to grid x grid blocks")] = 7
    dims: Annotated[int, Field(ge=2, le=4096, description="principal components of the features kept")] = 256

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


Filters = Annotated[int, Field(ge=1, le=1024)]


class ModelSpec(Strict):
    """The online learner: a core, Bayesian readouts per unit, background refinement."""

    core: CoreSpec = CoreSpec()
    members: Annotated[int, Field(ge=2, le=256, description="posterior draws strategies see as ensemble "
                                  "members")] = 16
    input_px: Annotated[int, Field(ge=16, le=512, description="scratch core: side of its input, pixels")] = 48
    channels: tuple[Filters, Filters, Filters, Filters, Filters] = Field(
        (8, 16, 16, 16, 16), description="scratch core: filters per layer, 1-1024")
    refresh_every: Annotated[int, Field(ge=1, le=MANY, description="responses between background refits of "
                                        "the readouts' ridge and noise (by the evidence)")] = 64
    finetune_every: Annotated[int, Field(ge=0, le=MANY, description="responses between background "
                                         "fine-tunings of the core (0: never)")] = 256
    learning_rate: Annotated[float, Field(gt=0, le=1, description="fine-tuning step size, at most 1 (Adam "
                                          "diverges long before)")] = 1e-3
    steps_per_update: Annotated[int, Field(ge=1, le=100_000, description="fine-tuning minibatches")] = 100
    batch_size: Annotated[int, Field(ge=1, le=4096, description="fine-tuning responses per minibatch")] = 32
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    warm_start: Path | None = Field(None, description="what the learner starts from, relative to the protocol "
                                    "file: a learner checkpoint (e.g. the previous session's "
                                    "checkpoints/learner-final.pt; same units and core), or image models with one "
                                    "output per unit (a student of `closedloop teacher distil`, or a folder of "
                                    "them, one per unit in natural order) that the readouts' prior mean is fitted "
                                    "to")
    checkpoint_every: Annotated[int, Field(ge=0, le=MANY, description="responses between checkpoints in the "
                                           "session's checkpoints/ (0: only the final one)")] = 100


class ProtocolInfo(Strict):
    name: Name
    seed: Seed = 0
    presentations: Annotated[int, Field(gt=0, le=MANY)] = 300
    on_frames: Annotated[int, Field(gt=0, le=1000, description="frames an image is on, at most 1000")] = 6
    off_frames: Annotated[int, Field(ge=1, le=1000, description="frames of grey after it, at most 1000")] = 4
    description: Name | None = Field(None, description="what the experiment is for (the NWB file's "
                                     "experiment_description)")
    keywords: list[Name] = Field([], max_length=50)


class SelectionSpec(Strict):
    """How the next images are chosen."""

    strategy: Name = "disagreement"
    params: dict[str, Any] = Field({}, description="the strategy's settings, checked by the strategy")
    warmup: Annotated[int, Field(ge=0, le=MANY, description="responses before the model chooses")] = 30
    batch: Annotated[int, Field(ge=1, le=256, description="images per decision")] = 4
    control_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    no_repeat: Annotated[int, Field(ge=0, le=MANY, description="presentations before an image may return")] = 50
    requeue_gaps: bool = Field(True, description="show again an image whose window a spike gap cut")


class HeldoutSpec(Strict):
    """Held-out images: shown for accuracy, never trained on nor selected."""

    images: Annotated[int, Field(ge=3, le=POOL_LIMIT)] = 30
    every: Annotated[int, Field(ge=2, le=MANY, description="every n-th presentation is held out")] = 5


class Protocol(Strict):
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
    """The first problem of a validation error on one line: ``field 'a.b': message`` (a check across
    fields names them in its message)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = " ".join(first["msg"].removeprefix("Value error, ").split())
    return f"field '{field}': {message}" if field else message


def _read(path: Path) -> dict:
    """The table a TOML file, or a session's resolved JSON, holds; ``ValueError`` saying what is wrong."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ValueError("not found") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ValueError("not a text file (not UTF-8)") from None
    except OSError as exc:
        raise ValueError(f"unreadable ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"holds a JSON {type(data).__name__}, not an object (of tables)")
    return data


def _load(path: Path | str, model: type[BaseModel], what: str):
    """Validate a TOML file, or the resolved JSON a session directory keeps."""
    path = Path(path)
    try:
        data = _read(path)
    except ValueError as exc:
        raise ClosedLoopError(f"{what} file {path}: {exc}") from None
    if path.suffix == ".json":
        data.pop("recorded_units", None)  # the session's own note in its rig.json, not configuration
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


def _given(spec: Settings, given: dict, options: dict[str, str]) -> Settings:
    """``spec`` with the fields ``given`` on the command line replaced, checked as the file's would
    be; a bad value is one line naming its option (``options``: field to option, else ``--field``;
    a check across fields names the first option given)."""
    try:
        return type(spec).model_validate({**spec.model_dump(), **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else next(iter(given))
        option = options.get(field, "--" + field.replace("_", "-"))
        raise ClosedLoopError(f"{option}: {' '.join(first['msg'].removeprefix('Value error, ').split())}") from None


def with_metadata(rig: Rig, subject: dict | None = None, lab: dict | None = None) -> Rig:
    """``rig`` with subject and lab fields replaced by those given (the command line's ``--subject-id``
    ...), each checked as the rig file's would be.

    Raises
    ------
    ClosedLoopError
        One line naming the option: ``--species: String should match pattern ...``.
    """
    update = {table: _given(getattr(rig, table), given, {"id": "--subject-id"})
              for table, given in (("subject", subject), ("lab", lab)) if given}
    return rig.model_copy(update=update)


def with_learner(rig: Rig, where: str | None = None, address: str | None = None) -> Rig:
    """``rig`` with its ``[learner]`` replaced from the command line: ``--learner`` (``process``
    drops the table's Ray settings) and ``--ray-address`` (a Ray learner there), checked as the rig
    file's would be.

    Raises
    ------
    ClosedLoopError
        One line naming the option: ``--ray-address: 'x' is not a Ray address ...``.
    """
    options = {"where": "--learner", "address": "--ray-address"}
    if where == "process":
        if address is not None:
            raise ClosedLoopError("--ray-address: needs --learner ray (a process learner runs beside the session)")
        return rig.model_copy(update={"learner": LearnerSpec()})
    if where is None and address is None:
        return rig
    given = {"where": "ray", **({} if address is None else {"address": address})}
    return rig.model_copy(update={"learner": _given(rig.learner, given, options)})


def to_jsonable(config: BaseModel) -> dict:
    """The resolved configuration as plain JSON types (for the session record)."""
    return config.model_dump(mode="json")
