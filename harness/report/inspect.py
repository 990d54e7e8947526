"""`harness inspect CELL`: per-layer diagnostics of one calibrated cell.

Writes into ``<results>/plots/inspect/``:
- ``<key>_layer_error.{png,svg}``: heatmap of the relative layer-output error per linear
  (blocks × linear types, log colour scale); ``output_error`` (the saved layer, after block
  fine-tuning), or for records made before it was recorded the method's own ``rel_error``
  (AQLM/CRVQ: before block fine-tuning), which the title and colour bar then say;
- ``<key>_importance.{png,svg}`` (CRVQ cells): per linear type, the importance-score
  distribution of every block (the histogram of log10(score / mean score) as a heat column,
  with the q50/q90/q99/max quantiles and the lowest critical score as lines), and the share of
  the total score that the critical channels hold.
Figures use matplotlib's object-oriented API only (see `harness.report.plots`).
"""
from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analysis.layers import LayerEntry, LayerTable, layer_table
from harness.errors import HarnessError
from harness.record import CellRecord
from harness.report.style import PLOT_FORMATS, fmt_bits, render
from harness.store import ResultStore, atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSPECT_DIR = "inspect"
_ERROR_LABELS = {
    "output_error": "output_error = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)\nof the saved layer (log scale)",
    "rel_error": "rel_error: the method's own error\n(AQLM/CRVQ: before block fine-tuning; log scale)",
}
_QUANTILE_STYLES = (("q50", "median", "-"), ("q90", "q90", "--"), ("q99", "q99", "-."), ("max", "max", ":"))


# ----------------------------------------------------------------------------- finding the cell
def result_roots(results: Path) -> list[Path]:
    """`results` itself if it is a results directory (has records/), else its subfolders that are."""
    return [store.root for store in ResultStore.roots_under(results)]


def find_record(cell: str, results: Path) -> tuple[CellRecord, Path]:
    """(record, results directory) of the one record that `cell` names: an exact key, an exact
    label, a unique key prefix or a unique label pattern (fnmatch), tried in that order.
    Raises HarnessError when nothing or more than one record matches (listing candidates)."""
    roots = result_roots(results)
    if not roots:
        raise HarnessError(
            f"{results}: no results directory there (no records/ inside it or in its subfolders); give one with "
            f"-r, e.g. `harness inspect {cell} -r results/quickstart`."
        )
    records = [(r, root) for root in roots for r in ResultStore(root).records()]
    rules = (
        lambda r: r.key == cell,
        lambda r: str(r.label or "") == cell,
        lambda r: r.key.startswith(cell),
        lambda r: fnmatch.fnmatchcase(str(r.label or ""), cell),
    )
    for rule in rules:
        matches = [(r, root) for r, root in records if rule(r)]
        if matches:
            break
    where = ", ".join(str(r) for r in roots)
    if not matches:
        labels = sorted({str(r.label or "") for r, _ in records})
        close = difflib.get_close_matches(cell, labels, n=5, cutoff=0.5)
        if close:
            hint = f" Did you mean: {', '.join(close)}?"
        elif labels:
            hint = f" Cells there: {', '.join(labels[:12])}{' ...' if len(labels) > 12 else ''}."
        else:
            hint = " There are no records yet."
        raise HarnessError(
            f"no cell matches '{cell}' in {where}; give a record key, a unique key prefix or a cell label such as "
            f"'smollm2-135m/crvq/b1' (`harness show` lists records).{hint}"
        )
    if len(matches) > 1:
        shown = "; ".join(f"{r.label} ({r.key}) in {root}" for r, root in matches[:10])
        more = f"; and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise HarnessError(
            f"'{cell}' matches {len(matches)} records: {shown}{more}. Give the full key, or pick the results "
            f"directory with -r."
        )
    return matches[0]


# ----------------------------------------------------------------------------- figures
def _block_ticks(ax: Axes, blocks: Sequence[int]) -> None:
    step = max(1, math.ceil(len(blocks) / 20))
    ax.set_xticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]])


def layer_error_figure(table: LayerTable, title: str) -> Figure:
    """Heatmap of `table`'s error field: linear types (rows) × blocks (columns), log colour
    scale; missing or zero errors in grey. Values are printed in the cells of small models."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    grid = table.grid(lambda e: e.error)
    shown = np.where(grid > 0, grid, np.nan)
    finite = shown[np.isfinite(shown)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (1e-3, 1.0)
    if high <= low:
        low, high = low / 2, high * 2
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    n_kinds, n_blocks = grid.shape
    fig = Figure(figsize=(min(max(6.5, 3.0 + 0.32 * n_blocks), 24.0), 2.1 + 0.42 * n_kinds), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=LogNorm(low, high),
                      interpolation="nearest")
    _block_ticks(ax, table.blocks)
    ax.set_yticks(range(n_kinds), table.kinds)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("linear")
    if n_kinds * n_blocks <= 120:
        for (i, j), value in np.ndenumerate(shown):
            if math.isfinite(value):
                dark = image.norm(value) < 0.6
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label(_ERROR_LABELS.get(table.error_field, f"{table.error_field} (log scale)"), fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    return fig


def _importance(entry: LayerEntry) -> dict[str, Any] | None:
    scores = entry.log.get("importance_scores")
    return scores if isinstance(scores, dict) else None


def _ratio_text(entries: Sequence[LayerEntry]) -> str:
    ratios = sorted({round(100 * float(e.log["critical_ratio"]), 2) for e in entries if "critical_ratio" in e.log})
    if not ratios:
        return ""
    return f"critical {ratios[0]:g}%" if len(ratios) == 1 else f"critical {ratios[0]:g}–{ratios[-1]:g}%"


def _log_ratio(entries: Sequence[LayerEntry], key: str, scale: Sequence[float]) -> list[float]:
    """log10(importance_scores[key] / scale) per entry (NaN where absent or not positive)."""
    out = []
    for e, s in zip(entries, scale):
        v = _importance(e).get(key)
        out.append(math.log10(v / s) if isinstance(v, (int, float)) and v > 0 else math.nan)
    return out


def _importance_panel(ax: Axes, entries: list[LayerEntry], x: np.ndarray, n_blocks: int, with_hist: bool,
                      cmap: Any, norm: Any) -> tuple[Any, list[float]]:
    """One linear type: histogram heat columns (if `with_hist`), quantile and threshold lines.
    Returns (the heat image or None, the y values shown)."""
    scale = [float(_importance(e)["mean"]) if with_hist else 1.0 for e in entries]
    image, spans = None, []
    if with_hist:
        edges = np.asarray(_importance(entries[0])["hist"]["log10_edges"], dtype=float)
        y_edges = np.concatenate([[edges[0] - 0.5], edges, [edges[-1] + 0.5]])  # + under/overflow bins
        share = np.full((len(y_edges) - 1, n_blocks), np.nan)
        for e, col in zip(entries, x):
            counts = np.asarray(_importance(e)["hist"]["counts"], dtype=float)
            share[:, col] = np.where(counts > 0, counts / counts.sum(), np.nan)
            occupied = np.flatnonzero(counts)
            if occupied.size:
                spans += [y_edges[occupied[0]], y_edges[occupied[-1] + 1]]
        image = ax.pcolormesh(np.arange(n_blocks + 1) - 0.5, y_edges, np.ma.masked_invalid(share),
                              cmap=cmap, norm=norm, shading="flat")
    for key, label, style in _QUANTILE_STYLES:
        values = _log_ratio(entries, key, scale)
        ax.plot(x, values, linestyle=style, color="deepskyblue", linewidth=1.2, label=label)
        spans += [v for v in values if math.isfinite(v)]
    threshold = _log_ratio(entries, "threshold", scale)
    if any(math.isfinite(v) for v in threshold):
        ax.plot(x, threshold, color="tab:red", linewidth=1.1, marker=".", markersize=3, label="lowest critical")
    ax.set_title(f"{entries[0].kind}  ({_ratio_text(entries)})", fontsize=9)
    ax.set_ylabel("log10(score / mean score)" if with_hist else "log10(score)", fontsize=8)
    return image, spans


def importance_figure(table: LayerTable, title: str) -> Figure | None:
    """CRVQ channel importance across layers; None when no entry has `importance_scores`.

    One panel per linear type (x: block). With histograms (records since `hist` was logged):
    y = log10(score / mean score), the colour of a cell = share of the layer's input channels
    in that bin (log scale); without (older records): y = log10(score), quantile lines only.
    Lines: q50, q90, q99, max and the lowest critical score. A last panel shows the critical
    channels' share of the total score per block and linear type.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    scored = [e for e in table.entries if _importance(e) is not None]
    if not scored:
        return None
    by_kind = {k: sorted((e for e in scored if e.kind == k), key=lambda e: e.block) for k in table.kinds}
    by_kind = {k: entries for k, entries in by_kind.items() if entries}
    with_hist = all("hist" in _importance(e) and _importance(e).get("mean") for e in scored)
    ncols = min(4, len(by_kind) + 1)
    nrows = math.ceil((len(by_kind) + 1) / ncols)
    fig = Figure(figsize=(3.3 * ncols + 1.0, 2.7 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    position = {b: j for j, b in enumerate(table.blocks)}
    n_blocks = len(table.blocks)
    norm = LogNorm(vmin=1.0 / max(int(e.log["in"]) for e in scored), vmax=1.0)
    image, spans = None, []
    for ax, entries in zip(axes, by_kind.values()):
        x = np.array([position[e.block] for e in entries])
        panel_image, panel_spans = _importance_panel(ax, entries, x, n_blocks, with_hist, colormaps["magma_r"], norm)
        image = panel_image if image is None else image
        spans += panel_spans
    share_ax = axes[len(by_kind)]
    for kind, entries in by_kind.items():
        share_ax.plot([position[e.block] for e in entries],
                      [_importance(e).get("critical_share", np.nan) for e in entries], marker=".", label=kind)
    share_ax.set_ylim(0, 1)
    share_ax.set_title("critical channels' share of the total score", fontsize=9)
    share_ax.legend(fontsize=6, ncols=4, loc="lower left", framealpha=0.7)
    for ax in axes[: len(by_kind) + 1]:
        ax.set_xlim(-0.5, n_blocks - 0.5)
        _block_ticks(ax, table.blocks)
        ax.tick_params(labelsize=7)
        if spans and ax is not share_ax:  # one y range for every type's panel
            ax.set_ylim(min(spans) - 0.25, max(spans) + 0.25)
    for ax in axes[len(by_kind) + 1:]:
        ax.set_visible(False)
    for ax in axes[(nrows - 1) * ncols:]:
        ax.set_xlabel("decoder block", fontsize=8)
    axes[0].legend(fontsize=6, loc="lower left")
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(by_kind)]), pad=0.01, shrink=0.9).set_label(
            "share of the layer's input channels (log scale)", fontsize=8)
    fig.suptitle(title + ("" if with_hist else "\n(no histograms in this record: quantiles of the raw scores)"),
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------- the command
@dataclass
class Inspection:
    """What `inspect_record` found and wrote: the layer table, its per-block summary, the
    written paths and notes for the user (e.g. an error field fallback)."""

    record: CellRecord
    root: Path
    table: LayerTable
    summary: list[dict[str, Any]]
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def inspect_path(root: Path, key: str, what: str, fmt: str) -> Path:
    """``<root>/plots/inspect/<key>_<what>.<fmt>`` (what: layer_error | importance)."""
    return ResultStore(root).plots_dir / INSPECT_DIR / f"{key}_{what}.{fmt}"


def _check(record: CellRecord, table: LayerTable) -> None:
    label = f"cell {record.label} ({record.key})"
    if not record.ok and not record.layers:
        raise HarnessError(f"{label} did not finish (status {record.status}): it has no per-layer log; "
                           f"`harness show {record.key}` shows its error.")
    if not table.entries:
        what = "the unquantized reference" if record.is_reference else f"method {record.method}"
        raise HarnessError(f"{label} is {what}: its record has no quantized layers to inspect; pick a quantized cell "
                           f"(e.g. its crvq or gptq line).")
    if table.error_field is None:
        raise HarnessError(f"{label}: its layers carry no layer-output error (method {record.method} is "
                           f"calibration-free, so no H was collected); inspect a calibrated cell (gptq, aqlm, crvq).")


def inspect_record(record: CellRecord | dict[str, Any], root: Path, formats: Sequence[str] = PLOT_FORMATS) -> Inspection:
    """Per-layer diagnostics of `record` (found in results directory `root`): writes the
    layer-error heatmap and, for records with importance scores, the importance figure.
    Raises HarnessError for records without quantized layers or layer errors."""
    record = CellRecord.load(record)
    table = layer_table(record.layers or [])
    _check(record, table)
    result = Inspection(record, Path(root), table, table.block_summary())
    if table.error_field != "output_error":
        result.notes.append(
            f"this record has no `output_error` (made before it was recorded): showing `{table.error_field}`, the "
            f"method's own error (AQLM/CRVQ: before block fine-tuning); re-run the cell for the saved layers' error."
        )
    if (record.model_extra or {}).get("finetune_e2e"):
        result.notes.append("end-to-end fine-tuning ran after the layer errors were measured (after block "
                            "fine-tuning): the saved layers differ from the ones measured here.")
    label = str(record.label or record.key)
    bits = next((row["bits"] for row in result.summary if row["block"] == "all"), math.nan)
    title = f"{label} ({record.key})\nrelative layer-output error of {len(table.entries)} linears, {fmt_bits(bits)} bits/weight"
    figures = {"layer_error": layer_error_figure(table, title)}
    rule = next((e.log.get("importance") for e in table.entries if "importance" in e.log), None)
    importance = importance_figure(table, f"{label} ({record.key}): channel importance `{rule}` per layer")
    if importance is not None:
        figures["importance"] = importance
        if any(_importance(e) is not None and "hist" not in _importance(e) for e in table.entries):
            result.notes.append("importance scores without histograms (older record): quantile lines only.")
    for what, fig in figures.items():
        for fmt in formats:
            result.paths.append(atomic_write_bytes(inspect_path(root, record.key, what, fmt), render(fig, fmt)))
    return result
