"""Result tables: one row per finished cell, written as Markdown, LaTeX (booktabs) and CSV."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.store import atomic_write_text

logger = logging.getLogger(__name__)

PPL_PREFIX = "ppl:"
#: Frame columns before the per-dataset perplexity columns, and after them.
_HEAD = ["model", "method", "budget", "params", "bits", "bits_paper", "model_bits", "size_mb"]
_TAIL = ["quantize_s", "reference", "key"]
#: Columns that only the CSV carries (bookkeeping).
_HIDDEN = {"reference", "key"}
_TEXT = {"model", "method", "params"}
#: Short names for common parameters in the params column.
_ABBREV = {"group_size": "g", "groupsize": "g"}
_MESSAGE_CHARS = 300


# --------------------------------------------------------------------------- frames

def _is_reference(record: dict[str, Any]) -> bool:
    return bool(record.get("reference", record.get("method") == "none"))


def _model_label(record: dict[str, Any]) -> str:
    model = record.get("model") or {}
    return str(model.get("label") or str(record.get("label", "?")).split("/")[0])


def _method_label(record: dict[str, Any]) -> str:
    return str(record.get("method_label") or record.get("method") or "?")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def params_strings(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """A short ``"bits=2 g=64"`` per record key: only the params that differ between cells of
    the same method (so a method run once gets an empty string)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_method.setdefault(_method_label(r), []).append(r)
    out: dict[str, str] = {}
    missing = object()
    for group in by_method.values():
        params = [r.get("params") or {} for r in group]
        names = list(dict.fromkeys(k for p in params for k in p))  # config field order
        varying = [
            k for k in names
            if len({_format_value(p[k]) if k in p else missing for p in params}) > 1
        ]
        for r, p in zip(group, params):
            out[r["key"]] = " ".join(f"{_ABBREV.get(k, k)}={_format_value(p[k])}" for k in varying if k in p)
    return out


def _num(value: Any) -> float:
    """A float, NaN for missing; ``inf`` stays ``inf``."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per ``ok`` record; columns ``model, method, budget, params, bits, bits_paper,
    model_bits, size_mb`` (10^6 bytes), one ``ppl:<dataset>`` per dataset, ``quantize_s``
    (seconds), then ``reference`` and ``key``.

    Sorted by model, the reference first, then method, then bits descending.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    params = params_strings(ok)
    datasets: list[str] = []
    rows = []
    for r in ok:
        metrics = r.get("metrics") or {}
        ppl = metrics.get("perplexity") or {}
        datasets.extend(d for d in ppl if d not in datasets)
        size = _num(metrics.get("size_bytes"))
        row = {
            "model": _model_label(r),
            "method": _method_label(r),
            "budget": r.get("budget"),
            "params": params[r["key"]],
            "bits": _num(metrics.get("bits")),
            "bits_paper": _num(metrics.get("bits_paper")),
            "model_bits": _num(metrics.get("model_bits")),
            "size_mb": size / 1e6,
            "quantize_s": _num((r.get("timings") or {}).get("quantize_s")),
            "reference": _is_reference(r),
            "key": r["key"],
        }
        for d, v in ppl.items():
            row[PPL_PREFIX + d] = _num(v.get("ppl") if isinstance(v, dict) else v)
        rows.append(row)
    columns = _HEAD + [PPL_PREFIX + d for d in datasets] + _TAIL
    frame = pd.DataFrame(rows, columns=columns)
    frame["budget"] = frame["budget"].astype("Int64")
    frame["reference"] = frame["reference"].astype(bool)
    if frame.empty:
        return frame
    frame["_order"] = ~frame["reference"]
    frame = frame.sort_values(
        ["model", "_order", "method", "bits", "params"],
        ascending=[True, True, True, False, True],
        na_position="last",
        kind="stable",
    )
    return frame.drop(columns="_order").reset_index(drop=True)


def failures_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record whose status is not ``ok``: ``cell`` (label), ``params``, ``error``
    (type and first line of the message, truncated) and ``key``."""
    records = list(records)
    params = params_strings(records)
    rows = []
    for r in records:
        if r.get("status") == "ok":
            continue
        error = r.get("error") or {}
        message = " ".join(str(error.get("message") or "").split())
        if len(message) > _MESSAGE_CHARS:
            message = message[: _MESSAGE_CHARS - 1] + "…"
        kind = error.get("type") or "unknown error"
        rows.append({
            "cell": str(r.get("label", r["key"])),
            "params": params[r["key"]],
            "error": f"{kind}: {message}" if message else kind,
            "key": r["key"],
        })
    return pd.DataFrame(rows, columns=["cell", "params", "error", "key"])


# --------------------------------------------------------------------------- formatting

def _fmt(column: str) -> Callable[[Any], str]:
    """The display formatter of a frame column (missing values become ``-``)."""
    if column in ("bits", "bits_paper", "model_bits"):
        spec = "{:.3f}"
    elif column.startswith(PPL_PREFIX):
        spec = "{:.2f}"
    elif column == "size_mb":
        spec = "{:.2f}"
    elif column == "quantize_s":
        spec = "{:.1f}"
    else:
        spec = "{}"

    def fmt(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return spec.format(value)

    return fmt


def _display(frame: pd.DataFrame, drop_empty: Iterable[str], hidden: Iterable[str] = _HIDDEN) -> pd.DataFrame:
    """String cells; ``hidden`` columns dropped, and ``drop_empty`` columns when all empty."""
    shown = frame.drop(columns=[c for c in frame.columns if c in set(hidden)])
    for c in drop_empty:
        if c in shown and (shown[c].isna() | (shown[c].astype(str) == "")).all():
            shown = shown.drop(columns=c)
    return pd.DataFrame({c: [_fmt(c)(v) for v in shown[c]] for c in shown.columns}, columns=shown.columns)


def _markdown_table(frame: pd.DataFrame) -> str:
    align = ["left" if c in _TEXT or c == "cell" or c == "error" or c == "key" else "right" for c in frame.columns]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def to_markdown(results: pd.DataFrame, failures: pd.DataFrame | None = None, title: str | None = None) -> str:
    """The results table, then (if any) the failed cells, as one Markdown document."""
    optional = ["budget", "params", "bits_paper", "model_bits", "size_mb", "quantize_s"]
    parts = [f"# {title or 'Results'}", ""]
    if results.empty:
        parts.append("No finished cells.")
    else:
        parts += [
            "Bits per weight measured from the stored tensors (`bits`), by the paper's formula "
            "(`bits_paper`) and over the whole model (`model_bits`); size in MB (10^6 bytes); "
            "quantization time in seconds.",
            "",
            _markdown_table(_display(results, optional)),
        ]
    if failures is not None and not failures.empty:
        parts += ["", failures_markdown(failures, heading="## Failed cells")]
    return "\n".join(parts) + "\n"


def failures_markdown(failures: pd.DataFrame, heading: str = "# Failed cells") -> str:
    """The failed cells as Markdown (``No failed cells.`` when there are none)."""
    if failures.empty:
        return f"{heading}\n\nNo failed cells.\n"
    shown = failures.copy()
    shown["error"] = shown["error"].str.replace("|", "\\|", regex=False)
    shown = _display(shown, ["params"], hidden=())
    return (
        f"{heading}\n\n{len(failures)} cell(s) failed; they are re-run by the next `harness run`. "
        f"Tracebacks: `harness show <key>`, logs: `logs/<key>.log`.\n\n{_markdown_table(shown)}\n"
    )


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_HEADERS = {
    "method": "Method", "budget": "Budget", "params": "Config", "bits": "Bits/w",
    "bits_paper": "Bits/w (paper)", "model_bits": "Model bits/w", "size_mb": "Size (MB)",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(results: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``), models as row groups.

    Columns: method, config (when any), bits, paper bits and size (when present), one
    perplexity column per dataset under a shared header. Wrap it in your own ``table``.
    """
    shown = _display(results, ["params", "bits_paper", "size_mb"])
    shown = shown.drop(columns=[c for c in ("budget", "model_bits", "quantize_s") if c in shown])
    cols = [c for c in shown.columns if c != "model"]
    ppl_cols = [c for c in cols if c.startswith(PPL_PREFIX)]
    spec = "".join("l" if c in _TEXT else "r" for c in cols)
    lines = [r"% Generated by ptq-harness; needs \usepackage{booktabs}.", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if ppl_cols:
        first = cols.index(ppl_cols[0]) + 1
        lines.append(
            " & " * (first - 1)
            + rf"\multicolumn{{{len(ppl_cols)}}}{{c}}{{Perplexity ($\downarrow$)}} \\"
        )
        lines.append(rf"\cmidrule(lr){{{first}-{first + len(ppl_cols) - 1}}}")
    header = [_LATEX_HEADERS.get(c) or latex_escape(c[len(PPL_PREFIX):]) for c in cols]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    for i, (model, group) in enumerate(shown.groupby("model", sort=False)):
        if i:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{len(cols)}}}{{l}}{{\textbf{{{latex_escape(str(model))}}}}} \\")
        for _, row in group.iterrows():
            cells = []
            for c in cols:
                v = row[c]
                if c in _TEXT:
                    cells.append(latex_escape(v))
                else:
                    cells.append({"-": "--", "inf": r"$\infty$"}.get(v, v))
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing

def write_tables(
    results: pd.DataFrame,
    failures: pd.DataFrame,
    out_dir: Path,
    formats: Sequence[str] = ("markdown", "latex", "csv"),
    *,
    name: str = "results",
    title: str | None = None,
) -> list[Path]:
    """Write ``<name>.md`` (+ ``failures.md``), ``<name>.tex``, ``<name>.csv``; returns the paths."""
    unknown = set(formats) - {"markdown", "latex", "csv"}
    if unknown:
        raise ValueError(f"unknown table format(s) {sorted(unknown)}: use markdown, latex or csv")
    out_dir = Path(out_dir)
    written: list[Path] = []
    if "markdown" in formats:
        written.append(atomic_write_text(out_dir / f"{name}.md", to_markdown(results, failures, title)))
        written.append(atomic_write_text(out_dir / "failures.md", failures_markdown(failures)))
    if "latex" in formats:
        if results.empty:
            logger.info("no finished cells: %s.tex not written", name)
        else:
            written.append(atomic_write_text(out_dir / f"{name}.tex", to_latex(results)))
    if "csv" in formats:
        written.append(atomic_write_text(out_dir / f"{name}.csv", results.to_csv(index=False)))
    return written
