"""Building blocks of the fuzz corpora: hypothesis examples drawn reproducibly, special values,
a TOML writer that keeps nan and inf, and byte-level mutations of whole files."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

# Values the user's own run put in every field: non-finite and extreme floats, zero and negative
# numbers, ints no machine type holds, empty strings and values of the wrong type.
SPECIAL: tuple[Any, ...] = (math.inf, -math.inf, math.nan, 1e300, -1e300, 1e-300, 0, 0.0, -1, -0.5,
                            10**30, -(10**30), 2**63, "", "x", True, [], {}, [1, 2], {"a": 1})
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from(SPECIAL)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def examples(strategy: st.SearchStrategy, count: int, seed_: int) -> list:
    """``count`` values of ``strategy`` (fewer if it runs dry), the same for the same seed."""
    found: list = []
    if count <= 0:
        return found

    @seed(seed_)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value) -> None:
        found.append(value)

    collect()
    return found[:count]


def pick(items: list, count: int, seed_: int) -> list:
    """``count`` of ``items`` drawn without replacement (all of them, shuffled, if fewer), reproducibly."""
    items = list(items)
    random.Random(seed_).shuffle(items)
    return items[:count]


# ------------------------------------------------------------------- TOML --
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    return json.dumps(str(value))


def toml_text(document: dict) -> str:
    """``document`` as TOML, every table inline (``None`` values are left out, as TOML has none)."""
    return "".join(f"{json.dumps(str(k))} = {_toml_value(v)}\n" for k, v in document.items() if v is not None)


# ------------------------------------------------------------- documents --
def leaves(document: Any, path: tuple = ()) -> list[tuple]:
    """Every key path of a parsed document (tables and lists are walked, and are paths themselves)."""
    found = [path] if path else []
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        found += leaves(value, (*path, key))
    return found


def replaced(document: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    """A copy of ``document`` with ``path`` set to ``value`` (or removed)."""
    document = json.loads(json.dumps(document))
    *parents, last = path
    target = document
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    return document


def mutated_documents(document: dict) -> list[tuple[str, Any]]:
    """Deterministic mutations of a parsed config: every special value at every path, every key
    removed, an unknown key in every table, and whole documents that are not a table."""
    found = []
    for path in leaves(document):
        where = ".".join(map(str, path))
        found += [(f"{where} = {v!r}", replaced(document, path, v)) for v in SPECIAL]
        if isinstance(path[-1], str):
            found.append((f"{where} removed", replaced(document, path, None, delete=True)))
    for path in [(), *(p for p in leaves(document) if isinstance(_at(document, p), dict))]:
        found.append((f"unknown key in {'.'.join(map(str, path)) or 'top level'}",
                      replaced(document, (*path, "zz_unknown"), 1) if path else {**document, "zz_unknown": 1}))
    return found


def _at(document: Any, path: tuple) -> Any:
    for key in path:
        document = document[key]
    return document


def document_edits() -> st.SearchStrategy:
    """Hypothesis: up to three edits, each (path choice in [0, 1), new value or deletion)."""
    return st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.one_of(JSON_VALUES, st.just(_DELETE))),
                    min_size=1, max_size=3)


_DELETE = "<deleted>"


def apply_edits(document: dict, edits: list[tuple[float, Any]]) -> tuple[str, dict]:
    """Apply :func:`document_edits` to ``document``; returns (description, new document)."""
    names = []
    for where, value in edits:
        paths = leaves(document)
        if not paths:
            break
        path = paths[int(where * len(paths))]
        delete = value == _DELETE and isinstance(path[-1], str)
        document = replaced(document, path, None if delete else value, delete=delete)
        names.append(f"{'.'.join(map(str, path))} {'removed' if delete else '= ' + repr(value)[:60]}")
    return "; ".join(names), document


# ----------------------------------------------------------------- bytes --
def byte_mutations(data: bytes, rng: random.Random) -> list[tuple[str, Callable[[bytes], bytes]]]:
    """Whole-file mutations: empty, truncated, bytes flipped, random bytes, invalid UTF-8 inserted."""
    n = len(data)
    cuts = sorted({0, 1, n // 10, n // 3, n // 2, (9 * n) // 10, max(n - 1, 0), *(rng.randrange(n + 1) for _ in range(3))})
    found: list[tuple[str, Callable[[bytes], bytes]]] = [(f"truncated to {k} bytes", lambda d, k=k: d[:k]) for k in cuts]
    for _ in range(4):
        at = sorted(rng.randrange(max(n, 1)) for _ in range(rng.choice((1, 4, 32))))
        found.append((f"bytes flipped at {at[:4]}{'...' if len(at) > 4 else ''}",
                      lambda d, at=at: _flipped(d, at)))
    noise = rng.randbytes(rng.choice((1, 64, 4096)))
    found.append((f"{len(noise)} random bytes", lambda d, noise=noise: noise))
    found.append(("invalid UTF-8 in the middle", lambda d: d[:len(d) // 2] + b"\xff\xfe\xc3(" + d[len(d) // 2:]))
    return found


def _flipped(data: bytes, at: list[int]) -> bytes:
    out = bytearray(data)
    for i in at:
        if i < len(out):
            out[i] ^= 0xFF
    return bytes(out)


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
