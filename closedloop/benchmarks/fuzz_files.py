"""Fuzz corpora of binary inputs and arguments: model files (``inspect``, ``design --model``,
``core show``), NWB exports and XDF recordings (``responses``, ``replay``), and bad command lines.

Garbage (empty files, random bytes, truncated files, a file of another format, a directory)
must never be accepted; an accepted input whose weights or times are not finite, or whose
response table holds impossible values, made no sense either.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from closedloop.benchmarks.fuzz_gen import JSON_VALUES, SPECIAL, byte_mutations, examples, pick, write
from closedloop.benchmarks.fuzz_run import Case

MODELS = ("closedloop-model.pt", "compact_model_fuzz_neuron0.pt", "torchscript.pt", "model.onnx", "learner-final.pt")
NUMS_FILTERS = "compact_model_fuzz_neuron0.nums_filters.npy"
MIN_XDF = 200  # bytes: an XDF file cut shorter than its headers is no recording
SEEDS = ("session", "killed", "session.nwb", "session.xdf", "pool.npz", "protocol.toml", "models")
Prepare = Callable[[Path], None]


# ----------------------------------------------------------------- oracles --
def _nonfinite_tensors(value, path: str = "") -> list[str]:
    import torch

    if isinstance(value, torch.Tensor):  # a BatchNorm's batch counter is unused in eval mode
        return ([path] if value.is_floating_point() and not path.endswith("num_batches_tracked")
                and not torch.isfinite(value).all() else [])
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return [f for k, v in items for f in _nonfinite_tensors(v, f"{path}.{k}" if path else str(k))]


def model_fault(path: Path, garbage: bool) -> str | None:
    """Why accepting the model file at ``path`` made no sense (garbage, or weights not finite)."""
    import torch

    if garbage:
        return "garbage accepted as a model"
    if not path.is_file():
        return None
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        try:
            graph = onnx.load(str(path)).graph
        except Exception:  # noqa: BLE001 - an unreadable file that was accepted
            return "an ONNX file onnx cannot read was accepted"
        bad = [i.name for i in graph.initializer if not _finite_array(numpy_helper.to_array(i))]
    else:
        try:
            bad = _nonfinite_tensors(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - TorchScript: its parameters
            try:
                bad = [n for n, p in torch.jit.load(str(path)).state_dict().items() if not torch.isfinite(p).all()]
            except Exception:  # noqa: BLE001
                return None
    return f"weights that are not finite accepted: {', '.join(bad[:3])}" if bad else None


def _finite_array(array) -> bool:
    import numpy as np

    return not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all())


def responses_fault(stdout: str) -> str | None:
    """An impossible row in ``closedloop responses`` output: times or counts not finite, counts negative."""
    for line in stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            return f"a row that is not JSON: {line[:120]}"
        for key, value in row.items() if isinstance(row, dict) else ():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    return f"{key} = {v} in {line[:160]}"
                if key in ("counts", "count") and isinstance(v, (int, float)) and v < 0:
                    return f"a negative count in {line[:160]}"
    return None


def recording_fault(folder: Path, args: list[str], garbage: bool) -> str | None:
    if garbage:
        return "garbage accepted as a recording"
    if args[0] == "responses":
        return responses_fault((folder / ".fuzz-stdout").read_text(errors="replace"))
    return None


# ----------------------------------------------------------- preparation --
def _copy(source: Path, name: str, mutation: Callable[[bytes], bytes] | None = None) -> Prepare:
    def prepare(folder: Path) -> None:
        data = source.read_bytes()
        write(folder / name, mutation(data) if mutation else data)
    return prepare


def _directory(name: str) -> Prepare:
    return lambda folder: (folder / name).mkdir()


def _with_sibling(prepare: Prepare, seeds: Path, name: str) -> Prepare:
    """A published model also needs its .nums_filters.npy beside it."""
    def both(folder: Path) -> None:
        prepare(folder)
        if name.startswith("compact_model") and not (folder / NUMS_FILTERS).exists():
            shutil.copy(seeds / "models" / NUMS_FILTERS, folder / NUMS_FILTERS)
    return both


def _torch_edit(source: Path, name: str, keys: tuple, value) -> Prepare:
    """The torch file with the entry at ``keys`` set to ``value`` (``nan``/``inf``: every float
    tensor under it filled with it; ``None``: removed)."""
    def prepare(folder: Path) -> None:
        import torch

        document = torch.load(source, map_location="cpu", weights_only=True)
        parent = document
        for key in keys[:-1]:
            parent = parent[key]
        if value is None:
            parent.pop(keys[-1], None)
        elif value in ("nan", "inf"):
            _fill(parent[keys[-1]] if keys else document, float(value))
        else:
            parent[keys[-1]] = value
        torch.save(document, folder / name)
    return prepare


def _fill(value, number: float) -> None:
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        value.fill_(number)
    for v in value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ():
        _fill(v, number)


def _torch_keys(path: Path) -> list[tuple]:
    import torch

    document = torch.load(path, map_location="cpu", weights_only=True)
    keys = []
    for key, value in document.items():
        keys.append((key,))
        if isinstance(value, dict):
            keys += [(key, sub) for sub in list(value)[:4]]
    return keys


def _nums_filters(value) -> Prepare:
    def prepare(folder: Path) -> None:
        import numpy as np

        np.save(folder / NUMS_FILTERS, np.asarray(value))
    return prepare


def _others(seeds: Path) -> list[tuple[str, Path]]:
    return [("an NWB file", seeds / "session.nwb"), ("an XDF file", seeds / "session.xdf"),
            ("a pool .npz", seeds / "pool.npz"), ("a protocol TOML", seeds / "protocol.toml"),
            ("a torch model", seeds / "models" / "closedloop-model.pt"), ("an ONNX file", seeds / "models" / "model.onnx")]


def _garbage(seed_file: Path, name: str, seeds: Path, rng: random.Random) -> list[tuple[str, Prepare, bool]]:
    """(mutation, prepare, garbage): byte mutations of the seed, other formats, a directory."""
    data = seed_file.read_bytes()
    found = [(label, _copy(seed_file, name, f), not label.startswith("bytes flipped"))
             for label, f in byte_mutations(data, rng)]
    found += [(f"{label} named {name}", _copy(other, name), True) for label, other in _others(seeds)
              if other.suffix != seed_file.suffix]
    found.append((f"a directory named {name}", _directory(name), True))
    return found


# ----------------------------------------------------------------- models --
def model_cases(seeds: Path, count: int, seed: int) -> list[Case]:
    """``count`` bad model files, each given to ``inspect``, ``design --model`` or ``core show`` in turn."""
    rng = random.Random(seed)
    found: list[tuple[str, str, Prepare, bool]] = []
    for name in MODELS:
        source = seeds / "models" / name
        found += [(name, label, _with_sibling(p, seeds, name), g) for label, p, g in _garbage(source, name, seeds, rng)]
        if name != "torchscript.pt" and name != "model.onnx":
            for keys in _torch_keys(source):
                where = ".".join(map(str, keys))
                found += [(name, f"{where} = {v!r}", _with_sibling(_torch_edit(source, name, keys, v), seeds, name), False)
                          for v in (None, "nan", "inf", 0, -1, "x", [], {}, 10**30)]
    for value in ([0, 3, 2, 2, 2], [-1, 3, 2, 2, 2], [3, 3], [], [[3, 3, 2, 2, 2]], [3.5, 3, 2, 2, 2], [10**6] * 5, "x"):
        found.append((NUMS_FILTERS, f"= {value!r}", _with_sibling(_both(_copy(seeds / "models" / MODELS[1], MODELS[1]),
                                                                         _nums_filters(value)), seeds, MODELS[1]), False))
    chosen = pick(found, count, seed)
    pool = str(seeds / "pool.npz")
    commands = (["inspect", "{m}", "--out", "figure.png", "--pool", pool, "--steps", "2"],
                ["design", "--model", "{m}", "--pool", pool, "-n", "2", "--strategy", "disagreement", "--out", "design",
                 "--size", "16"],
                ["core", "show", "{m}"])
    cases = []
    for k, (name, label, prepare, garbage) in enumerate(chosen):
        args = [a.replace("{m}", name) for a in commands[k % len(commands)]]
        cases.append(Case("model", f"{name}: {label}", prepare, args,
                          lambda folder, name=name, garbage=garbage: model_fault(folder / name, garbage)))
    return cases


def _both(first: Prepare, second: Prepare) -> Prepare:
    def prepare(folder: Path) -> None:
        first(folder)
        second(folder)
    return prepare


# ------------------------------------------------------------- recordings --
def _h5_edit(source: Path, name: str, dataset: str, value) -> Prepare:
    """The NWB file with one dataset replaced (``None``: removed)."""
    def prepare(folder: Path) -> None:
        import h5py
        import numpy as np

        shutil.copy(source, folder / name)
        with h5py.File(folder / name, "r+") as f:
            if dataset not in f:
                return
            old = f[dataset]
            del f[dataset]
            if value is None:
                return
            if isinstance(value, float) and old.dtype.kind == "f":
                f[dataset] = np.full(old.shape, value, old.dtype)
            else:
                f[dataset] = value
    return prepare


def _h5_datasets(path: Path) -> list[str]:
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


def _xdf_variant(seeds: Path, name: str, change: dict) -> Prepare:
    def prepare(folder: Path) -> None:
        from closedloop.benchmarks.fuzz_seeds import write_xdf

        write_xdf(seeds / "session", folder / name, **change)
    return prepare


def recording_cases(kind: str, seeds: Path, count: int, seed: int) -> list[Case]:
    """``count`` bad NWB exports (``kind`` nwb) or XDF recordings (``kind`` xdf), each given to
    ``responses`` or ``replay`` in turn."""
    rng = random.Random(seed)
    name = f"rec.{kind}"
    source = seeds / f"session.{kind}"
    found = [(label, p, g) for label, p, g in _garbage(source, name, seeds, rng)]
    if kind == "xdf":  # a recording cut short is still a recording
        found = [(label, p, g and not (label.startswith("truncated") and int(label.split()[2]) >= MIN_XDF))
                 for label, p, g in found]
        for field in ("name", "type", "channel_count", "nominal_srate", "channel_format"):
            for value in (*SPECIAL[:10], "string", "float32", "int8", "-1", "99999999"):
                for stream in (1, 2):
                    found.append((f"stream {stream} header {field} = {value!r}",
                                  _xdf_variant(seeds, name, {"header": {(stream, field): value}}), False))
        for marker in examples(JSON_VALUES, max(30, count // 2), seed):
            text = json.dumps(marker)
            found.append((f"every marker {text[:60]}", _xdf_variant(seeds, name, {"marker": text}), False))
        for stamp in (math.nan, math.inf, -1e300, 0.0):
            found.append((f"every stamp {stamp}", _xdf_variant(seeds, name, {"stamp": stamp}), False))
    else:
        for dataset in _h5_datasets(source):
            for value in (None, math.nan, math.inf, -1.0, "x", [1.0]):
                found.append((f"{dataset} = {value!r}", _h5_edit(source, name, dataset, value), False))
    chosen = pick(found, count, seed)
    commands = (["responses", name],
                ["replay", name, "--out", "replayed", *(["--protocol", str(seeds / "protocol.toml"), "--pool",
                                                         str(seeds / "session" / "stimuli.npz")] if kind == "xdf" else [])])
    cases = []
    for k, (label, prepare, garbage) in enumerate(chosen):
        args = commands[k % len(commands)]
        cases.append(Case(kind, label, prepare, args,
                          lambda folder, args=args, garbage=garbage: recording_fault(folder, args, garbage)))
    return cases


# ------------------------------------------------------------- arguments --
COMMAND_OPTIONS = {
    ("responses",): ["--events", "--log", "--start", "--end"],
    ("export",): ["--nwb", "--overwrite"],
    ("report",): ["--out"],
    ("replay",): ["--strategy", "--out", "--seed", "--protocol", "--pool", "--every", "--refresh-every",
                  "--accuracy-every", "--twin-epochs", "--events", "--log"],
    ("inspect",): ["--out", "--pool", "--output", "--steps", "--seed"],
    ("design",): ["--model", "--pool", "-n", "--strategy", "--params", "--control-fraction", "--control", "--batch",
                  "--size", "--background", "--out", "--seed"],
    ("core", "show"): [],
    ("stimuli", "show"): ["--out", "--size", "--columns", "--max", "--background"],
    ("run",): ["--rig", "--out", "--strategy"],
    ("resume",): [],
    ("nonsense",): ["--x"],
}


def cli_cases(seeds: Path, count: int, seed: int) -> list[Case]:
    """``count`` command lines: a known command with its options given values of every sort (special
    numbers, text, missing and existing files, directories, the seeds) in any order."""
    from hypothesis import strategies as st

    existing = ["session", "killed", "session.nwb", "session.xdf", "pool.npz", "protocol.toml",
                "models/closedloop-model.pt", "models/model.onnx"]  # copied into the case's folder
    values = st.one_of(st.sampled_from([str(v) for v in SPECIAL] + ["nan", "-inf", "1e309", "-0", "0x10", "--",
                                                                     "missing.toml", "out/missing/x.png", "/proc/x",
                                                                     ".", "/", "demo", "disagreement", "random",
                                                                     '{"a": 1}', "a=1", "k=nan"]),
                       st.sampled_from(existing), st.text(max_size=8), st.integers().map(str), st.floats().map(repr))
    strategy = st.tuples(st.sampled_from(sorted(COMMAND_OPTIONS)), st.lists(st.tuples(st.integers(0, 20), values),
                                                                            max_size=6), st.lists(values, max_size=2))
    cases = []
    for command, options, positional in examples(strategy, count + count // 5, seed):  # some are skipped
        names = COMMAND_OPTIONS[command] or ["--x"]
        args = [*command, *positional]
        for which, value in options:
            args += [names[which % len(names)], value]
        # Resuming a real session or running a real protocol would record a whole session.
        if command in (("run",), ("resume",)) and {"session", "killed", "protocol.toml"} & set(args):
            continue
        args = [a.replace("\0", "") for a in args]
        cases.append(Case("cli args", " ".join(args)[:200], _seed_copies(seeds, args), args))
    return cases[:count]


def _seed_copies(seeds: Path, args: list[str]) -> Prepare:
    """Copy the seeds the arguments name into the case's folder (a command may write to them)."""
    def prepare(folder: Path) -> None:
        for name in SEEDS:
            if any(a == name or a.startswith(name + "/") for a in args):
                copy = shutil.copytree if (seeds / name).is_dir() else shutil.copy
                copy(seeds / name, folder / name)
    return prepare
