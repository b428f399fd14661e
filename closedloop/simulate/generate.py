"""Small simulated rigs and protocols that run in seconds: ground truth for tests, benchmarks and
tutorials, written as the TOML a user would write.

:func:`rig_text` gives a headless simulated rig of built-in units on streams of its own;
:func:`protocol_text` a short protocol (random selection, a small scratch learner, about 9
images/s) whose tables any caller can override key by key.
"""

from __future__ import annotations

from typing import Any

BUILTIN = ("curvature", "dot", "orientation")
SUBJECT: dict[str, Any] = {"id": "sim", "species": "Macaca mulatta", "sex": "U", "age": "P7Y",
                           "description": "simulated"}
"""The ``[subject]`` table of a generated rig: everything an archive asks of a subject."""

SHORT_PROTOCOL: dict[str, dict[str, Any]] = {
    "protocol": {"name": "short", "seed": 1, "presentations": 100, "on_frames": 4, "off_frames": 2},
    "stimulus": {"size_deg": 3.2},  # 64 px on the default display
    "trial": {"images": 4, "hold": 0.0, "iti": 0.0},
    "pool": {"families": {"contour": 100, "dot": 80, "grating": 80, "texture": 80}},
    "model": {"members": 5, "input_px": 32, "channels": [8, 8, 8, 8, 8], "steps_per_update": 30},
    "selection": {"strategy": "random", "warmup": 20, "batch": 4},
    "heldout": {"images": 60, "every": 4},
}
"""The short protocol's tables (``protocol.presentations`` is set by :func:`protocol_text`)."""


def _value(value: Any) -> str:
    """One TOML value: a string, number, boolean, list or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _lines(keys: dict[str, Any]) -> str:
    return "".join(f"{k} = {_value(v)}\n" for k, v in keys.items())


def toml_tables(tables: dict[str, dict[str, Any]]) -> str:
    """``[table]`` sections of ``key = value`` lines, in the order given."""
    return "".join(f"[{name}]\n{_lines(keys)}" for name, keys in tables.items())


def protocol_text(presentations: int, **overrides: dict[str, Any]) -> str:
    """The short protocol with ``presentations`` and, per table, the keys in ``overrides``
    replaced or added (e.g. ``model={"checkpoint_every": 50}``; a new table is appended)."""
    tables = {name: dict(keys) for name, keys in SHORT_PROTOCOL.items()}
    tables["protocol"]["presentations"] = presentations
    for name, keys in overrides.items():
        tables.setdefault(name, {}).update(keys)
    return toml_tables(tables)


def neuron_tables(count: int) -> list[dict[str, Any]]:
    """``count`` built-in units: the three kinds once each, or, for more, spread over kinds,
    receptive-field positions (fractions of the image) and orientations (degrees)."""
    if count <= len(BUILTIN):
        return [{"kind": kind} for kind in BUILTIN[:count]]
    neurons = []
    for i in range(count):
        kind = BUILTIN[i % 3]
        neuron = {"kind": kind, "name": f"{kind}{i}", "x": round((i % 7 - 3) * 0.06, 2),
                  "y": round((i // 7 % 7 - 3) * 0.06, 2)}
        if kind != "dot":
            neuron["orientation"] = float(i * 37 % 180)
        neurons.append(neuron)
    return neurons


def stream_tables(name: str, gaze: bool = False, photodiode: bool = False) -> dict[str, dict[str, Any]]:
    """Marker, spike and (with ``gaze``, ``photodiode``) gaze and photodiode streams named
    ``name-markers``, ``name-spikes``, ``name-gaze``, ``name-light``."""
    streams = {"markers": {"name": f"{name}-markers", "type": "Markers"},
               "spikes": {"name": f"{name}-spikes", "type": "Spikes"}}
    if gaze:
        streams["gaze"] = {"name": f"{name}-gaze", "type": "Gaze"}
    if photodiode:
        streams["photodiode"] = {"name": f"{name}-light", "type": "Photodiode"}
    return streams


def rig_text(name: str, neurons: int = 3, gaze: bool = False, photodiode: bool = False, **simulation: Any) -> str:
    """A headless simulated rig of ``neurons`` built-in units on streams named ``name-*`` (an eye
    with ``gaze``, a photodiode with ``photodiode``), strongly driven (60 spikes/s on average: few
    trials tell tunings apart); ``simulation`` keys replace or add to its ``[simulation]`` table
    (e.g. ``fixation_breaks``, which needs ``gaze``; ``display_lag``)."""
    tables = {"rig": {"name": name, "simulated": True}, "display": {"backend": "headless"},
              **stream_tables(name, gaze, photodiode), "subject": SUBJECT,
              "simulation": {"seed": 2, "mean_rate": 60.0, **simulation}}
    return toml_tables(tables) + "".join(f"[[simulation.neurons]]\n{_lines(n)}" for n in neuron_tables(neurons))
