"""Result tables: one row per finished cell, written as Markdown, LaTeX (booktabs) and CSV."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.repeats import (
    ACC_SE,
    ACC_STD,
    AUX_PREFIXES,
    PPL_HI,
    PPL_LO,
    PPL_STD,
    TOK_MAX,
    TOK_MIN,
    TOK_PREFIX,
    aggregate_repeats,
    ppl_interval,
    record_seed,
    throughput_columns,
    window_nll,
    zero_shot_se_average,
)
from harness.store import atomic_write_text

logger = logging.getLogger(__name__)

PPL_PREFIX = "ppl:"
#: Zero-shot accuracy columns (fractions in the frame and the CSV, percent in Markdown/LaTeX).
ACC_PREFIX = "acc:"
ACC_AVG = ACC_PREFIX + "avg"
#: Frame columns before the per-dataset perplexity columns, and after them.
_HEAD = ["model", "method", "budget", "params", "bits", "bits_paper", "model_bits", "size_mb"]
_TAIL = ["quantize_s", "reference", "key"]
#: Columns that only the CSV carries (bookkeeping).
_HIDDEN = {"reference", "key", "keys", "seeds"}
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


def zero_shot_tasks(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task: {acc, acc_norm, ..., error}}`` of a record's zero-shot evaluation (empty if none)."""
    zs = (record.get("metrics") or {}).get("zero_shot") or {}
    tasks = zs.get("tasks") if isinstance(zs, dict) else None
    return {t: v for t, v in (tasks or {}).items() if isinstance(v, dict)}


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per ``ok`` record; columns ``model, method, budget, params, seed, bits,
    bits_paper, model_bits, size_mb`` (10^6 bytes); per dataset ``ppl:<dataset>`` with
    ``ppl_std:`` (NaN here), ``ppl_lo:`` and ``ppl_hi:`` (95% bootstrap interval over the
    evaluation windows); per zero-shot task ``acc:<task>`` (a fraction) with ``acc_std:`` (NaN
    here) and ``acc_se:`` (lm-eval's standard error), and ``acc:avg`` (the mean over the tasks
    that some row has; NaN for a row that misses one); per throughput batch size ``tok/s:b<n>``
    with ``tok/s_min:``/``tok/s_max:`` (see :mod:`harness.report.repeats`); ``quantize_s``
    (seconds), then ``reference`` and ``key``.

    Sorted by model, the reference first, then method, then bits descending, then seed.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    params = params_strings(ok)
    datasets: list[str] = []
    tasks: list[str] = []
    batches: list[str] = []
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
            "seed": record_seed(r),
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
            row[PPL_LO + d], row[PPL_HI + d] = ppl_interval([window_nll(r, d)])
        for t, v in zero_shot_tasks(r).items():
            if t not in tasks:
                tasks.append(t)
            row[ACC_PREFIX + t] = _num(v.get("acc"))
            row[ACC_SE + t] = _num(v.get("acc_stderr"))
        throughput = throughput_columns(r)
        batches.extend(c[len(TOK_PREFIX):] for c in throughput if c.startswith(TOK_PREFIX) and c[len(TOK_PREFIX):] not in batches)
        row.update(throughput)
        rows.append(row)
    columns = (
        _HEAD[:4] + ["seed"] + _HEAD[4:]
        + [p + d for d in datasets for p in (PPL_PREFIX, PPL_STD, PPL_LO, PPL_HI)]
        + [p + t for t in [*tasks, "avg"] if tasks for p in (ACC_PREFIX, ACC_STD, ACC_SE)]
        + [p + b for b in batches for p in (TOK_PREFIX, TOK_MIN, TOK_MAX)]
        + _TAIL
    )
    frame = pd.DataFrame(rows, columns=columns)
    if tasks:  # over the tasks some row has (a task that failed everywhere does not blank the average)
        measured = [t for t in tasks if frame[ACC_PREFIX + t].notna().any()]
        if measured:
            frame[ACC_AVG] = frame[[ACC_PREFIX + t for t in measured]].astype(float).mean(axis=1, skipna=False)
            se = frame[[ACC_SE + t for t in measured]].astype(float)
            frame[ACC_SE + "avg"] = [zero_shot_se_average(values) for values in se.to_numpy()]
        else:
            frame[ACC_AVG] = math.nan
    frame["budget"] = frame["budget"].astype("Int64")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["reference"] = frame["reference"].astype(bool)
    if frame.empty:
        return frame
    frame["_order"] = ~frame["reference"]
    frame = frame.sort_values(
        ["model", "_order", "method", "bits", "params", "seed"],
        ascending=[True, True, True, False, True, True],
        na_position="last",
        kind="stable",
    )
    return frame.drop(columns="_order").reset_index(drop=True)


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per configuration: the ``ok`` records that differ only by seed are aggregated
    (:func:`harness.report.repeats.aggregate_repeats`). Columns as in :func:`records_frame`,
    with ``n`` (seeds) in place of ``seed``, and ``seeds`` and ``keys`` at the end; numbers
    are means over the seeds, ``ppl_std:``/``acc_std:`` their standard deviations, and the
    perplexity interval is bootstrapped over windows and seeds. ``key`` is the first seed's.

    Sorted by model, the reference first, then method, then bits descending.
    """
    records = list(records)
    return aggregate_results(records_frame(records), records)


def aggregate_results(by_record: pd.DataFrame, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """:func:`results_frame` from an already built :func:`records_frame` of ``records``."""
    frame = aggregate_repeats(by_record, records)
    columns = list(frame.columns)
    columns.remove("n")
    columns.insert(columns.index("params") + 1, "n")
    frame = frame[columns].copy()
    if not frame.empty:
        frame["budget"] = frame["budget"].astype("Int64")
        frame["reference"] = frame["reference"].astype(bool)
    return frame.reset_index(drop=True)


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


def evaluation_errors_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluation that failed inside an ``ok`` record (e.g. a zero-shot task whose
    dataset is not reachable): ``cell``, ``evaluation`` (``zero_shot:<task>``), ``error``, ``key``."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        zs = (r.get("metrics") or {}).get("zero_shot") or {}
        errors = [("zero_shot", zs.get("error"))] if isinstance(zs, dict) and zs.get("error") else []
        errors += [(f"zero_shot:{t}", v.get("error")) for t, v in zero_shot_tasks(r).items() if v.get("error")]
        for evaluation, error in errors:
            message = " ".join(str(error.get("message") or "").split())
            if len(message) > _MESSAGE_CHARS:
                message = message[: _MESSAGE_CHARS - 1] + "…"
            rows.append({"cell": str(r.get("label", r["key"])), "evaluation": evaluation,
                         "error": f"{error.get('type') or 'error'}: {message}", "key": r["key"]})
    return pd.DataFrame(rows, columns=["cell", "evaluation", "error", "key"])


def evaluation_errors_markdown(errors: pd.DataFrame, heading: str = "## Failed evaluations") -> str:
    """Failed evaluations of finished cells as Markdown ('' when there are none)."""
    if errors.empty:
        return ""
    shown = errors.copy()
    shown["error"] = shown["error"].str.replace("|", "\\|", regex=False)
    return (
        f"{heading}\n\n{len(errors)} evaluation(s) of finished cells failed; their other metrics are "
        f"in the results. To retry, delete the cell's record (`records/<key>.json`) and run again "
        f"(zero-shot tasks already evaluated are read from `zeroshot/`).\n\n{_markdown_table(_display(shown, (), hidden=()))}\n"
    )


# --------------------------------------------------------------------------- formatting

def _fmt(column: str) -> Callable[[Any], str]:
    """The display formatter of a frame column (missing values become ``-``)."""
    if column in ("bits", "bits_paper", "model_bits"):
        spec = "{:.3f}"
    elif column.startswith(PPL_PREFIX):
        spec = "{:.2f}"
    elif column.startswith(ACC_PREFIX):  # percent
        spec = "{:.1f}"
    elif column == "size_mb":
        spec = "{:.2f}"
    elif column == "quantize_s" or column.startswith(TOK_PREFIX):
        spec = "{:.1f}"
    else:
        spec = "{}"

    def fmt(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return spec.format(100 * value if column.startswith(ACC_PREFIX) else value)

    return fmt


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _with_uncertainty(frame: pd.DataFrame, column: str) -> list[str]:
    """Display strings of a ``ppl:``/``acc:``/``tok/s:`` column with its uncertainty merged in:
    ``mean ± std`` over seeds (n > 1) or, for a single zero-shot run, ``acc ± stderr``;
    ``[lo, hi]`` the perplexity's bootstrap interval; ``(min–max)`` the throughput repeats."""
    fmt = _fmt(column)
    prefix, name = column.split(":", 1)
    prefix += ":"
    aux = {p: frame[p + name] if p + name in frame else None for p, main in AUX_PREFIXES.items() if main == prefix}
    n = frame["n"] if "n" in frame else pd.Series(1, index=frame.index)
    out = []
    for i, value in enumerate(frame[column]):
        text = fmt(value)
        at = {p: (None if series is None else series.iloc[i]) for p, series in aux.items()}
        if text == "-" or not _finite(value):
            out.append(text)
            continue
        std = at.get(PPL_STD if prefix == PPL_PREFIX else ACC_STD)
        if n.iloc[i] > 1 and _finite(std):
            text += f" ± {fmt(std)}"
        elif n.iloc[i] == 1 and prefix == ACC_PREFIX and _finite(at.get(ACC_SE)):
            text += f" ± {fmt(at[ACC_SE])}"
        if prefix == PPL_PREFIX and _finite(at.get(PPL_LO)) and _finite(at.get(PPL_HI)):
            text += f" [{fmt(at[PPL_LO])}, {fmt(at[PPL_HI])}]"
        if prefix == TOK_PREFIX and _finite(at.get(TOK_MIN)) and _finite(at.get(TOK_MAX)):
            text += f" ({fmt(at[TOK_MIN])}–{fmt(at[TOK_MAX])})"
        out.append(text)
    return out


def _display(frame: pd.DataFrame, drop_empty: Iterable[str], hidden: Iterable[str] = _HIDDEN) -> pd.DataFrame:
    """String cells; ``hidden`` columns dropped, and ``drop_empty`` columns when all empty.
    Uncertainty columns are merged into their main column (:func:`_with_uncertainty`); ``n``
    is shown only when some row has repeats."""
    aux = [c for c in frame.columns if c.startswith(tuple(AUX_PREFIXES))]
    shown = frame.drop(columns=[c for c in frame.columns if c in set(hidden) or c in aux])
    for c in drop_empty:
        if c in shown and (shown[c].isna() | (shown[c].astype(str) == "")).all():
            shown = shown.drop(columns=c)
    if "n" in shown and not (shown["n"] > 1).any():
        shown = shown.drop(columns="n")
    if "seed" in shown and shown["seed"].isna().all():
        shown = shown.drop(columns="seed")
    merged = (PPL_PREFIX, ACC_PREFIX, TOK_PREFIX)
    return pd.DataFrame(
        {c: _with_uncertainty(frame, c) if c.startswith(merged) else [_fmt(c)(v) for v in shown[c]] for c in shown.columns},
        columns=shown.columns,
    )


def uncertainty_legend(results: pd.DataFrame) -> str:
    """One sentence explaining the ``±``, ``[lo, hi]`` and ``(min–max)`` shown ('' if none)."""
    n = results["n"] if "n" in results else pd.Series(1, index=results.index)
    repeats = bool((n > 1).any())

    def has(prefix: str) -> bool:
        return any(results[c].notna().any() for c in results.columns if c.startswith(prefix))

    parts = []
    if repeats:
        parts.append("`mean ± std` over the `n` seeds of a row")
    if has(ACC_SE) and (n == 1).any():
        parts.append("zero-shot accuracy of a single run: `acc ± stderr` (lm-eval's standard error)")
    if has(PPL_LO):
        parts.append("perplexity `[lo, hi]`: 95% bootstrap confidence interval over the evaluation windows"
                     + (" and seeds" if repeats else ""))
    if has(TOK_PREFIX):
        parts.append("decode tokens/s per sequence (`tok/s:b<batch>`): median of the timed repeats "
                     "`(slowest–fastest)`" + (", mean over seeds" if repeats else ""))
    return ("Uncertainty: " + "; ".join(parts) + ".") if parts else ""


def _markdown_table(frame: pd.DataFrame) -> str:
    align = ["left" if c in _TEXT or c in ("cell", "error", "key", "evaluation") else "right" for c in frame.columns]
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
            "quantization time in seconds."
            + (" Zero-shot accuracy in percent (`acc:<task>`, 0-shot through lm-eval; `acc:avg` is their "
               "mean, shown for rows that have every task measured)." if ACC_AVG in results else ""),
            "",
        ]
        legend = uncertainty_legend(results)
        parts += [legend, ""] if legend else []
        parts.append(_markdown_table(_display(results, optional)))
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
        f"Tracebacks: `logs/<key>.traceback.txt` (or `harness show <key>`), logs: `logs/<key>.log`.\n\n{_markdown_table(shown)}\n"
    )


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_HEADERS = {
    "method": "Method", "budget": "Budget", "params": "Config", "bits": "Bits/w",
    "bits_paper": "Bits/w (paper)", "model_bits": "Model bits/w", "size_mb": "Size (MB)", ACC_AVG: "Avg", "n": "$n$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_spanners(columns: Sequence[str], groups: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """Header lines that put each (title, member columns) group under one shared
    ``\\multicolumn`` with a ``\\cmidrule`` (members are contiguous); [] when no group has members."""
    spans = [(columns.index(members[0]) + 1, len(members), title) for title, members in groups if members]
    if not spans:
        return []
    cells, position = [], 1
    for first, n, title in spans:
        cells += [""] * (first - position) + [rf"\multicolumn{{{n}}}{{c}}{{{title}}}"]
        position = first + n
    return [" & ".join(cells) + r" \\", " ".join(rf"\cmidrule(lr){{{first}-{first + n - 1}}}" for first, n, _ in spans)]


def latex_model_groups(frame: pd.DataFrame, n_columns: int, row_cells: Callable[[pd.Series], list[str]]) -> list[str]:
    """Body lines: one bold ``model`` heading row per model (``\\midrule`` between models),
    then each of its rows as ``row_cells(row)`` joined by ``&``."""
    lines: list[str] = []
    for i, (model, group) in enumerate(frame.groupby("model", sort=False)):
        if i:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{n_columns}}}{{l}}{{\textbf{{{latex_escape(str(model))}}}}} \\")
        lines += [" & ".join(row_cells(row)) + r" \\" for _, row in group.iterrows()]
    return lines


def to_latex(results: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``), models as row groups.

    Columns: method, config (when any), bits, paper bits and size (when present), one
    perplexity column per dataset and one zero-shot accuracy column per task (and their
    average), each kind under a shared header. Wrap it in your own ``table``.
    """
    shown = _display(results, ["params", "bits_paper", "size_mb"])
    shown = shown.drop(columns=[c for c in ("budget", "model_bits", "quantize_s") if c in shown])
    cols = [c for c in shown.columns if c != "model"]
    spec = "".join("l" if c in _TEXT else "r" for c in cols)
    lines = [r"% Generated by ptq-harness; needs \usepackage{booktabs}.", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    prefixes = ((PPL_PREFIX, r"Perplexity ($\downarrow$)"), (ACC_PREFIX, r"Zero-shot accuracy, \% ($\uparrow$)"),
                (TOK_PREFIX, r"Decode tokens/s ($\uparrow$)"))
    lines += latex_spanners(cols, [(title, [c for c in cols if c.startswith(prefix)]) for prefix, title in prefixes])
    header = [_LATEX_HEADERS.get(c) or (f"batch {c[len(TOK_PREFIX) + 1:]}" if c.startswith(TOK_PREFIX) else None)
              or latex_escape(c.split(":", 1)[-1]) for c in cols]
    lines += [" & ".join(header) + r" \\", r"\midrule"]

    def row_cells(row: pd.Series) -> list[str]:
        cells = []
        for c in cols:
            v = row[c]
            if c in _TEXT:
                cells.append(latex_escape(v))
            else:
                v = {"-": "--", "inf": r"$\infty$"}.get(v, v)
                cells.append(v.replace(" ± ", r" $\pm$ ").replace("–", "--"))
        return cells

    lines += latex_model_groups(shown, len(cols), row_cells)
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
    evaluation_errors: pd.DataFrame | None = None,
) -> list[Path]:
    """Write ``<name>.md`` (+ ``failures.md``), ``<name>.tex``, ``<name>.csv``; returns the paths.

    ``evaluation_errors`` (:func:`evaluation_errors_frame`) are appended to both Markdown files."""
    unknown = set(formats) - {"markdown", "latex", "csv"}
    if unknown:
        raise ValueError(f"unknown table format(s) {sorted(unknown)}: use markdown, latex or csv")
    out_dir = Path(out_dir)
    written: list[Path] = []
    if "markdown" in formats:
        extra = "" if evaluation_errors is None else evaluation_errors_markdown(evaluation_errors)
        extra = f"\n{extra}" if extra else ""
        written.append(atomic_write_text(out_dir / f"{name}.md", to_markdown(results, failures, title) + extra))
        written.append(atomic_write_text(out_dir / "failures.md", failures_markdown(failures) + extra))
    if "latex" in formats:
        if results.empty:
            logger.info("no finished cells: %s.tex not written", name)
        else:
            written.append(atomic_write_text(out_dir / f"{name}.tex", to_latex(results)))
    if "csv" in formats:
        written.append(atomic_write_text(out_dir / f"{name}.csv", results.to_csv(index=False)))
    return written


def write_by_seed_tables(
    by_record: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("markdown", "csv"), *, title: str | None = None
) -> list[Path]:
    """Write ``results_by_seed.md`` and ``.csv`` (:func:`records_frame`: one row per record, each
    seed of a repeated cell on its own row) for the formats among ``markdown`` and ``csv``."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    if "markdown" in formats:
        text = to_markdown(by_record, None, f"{title or 'Results'}: every seed")
        written.append(atomic_write_text(out_dir / "results_by_seed.md", text))
    if "csv" in formats:
        written.append(atomic_write_text(out_dir / "results_by_seed.csv", by_record.to_csv(index=False)))
    return written
