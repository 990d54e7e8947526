"""Plots: perplexity vs bits per weight, one figure per model and evaluation dataset, and
zero-shot accuracy vs bits per weight, one figure per model (one panel per task and the average).

Figures are built with the object-oriented API (``matplotlib.figure.Figure``), never through
``pyplot``: no GUI backend is touched, no global backend is switched (a notebook's stays as
it is), and nothing needs closing. PNG is rendered by Agg, SVG by the SVG backend.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from harness.columns import ACC_AVG, ACC_PREFIX, PPL_PREFIX
from harness.report.style import (
    PLOT_FORMATS,
    check_plot_formats,
    fmt_ppl,
    log_y,
    marker,
    reference_linestyle,
    render,
    safe_name,
)
from harness.store import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

_LOG_SPAN = 10.0  # log-scale y when max/min perplexity exceeds this


def plot_path(out_dir: Path, model: str, dataset: str, fmt: str) -> Path:
    """``<out_dir>/<model>_<dataset>_ppl_vs_bits.<fmt>`` (unsafe characters become ``_``)."""
    return Path(out_dir) / f"{safe_name(model)}_{safe_name(dataset)}_ppl_vs_bits.{fmt}"


def _finite(values: pd.Series) -> pd.Series:
    return values[values.map(lambda v: isinstance(v, float) and math.isfinite(v) and v > 0)]


def ppl_vs_bits_figure(results: pd.DataFrame, model: str, dataset: str) -> Figure | None:
    """Perplexity on ``dataset`` vs measured bits/weight for ``model``.

    ``results`` is :func:`harness.report.frames.results_frame`. One line+marker series per
    method (sorted by bits); each reference row (``reference`` true) is a dashed horizontal
    line labelled with its perplexity. Points with missing bits or non-finite perplexity
    (a diverged cell) are left out. Returns None when nothing is left to plot.
    """
    from matplotlib.figure import Figure

    column = PPL_PREFIX + dataset
    rows = results[(results["model"] == model) & results[column].notna()]
    refs = rows[rows["reference"]]
    quant = rows[~rows["reference"] & rows["bits"].notna()]
    dropped = len(quant) - len(_finite(quant[column]))
    if dropped:
        logger.warning("%s/%s: %d point(s) with non-finite perplexity left out of the plot", model, dataset, dropped)
    quant = quant.loc[_finite(quant[column]).index]
    refs = refs.loc[_finite(refs[column]).index]
    if quant.empty and refs.empty:
        return None

    fig = Figure(figsize=(8.0, 4.4), layout="constrained")
    ax = fig.subplots()
    for i, (method, group) in enumerate(quant.groupby("method", sort=True)):
        group = group.sort_values("bits")
        ax.plot(group["bits"], group[column], marker=marker(i), linewidth=1.5,
                markersize=6, label=str(method))
    for j, (_, ref) in enumerate(refs.iterrows()):
        ppl = float(ref[column])
        ax.axhline(ppl, color="0.25", linestyle=reference_linestyle(j), linewidth=1.2,
                   label=f"{ref['method']} (unquantized): {fmt_ppl(ppl)}")

    values = pd.concat([quant[column], refs[column]]).astype(float)
    if values.max() / values.min() > _LOG_SPAN:
        log_y(ax, math.log10(values.max() / values.min()))
    if not quant.empty:
        bits = quant["bits"].astype(float)
        pad = max(0.1, 0.05 * (bits.max() - bits.min()))
        ax.set_xlim(bits.min() - pad, bits.max() + pad)
    ax.set_xlabel("measured size (bits/weight)")
    ax.set_ylabel(f"perplexity on {dataset} (lower is better)")
    ax.set_title(f"{model} — {dataset} perplexity vs bits/weight")
    ax.grid(True, which="major", alpha=0.3)
    # Outside the axes: "best" placement ignores the reference line and can cover it.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def acc_plot_path(out_dir: Path, model: str, fmt: str) -> Path:
    """``<out_dir>/<model>_zeroshot_acc_vs_bits.<fmt>``."""
    return Path(out_dir) / f"{safe_name(model)}_zeroshot_acc_vs_bits.{fmt}"


def acc_vs_bits_figure(results: pd.DataFrame, model: str) -> Figure | None:
    """Zero-shot accuracy (percent) vs measured bits/weight for ``model``: one panel per
    ``acc:<task>`` column and one for ``acc:avg``; one series per method, each reference row a
    dashed horizontal line. Returns None when the model has no zero-shot result."""
    from matplotlib.figure import Figure

    columns = [c for c in results.columns if c.startswith(ACC_PREFIX) and c != ACC_AVG]
    columns += [ACC_AVG] if ACC_AVG in results.columns else []
    rows = results[results["model"] == model]
    columns = [c for c in columns if rows[c].notna().any()]
    if not columns:
        return None
    ncols = min(len(columns), 4)
    nrows = -(-len(columns) // ncols)
    fig = Figure(figsize=(3.2 * ncols + 2.2, 2.9 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    methods = sorted(rows.loc[~rows["reference"], "method"].unique())
    for ax, column in zip(axes, columns):
        points = rows[rows[column].notna()]
        quant = points[~points["reference"] & points["bits"].notna()]
        for method, group in quant.groupby("method", sort=True):
            group = group.sort_values("bits")
            ax.plot(group["bits"], 100 * group[column].astype(float), marker=marker(methods.index(method)),
                    linewidth=1.5, markersize=5, label=str(method))
        for j, (_, ref) in enumerate(points[points["reference"]].iterrows()):
            ax.axhline(100 * float(ref[column]), color="0.25", linestyle=reference_linestyle(j), linewidth=1.2,
                       label=f"{ref['method']} (unquantized)")
        ax.set_title("average" if column == ACC_AVG else column[len(ACC_PREFIX):], fontsize=10)
        ax.set_xlabel("bits/weight")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    handles: dict = {}
    for ax in axes[: len(columns)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", frameon=False)
    fig.suptitle(f"{model} — zero-shot accuracy vs bits/weight (higher is better)")
    return fig


def write_plots(results: pd.DataFrame, out_dir: Path, formats: Sequence[str] = PLOT_FORMATS) -> list[Path]:
    """One plot per model and perplexity dataset, and one zero-shot accuracy plot per model
    (where it has zero-shot results), in each of ``formats``; returns the paths."""
    check_plot_formats(formats)
    written: list[Path] = []
    datasets = [c[len(PPL_PREFIX):] for c in results.columns if c.startswith(PPL_PREFIX)]
    for model in results["model"].drop_duplicates():
        for dataset in datasets:
            fig = ppl_vs_bits_figure(results, model, dataset)
            if fig is None:
                continue
            for fmt in formats:
                written.append(atomic_write_bytes(plot_path(out_dir, model, dataset, fmt), render(fig, fmt)))
        fig = acc_vs_bits_figure(results, model)
        if fig is not None:
            for fmt in formats:
                written.append(atomic_write_bytes(acc_plot_path(out_dir, model, fmt), render(fig, fmt)))
    return written
