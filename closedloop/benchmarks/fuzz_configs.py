"""Fuzz corpora of configuration files: the repository's rigs, protocols and stimulus sets, mutated.

A mutated rig is checked with the protocol ``protocols/demo.toml``, a mutated protocol with the
rig ``rigs/sim.toml``, through :func:`check_config` (what ``closedloop run`` checks before it
creates a session). A mutated stimulus set goes through ``closedloop stimuli show``.
"""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path
from typing import Any

from closedloop.benchmarks.fuzz_gen import (apply_edits, byte_mutations, document_edits, examples,
                                            mutated_documents, pick, toml_text, write)
from closedloop.benchmarks.fuzz_run import Case

PROJECT = Path(__file__).resolve().parents[2]
MIN_PATCH_PX = 4  # smaller than this, no image is recognisable
MAX_POOL_BYTES = 8 * 2**30  # a rendered pool larger than this cannot be held in memory
PATHS = {"protocol": (("pool", "set"), ("model", "warm_start"), ("model", "core", "path")), "rig": ()}


def check_config(rig_path: str, protocol_path: str) -> None:
    """What ``closedloop run`` refuses before it creates a session: the files and their cross-checks."""
    from closedloop.checks import check_session
    from closedloop.config import load_protocol, load_rig

    check_session(load_protocol(protocol_path), load_rig(rig_path))


# ----------------------------------------------------------------- oracles --
def _numbers(value: Any, path: str = "") -> list[str]:
    """Non-finite floats and ints no 64-bit integer holds, by field."""
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _numbers(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [f for k, v in enumerate(value) for f in _numbers(v, f"{path}.{k}")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path} = {value}"]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return [f"{path} = {value} does not fit 64 bits"]
    return []


def config_fault(rig_path: Path, protocol_path: Path) -> str | None:
    """Why an accepted rig and protocol make no sense: computed from the configuration with the
    product's own geometry, independently of its validators. None if they make sense."""
    from closedloop.config import load_protocol, load_rig
    from closedloop.errors import ClosedLoopError
    from closedloop.present.geometry import Layout
    from closedloop.stimuli import load_stimulus_set

    rig, protocol = load_rig(rig_path), load_protocol(protocol_path)
    faults = _numbers(rig.model_dump(mode="python")) + _numbers(protocol.model_dump(mode="python"))
    frame = 1 / rig.display.refresh_rate
    if not (math.isfinite(frame) and frame > 0 and math.isfinite(protocol.protocol.on_frames * frame)):
        faults.append(f"frame period {frame} s, image on for {protocol.protocol.on_frames} frames")
    try:
        layout = Layout.of(rig.display, protocol.stimulus, protocol.trial)
    except ClosedLoopError as exc:
        faults.append(f"the run would refuse the layout: {exc}")
    except Exception as exc:  # noqa: BLE001 - the layout of an accepted config must compute
        faults.append(f"the layout does not compute: {type(exc).__name__}: {exc}")
    else:
        if not layout.patch_px >= MIN_PATCH_PX:
            faults.append(f"the image patch is {layout.patch_px} px")
        if not all(math.isfinite(c) for c in layout.patch_centre_px) or not math.isfinite(layout.fixation_px):
            faults.append(f"patch centre {layout.patch_centre_px}, fixation point {layout.fixation_px} px")
        if faults:
            return "; ".join(faults)
        try:
            size = (load_stimulus_set(protocol.pool.set).size() if protocol.pool.set is not None
                    else sum(protocol.pool.families.values()))
        except ClosedLoopError as exc:
            return f"the run would refuse the pool: {exc}"
        if size <= protocol.heldout.images or size < protocol.selection.batch:
            faults.append(f"a pool of {size} images for {protocol.heldout.images} held out and batches of "
                          f"{protocol.selection.batch}")
        if size * layout.patch_px**2 * 3 > MAX_POOL_BYTES:
            faults.append(f"the pool of {size} images of {layout.patch_px} px needs "
                          f"{size * layout.patch_px**2 * 3 / 2**30:.0f} GiB")
    return "; ".join(faults) or None


def stimulus_set_fault(set_path: Path) -> str | None:
    """Why an accepted stimulus set makes no sense: a parameter that is not a finite number."""
    try:
        data = tomllib.loads(set_path.read_text())
    except (OSError, ValueError) as exc:
        return f"the set file does not parse ({exc}) yet was rendered"
    faults = [f for f in _numbers(data) if "does not fit" not in f]
    return "; ".join(faults) or None


# ------------------------------------------------------------------ seeds --
def _seed(path: Path, kind: str) -> dict:
    """The example file parsed, with its relative paths made absolute (the mutant lives elsewhere)."""
    document = tomllib.loads(path.read_text())
    for keys in PATHS.get(kind, ()):
        table = document
        for key in keys[:-1]:
            table = table.get(key, {})
        if isinstance(table.get(keys[-1]), str):
            table[keys[-1]] = str((path.parent / table[keys[-1]]).resolve())
    for neuron in document.get("simulation", {}).get("neurons", []):
        if isinstance(neuron.get("path"), str):
            neuron["path"] = str((path.parent / neuron["path"]).resolve())
    return document


def _documents(kind: str, files: list[Path], count: int, seed: int) -> list[tuple[str, str, bytes | None]]:
    """(seed name, mutation, file bytes or None for a directory): deterministic mutations first,
    whole-file ones, then hypothesis's edits, ``count`` in all."""
    rng = random.Random(seed)
    systematic, whole = [], []
    for path in files:
        document = _seed(path, kind)
        systematic += [(path.name, name, toml_text(doc).encode()) for name, doc in mutated_documents(document)]
        text = toml_text(document).encode()
        whole += [(path.name, name, f(text)) for name, f in byte_mutations(text, rng)]
        whole += [(path.name, "a directory in place of the file", None),
                  (path.name, "not a table: [] as JSON", b"[]"), (path.name, "TOML syntax error", text + b"\n[[[\n")]
    edits = examples(document_edits(), count, seed)
    seeds = [_seed(path, kind) for path in files]
    generated = []
    for k, edit in enumerate(edits):
        name, document = apply_edits(seeds[k % len(seeds)], edit)
        generated.append((files[k % len(files)].name, f"hypothesis: {name}", toml_text(document).encode()))
    chosen = pick(whole, min(len(whole), count // 5), seed) + pick(systematic, count // 2, seed)
    return (chosen + generated)[:count]


def _writer(name: str, data: bytes | None):
    def prepare(folder: Path) -> None:
        if data is None:
            (folder / name).mkdir()
        else:
            write(folder / name, data)
    return prepare


def config_cases(kind: str, count: int, seed: int) -> list[Case]:
    """``count`` mutated rig files (``kind`` rig) or protocol files (``kind`` protocol), each
    checked with a real file of the other kind."""
    folder = PROJECT / ("rigs" if kind == "rig" else "protocols")
    files = sorted(folder.glob("*.toml"))
    other = PROJECT / ("protocols/demo.toml" if kind == "rig" else "rigs/sim.toml")
    cases = []
    for k, (source, mutation, data) in enumerate(_documents(kind, files, count, seed)):
        # A JSON file in place of a TOML one is read as JSON: the "not a table" mutants test that.
        name = f"{kind}.json" if data == b"[]" else f"{kind}.toml"
        paths = (name, str(other)) if kind == "rig" else (str(other), name)
        cases.append(Case(kind, f"{source}: {mutation}", _writer(name, data), ["check-config", *paths],
                          lambda folder, paths=paths: config_fault(folder / paths[0], folder / paths[1])))
    return cases


def stimulus_set_cases(count: int, seed: int) -> list[Case]:
    """``count`` mutated stimulus sets, each rendered into a gallery by ``closedloop stimuli show``."""
    files = sorted((PROJECT / "stimuli").glob("*.toml"))
    cases = []
    for source, mutation, data in _documents("stimulus set", files, count, seed):
        cases.append(Case("stimulus set", f"{source}: {mutation}", _writer("set.toml", data),
                          ["stimuli", "show", "set.toml", "--out", "gallery.png", "--size", "8", "--max", "4"],
                          lambda folder: stimulus_set_fault(folder / "set.toml")))
    return cases
