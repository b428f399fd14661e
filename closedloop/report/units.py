"""The report's section per recorded unit: the images it answered most and least, its PSTH and mean
response per stimulus family, its tuning to each stimulus parameter, and the model's predictions
against what it did. Responses are spikes/s in the response window (count / window length)."""

from __future__ import annotations

import numpy as np

from closedloop.record import SessionRecord
from closedloop.report import data, figures, html
from closedloop.report.tuning import tuning

RANKED = 8  # images shown at each end of a unit's ranking


def sections(record: SessionRecord, units: list[data.Unit], anchor: str, before: float, after: float) -> list[str]:
    """A heading (id ``<anchor>-unit-<k>``) and the figures of each unit.

    Parameters
    ----------
    record : SessionRecord
        The session.
    units : list of Unit
        Its recorded units, in count order.
    anchor : str
        The session's heading id.
    before, after : float
        Time shown before and after each onset in PSTHs, s.
    """
    responses = data.valid_responses(record)
    if not responses:
        return [html.paragraph("No whole responses were recorded.")]
    start, end = data.window(record)
    means = data.image_means(record)
    found = tuning(record)
    pairs = data.predicted_observed(record)
    families = [record.pool.families[r["pool_index"]] for r in responses]
    onsets = np.array([r["onset"] for r in responses], float)
    parts = [html.paragraph(
        f"Responses are spikes/s in the {start * 1e3:.0f}-{end * 1e3:.0f} ms window (the count divided by "
        f"{end - start:g} s), over the {len(responses)} presentations whose counts are whole (not cut by a fixation "
        f"break or a spike-stream gap), {len(means.pool_index)} images.")]
    for u, unit in enumerate(units):
        parts += [html.heading(4, f"Unit {unit.name}", f"{anchor}-unit-{u}"), _ranked(record, means, u)]
        spikes = {f: data.aligned(unit.times, onsets[[k for k, g in enumerate(families) if g == f]], before, after)
                  for f in found}
        mean = {f: (t.mean[u], t.sem[u]) for f, t in found.items()}
        parts.append(html.figure(figures.png(figures.family_responses(unit.name, spikes, before, after,
                                                                      (start, end), mean)),
                                 f"families {unit.name}",
                                 "PSTH per stimulus family (10 ms bins; shaded: the response window), and the mean "
                                 "response in the window per family; legend: presentations."))
        curves = {f: {p: (c.values, c.mean[u], c.presentations) for p, c in t.curves.items()}
                  for f, t in found.items() if t.curves}
        parts.append(html.figure(figures.png(figures.tuning(unit.name, curves)), f"tuning {unit.name}",
                                 "Mean response at each value of each numeric parameter within a family (point "
                                 "area: presentations averaged); the line joins them where the values are few, else "
                                 f"the means of {figures.TUNING_BINS} bins of about equal presentations. Contours' "
                                 "curvature: the largest and smallest boundary curvature; dots' x, y: the mean "
                                 "of their centres (fractions of the image from its centre, y up).")
                     if curves else html.paragraph("No stimulus family had a numeric parameter that varied."))
        parts.append(_predicted(unit.name, u, pairs))
    return parts


def _ranked(record: SessionRecord, means: data.ImageMeans, unit: int) -> str:
    """The images ``unit`` answered most and least, each with its mean response and presentations."""
    top, bottom = data.ranked(means, unit, RANKED)
    rows = []
    for which, positions in (("most", top), ("least", bottom)):
        tiles = []
        for rank, k in enumerate(positions, 1):
            i = int(means.pool_index[k])
            tiles.append(html.tile(figures.image(record.pool.images[i]), f"{which} {rank}: pool {i}",
                                   f"#{i} {record.pool.families[i]}: {means.mean[unit, k]:.1f} spikes/s, "
                                   f"n {means.presentations[k]}"))
        rows.append(html.paragraph(f"The {len(positions)} images answered {which} (mean spikes/s; n: presentations):")
                    + html.grid(tiles))
    return "".join(rows)


def _predicted(name: str, unit: int, pairs: tuple[np.ndarray, np.ndarray] | None) -> str:
    if pairs is None:
        return html.paragraph("No decision logged the model's predictions (selections.jsonl 'predicted': a "
                              "session from before they were recorded), so predicted against observed is not shown.")
    predicted, observed = pairs
    if not len(predicted):
        return html.paragraph("No chosen image reached the screen after a decision that predicted it.")
    return html.figure(figures.png(figures.predicted_observed(name, predicted[:, unit], observed[:, unit])),
                       f"predicted {name}",
                       "Each presentation of a chosen image: the response the model predicted at the latest "
                       "decision that chose it, against the response observed (spikes/s); dashed: identity.")
