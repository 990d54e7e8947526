"""Overlay of two methods' per-layer errors (``harness compare --layers``).

Each record's ``layers`` entries carry an error per quantized linear; the first metric that
both methods' records have is used: ``output_error`` (relative output error
tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of the linear as saved), else ``rel_error`` (each method's own
definition, older records), else ``rel_weight_error``. With several seeds, the mean over them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.record import CellRecord
from harness.report.style import marker, render, safe_name
from harness.store import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.analysis.compare import Side

ERROR_METRICS = ("output_error", "rel_error", "rel_weight_error")
_BLOCK = re.compile(r"\.(\d+)(?:\.|$)")


def _errors(records: Sequence[CellRecord | dict[str, Any]], metric: str) -> pd.Series:
    """Mean ``metric`` per linear name over ``records`` (entries without a finite value skipped)."""
    rows = [
        (e["name"], float(e[metric]))
        for r in map(CellRecord.load, records) for e in (r.layers or [])
        if isinstance(e, dict) and "name" in e and isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])
    ]
    if not rows:
        return pd.Series(dtype=float)
    frame = pd.DataFrame(rows, columns=["name", "value"])
    return frame.groupby("name", sort=False)["value"].mean()


def choose_metric(base: Sequence[CellRecord], against: Sequence[CellRecord]) -> str:
    """The first of :data:`ERROR_METRICS` that both sides' records report."""
    for metric in ERROR_METRICS:
        if not _errors(base, metric).empty and not _errors(against, metric).empty:
            return metric
    raise HarnessError(
        f"the records have no per-layer error that both methods report (looked for {', '.join(ERROR_METRICS)} in "
        f"their `layers` entries); re-run the cells with this harness version to record `output_error`."
    )


def layer_error_frame(base: Side, against: Side, metric: str | None = None) -> tuple[pd.DataFrame, str]:
    """(frame, metric): one row per linear (base order, then linears only ``against`` has) with
    ``name, block, type, x, base, against``; ``x`` = block index + position of the linear type
    within the block (so a block's linears sit between two integers)."""
    metric = metric or choose_metric(base.records, against.records)
    b, a = _errors(base.records, metric), _errors(against.records, metric)
    names = list(dict.fromkeys([*b.index, *a.index]))
    blocks = [int(m.group(1)) if (m := _BLOCK.search(n)) else -1 for n in names]
    last = max(blocks, default=0) + 1
    blocks = [last if blk < 0 else blk for blk in blocks]  # e.g. lm_head after the decoder blocks
    types = [n.rsplit(".", 1)[-1] for n in names]
    order = list(dict.fromkeys(types))
    x = [blk + order.index(t) / len(order) for blk, t in zip(blocks, types)]
    frame = pd.DataFrame({
        "name": names, "block": blocks, "type": types, "x": x,
        "base": b.reindex(names).to_numpy(), "against": a.reindex(names).to_numpy(),
    })
    return frame, metric


def layer_overlay_figure(frame: pd.DataFrame, base: str, against: str, metric: str, title: str) -> Figure:
    """Top: both methods' errors per linear (log y; one line per method, a marker per linear
    type); bottom: their ratio ``against / base`` per linear (log y, 1 = equal)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(11.0, 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1.0))
    types = list(dict.fromkeys(frame["type"]))
    colors = {"base": "C0", "against": "C3"}
    for side, label in (("base", base), ("against", against)):
        rows = frame[frame[side].notna() & (frame[side] > 0)]
        top.plot(rows["x"], rows[side], color=colors[side], linewidth=0.8, alpha=0.6, label=label)
        for i, t in enumerate(types):  # base hollow, against filled: both stay visible where they overlap
            sel = rows[rows["type"] == t]
            style = {"facecolors": "none", "edgecolors": colors[side], "s": 30} if side == "base" else {"color": colors[side], "s": 12}
            top.scatter(sel["x"], sel[side], marker=marker(i), linewidths=0.9, zorder=3, **style)
    ratio = frame["against"] / frame["base"]
    valid = ratio.notna() & np.isfinite(ratio) & (ratio > 0)
    for i, t in enumerate(types):
        sel = valid & (frame["type"] == t)
        bottom.scatter(frame.loc[sel, "x"], ratio[sel], color="0.3", marker=marker(i), s=14)
    bottom.axhline(1.0, color="0.5", linestyle="--", linewidth=1.0)
    for ax in (top, bottom):
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    bottom.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    top.set_ylabel(f"{metric} (log)")
    geo = float(np.exp(np.log(ratio[valid]).mean())) if valid.any() else math.nan
    bottom.set_ylabel(f"{against} / {base}")
    bottom.set_title(f"ratio per linear (geometric mean {geo:.3g}; < 1: {against} has the lower error)", fontsize=9)
    bottom.set_xlabel("decoder block (its linears in order within the block)")
    top.set_title(title)
    handles = [Line2D([], [], color=colors["base"], marker="o", markerfacecolor="none", label=base),
               Line2D([], [], color=colors["against"], marker="o", label=against)]
    handles += [Line2D([], [], color="0.3", marker=marker(i), linestyle="", label=t)
                for i, t in enumerate(types)]
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def layer_plot_path(plots_dir: Path, base: str, against: str, model: str, budget: int | None, fmt: str) -> Path:
    """``<plots_dir>/compare_<base>_vs_<against>_<model>_b<budget>_layers.<fmt>``."""
    tag = "ref" if budget is None else f"b{budget}"
    return Path(plots_dir) / f"compare_{safe_name(base)}_vs_{safe_name(against)}_{safe_name(model)}_{tag}_layers.{fmt}"


def write_layer_overlay(
    plots_dir: Path, base: Side, against: Side, model: str, budget: int | None,
    formats: Sequence[str] = ("png", "svg"),
) -> tuple[list[Path], str]:
    """Write the overlay of one model and budget in each format; returns (paths, metric used)."""
    frame, metric = layer_error_frame(base, against)
    both = frame["base"].notna() & frame["against"].notna()
    if not both.any():
        raise HarnessError(
            f"{model}/b{budget}: {base.label} and {against.label} report {metric} for no common linear layer "
            f"(a reference cell has no quantized layers); compare two quantization methods."
        )
    title = f"{model} b{budget}: per-layer {metric}, {base.label} vs {against.label}"
    fig = layer_overlay_figure(frame, base.label, against.label, metric, title)
    paths = [
        atomic_write_bytes(layer_plot_path(plots_dir, base.label, against.label, model, budget, fmt), render(fig, fmt))
        for fmt in formats
    ]
    return paths, metric
