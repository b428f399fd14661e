"""Assemble the report of one or more sessions into one HTML page."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.record import SessionRecord, read_session
from closedloop.report import data, figures, html, timing
from closedloop.report.units import sections as unit_sections
from closedloop.stimuli import StimulusPool
from closedloop.stimuli.pool import GALLERY_PAD

BEFORE = 0.1  # s shown before each onset in rasters
AFTER_MARGIN = 0.1  # s shown after the later of the image's offset and the window's end
GALLERY_LIMIT = 128  # chosen images shown


def write_report(sessions: list[Path], out: Path | None = None) -> Path:
    """Write the report of ``sessions`` (accuracy overlaid when several) to ``out``.

    Parameters
    ----------
    sessions : list of Path
        Session directories, complete or partial (killed before ``summary.json``).
    out : Path, optional
        HTML file to write; default ``report.html`` in the first session.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ClosedLoopError
        One line naming the session file at fault (missing, corrupt, inconsistent: see
        :func:`closedloop.record.read_session`), or the output that cannot be written.
    """
    if not sessions:
        raise ClosedLoopError("report: give at least one session directory")
    records = [read_session(s) for s in sessions]
    out = Path(out) if out is not None else Path(sessions[0]) / "report.html"
    labels = [f"{r.path.name} ({data.strategy(r)})" for r in records]
    body = [html.heading(2, "Summary", "summary"), _summary(records, labels),
            html.heading(2, "Model accuracy", "accuracy"), _accuracy(records, labels)]
    for k, (record, label) in enumerate(zip(records, labels)):
        body += _session(record, label, k)
    text = html.page(f"closedloop report: {', '.join(r.path.name for r in records)}", body)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ClosedLoopError(f"report file {out}: cannot write ({exc.strerror or exc})") from None
    return out


def _summary(records: list[SessionRecord], labels: list[str]) -> str:
    """A table: one column per session."""
    def median(values) -> str:
        values = [v for v in values or [] if v is not None]
        return f"{np.median(values):.2f}" if values else "-"

    rows: dict[str, list[str]] = {}
    for record in records:
        summary = record.summary or {}
        trials = Counter(e.get("end") for e in record.events if e.get("kind") == "trial")
        onsets = data.column(record, "markers", "onset")
        last = record.accuracy[-1] if record.accuracy else {}
        names = [u.get("name", "?") for u in record.rig.get("recorded_units", [])]
        protocol = record.protocol.get("protocol", {})
        fields = {
            "status": (record.summary.get("status", "complete") if record.summary is not None
                       else "PARTIAL: no summary.json (the run was killed or failed)"),
            "protocol": protocol.get("name", "?"),
            "rig": record.rig.get("rig", {}).get("name", "?"),
            "strategy": data.strategy(record),
            "units": f"{len(names)}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}",
            "presentations": f"{len(record.markers)} of {protocol.get('presentations', '?')}",
            "responses": f"{len(record.responses)}",
            "spikes": f"{len(record.spikes)}",
            "trials": f"{sum(trials.values())}: {trials['completed']} completed, {trials['fixation_break']} "
                      f"fixation breaks, {trials['no_fixation']} without fixation",
            "duration (s)": (f"{summary['duration_s']:.1f}" if "duration_s" in summary
                             else f"{onsets[-1] - onsets[0]:.1f} (first to last onset)" if onsets else "-"),
            "deadline misses": f"{sum(e.get('kind') == 'deadline_miss' for e in record.events)}",
            "model decisions": f"{len(record.selections)}",
            "last held-out r, median over units (observed / true)":
                f"{median(last.get('r_observed'))} / {median(last.get('r_true'))} "
                f"after {last.get('responses', 0)} responses",
            "selection turnaround median (ms)": median([s.get("turnaround_ms") for s in record.selections]),
            "recorded streams (samples)": ", ".join(f"{key} {len(s.times)}" for key, s in record.streams.items())
                                          or "-",
        }
        for key, value in fields.items():
            rows.setdefault(key, []).append(value)
    return html.table([[key, *values] for key, values in rows.items()], ["", *labels])


def _accuracy(records: list[SessionRecord], labels: list[str]) -> str:
    curves = [(label, data.accuracy(r)) for r, label in zip(records, labels)]
    curves = [(label, c) for label, c in curves if c]
    if not curves:
        return html.paragraph("No held-out accuracy was recorded.")
    caption = ("Held-out Pearson r of the model's predictions against the mean observed counts (left) and, on a "
               "simulated rig, against the true rates (right), as the model learned: median over units, band the "
               "interquartile range" + (", thin lines each unit." if len(curves) == 1 else
                                        "; one colour per session, labelled with its strategy."))
    return html.figure(figures.png(figures.accuracy(curves)), "model accuracy", caption)


def _session(record: SessionRecord, label: str, k: int) -> list[str]:
    anchor = f"session-{k}"
    parts = [html.heading(2, f"Session {label}", anchor)]
    if record.summary is None:
        parts.append(html.paragraph(
            f"Partial session: {record.path / 'summary.json'} is missing (the run was killed or failed). "
            f"Everything below is what was recorded up to then: {len(record.markers)} presentations, "
            f"{len(record.responses)} responses.", note=True))
    units = data.units(record)
    on, after = _shown(record)
    parts += [html.heading(3, "Rasters and PSTHs", f"{anchor}-rasters"), _rasters(record, units, on, after)]
    parts += [html.heading(3, "Response matrix", f"{anchor}-matrix"), _matrix(record, units)]
    parts += [html.heading(3, "Units", f"{anchor}-units"), *unit_sections(record, units, anchor, BEFORE, after)]
    parts += [html.heading(3, "Chosen images", f"{anchor}-chosen"), _chosen(record)]
    if data.posteriors(record) is not None:
        parts += [html.heading(3, "Hypothesis posteriors", f"{anchor}-posteriors"), _posteriors(record)]
    gaze = _gaze(record)
    if gaze:
        parts += [html.heading(3, "Eye traces", f"{anchor}-gaze"), gaze]
    parts += [html.heading(3, "Recorded streams", f"{anchor}-streams"), _streams(record)]
    parts += [html.heading(3, "Timing", f"{anchor}-timing"), html.table([list(row) for row in timing.rows(record)]),
              html.figure(figures.png(timing.figure(record)), "timing",
                          "Every frame interval of the run (log scale); dropped frames per presentation, "
                          "deadline misses and fixation breaks; photodiode onset corrections where measured.")]
    return parts


def _shown(record: SessionRecord) -> tuple[float, float]:
    """How long each image was on, and the time shown after each onset in rasters and PSTHs, s."""
    on = float(record.protocol.get("protocol", {}).get("on_frames", 0)) * timing.frame_period(record)
    return on, max(on, data.window(record)[1]) + AFTER_MARGIN


def _rasters(record: SessionRecord, units: list[data.Unit], on: float, after: float) -> str:
    if not record.markers:
        return html.paragraph("No presentations were recorded.")
    index, onset = data.onsets(record)
    window = data.window(record)
    items = [html.figure(figures.png(figures.raster_psth(u.name, data.aligned(u.times, onset, BEFORE, after),
                                                         BEFORE, after, window, on)), f"raster {u.name}")
             for u in units]
    return (html.paragraph(f"Spikes of each unit around the {len(index)} onsets (photodiode-corrected where "
                           f"measured); shaded: the response window {window[0] * 1e3:.0f}-{window[1] * 1e3:.0f} ms; "
                           f"red bar: image on ({on * 1e3:.0f} ms).") + html.grid(items))


def _matrix(record: SessionRecord, units: list[data.Unit]) -> str:
    if not record.responses:
        return html.paragraph("No responses were recorded.")
    counts, roles = data.response_matrix(record, len(units))
    return html.figure(figures.png(figures.response_matrix(counts, [u.name for u in units], roles)),
                       "response matrix", f"Spike counts in the response window, {counts.shape[0]} units x "
                                          f"{counts.shape[1]} presentations, each unit scaled to its maximum.")


def _chosen(record: SessionRecord) -> str:
    order = data.chosen_order(record)
    if not order:
        return html.paragraph("No model decisions were recorded.")
    pool = record.pool
    chosen = StimulusPool(pool.images[order], [pool.families[i] for i in order], [pool.params[i] for i in order])
    shown = min(len(chosen), GALLERY_LIMIT)
    columns = (html.BODY_WIDTH - GALLERY_PAD) // (pool.images.shape[1] + GALLERY_PAD)  # as wide as the page
    buffer = io.BytesIO()
    chosen.gallery(columns, shown, title=f"{len(chosen)} images chosen, in order of first choice").save(buffer, "PNG")
    on_screen = {m.get("pool_index") for m in record.markers if m.get("role") == "chosen"}
    return html.figure(buffer.getvalue(), "chosen images",
                       f"The images the strategy chose in {len(record.selections)} decisions, numbered in order "
                       f"of first choice ({shown} of {len(chosen)} drawn); {len(on_screen & set(order))} of them "
                       f"reached the screen (each decision replaces the queue of images not yet shown).")


def _posteriors(record: SessionRecord) -> str:
    x, probabilities = data.posteriors(record)
    tested = data.proposal(record)
    return (html.paragraph(proposal_line(tested)) if tested else "") + html.figure(
        figures.png(figures.posteriors(x, probabilities)), "hypothesis posteriors",
        "Each hypothesis's posterior probability at every decision of the strategy.")


def _streams(record: SessionRecord) -> str:
    """A table of the LSL streams recorded beside the spikes; the photodiode's lag."""
    if not record.streams:
        return html.paragraph("No LSL stream was recorded beside the spikes.")
    rows = []
    for key, s in record.streams.items():
        span = s.times[-1] - s.times[0] if len(s.times) > 1 else 0.0
        measured = f"{(len(s.times) - 1) / span:.1f}" if span > 0 else "-"
        channels = ", ".join(f"{label} ({unit})" if unit else label for label, unit in zip(s.labels, s.units))
        rows.append([key, s.name, s.header["type"], s.role, channels, len(s.times),
                     f"{s.rate:g}" if s.rate else "irregular", measured, f"{span:.1f}"])
    parts = [html.table(rows, ["key", "name", "type", "role", "channels (units)", "samples", "nominal rate (Hz)",
                               "measured rate (Hz)", "span (s)"])]
    lags = data.photodiode_lags(record) * 1e3
    found = lags[np.isfinite(lags)]
    if len(found):
        parts.append(html.figure(
            figures.png(figures.photodiode_lags(found)), "photodiode lag",
            f"Light minus flip from the recorded photodiode trace: {len(found)} of {len(lags)} presentations "
            f"found a light change, median {np.median(found):.2f} ms, range {found.min():.2f} to "
            f"{found.max():.2f} ms."))
    return "".join(parts)


def _gaze(record: SessionRecord) -> str:
    """The recorded gaze over time with the fixation breaks; empty without a recorded gaze."""
    eye = data.stream(record, "gaze")
    if eye is None or not len(eye.times) or eye.values.shape[1] < 2:
        return ""
    onsets = data.column(record, "markers", "onset")
    origin = onsets[0] if onsets else float(eye.times[0])
    breaks = data.fixation_breaks(record)
    window = record.protocol.get("trial", {}).get("window_deg")
    return html.figure(
        figures.png(figures.gaze(eye.times - origin, eye.values[:, :2], breaks - origin, window)), "gaze",
        f"Gaze position (x, y: degrees right and up of fixation), {len(eye.times)} samples of {eye.name!r}; "
        f"red: the {len(breaks)} trials ended by a fixation break; dashed: the fixation window.")


def proposal_line(state: dict) -> str:
    """One sentence: what the model proposed the unit is, and the test's verdict on it."""
    proposal = state["proposal"]
    params = ", ".join(f"{key} {value:.3g}" for key, value in proposal["params"].items())
    decided = state.get("decided")
    outcome = (f"decided {decided!r} at probability {state['posterior'][decided]:.3f}" if decided else "undecided")
    return (f"Proposed from the model after {proposal['after']} responses: {proposal['model']} ({params}; the fit "
            f"explains {proposal['explained']:.0%} of the predicted variance over the probes). Test on the "
            f"{state.get('responses', 0)} responses since: {state.get('verdict', 'undecided')}, {outcome}.")
