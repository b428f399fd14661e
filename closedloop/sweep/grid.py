"""A sweep's grid: settings given as lists (``--vary KEY=V1,V2``), their combinations, and a cell's
identity.

A cell is a dict of JSON values, its *inputs*: everything that decides what it computes (the
strategy, the twin and a digest of its file, the seed, the settings). Its identity is a stable
hash of them (:func:`cell_id`), so the same grid run again finds its finished cells.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from closedloop.errors import ClosedLoopError


def parse_values(text: str) -> list:
    """``8,16`` -> ``[8, 16]``: the values of a ``--vary``, each read as JSON (a number, true,
    a list in brackets) or else kept as text."""
    try:
        values = json.loads(f"[{text}]")
    except json.JSONDecodeError:
        values = []
        for item in text.split(","):
            try:
                values.append(json.loads(item))
            except json.JSONDecodeError:
                values.append(item.strip())
    return values


def parse_vary(texts: tuple[str, ...] | list[str], check: Callable[[str, Any], str]) -> dict[str, list]:
    """The settings of ``--vary KEY=V1,V2 ...`` (repeatable), each value checked.

    Parameters
    ----------
    texts : sequence of str
        ``KEY=V1,V2``, one per ``--vary``.
    check : callable
        ``check(key, value)`` returns the key's canonical name, or raises :class:`ClosedLoopError`
        saying what is wrong (an unknown setting, a value the spec refuses).

    Returns
    -------
    dict
        Canonical key -> its values, in the order given.

    Raises
    ------
    ClosedLoopError
        One line naming the ``--vary`` at fault.
    """
    varied: dict[str, list] = {}
    for text in texts:
        key, equals, values_text = text.partition("=")
        key = key.strip()
        if not equals or not key or not values_text.strip():
            raise ClosedLoopError(f"--vary {text!r}: expected KEY=V1,V2,... (e.g. model.members=8,16)")
        values = parse_values(values_text)
        canonical = None
        for value in values:
            try:
                canonical = check(key, value)
            except ClosedLoopError as exc:
                raise ClosedLoopError(f"--vary {key}={json.dumps(value)}: {exc}") from None
        if canonical in varied:
            raise ClosedLoopError(f"--vary {key}: given twice")
        if len(set(map(json.dumps, values))) < len(values):
            raise ClosedLoopError(f"--vary {key}: a value is given twice")
        varied[canonical] = values
    return varied


def combinations(varied: dict[str, list]) -> list[dict]:
    """Every combination of the varied settings (one empty dict when nothing varies)."""
    return [dict(zip(varied, values)) for values in itertools.product(*varied.values())]


def label(settings: dict) -> str:
    """``model.members=8, batch=2``; ``defaults`` when nothing is set."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "defaults"


def by_settings(records: list[dict], varied: list[str]) -> dict[str, list[dict]]:
    """Cell records grouped by their values of the ``varied`` settings (keys: :func:`label`)."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        settings = record["inputs"]["settings"]
        groups.setdefault(label({key: settings[key] for key in varied}), []).append(record)
    return groups


def cell_id(kind: str, inputs: dict) -> str:
    """A cell's identity: 16 hex digits of the SHA-1 of its kind and inputs as canonical JSON."""
    text = json.dumps({"kind": kind, **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def with_settings(spec: BaseModel, settings: dict[str, Any]) -> BaseModel:
    """``spec`` with dotted settings (``members``, ``core.dims``) replaced, validated by its own
    schema; a :class:`ClosedLoopError` says what the schema refuses."""
    data = spec.model_dump()
    for key, value in settings.items():
        *parents, last = key.split(".")
        table = data
        for part in parents:
            if not isinstance(table.get(part), dict):
                raise ClosedLoopError(f"{part!r} is not a table of settings")
            table = table[part]
        table[last] = value
    try:
        return type(spec).model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = " ".join(error["msg"].removeprefix("Value error, ").split())
        raise ClosedLoopError(f"{where}: {message}" if where else message) from None
