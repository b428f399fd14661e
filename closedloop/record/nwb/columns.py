"""Table columns for the NWB export: hdmf columns from arrays, and typed columns from records.

A record's values become columns an archive accepts and a user can filter on: numbers as numbers
(NaN where a record lacks the key), text as text ("" where it lacks it), lists of numbers as ragged
columns, never a JSON dictionary in a text column.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

Spec = tuple[str, str, np.ndarray, "list[int] | None"]
"""(name, description, data, row lengths for a ragged column or None for a plain one)."""


def columns(specs: list[Spec]) -> list:
    """hdmf ``VectorData`` (and ``VectorIndex`` for a ragged column) from column specs; a ragged
    column empty in every row is left out (an archive's checks cannot read an empty dataset)."""
    from hdmf.common import VectorData, VectorIndex

    out = []
    for name, description, data, lengths in specs:
        if lengths is not None and not len(data):
            continue
        out.append(VectorData(name=name, description=description, data=data))
        if lengths is not None:
            out.append(VectorIndex(name=f"{name}_index", target=out[-1], data=np.cumsum(lengths, dtype=np.uint64)))
    return out


INTEGERS = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64)


def compact_int(values) -> np.ndarray:
    """Whole numbers in the smallest integer type that holds them (an index or count column of 0s
    and 1s is then one byte wide, not a column an archive takes for a boolean)."""
    values = np.asarray(values, np.int64)
    low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
    return values.astype(next(t for t in INTEGERS if np.iinfo(t).min <= low and high <= np.iinfo(t).max))


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _numbers(value: object) -> bool:
    """Whether ``value`` is a (possibly nested) list of numbers."""
    return isinstance(value, list) and all(_numbers(v) if isinstance(v, list) else _is_number(v) for v in value)


def _whole(value: object) -> bool:
    """Whether ``value`` is a (possibly nested) list of integers."""
    return all(_whole(v) if isinstance(v, list) else isinstance(v, int) for v in value)


def typed_columns(records: list[dict], prefix: str, what: str, described: dict[str, str] | None = None,
                  ) -> tuple[list[Spec], list[str]]:
    """One typed column per key over ``records``.

    Parameters
    ----------
    records : list of dict
        One per table row; keys may differ between rows.
    prefix : str
        Put before each key to make the column name (keeps clear of the table's own columns).
    what : str
        What the values are, for the column descriptions ("stimulus parameter").
    described : dict of str to str, optional
        Descriptions of some keys (units included), used instead of the generic one.

    Returns
    -------
    specs : list of Spec
        Keys whose values are all booleans (a bool column; a row without the key makes it a float
        column, 1.0 true, NaN absent), integers in every row (the smallest integer type holding them), numbers (float64, NaN where
        absent), text ("" where absent), or lists of numbers (a ragged column, int64 when all are
        whole numbers, else float64; empty where absent or null; a list of equal-length lists keeps
        its rows, e.g. (x, y) positions).
    left_out : list of str
        Keys of any other kind (nested objects, mixed types), not made columns.
    """
    keys = list(dict.fromkeys(k for r in records for k in r))
    specs, left_out = [], []
    for key in keys:
        values = [r.get(key) for r in records]
        present = [v for v in values if v is not None]
        name = f"{prefix}{key}"
        description = (described or {}).get(key) or f"{what} {key!r}"
        if present and all(isinstance(v, bool) for v in present) and len(present) == len(values):
            specs.append((name, description, np.array(values, bool), None))
        elif present and len(present) == len(values) and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in present):
            specs.append((name, description, compact_int(values), None))
        elif present and all(isinstance(v, (bool, Real)) for v in present):
            absent = "; NaN where absent" + ("; 1.0 true, 0.0 false" if any(isinstance(v, bool) for v in present)
                                             else "")
            specs.append((name, description + absent,
                          np.array([np.nan if v is None else float(v) for v in values]), None))
        elif present and all(isinstance(v, str) for v in present):
            specs.append((name, description + ('; "" where absent' if len(present) < len(values) else ""),
                          np.array(["" if v is None else v for v in values], str), None))
        elif present and all(_numbers(v) for v in present):
            dtype = np.int64 if all(_whole(v) for v in present) else np.float64
            rows = [np.asarray(v if v is not None else [], dtype) for v in values]
            widths = {r.shape[1:] for r in rows if r.size}
            if len(widths) <= 1:
                width = next(iter(widths), ())
                rows = [r.reshape(-1, *width) for r in rows]
                shape = f" (rows of {width[0]})" if width else ""
            else:
                rows, shape = [r.reshape(-1) for r in rows], " (flattened)"
            specs.append((name, f"{description}, list{shape}; empty where absent or null",
                          np.concatenate(rows), [len(r) for r in rows]))
        else:
            left_out.append(key)
    return specs, left_out
