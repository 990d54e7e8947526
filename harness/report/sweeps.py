"""Parameter sweeps: how a metric moves with one method parameter (and a second one).

A sweep names a method and the parameter on the x axis, optionally a second parameter that
splits the series (a suite's ``report.sweeps: [{method: crvq, x: critical_ratio, lines:
num_extended_codebooks}]`` or ``harness report --sweep crvq:critical_ratio:num_extended_codebooks``).
The finished cells of that method are read by their resolved ``params``; any other parameter
that differs between them makes a series of its own (named ``name=value``, e.g.
``reorder=sorted``); cells of the method without the x parameter are left out (with a
warning). Repeats over seeds are averaged (``n`` says how many; a point where some seed lacks
the value or diverged is NaN or inf, not a mean of the rest). Every finished cell of another
method on the same model (the unquantized reference, AQLM at the same budget, ...) is drawn
as a labelled horizontal line: the baselines the sweep is read against.

Written per sweep:
- ``tables/sweep_<method>_<x>[_by_<lines>].md``: per model and perplexity dataset a grid, x
  down and series across, each cell ``ppl (bits_paper)``, the baselines below; ``.csv`` the long
  form (one row per point);
- ``plots/sweep_<method>_<x>[_by_<lines>]_<model>_<dataset>.{png,svg}``: perplexity vs x
  (lines for a numeric x, markers for a categorical one) and, where the points' bits differ,
  beside it perplexity vs the paper's bits per weight of the same points (quantized baselines
  as points there), so the bit cost of each setting is visible.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.columns import PPL_PREFIX as PPL
from harness.columns import PPL_STD as STD
from harness.errors import HarnessError
from harness.record import CellRecord
from harness.report.display import markdown_table
from harness.report.frames import to_float
from harness.report.style import fmt_bits, fmt_ppl, log_y, marker, reference_linestyle, render, safe_name
from harness.store import ResultStore, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["Sweep", "as_sweeps", "sweep_frame", "sweep_markdown", "write_sweeps"]


@dataclass(frozen=True)
class Sweep:
    """Method name, the parameter on the x axis and (optionally) the one that splits series."""

    method: str
    x: str
    lines: str | None = None

    @property
    def stem(self) -> str:
        """``sweep_<method>_<x>[_by_<lines>]`` (file-name safe)."""
        name = f"sweep_{self.method}_{self.x}" + (f"_by_{self.lines}" if self.lines else "")
        return safe_name(name)


def as_sweeps(items: Iterable[Any]) -> list[Sweep]:
    """Sweeps from ``"method:x[:lines]"`` strings or objects with ``.method``, ``.x``,
    ``.lines`` (the suite's ``report.sweeps`` entries)."""
    out = []
    for item in items:
        if isinstance(item, Sweep):
            out.append(item)
        elif isinstance(item, str):
            parts = [p.strip() for p in item.split(":")]
            if len(parts) not in (2, 3) or not all(parts):
                raise HarnessError(
                    f"--sweep {item!r}: write METHOD:PARAM or METHOD:PARAM:LINES_PARAM, e.g. "
                    f"--sweep crvq:critical_ratio:num_extended_codebooks."
                )
            out.append(Sweep(*parts))
        else:
            out.append(Sweep(str(item.method), str(item.x), None if item.lines is None else str(item.lines)))
    for sweep in out:
        if sweep.lines == sweep.x:
            raise HarnessError(f"sweep {sweep.method}:{sweep.x}:{sweep.lines}: the series parameter must differ from "
                               f"the x parameter; drop it or name another one.")
    return list(dict.fromkeys(out))  # each sweep once (several suite copies may ask for it)


def check_sweeps(sweeps: Sequence[Sweep]) -> None:
    """HarnessError unless each sweep names a registered method and parameters of its config."""
    from harness.registry import get_method

    for sweep in sweeps:
        fields = sorted(get_method(sweep.method).Config.model_fields)
        for name in (sweep.x, sweep.lines):
            if name is not None and name not in fields:
                raise HarnessError(f"sweep {sweep.method}:{sweep.x}{':' + sweep.lines if sweep.lines else ''}: "
                                   f"'{name}' is not a parameter of {sweep.method}; use one of {', '.join(fields)}.")


def _value(value: Any) -> Any:
    """A parameter value as a hashable, comparable cell (lists and dicts as JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, (list, dict)) else value


def _ppl(record: CellRecord) -> dict[str, float]:
    return {PPL + dataset: to_float(value.ppl) for dataset, value in record.perplexities.items()}


def sweep_frame(records: Iterable[CellRecord | dict[str, Any]], sweep: Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, baselines). points: one row per (model, x, lines, other varying params) of
    the sweep's method, columns ``model, x, lines, series, n, bits, bits_paper, ppl:<dataset>...``
    (means over seeds) and ``ppl_std:<dataset>...`` (standard deviation over seeds; NaN for one).
    baselines: every other finished cell of those models (means over seeds; by bits, the
    unquantized reference last), columns ``model, label, bits`` (their ``bits_paper``, as the
    points), ``ppl:<dataset>..., n``."""
    ok = [r for r in map(CellRecord.load, records) if r.ok]
    of_method = [r for r in ok if r.method == sweep.method]
    members = [r for r in of_method if sweep.x in (r.params or {})]
    if len(members) < len(of_method):
        logger.warning("sweep %s: %d %s cell(s) have no parameter %r and are left out", sweep.stem,
                       len(of_method) - len(members), sweep.method, sweep.x)
    swept = {sweep.x, sweep.lines} - {None}
    params = [{k: _value(v) for k, v in (r.params or {}).items()} for r in members]
    names = list(dict.fromkeys(k for p in params for k in p if k not in swept))
    varying = [k for k in names if len({p.get(k, "∅") for p in params}) > 1]
    rows = []
    for r, p in zip(members, params):
        rows.append({
            "model": r.model_label, "x": p[sweep.x], "lines": p.get(sweep.lines) if sweep.lines else None,
            "series": " ".join(f"{k}={p[k]}" for k in varying if k in p),
            "bits": to_float(r.bits), "bits_paper": to_float(r.metric("bits_paper")), **_ppl(r),
        })
    datasets = list(dict.fromkeys(c for row in rows for c in row if c.startswith(PPL)))
    columns = ["model", "x", "lines", "series", "n", "bits", "bits_paper", *datasets]
    points = pd.DataFrame(rows, columns=[c for c in columns if c != "n"])
    if not points.empty:
        keys = ["model", "x", "lines", "series"]
        configs = points.assign(config=[r.repeat_group for r in members]).groupby(keys, dropna=False)["config"].nunique()
        if (configs > 1).any():  # same params, other calibration or evaluation settings
            logger.warning("sweep %s: cells with equal params but other settings (calibration, evaluations) are "
                           "averaged into one point; give them different suites or output directories", sweep.stem)
        grouped = points.groupby(keys, sort=False, dropna=False)
        spread = grouped[datasets].std(ddof=1).rename(columns=_std)  # NaN for one seed
        means = grouped.agg({c: _strict_mean for c in ["bits", "bits_paper", *datasets]})
        points = means.join(grouped.size().rename("n")).join(spread).reset_index()
        points = points[columns + list(spread.columns)]
        points = points.sort_values(["model", "series", "lines", "x"], kind="stable", key=_sort_key).reset_index(drop=True)
    models = set(points["model"])
    base_rows = []
    for r in ok:
        if r.method == sweep.method or r.model_label not in models:
            continue
        label = r.method_label + (f" b{r.budget}" if r.budget is not None else "")
        paper_bits = r.metric("bits_paper")
        bits = to_float(r.bits if paper_bits is None else paper_bits)  # the points' accounting
        base_rows.append({"model": r.model_label, "label": label, "bits": bits, **_ppl(r)})
    baselines = pd.DataFrame(base_rows, columns=["model", "label", "bits", *datasets])
    if not baselines.empty:
        grouped = baselines.groupby(["model", "label"], sort=False)
        baselines = grouped.mean(numeric_only=True).join(grouped.size().rename("n")).reset_index()
        baselines = baselines.sort_values(["model", "bits"], kind="stable").reset_index(drop=True)
    else:
        baselines["n"] = pd.Series(dtype="int64")
    return points, baselines


def _strict_mean(values: pd.Series) -> float:
    """The mean, NaN if any value is missing, inf if any diverged (never a mean of the rest)."""
    values = values.astype(float)
    if values.isna().any():
        return math.nan
    return math.inf if (values == math.inf).any() else float(values.mean())


def _std(column: str) -> str:
    """``ppl_std:<dataset>`` of a ``ppl:<dataset>`` column."""
    return STD + column[len(PPL):]


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order, then anything else as text (mixed values sort safely)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _sort_key(column: pd.Series) -> pd.Series:
    return column.map(_order)


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _series_label(sweep: Sweep, lines: Any, series: str) -> str:
    parts = ([f"{sweep.lines}={lines}"] if sweep.lines else []) + ([series] if series else [])
    return ", ".join(parts) or sweep.method


def sweep_markdown(points: pd.DataFrame, baselines: pd.DataFrame, sweep: Sweep) -> str:
    """Per model and dataset a grid (x down, series across) of ``ppl (bits_paper)``, then the baselines."""
    title = f"# Sweep: {sweep.method} perplexity vs `{sweep.x}`" + (f" by `{sweep.lines}`" if sweep.lines else "")
    parts = [title, ""]
    if points.empty:
        return "\n".join(parts + [f"No finished {sweep.method} cells with a parameter `{sweep.x}`.", ""])
    parts += ["Each cell: perplexity (the paper's bits per weight, `bits_paper`); a point run with several seeds "
              "shows mean ± standard deviation over them (n seeds). Baselines: the suite's other cells on the "
              "same model (means over their seeds).", ""]
    datasets = [c for c in points.columns if c.startswith(PPL)]
    for model, group in points.groupby("model", sort=False):
        for column in datasets:
            grid: dict[Any, dict[str, str]] = {}
            header: list[str] = []
            for row in group.to_dict("records"):
                label = _series_label(sweep, row["lines"], row["series"])
                header += [label] if label not in header else []
                std = row[_std(column)]
                spread = (f" ± {fmt_ppl(std)}" if math.isfinite(std) else "") + f" (n={row['n']})" if row["n"] > 1 else ""
                cell = f"{fmt_ppl(row[column])}{spread} ({fmt_bits(row['bits_paper'], missing='nan')})"
                grid.setdefault(row["x"], {})[label] = cell
            xs = sorted(grid, key=_order)  # numeric x in numeric order, whatever the series hold
            table = pd.DataFrame([{sweep.x: str(x), **{h: grid[x].get(h, "-") for h in header}} for x in xs],
                                 columns=[sweep.x, *header])
            parts += [f"## {model}: {column[len(PPL):]}", "", markdown_table(table), ""]
            base = baselines[(baselines["model"] == model)] if not baselines.empty else baselines
            if column in base and not base.empty:
                parts += ["Baselines: " + "; ".join(
                    f"{b['label']} {fmt_ppl(b[column])} ({fmt_bits(b['bits'], missing='nan')} bits)" for b in base.to_dict("records")) + ".", ""]
    return "\n".join(parts)


def sweep_figure(points: pd.DataFrame, baselines: pd.DataFrame, sweep: Sweep, model: str, column: str) -> Figure | None:
    """Two panels: perplexity vs x (one series per `lines` value and variant) and perplexity
    vs bits_paper of the same points; baselines as labelled horizontal lines on both."""
    from matplotlib.figure import Figure

    rows = points[(points["model"] == model)]
    rows = rows[rows[column].map(lambda v: math.isfinite(v) and v > 0)]
    if rows.empty:
        return None
    base = baselines[(baselines["model"] == model)] if not baselines.empty else baselines
    base = base[base[column].map(lambda v: math.isfinite(v) and v > 0)] if column in base else base.iloc[0:0]
    with_bits = rows["bits_paper"].nunique() > 1  # the bit cost varies with the swept parameters
    fig = Figure(figsize=(11.0 if with_bits else 7.0, 4.4), layout="constrained")
    ax_x, ax_bits = fig.subplots(1, 2) if with_bits else (fig.subplots(), None)
    xs = list(dict.fromkeys(rows.sort_values("x", key=_sort_key)["x"]))
    numeric = _numeric(xs)
    series = list(rows.groupby(["lines", "series"], sort=False, dropna=False))
    legend: list[tuple[Any, str]] = []  # (handle, label) in drawing order
    for i, ((lines, variant), group) in enumerate(series):
        group = group.sort_values("x", key=_sort_key)
        label = _series_label(sweep, lines, variant)
        symbol = marker(i)
        std = group[_std(column)] if _std(column) in group else None
        if numeric:
            positions = group["x"].astype(float)
            style = dict(marker=symbol, linewidth=1.5)
        else:  # categories side by side, each series nudged so equal values do not hide each other
            positions = [xs.index(x) + (i - (len(series) - 1) / 2) * 0.08 for x in group["x"]]
            style = dict(marker=symbol, linestyle="none", markersize=8)
        if std is not None and std.notna().any():  # ± the standard deviation over seeds
            legend.append((ax_x.errorbar(positions, group[column], yerr=std.fillna(0.0), capsize=3, **style), label))
        else:
            legend.append((ax_x.plot(positions, group[column], **style)[0], label))
        if ax_bits is not None:
            ax_bits.plot(group["bits_paper"], group[column], marker=symbol, linewidth=1.0 if numeric else 0,
                         linestyle="-" if numeric else "none", label=label)
    top = float(rows["bits_paper"].max())
    lo, hi = float(rows[column].min()) / 1.5, float(rows[column].max()) * 1.5
    shown = []
    for j, b in enumerate(base.to_dict("records")):
        value = float(b[column])
        b["seeds"] = f" (mean of {b['n']} seeds)" if b["n"] > 1 else ""
        if not lo <= value <= hi:  # far off (e.g. the unquantized model): named in the legend only
            legend.append((ax_x.plot([], [], linestyle="none")[0], f"{b['label']}: {fmt_ppl(value)}{b['seeds']} (off the axes)"))
            continue
        shown.append(value)
        style = dict(color="0.3", linestyle=reference_linestyle(j), linewidth=1.1)
        legend.append((ax_x.axhline(value, **style), f"{b['label']}: {fmt_ppl(value)}{b['seeds']}"))
        if ax_bits is None:
            continue
        if math.isfinite(b["bits"]) and b["bits"] <= 2 * top:  # a quantized baseline: a point at its bits
            ax_bits.plot([b["bits"]], [value], marker="x", color="0.3", markersize=9, linestyle="none")
            ax_bits.annotate(b["label"], (b["bits"], value), textcoords="offset points", xytext=(6, 4), fontsize=8)
        else:
            ax_bits.axhline(value, **style)
    if not numeric:
        ax_x.set_xticks(range(len(xs)), [str(x) for x in xs])
    values = pd.concat([rows[column], pd.Series(shown, dtype=float)]).astype(float)
    axes = [ax for ax in (ax_x, ax_bits) if ax is not None]
    if values.max() / values.min() > 5:
        for ax in axes:
            log_y(ax, math.log10(values.max() / values.min()))
    dataset = column[len(PPL):]
    ax_x.set_xlabel(sweep.x)
    ax_x.set_ylabel(f"perplexity on {dataset} (lower is better)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    if ax_bits is not None:
        ax_bits.set_xlabel("bits per weight (paper's accounting)")
        ax_x.set_title(f"vs {sweep.x}", fontsize=10)
        ax_bits.set_title("vs bits per weight (× a quantized baseline)", fontsize=10)
    fig.suptitle(f"{model} — {sweep.method}: {dataset} perplexity vs {sweep.x}" + (f" by {sweep.lines}" if sweep.lines else ""))
    # as many columns as fit the figure's width (about 6 pt per character plus the handle)
    column_pt = 6 * max(len(text) for _, text in legend) + 40
    ncols = max(1, min(len(legend), 3, int(fig.get_figwidth() * 72 // column_pt)))
    fig.legend([h for h, _ in legend], [text for _, text in legend], loc="outside lower center", ncols=ncols,
               frameon=False)
    return fig


def write_sweeps(store: ResultStore, sweeps: Sequence[Sweep], *, plots: Sequence[str] = ("png", "svg"),
                 records: Sequence[CellRecord] | None = None) -> list[Path]:
    """Write each sweep's table (Markdown + CSV) and plots; returns the paths."""
    records = store.records() if records is None else records
    written: list[Path] = []
    for sweep in as_sweeps(sweeps):
        points, baselines = sweep_frame(records, sweep)
        if points.empty:
            logger.warning("sweep %s: no finished %s cells with a parameter %r", sweep.stem, sweep.method, sweep.x)
        written.append(atomic_write_text(store.tables_dir / f"{sweep.stem}.md", sweep_markdown(points, baselines, sweep)))
        written.append(atomic_write_text(store.tables_dir / f"{sweep.stem}.csv", points.to_csv(index=False)))
        for model in points["model"].drop_duplicates():
            for column in [c for c in points.columns if c.startswith(PPL)]:
                fig = sweep_figure(points, baselines, sweep, model, column)
                if fig is None:
                    continue
                name = f"{sweep.stem}_{safe_name(model)}_{safe_name(column[len(PPL):])}"
                for fmt in plots:
                    written.append(atomic_write_bytes(store.plots_dir / f"{name}.{fmt}", render(fig, fmt)))
    return written
