"""Grids of metric curves from result rows (matplotlib, written as PNG; no display needed).

    plot_grid(rows, x="params_non_embedding", metrics=("exact_match", "token_accuracy"),
              panel=lambda r: r["task"], series=lambda r: f"{r['num_shots']}-shot",
              path="report/vs_params.png", x_label="non-embedding parameters")

One row of panels per distinct panel(row), one column per metric, one line per distinct
series(row) within a panel, points sorted by x. A log x axis suits parameters and compute.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

Row = dict[str, Any]


def plot_grid(rows: Sequence[Row], *, x: str, metrics: Sequence[str], panel: Callable[[Row], str],
              series: Callable[[Row], str], path: str, x_label: str | None = None, log_x: bool = True,
              title: str = "") -> str:
    """Draw the grid and write it to `path` (PNG); returns the path."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a server or in tests
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in r for r in rows)]
    panels = list(dict.fromkeys(panel(r) for r in rows))
    if not rows or not metrics:
        raise ValueError(f"nothing to plot for {path!r}: {len(rows)} rows, metrics {list(metrics)}.")
    figure, axes = plt.subplots(len(panels), len(metrics), figsize=(4.2 * len(metrics), 3.0 * len(panels)),
                                squeeze=False)
    for i, panel_name in enumerate(panels):
        in_panel = [r for r in rows if panel(r) == panel_name]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for series_name in dict.fromkeys(series(r) for r in in_panel):
                points = sorted((float(r[x]), float(r[metric])) for r in in_panel
                                if series(r) == series_name and metric in r)
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o", markersize=3, label=series_name)
            if log_x:
                ax.set_xscale("log")
            ax.set_title(f"{panel_name}: {metric}" if panel_name else metric, fontsize=9)
            ax.set_xlabel(x_label or x, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
