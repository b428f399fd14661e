"""A sweep's bar chart (matplotlib's Agg renderer, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def bars(path: Path, rows: list[str], panels: dict[str, dict[str, list[float]]]) -> Path:
    """Grouped bars, a panel per entry of ``panels`` (its y label -> series name -> a value per
    row; NaN: no bar), a group per row; written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5.0, 1.2 * len(rows) + 2), 3.2 * len(panels)), layout="constrained")
    x = np.arange(len(rows))
    for axes, (ylabel, series) in zip(np.atleast_1d(figure.subplots(len(panels), 1, squeeze=False)).ravel(),
                                      panels.items()):
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            axes.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
        axes.set_xticks(x, rows, rotation=20, ha="right", fontsize="small")
        axes.set_ylabel(ylabel)
        if len(series) > 1:
            axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return Path(path)
