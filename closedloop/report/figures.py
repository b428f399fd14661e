"""The report's figures of neural data and the model, drawn with matplotlib's Agg renderer
(``Figure`` objects, no pyplot state), as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image

DPI = 90
PSTH_BIN = 0.010  # s
TUNING_LINE_VALUES = 12  # a parameter with at most this many distinct values has its points joined,
TUNING_BINS = 6  # one with more a line through the means of this many bins
ROLE_COLOURS = {"chosen": "#1f77b4", "heldout": "#ff7f0e", "control": "#2ca02c", "fallback": "#d62728",
                "requeued": "#9467bd"}
OTHER_ROLE = "#7f7f7f"


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def image(pixels: np.ndarray) -> bytes:
    """A stimulus (N x N x 3 uint8) as PNG bytes, pixel for pixel."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def raster_psth(name: str, spikes: list[np.ndarray], before: float, after: float, window: tuple[float, float],
                on: float) -> Figure:
    """Raster (one row per presentation) over the PSTH (spikes/s in ``PSTH_BIN`` bins) of one unit.

    Parameters
    ----------
    name : str
        The unit.
    spikes : list of ndarray
        Spike times (s) relative to each presentation's onset.
    before, after : float
        Time shown before and after the onset, s.
    window : (float, float)
        The response window, s after onset (shaded).
    on : float
        How long the image was on, s (a bar under the PSTH).
    """
    figure = Figure(figsize=(3.6, 3.4))  # fixed margins: one figure per unit, so layout time counts
    raster, psth = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    figure.subplots_adjust(left=0.2, right=0.96, top=0.92, bottom=0.14, hspace=0.08)
    for ax in (raster, psth):
        ax.axvspan(window[0] * 1e3, window[1] * 1e3, color="#ffe8a8", zorder=0)
    x = np.concatenate(spikes) if spikes else np.zeros(0)
    y = np.repeat(np.arange(len(spikes)), [len(s) for s in spikes])
    raster.scatter(x * 1e3, y, s=2, marker="|", color="black", linewidths=0.6)
    raster.set_ylim(len(spikes) - 0.5, -0.5)
    raster.set_ylabel("presentation")
    raster.set_title(name, fontsize=10)
    edges = np.arange(-before, after + PSTH_BIN / 2, PSTH_BIN)
    rate = np.histogram(x, edges)[0] / max(len(spikes), 1) / PSTH_BIN
    psth.stairs(rate, edges * 1e3, fill=True, color="#4c72b0")
    psth.plot([0, on * 1e3], [0, 0], color="#d62728", linewidth=4, solid_capstyle="butt", zorder=3, clip_on=False)
    psth.set_xlim(-before * 1e3, after * 1e3)
    psth.set_xlabel("time from onset (ms)")
    psth.set_ylabel("spikes/s")
    return figure


def family_responses(name: str, spikes: dict[str, list[np.ndarray]], before: float, after: float,
                     window: tuple[float, float], mean: dict[str, tuple[float, float]]) -> Figure:
    """One unit's PSTH per stimulus family (spikes/s in ``PSTH_BIN`` bins) beside its mean response
    in the window per family.

    Parameters
    ----------
    name : str
        The unit.
    spikes : dict of str to list of ndarray
        Per family, spike times (s) relative to each of its presentations' onsets.
    before, after : float
        Time shown before and after the onset, s.
    window : (float, float)
        The response window, s after onset (shaded).
    mean : dict of str to (float, float)
        Per family, the mean response in the window and its standard error, spikes/s.
    """
    figure = Figure(figsize=(8, 2.8), layout="constrained")
    psth, bars = figure.subplots(1, 2, width_ratios=(3, 2))
    psth.axvspan(window[0] * 1e3, window[1] * 1e3, color="#ffe8a8", zorder=0)
    edges = np.arange(-before, after + PSTH_BIN / 2, PSTH_BIN)
    for k, (family, trials) in enumerate(spikes.items()):
        x = np.concatenate(trials) if trials else np.zeros(0)
        psth.stairs(np.histogram(x, edges)[0] / max(len(trials), 1) / PSTH_BIN, edges * 1e3, color=f"C{k}",
                    linewidth=1.2, label=f"{family} ({len(trials)})")
    psth.set_xlim(-before * 1e3, after * 1e3)
    psth.set_xlabel("time from onset (ms)")
    psth.set_ylabel("spikes/s")
    psth.set_title(f"{name}: PSTH by family (presentations)", fontsize=10)
    psth.legend(fontsize=7, loc="upper right")
    families = list(mean)
    bars.bar(range(len(families)), [mean[f][0] for f in families], yerr=[mean[f][1] for f in families],
             color=[f"C{k}" for k in range(len(families))], capsize=3)
    bars.set_xticks(range(len(families)), families, fontsize=8)
    bars.set_ylabel("spikes/s in the window")
    bars.set_title("mean response by family (± s.e.m.)", fontsize=10)
    return figure


def tuning(name: str, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]) -> Figure:
    """One unit's mean response against each numeric parameter: a row per family, a panel per parameter.

    Parameters
    ----------
    name : str
        The unit.
    curves : dict of family to dict of parameter to (values, mean, presentations)
        The parameter's distinct values, the mean response at each (spikes/s in the window) and the
        presentations averaged there (the point's area).
    """
    rows = len(curves)
    columns = max(len(c) for c in curves.values())
    figure = Figure(figsize=(1.75 * columns + 0.4, 1.55 * rows + 0.3), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, (family, found) in enumerate(curves.items()):
        for column, ax in enumerate(axes[row]):
            if column >= len(found):
                ax.set_axis_off()
                continue
            parameter, (x, y, n) = list(found.items())[column]
            ax.plot(*(_binned(x, y, n) if len(x) > TUNING_LINE_VALUES else (x, y)), color=f"C{row}", linewidth=0.8)
            ax.scatter(x, y, s=6 + 10 * n / n.max(), color=f"C{row}", alpha=0.7)
            ax.set_xlabel(parameter, fontsize=8)
            ax.tick_params(labelsize=7)
            if column == 0:
                ax.set_ylabel(f"{family}\nspikes/s", fontsize=8)
    figure.suptitle(f"{name}: mean response per parameter value", fontsize=10)
    return figure


def _binned(x: np.ndarray, y: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean x and y (weighted by presentations ``n``) in ``TUNING_BINS`` bins of about equal presentations."""
    edges = np.searchsorted(np.cumsum(n), np.linspace(0, n.sum(), TUNING_BINS + 1)[1:-1])
    groups = [g for g in np.split(np.arange(len(x)), np.unique(edges)) if len(g)]
    return (np.array([np.average(x[g], weights=n[g]) for g in groups]),
            np.array([np.average(y[g], weights=n[g]) for g in groups]))


def predicted_observed(name: str, predicted: np.ndarray, observed: np.ndarray) -> Figure:
    """Observed against predicted responses (spikes/s) of one unit, with the identity line."""
    figure = Figure(figsize=(3.4, 3.2), layout="constrained")
    ax = figure.subplots()
    ax.scatter(predicted, observed, s=8, alpha=0.6, color="#4c72b0")
    top = float(max(predicted.max(initial=0), observed.max(initial=0))) * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--")
    r = (np.corrcoef(predicted, observed)[0, 1] if len(predicted) > 2 and np.std(predicted) > 0
         and np.std(observed) > 0 else np.nan)
    ax.set_title(f"{name}: r = {r:.2f}, {len(predicted)} presentations", fontsize=10)
    ax.set_xlabel("predicted at the decision (spikes/s)")
    ax.set_ylabel("observed (spikes/s)")
    return figure


def response_matrix(counts: np.ndarray, names: list[str], roles: list[str]) -> Figure:
    """Spike counts (units, presentations), each unit scaled to its maximum, over a strip of the roles."""
    figure = Figure(figsize=(9, 1.2 + 0.22 * max(len(names), 3)), layout="constrained")
    strip, matrix = figure.subplots(2, 1, sharex=True, height_ratios=(1, max(len(names), 3)))
    kinds = list(dict.fromkeys(roles))
    colours = [ROLE_COLOURS.get(k, OTHER_ROLE) for k in kinds]
    strip.imshow(np.array([[kinds.index(r) for r in roles]]), aspect="auto", interpolation="nearest",
                 cmap=ListedColormap(colours), vmin=-0.5, vmax=len(kinds) - 0.5)
    strip.set_yticks([])
    strip.set_ylabel("role", rotation=0, ha="right", va="center", fontsize=8)
    for k, colour in zip(kinds, colours):
        strip.plot([], [], color=colour, linewidth=6, label=k)
    strip.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    top = counts.max(axis=1, keepdims=True)
    image = matrix.imshow(counts / np.where(top > 0, top, 1), aspect="auto", interpolation="nearest",
                          cmap="viridis", vmin=0, vmax=1)
    matrix.set_yticks(range(len(names)), names if len(names) <= 40 else [""] * len(names), fontsize=8)
    matrix.set_xlabel("presentation")
    figure.colorbar(image, ax=matrix, label="count / unit's max", shrink=0.9)
    return figure


def accuracy(curves: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]]) -> Figure:
    """Held-out accuracy against responses trained on: one panel per kind of r, one line per session.

    Parameters
    ----------
    curves : list of (label, {kind: (responses (n,), r (n, units))})
        ``kind`` is ``r_observed`` (against the mean observed counts) or ``r_true`` (against the
        simulated true rates); the line is the median over units, the band the interquartile range,
        and with a single session each unit is drawn thinly too.
    """
    kinds = [k for k in ("r_observed", "r_true") if any(k in c for _, c in curves)]
    figure = Figure(figsize=(4.2 * len(kinds), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(kinds), sharey=True, squeeze=False)[0])
    titles = {"r_observed": "held-out r vs mean observed counts", "r_true": "held-out r vs true rates"}
    for ax, kind in zip(axes, kinds):
        for k, (label, data) in enumerate(curves):
            if kind not in data:
                continue
            x, r = data[kind]
            colour = f"C{k}"
            q1, median, q3 = _quartiles(r)
            if len(curves) == 1:
                ax.plot(x, r, color=colour, linewidth=0.6, alpha=0.35)
            ax.fill_between(x, q1, q3, color=colour, alpha=0.15, linewidth=0)
            ax.plot(x, median, color=colour, linewidth=2, marker="o", markersize=3, label=label)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(titles[kind], fontsize=10)
        ax.set_xlabel("responses trained on")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("Pearson r (median over units)")
    return figure


def _quartiles(r: np.ndarray) -> np.ndarray:
    """25th, 50th and 75th percentile of each row, ignoring NaN (NaN for a row without values)."""
    out = np.full((3, len(r)), np.nan)
    for row, values in enumerate(r):
        values = values[~np.isnan(values)]
        if len(values):
            out[:, row] = np.percentile(values, (25, 50, 75))
    return out


def posteriors(x: np.ndarray, probabilities: dict[str, np.ndarray]) -> Figure:
    """Each hypothesis's posterior probability at every decision."""
    figure = Figure(figsize=(6, 3), layout="constrained")
    ax = figure.subplots()
    for name, p in probabilities.items():
        ax.plot(x, p, marker="o", markersize=3, label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("responses")
    ax.set_ylabel("posterior probability")
    ax.legend(fontsize=8)
    return figure


GAZE_POINTS = 20_000  # at most drawn per channel (a long session's gaze is thinned evenly)


def gaze(times: np.ndarray, xy: np.ndarray, breaks: np.ndarray, window: float | None) -> Figure:
    """Gaze position over the session with fixation breaks marked.

    Parameters
    ----------
    times : ndarray (n,)
        s from the first presentation's onset.
    xy : ndarray (n, 2)
        Degrees right and up of fixation.
    breaks : ndarray
        When trials ended by a fixation break (s, same origin).
    window : float, optional
        The fixation window radius, degrees (dashed).
    """
    figure = Figure(figsize=(9, 3), layout="constrained")
    ax = figure.subplots()
    step = max(1, len(times) // GAZE_POINTS)
    for k, (label, colour) in enumerate((("x", "#4c72b0"), ("y", "#55a868"))):
        ax.plot(times[::step], xy[::step, k], color=colour, linewidth=0.6, label=f"{label} (degrees)")
    for k, t in enumerate(breaks):
        ax.axvline(t, color="#d62728", linewidth=0.8, alpha=0.7, label="fixation break" if k == 0 else None)
    if window is not None:
        for sign in (1, -1):
            ax.axhline(sign * window, color="grey", linestyle="--", linewidth=0.6)
    ax.set_xlabel("time from the first onset (s)")
    ax.set_ylabel("gaze (degrees)")
    ax.legend(fontsize=7, loc="upper right")
    return figure


def photodiode_lags(lags_ms: np.ndarray) -> Figure:
    """Histogram of light minus flip (ms) from the recorded photodiode."""
    figure = Figure(figsize=(4, 3), layout="constrained")
    ax = figure.subplots()
    ax.hist(lags_ms, bins=30, color="#55a868")
    ax.axvline(float(np.median(lags_ms)), color="black", linewidth=0.8, label=f"median {np.median(lags_ms):.2f} ms")
    ax.set_xlabel("light - flip (ms)")
    ax.set_ylabel("presentations")
    ax.legend(fontsize=7)
    return figure
