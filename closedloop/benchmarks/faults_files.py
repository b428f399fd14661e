"""Rig and protocol files of the fault-injection benchmark: small, headless, on unique streams."""

from __future__ import annotations

from pathlib import Path

from closedloop.simulate.generate import BUILTIN, protocol_text, rig_text, stream_tables, toml_tables

PROJECT = Path(__file__).resolve().parents[2]


def simulated_rig(path: Path, name: str, neurons: int = 3, gaze: bool = True) -> Path:
    """A headless simulated rig on streams named ``name-*``; the run starts its simulator, which
    also plays a steadily fixating eye when ``gaze``."""
    path.write_text(rig_text(name, neurons, gaze, fixation_breaks=0.0))
    return path


def external_rigs(folder: Path, name: str, sync: str = "lsl") -> tuple[Path, Path]:
    """A rig whose spikes come from an outlet the benchmark runs, and that outlet's own rig.

    Returns
    -------
    run_rig, outlet_rig : Path
        ``run.toml`` (not simulated: three units on channels 1-3, waits up to 120 s for the
        spike stream) and ``outlet.toml`` (simulated, the same streams, for ``closedloop
        simulate`` or :mod:`closedloop.benchmarks.faults_outlet`); both with clock ``sync``.
    """
    clock = {"clock": {"sync": sync}}
    units = "".join(f'[[units]]\nname = "{kind}"\nchannel = {i + 1}\n' for i, kind in enumerate(BUILTIN))
    run, outlet = folder / "run.toml", folder / "outlet.toml"
    run.write_text("resolve_timeout = 120.0\n" + toml_tables({"rig": {"name": name}, "display": {"backend": "headless"},
                                                             **stream_tables(name), **clock}) + units)
    outlet.write_text(rig_text(name, fixation_breaks=0.0).replace("[simulation]\n", toml_tables(clock) + "[simulation]\n"))
    return run, outlet


def short_protocol(path: Path, presentations: int) -> Path:
    """A small protocol (random selection, a small scratch learner) that starts in seconds and
    presents about 9 images/s: 4 frames on, 2 off, 4 per trial, no hold nor pause."""
    path.write_text(protocol_text(presentations, protocol={"name": "faults"}, model={"checkpoint_every": 50}))
    return path


def soak_protocol(path: Path, presentations: int) -> Path:
    """The demo's learner, pool and model-chosen images at about 5 presentations/s: 6 frames on,
    5 off at 60 Hz, 4 per trial, no hold nor pause."""
    path.write_text(toml_tables({
        "protocol": {"name": "soak", "seed": 0, "presentations": presentations, "on_frames": 6, "off_frames": 5},
        "stimulus": {"size_deg": 5.6, "position_deg": [3.0, 2.0]},
        "trial": {"images": 4, "hold": 0.0, "iti": 0.0},
        "pool": {"set": str(PROJECT / "stimuli" / "demo.toml")},
        "model": {"core": {"kind": "scratch"}, "input_px": 48, "channels": [8, 16, 16, 16, 16],
                  "refresh_every": 32, "finetune_every": 64},
        "selection": {"strategy": "disagreement", "warmup": 30, "batch": 4, "no_repeat": 50},
        "heldout": {"images": 100, "every": 5}}))
    return path
