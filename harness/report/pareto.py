"""Pareto views: quality against size, across every model and method of a results directory.

One figure per quality metric (perplexity per dataset, lower is better; the average zero-shot
accuracy, higher is better) and per size measure (measured bits per weight, ``bits``; the
stored model size, ``metrics.size_bytes``). Every row of the results table is a point: colour
per method (the unquantized reference in black), marker per model, an error bar of one standard
deviation over seeds where a row has repeats. The Pareto frontier (no other point is at most
as large and at least as good, one of them strictly) is drawn as a step line: the best quality
reachable at each size. Written as ``plots/pareto_<metric>_vs_<x>.{png,svg}``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.analysis.pareto import pareto_front, pareto_indices
from harness.columns import ACC_AVG, ACC_STD, BPB_PREFIX, BPB_STD, PPL_PREFIX, PPL_STD
from harness.report.style import PLOT_FORMATS, check_plot_formats, log_y, marker, minor_tick, plain_tick, render, safe_name
from harness.store import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["pareto_front", "pareto_indices", "pareto_figure", "write_pareto_plots"]

#: x measures (file-name part): results column and axis label.
X_AXES = {
    "bits": ("bits", "measured size (bits/weight)"),
    "size": ("size_mb", "stored model size (MB, 10^6 bytes)"),
}
_REFERENCE_COLOUR = "black"


def _metric_info(column: str) -> tuple[str, str, bool, float]:
    """(std column, y label, minimise, scale) of a ``ppl:<ds>``, ``bpb:<ds>`` or ``acc:avg`` column."""
    if column.startswith(PPL_PREFIX):
        dataset = column[len(PPL_PREFIX):]
        return PPL_STD + dataset, f"perplexity on {dataset} (lower is better)", True, 1.0
    if column.startswith(BPB_PREFIX):
        dataset = column[len(BPB_PREFIX):]
        return BPB_STD + dataset, f"bits per byte on {dataset} (lower is better)", True, 1.0
    return ACC_STD + column.split(":", 1)[1], "average zero-shot accuracy (%, higher is better)", False, 100.0


def pareto_figure(results: pd.DataFrame, column: str, x: str = "bits", *, title: str | None = None) -> Figure | None:
    """``column`` (``ppl:<dataset>`` or ``acc:avg``) against ``x`` (``bits`` or ``size``) for
    every row of ``results`` (:func:`harness.report.frames.results_frame`), with the Pareto
    frontier. Returns None when no row has both values finite."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    x_column, x_label = X_AXES[x]
    std_column, y_label, minimize, y_scale = _metric_info(column)
    xs = results[x_column].astype(float)
    ys = results[column].astype(float) * y_scale
    ok = np.isfinite(xs) & np.isfinite(ys) & (ys > 0 if minimize else True)
    if not ok.any():
        return None
    dropped = int((results[column].notna() & ~ok).sum())
    if dropped:
        logger.warning("%s vs %s: %d point(s) with a non-finite value left out", column, x, dropped)
    rows = results[ok]
    xs, ys = xs[ok].to_numpy(), ys[ok].to_numpy()
    stds = (rows[std_column].astype(float) * y_scale).to_numpy() if std_column in rows else np.full(len(rows), np.nan)
    n = rows["n"].to_numpy() if "n" in rows else np.ones(len(rows), dtype=int)

    fig = Figure(figsize=(8.4, 4.8), layout="constrained")
    ax = fig.subplots()
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted(rows.loc[~rows["reference"], "method"].unique())
    models = list(dict.fromkeys(rows["model"]))
    colour_of = {m: colours[i % len(colours)] for i, m in enumerate(methods)}
    marker_of = {m: marker(i) for i, m in enumerate(models)}
    for (_, row), px, py, sd, count in zip(rows.iterrows(), xs, ys, stds, n):
        colour = _REFERENCE_COLOUR if row["reference"] else colour_of[row["method"]]
        yerr = sd if count > 1 and math.isfinite(sd) else None
        ax.errorbar(px, py, yerr=yerr, fmt=marker_of[row["model"]], color=colour, markersize=7, capsize=3,
                    elinewidth=1.0, zorder=3, markerfacecolor="none" if row["reference"] else colour)
    front = pareto_indices(xs, ys, minimize_y=minimize)
    ax.step(xs[front], ys[front], where="post", color="0.35", linewidth=1.3, linestyle="--", zorder=2)
    ax.plot(xs[front], ys[front], "o", markersize=13, markerfacecolor="none", markeredgecolor="0.35",
            markeredgewidth=1.0, zorder=2)
    for i in front:  # name the frontier's points
        row = rows.iloc[i]
        text = "unquantized" if row["reference"] else str(row["method"])
        text += f" b{int(row['budget'])}" if not row["reference"] and pd.notna(row["budget"]) else ""
        text = f"{row['model']} {text}" if len(models) > 1 else text
        last = i == front[-1]  # the rightmost label goes to the left of its point, inside the axes
        ax.annotate(text, (xs[i], ys[i]), xytext=(-7 if last else 7, 6), textcoords="offset points", fontsize=7,
                    color="0.25", ha="right" if last else "left")

    if minimize:
        log_y(ax, math.log10(max(ys.max() / ys.min(), 1.0)))
    if xs.min() > 0 and xs.max() / xs.min() > (4 if x == "bits" else 10):
        ax.set_xscale("log", base=2 if x == "bits" else 10)
        ax.xaxis.set_major_formatter(FuncFormatter(plain_tick if x == "size" else lambda v, _p=None: f"{v:g}"))
        if x == "size" and xs.max() / xs.min() < 100:
            ax.xaxis.set_minor_formatter(FuncFormatter(minor_tick))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title or f"{y_label.split(' (')[0]} vs {x_label.split(' (')[0]}")
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colour_of[m], marker="o", linestyle="none", label=str(m)) for m in methods]
    if rows["reference"].any():
        handles.append(Line2D([], [], color=_REFERENCE_COLOUR, marker="o", markerfacecolor="none", linestyle="none",
                              label="unquantized"))
    if len(models) > 1:
        handles += [Line2D([], [], color="0.4", marker=marker_of[m], linestyle="none", label=str(m)) for m in models]
    handles.append(Line2D([], [], color="0.35", linestyle="--", marker="o", markerfacecolor="none",
                          label="Pareto frontier"))
    if (n > 1).any():
        handles.append(Line2D([], [], color="0.4", marker="|", linestyle="none", markersize=10,
                              label="± 1 std over seeds"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def pareto_path(out_dir: Path, column: str, x: str, fmt: str) -> Path:
    """``<out_dir>/pareto_<metric>_vs_<x>.<fmt>``: metric ``ppl_<dataset>`` or ``acc_avg``."""
    return Path(out_dir) / f"pareto_{safe_name(column.replace(':', '_'))}_vs_{x}.{fmt}"


def write_pareto_plots(
    results: pd.DataFrame, out_dir: Path, formats: Sequence[str] = PLOT_FORMATS, *, title: str | None = None
) -> list[Path]:
    """Every Pareto figure the results allow (perplexity per dataset; the average zero-shot
    accuracy when some row has it; each against bits/weight and stored size), in each format."""
    check_plot_formats(formats)
    columns = [c for c in results.columns if c.startswith(PPL_PREFIX)]
    # bits per byte: the one quality axis that compares models with different tokenizers
    columns += [c for c in results.columns if c.startswith(BPB_PREFIX) and results["model"].nunique() > 1]
    if ACC_AVG in results.columns and results[ACC_AVG].notna().any():
        columns.append(ACC_AVG)
    written: list[Path] = []
    for column in columns:
        for x in X_AXES:
            heading = None
            if title:
                what = "average zero-shot accuracy" if column == ACC_AVG else (
                    f"{column.split(':', 1)[1]} {'bits per byte' if column.startswith(BPB_PREFIX) else 'perplexity'}")
                heading = f"{title} — {what} vs {'bits/weight' if x == 'bits' else 'model size'}"
            fig = pareto_figure(results, column, x, title=heading)
            if fig is None:
                continue
            for fmt in formats:
                written.append(atomic_write_bytes(pareto_path(out_dir, column, x, fmt), render(fig, fmt)))
    return written
