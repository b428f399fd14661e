"""Stimulus sets: TOML files in ``stimuli/`` that say which stimuli a pool holds.

A set file has a ``[set]`` table and one ``[[entry]]`` table per group of
stimuli::

    [set]
    name = "demo"
    seed = 0                  # random entries draw from this seed: the set is reproducible

    [[entry]]                 # random members of a family
    family = "dot"
    count = 100
    fixed = {polarity = "dark"}       # optional: parameters every member shares (count, params, standard)

    [[entry]]                 # fixed members, each validated by the family's Params
    family = "grating"
    params = [{orientation = 0, frequency = 4}, {orientation = 90, frequency = 4}]

    [[entry]]                 # a family's standard set (the Pasupathy-Connor 366), or some of it
    family = "contour"
    standard = true           # or a list of indices into it, from 0
    count = 100               # optional: that many of them, drawn with the seed

    [[entry]]                 # a family's variants: keyword arguments of its ``variant`` function;
    family = "contour"        # a list gives one member per value (several: every combination)
    variants = {params = {shape = 3}, element = 0, curvature = [-0.3, 0.0, 0.3, 1.0]}

    [[entry]]                 # every image file in a folder or zip, relative to this file
    natural = "images/"
    count = 20                # optional: that many files, drawn with the seed
    gaudy = true              # any entry: true (transformed), false, or "both"

Loading validates everything that can be checked without rendering; every
error is one line naming the set file and the entry (counted from 1), e.g.
``stimulus set stimuli/x.toml entry 3 (dot), params 2: diameter: Input should
be greater than 0``. A set renders at most ``POOL_LIMIT`` images
(:data:`closedloop.config.POOL_LIMIT`, counting both versions of a ``gaudy =
"both"`` entry), so a large ``count`` or a long list of variants is refused
before anything is rendered. :meth:`StimulusSet.render` renders the members in entry
order into a :class:`StimulusPool` (identical renderings kept once).
"""

from __future__ import annotations

import itertools
import math
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationError, model_validator

from closedloop.config import POOL_LIMIT, Seed, Strict
from closedloop.errors import ClosedLoopError
from closedloop.stimuli.families import Family, gaudy
from closedloop.stimuli.natural import image_names, load_images
from closedloop.stimuli.pool import StimulusPool, stimulus_id
from closedloop.stimuli.registry import FAMILIES, NATURAL, get_family

KINDS = ("count", "params", "standard", "variants")


class _EntryError(ClosedLoopError):
    """A ClosedLoopError that already names the set and the entry."""


class SetInfo(Strict):
    """The ``[set]`` table."""

    name: str = Field(min_length=1)
    seed: Seed = Field(0, description="random entries draw from this seed, 0 to 2**32 - 1")
    description: str = ""


class Entry(Strict):
    """One ``[[entry]]`` table: a group of stimuli."""

    family: str | None = None
    count: int | None = Field(None, ge=0, le=POOL_LIMIT, description="random members; with standard or "
                              f"natural: that many of them, drawn with the seed; at most {POOL_LIMIT}, the most "
                              "images a pool holds")
    params: list[dict[str, Any]] | None = Field(None, min_length=1, description="fixed members")
    fixed: dict[str, Any] = Field({}, description="parameters shared by every member (not with variants)")
    standard: bool | list[int] = Field(False, description="the family's standard set, or indices into it")
    variants: dict[str, Any] | None = Field(None, description="keyword arguments of the family's variant(); "
                                                                "a list gives one member per value")
    natural: str | None = Field(None, description="folder or zip of images, relative to the set file")
    gaudy: bool | Literal["both"] = Field(False, description="apply the gaudy transform; 'both': with and without")

    @model_validator(mode="before")
    @classmethod
    def _one_params_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = {**data, "params": [data["params"]]}  # params = {...}: one member
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Entry:
        if self.natural is not None:
            extra = [k for k in ("family", "params", "variants") if getattr(self, k) is not None]
            extra += [k for k in ("standard", "fixed") if getattr(self, k)]
            if extra:
                raise ValueError(f"a natural-image entry takes no {extra[0]!r}")
            return self
        if self.family is None:
            raise ValueError("give 'family' (with one of count, params, standard, variants) or 'natural'")
        given = [k for k in KINDS if getattr(self, k) is not (False if k == "standard" else None)]
        if self.standard is not False and given == ["count", "standard"]:
            given = ["standard"]  # count with standard: that many of the standard set, drawn with the seed
        if len(given) != 1:
            raise ValueError(f"give exactly one of count, params, standard, variants (got "
                             f"{', '.join(given) or 'none'})")
        if self.fixed and given[0] == "variants":
            raise ValueError("'fixed' goes with count, params or standard")
        return self

    @property
    def label(self) -> str:
        return self.family if self.natural is None else f"natural {self.natural}"


def _describe(error: ValidationError, unknown: str = "parameter") -> str:
    """A pydantic error as one line: ``field: message`` for each problem (``unknown <what> 'name'``)."""
    parts = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown {unknown} {loc!r}")
        else:
            message = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def _function(family: Family, name: str):
    """The family's ``name`` function (``standard_set``, ``variant``): a method, or one of its module."""
    found = getattr(family, name, None)
    if found is None:
        found = getattr(sys.modules[type(family).__module__], name, None)
    return found if callable(found) else None


def _check(family: Family, params: dict) -> dict:
    """Validated, complete params, or a ClosedLoopError naming the field (and the known ones)."""
    try:
        return family.check(params)
    except ValidationError as exc:
        known = ", ".join(family.Params.model_fields)
        message = _describe(exc)
        if "unknown parameter" in message:
            message += f" (known: {known})"
        raise ClosedLoopError(message) from None


class StimulusSet(Strict):
    """A validated stimulus set; ``path`` is the file it came from (natural sources are relative to it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    info: SetInfo = Field(alias="set")
    entries: list[Entry] = Field(alias="entry", min_length=1)
    path: Path | None = None

    @property
    def where(self) -> str:
        return f"stimulus set {self.path if self.path is not None else self.info.name}"

    def _base(self) -> Path:
        return self.path.parent if self.path is not None else Path(".")

    def _context(self, index: int, entry: Entry, exc: Exception | str, detail: str = "") -> _EntryError:
        """An error naming this set and entry (counted from 1), and ``detail`` (which params table)."""
        message = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
        return _EntryError(f"{self.where} entry {index + 1} ({entry.label}){detail}: {message}")

    # ---------------------------------------------------------------- checks --
    def validate_entries(self) -> None:
        """Check every entry without rendering: the set's size, families, parameters, that image sources exist."""
        self.size()  # first: the members of an entry too large are never listed
        for i, entry in enumerate(self.entries):
            if entry.natural is None:
                for _ in self._members(i, entry, check_only=True):
                    pass

    def size(self) -> int:
        """Images the set renders, before identical renderings are dropped (found without rendering).

        Raises
        ------
        ClosedLoopError
            Naming the entry at which the set passes ``POOL_LIMIT`` images.
        """
        total = 0
        for i, entry in enumerate(self.entries):
            total += self._entry_size(i, entry)
            if total > POOL_LIMIT:
                raise self._context(i, entry, f"the set reaches {total} images here; a pool holds at most "
                                              f"{POOL_LIMIT}")
        return total

    def _entry_size(self, index: int, entry: Entry) -> int:
        copies = 2 if entry.gaudy == "both" else 1
        if entry.natural is not None:
            return copies * len(self._natural_names(index, entry))
        if entry.variants is not None:
            return copies * math.prod(len(v) for v in entry.variants.values() if isinstance(v, list))
        if entry.count is not None:
            return copies * entry.count
        if entry.params is not None:
            return copies * len(entry.params)
        return copies * sum(1 for _ in self._members(index, entry, check_only=True))  # a whole standard set

    def _natural_names(self, index: int, entry: Entry) -> list[str]:
        """The image files a natural entry takes (all, or ``count`` drawn with the seed), sorted."""
        try:
            names = image_names(self._base() / entry.natural)
        except ClosedLoopError as exc:
            raise self._context(index, entry, exc) from None
        if entry.count is None:
            return names
        if entry.count > len(names):
            raise self._context(index, entry, f"count {entry.count}, but {entry.natural} holds {len(names)} images")
        rng = np.random.default_rng([self.info.seed, index])
        return [names[k] for k in sorted(rng.choice(len(names), entry.count, replace=False))]

    def _members(self, index: int, entry: Entry, check_only: bool = False) -> Iterator[tuple[str, dict]]:
        """``(family, params)`` of a family entry's members, validated and complete, in order."""
        try:
            family = get_family(entry.family)
            if entry.count is not None:
                if entry.fixed:
                    _check(family, {**family.sample(np.random.default_rng(0)), **entry.fixed})
                rng = np.random.default_rng([self.info.seed, index])
                for _ in range(0 if check_only else entry.count):
                    yield entry.family, _check(family, {**family.sample(rng), **entry.fixed})
            elif entry.params is not None:
                for k, p in enumerate(entry.params):
                    try:
                        checked = _check(family, {**entry.fixed, **p})
                    except ClosedLoopError as exc:
                        raise self._context(index, entry, exc, f", params {k + 1}") from None
                    yield entry.family, checked
            elif entry.standard is not False:
                standard_set = _function(family, "standard_set")
                if standard_set is None:
                    raise ClosedLoopError(f"family {entry.family!r} has no standard set")
                members = standard_set()
                chosen = range(len(members)) if entry.standard is True else entry.standard
                bad = [k for k in chosen if not 0 <= k < len(members)]
                if bad:
                    raise ClosedLoopError(f"standard: index {bad[0]} out of range (the standard set has "
                                          f"{len(members)} members, indices 0-{len(members) - 1})")
                if entry.count is not None:
                    if entry.count > len(chosen):
                        raise ClosedLoopError(f"count {entry.count}, but the standard set gives {len(chosen)}")
                    rng = np.random.default_rng([self.info.seed, index])
                    chosen = [chosen[k] for k in sorted(rng.choice(len(chosen), entry.count, replace=False))]
                for k in chosen:
                    yield entry.family, _check(family, {**members[k], **entry.fixed})
            else:
                make_variant = _function(family, "variant")
                if make_variant is None:
                    raise ClosedLoopError(f"family {entry.family!r} has no variants")
                lists = {k: v for k, v in entry.variants.items() if isinstance(v, list)}
                for values in itertools.product(*lists.values()):
                    arguments = {**entry.variants, **dict(zip(lists, values))}
                    try:
                        member = make_variant(**arguments)
                    except ValidationError as exc:
                        raise ClosedLoopError(f"variants: {_describe(exc)}") from None
                    except (TypeError, ValueError) as exc:
                        raise ClosedLoopError(f"variants: {exc}") from None
                    yield entry.family, _check(family, member)
        except _EntryError:
            raise
        except ClosedLoopError as exc:
            raise self._context(index, entry, exc) from None

    # ------------------------------------------------------------- rendering --
    def _images(self, index: int, entry: Entry, size_px: int, background: float
                ) -> Iterator[tuple[str, dict, np.ndarray]]:
        if entry.natural is None:
            for name, params in self._members(index, entry):
                try:
                    image = FAMILIES[name].render(params, size_px, background)
                except (ValidationError, ValueError) as exc:
                    raise self._context(index, entry, exc) from None
                yield name, params, image
            return
        names = self._natural_names(index, entry)
        try:
            for name, image in load_images(self._base() / entry.natural, size_px, background, names=names):
                yield NATURAL, {"source": entry.natural, "file": name}, image
        except ClosedLoopError as exc:
            raise self._context(index, entry, exc) from None

    def render(self, size_px: int, background: float = 0.5) -> StimulusPool:
        """Every member rendered at ``size_px`` on a ``background`` grey, in entry order, duplicates once."""
        if size_px < 1 or not 0 <= background <= 1:
            raise ClosedLoopError(f"{self.where}: rendering needs size_px >= 1 and background 0-1, "
                                  f"got {size_px!r} and {background!r}")
        self.size()
        images: list[np.ndarray] = []
        families: list[str] = []
        params: list[dict] = []
        seen: set[str] = set()
        for i, entry in enumerate(self.entries):
            for family, p, image in self._images(i, entry, size_px, background):
                versions = [] if entry.gaudy is True else [(p, image)]
                if entry.gaudy:
                    versions.append(({**p, "gaudy": True}, gaudy(image)))
                for q, im in versions:
                    sid = stimulus_id(im)
                    if sid not in seen:
                        seen.add(sid)
                        images.append(im)
                        families.append(family)
                        params.append(q)
        if not images:
            raise ClosedLoopError(f"{self.where}: no stimuli (every entry is empty)")
        return StimulusPool(np.stack(images), families, params)


def load_stimulus_set(path: Path | str) -> StimulusSet:
    """Read and validate a set file; errors are one line naming the file and the entry."""
    path = Path(path)
    where = f"stimulus set {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClosedLoopError(f"{where}: not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClosedLoopError(f"{where}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ClosedLoopError(f"{where}: unreadable ({exc.strerror or exc})") from None
    unknown = sorted(set(data) - {"set", "entry"})
    if unknown:
        raise ClosedLoopError(f"{where}: unknown table {unknown[0]!r} (a set file has [set] and [[entry]])")
    if not isinstance(data.get("set"), dict):
        raise ClosedLoopError(f"{where}: no [set] table (with at least name = ...)")
    try:
        info = SetInfo.model_validate(data["set"])
    except ValidationError as exc:
        raise ClosedLoopError(f"{where}: [set] {_describe(exc, 'key')}") from None
    raw = data.get("entry")
    if not isinstance(raw, list) or not raw:
        raise ClosedLoopError(f"{where}: no [[entry]] tables")
    entries = []
    for i, table in enumerate(raw):
        try:
            entries.append(Entry.model_validate(table))
        except ValidationError as exc:
            table = table if isinstance(table, dict) else {}
            label = table.get("family") or (f"natural {table['natural']}" if "natural" in table else "?")
            raise ClosedLoopError(f"{where} entry {i + 1} ({label}): {_describe(exc, 'key')}") from None
    stimulus_set = StimulusSet(info=info, entries=entries, path=path)
    stimulus_set.validate_entries()
    return stimulus_set


def generate_pool(families: dict[str, int], size_px: int, seed: int, background: float = 0.5) -> StimulusPool:
    """Render ``families[name]`` random members of each named family, reproducibly.

    The same as a stimulus set of random entries (one per family, in order) with this seed.
    Duplicate renderings (same pixels) are kept once.
    """
    for name in families:
        get_family(name)
    entries = [Entry(family=name, count=count) for name, count in families.items() if count > 0]
    if not entries:
        raise ClosedLoopError("the stimulus pool is empty: ask for at least one image")
    return StimulusSet(info=SetInfo(name="generated", seed=seed), entries=entries).render(size_px, background)
