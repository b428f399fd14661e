"""Tuning read from a session: each unit's mean response per stimulus family and, within a family,
per value of each numeric stimulus parameter (curvature, orientation, dot size and position...)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.record.session import SessionRecord
from closedloop.report.data import rates, valid_responses

IDENTIFIERS = ("seed", "shape")  # numbers that name a stimulus rather than measure it: not tuning axes
MAX_PARAMETERS = 7  # per family plotted (the figure's columns)


def parameters(params: dict) -> dict[str, float]:
    """The numeric parameters of one stimulus, as tuning axes.

    Numbers are taken as they are (booleans and :data:`IDENTIFIERS` left out); a contour's
    ``curvatures`` (one per boundary element) become ``curvature max`` and ``curvature min``; dots'
    ``positions`` become ``x`` and ``y``, the mean of the dot centres (fractions of the image side
    from its centre, y up, as a contour's ``x`` and ``y``). Anything else (colours, file names) is
    left out.
    """
    out = {}
    for key, value in params.items() if isinstance(params, dict) else ():
        if isinstance(value, bool) or key in IDENTIFIERS:
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif key == "curvatures" and value:
            out["curvature max"], out["curvature min"] = float(max(value)), float(min(value))
        elif key == "positions" and value:
            out["x"], out["y"] = (float(v) for v in np.mean(np.array(value, float), axis=0))
    return out


@dataclass(frozen=True)
class Curve:
    """Mean responses per value of one parameter within one family."""

    values: np.ndarray  # (v,) the parameter's distinct values, ascending
    mean: np.ndarray  # (units, v) spikes/s in the response window
    presentations: np.ndarray  # (v,) presentations averaged at each value


@dataclass(frozen=True)
class FamilyTuning:
    """One family's mean response and its tuning curves."""

    mean: np.ndarray  # (units,) spikes/s over the family's presentations
    sem: np.ndarray  # (units,) standard error of that mean (NaN below two presentations)
    presentations: int
    curves: dict[str, Curve]  # by parameter, at most MAX_PARAMETERS that vary


def tuning(record: SessionRecord) -> dict[str, FamilyTuning]:
    """Each family's tuning (families in pool order) over the whole responses
    (:func:`closedloop.report.data.valid_responses`)."""
    responses = valid_responses(record)
    values = rates(record, responses)
    pool = record.pool
    families = np.array([pool.families[r["pool_index"]] for r in responses], dtype=object)
    out = {}
    for family in [f for f in dict.fromkeys(pool.families) if f in families]:
        mine = np.flatnonzero(families == family)
        found = [parameters(pool.params[responses[k]["pool_index"]]) for k in mine]
        curves = {}
        for name in dict.fromkeys(key for p in found for key in p):
            has = [(k, p[name]) for k, p in zip(mine, found) if name in p]
            x = np.array([v for _, v in has])
            distinct, where, n = np.unique(x, return_inverse=True, return_counts=True)
            if len(distinct) < 2:
                continue
            sums = np.zeros((values.shape[1], len(distinct)))
            np.add.at(sums.T, where, values[[k for k, _ in has]])
            curves[name] = Curve(distinct, sums / n, n)
            if len(curves) == MAX_PARAMETERS:
                break
        chunk = values[mine]
        sem = (chunk.std(axis=0, ddof=1) / np.sqrt(len(mine)) if len(mine) > 1
               else np.full(values.shape[1], np.nan))
        out[family] = FamilyTuning(chunk.mean(axis=0), sem, len(mine), curves)
    return out
