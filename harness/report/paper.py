"""Paper-layout tables (`harness report --layout paper`): one block of rows per model, one row
per method configuration, columns as in the CRVQ/AQLM papers' main tables.

Columns: method, bits (the paper's accounting, `bits_paper`), stored bits (`bits`), perplexity
per dataset (wikitext2, c4, ptb first), zero-shot accuracy per task in percent (the six paper
tasks first) and their average. Zero-shot results are the records' tasks
(:attr:`harness.record.CellRecord.zero_shot_tasks`); records without them just leave those
cells empty. The average is recomputed over the shown tasks with the
chosen metric, and only for rows that have all of them.

Rows: per model the unquantized reference first, then by the paper's bits descending; rows of
equal bits in the order of the suite's `report.paper.methods` (`{method: name shown}`, by
default :data:`PAPER_METHODS`: Unquantized, RTN, GPTQ, AQLM, CRVQ), methods not listed there
after them, alphabetically. A method label listed there is shown by its name (`rtn` -> `RTN`);
other labels (e.g. `aqlm-harness`) as they are.

Repeats of one configuration with other seeds (`seeds:` in the suite; grouped as in the results
table, :attr:`harness.record.CellRecord.repeat_group`) are one row: the mean over seeds, shown as
`mean ± std` with the number of seeds in an `n` column (`std:<column>` holds the standard
deviations in the frame); a table without repeats has neither.

With a reference file (`harness.report.reference`), every result row that an entry matches is
followed by the published row and a delta row (ours minus published: perplexity points,
accuracy percentage points); entries matching no result are listed at the end of their model's
block. Sources are listed under the Markdown table and as comments in the LaTeX.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.columns import PPL_PREFIX as PPL
from harness.columns import STD_PREFIX as STD
from harness.columns import ZS_AVG as AVG
from harness.columns import ZS_PREFIX as ZS
from harness.record import CellRecord
from harness.report.frames import to_float
from harness.report.latex import latex_escape, latex_model_groups, latex_spanners
from harness.report.reference import Reference, ReferenceEntry
from harness.report.style import BITS_SPEC, PPL_SPEC, fmt_cell, is_missing
from harness.store import ResultStore, atomic_write_text
from harness.suite.report_spec import PAPER_METHODS
from harness.tasks import PAPER_TASKS  # the zero-shot tasks of the paper tables, in column order

__all__ = ["PAPER_METHODS", "PAPER_TASKS", "paper_frame", "paper_latex", "paper_markdown", "paper_methods",
           "write_paper_tables"]

PAPER_DATASETS = ("wikitext2", "c4", "ptb")
_TASK_HEADERS = {"winogrande": "WinoGrande", "piqa": "PIQA", "hellaswag": "HellaSwag", "arc_easy": "ARC-e",
                 "arc_challenge": "ARC-c", "boolq": "BoolQ"}
_DATASET_HEADERS = {"wikitext2": "Wiki2", "c4": "C4", "ptb": "PTB"}
METRICS = ("acc", "acc_norm")


def _ordered(found: Iterable[str], first: Sequence[str]) -> list[str]:
    found = list(dict.fromkeys(found))
    return [x for x in first if x in found] + [x for x in found if x not in first]


def _method_name(record: CellRecord, methods: Mapping[str, str]) -> str:
    return methods.get(record.method_label, record.method_label)


def paper_methods(specs: Iterable[Any] = ()) -> dict[str, str]:
    """The layout's ``{method: name shown}`` in row order: ``report.paper.methods`` of the first
    of ``specs`` (suites' ``ReportSpec``) that sets it, else :data:`PAPER_METHODS`."""
    for spec in specs:
        if "paper" in spec.model_fields_set and "methods" in spec.paper.model_fields_set:
            return dict(spec.paper.methods)
    return dict(PAPER_METHODS)


def _mean_over_seeds(rows: list[dict[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    """One row from the rows of one configuration's seeds: means and `std:<column>` (both NaN
    where a seed lacks the value; the std also for one seed) and `n`."""
    out = dict(rows[0], n=len(rows))
    if len(rows) == 1:
        return out
    for c in columns[3:]:
        values = [to_float(row.get(c)) for row in rows]
        out[c] = math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
        if c.startswith((PPL, ZS)):
            out[STD + c] = math.nan if math.isnan(out[c]) else float(pd.Series(values).std(ddof=1))
    return out


# --------------------------------------------------------------------------- the frame

def paper_frame(records: Iterable[CellRecord | dict[str, Any]], reference: Reference | None = None, *,
                metric: str = "acc", methods: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The paper table as a frame: columns `model, method, kind, bits, stored_bits`, one
    `ppl:<dataset>` per dataset, one `zs:<task>` per task (percent) and `zs:avg`; with repeats
    over seeds also `n` and `std:<column>` per value column. `kind` is `result`, `published` or
    `delta`; rows are grouped by model (unquantized first, then bits descending, then in the
    order of ``methods`` (``{method: name shown}``, default :data:`PAPER_METHODS`; the methods
    not in it after, alphabetically), each result followed by its published and delta rows."""
    if metric not in METRICS:
        raise ValueError(f"zero-shot metric must be one of {', '.join(METRICS)}, got {metric!r}")
    methods = dict(PAPER_METHODS if methods is None else methods)
    order = {name: i for i, name in enumerate(methods)}
    ok = [r for r in map(CellRecord.load, records) if r.ok]
    entries = list(reference.entries) if reference else []
    found_tasks = [t for r in ok for t in r.zero_shot_tasks]
    published_keys = [k for e in entries for k in e.metrics]
    tasks = _ordered(found_tasks + [k for k in published_keys if k in PAPER_TASKS], PAPER_TASKS)
    found_datasets = [d for r in ok for d in r.perplexities]
    datasets = _ordered(found_datasets + [k for k in published_keys if k not in tasks], PAPER_DATASETS)
    columns = ["model", "method", "kind", "bits", "stored_bits", *(PPL + d for d in datasets),
               *(ZS + t for t in tasks), *([AVG] if tasks else [])]

    def result_row(r: CellRecord) -> dict[str, Any]:
        row = {"model": r.model_label, "method": _method_name(r, methods),
               "kind": "result", "bits": to_float(r.metric("bits_paper")), "stored_bits": to_float(r.bits)}
        for d, v in r.perplexities.items():
            row[PPL + d] = to_float(v.ppl)
        for t, v in r.zero_shot_tasks.items():
            acc = v.accuracy(metric)
            row[ZS + t] = math.nan if acc is None else 100 * acc
        return row

    def published_row(model: str, e: ReferenceEntry) -> dict[str, Any]:
        row = {"model": model, "method": f"{e.label} [{e.source}]", "kind": "published", "bits": to_float(e.bits),
               "stored_bits": math.nan}
        for k, v in e.metrics.items():
            row[(ZS if k in tasks else PPL) + k] = 100 * v if k in tasks else v
        return row

    def with_average(row: dict[str, Any]) -> dict[str, Any]:
        if tasks:
            values = [row.get(ZS + t, math.nan) for t in tasks]
            row[AVG] = math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
        return row

    value_columns = columns[3:]  # bits, stored bits, perplexities and accuracies

    def delta_row(ours: dict[str, Any], published: dict[str, Any], e: ReferenceEntry) -> dict[str, Any]:
        row = {"model": ours["model"], "method": f"Δ vs {e.label}", "kind": "delta"}
        for c in value_columns:
            row[c] = ours.get(c, math.nan) - published.get(c, math.nan) if c != "stored_bits" else math.nan
        return row

    repeats: dict[str, list[CellRecord]] = {}
    for r in ok:
        repeats.setdefault(r.repeat_group, []).append(r)
    groups: dict[str, list[tuple[CellRecord, dict[str, Any]]]] = {}
    for members in repeats.values():
        members.sort(key=lambda r: r.seed)
        row = _mean_over_seeds([with_average(result_row(r)) for r in members], columns)
        groups.setdefault(row["model"], []).append((members[0], row))
    if any(row["n"] > 1 for members in groups.values() for _, row in members):
        columns = [*columns, "n", *(STD + c for c in columns[5:])]
    rows: list[dict[str, Any]] = []
    used: set[int] = set()
    for model, members in groups.items():
        members.sort(key=lambda x: (not x[0].is_reference, -(x[1]["bits"] if not math.isnan(x[1]["bits"]) else math.inf),
                                    order.get(str(x[0].method), len(order)), x[1]["method"]))
        for record, row in members:
            rows.append(row)
            for i, e in enumerate(entries):
                if e.matches_record(record):
                    used.add(i)
                    pub = with_average(published_row(model, e))
                    rows += [pub, delta_row(row, pub, e)]
        model_info = members[0][0].model or {}
        for i, e in enumerate(entries):
            if i not in used and e.matches_model(model_info.get("id"), model_info.get("label")):
                used.add(i)
                rows.append(with_average(published_row(model, e)))
    for i, e in enumerate(entries):  # published numbers of models without results
        if i not in used:
            rows.append(with_average(published_row(e.model.rstrip("/").split("/")[-1], e)))
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- rendering

def _headers(frame: pd.DataFrame) -> dict[str, str]:
    out = {"model": "Model", "method": "Method", "bits": "Bits", "stored_bits": "Stored bits", AVG: "Avg", "n": "n"}
    for c in frame.columns:
        if c.startswith(PPL):
            out[c] = _DATASET_HEADERS.get(c[len(PPL):], c[len(PPL):])
        elif c.startswith(ZS) and c != AVG:
            out[c] = _TASK_HEADERS.get(c[len(ZS):], c[len(ZS):])
    return out


def _cell(column: str, row: pd.Series) -> str:
    """The text of one cell; `mean ± std` for a result over several seeds."""
    value, kind = row[column], row["kind"]
    if isinstance(value, str):
        return value
    spec = BITS_SPEC if column in ("bits", "stored_bits") else PPL_SPEC
    if is_missing(value) or (isinstance(value, float) and math.isinf(value)):
        return fmt_cell(value, spec)
    if column == "n":
        return str(int(value))
    text = spec.format(value)
    if kind == "delta":
        return "+" + text if value > 0 else text
    std = row.get(STD + column, math.nan)
    return f"{text} ± {spec.format(std)}" if isinstance(std, float) and math.isfinite(std) else text


def _shown(frame: pd.DataFrame) -> list[str]:
    """Columns to show: drop `stored_bits` when every row lacks it, and the std columns (shown
    inside their main column)."""
    return [c for c in frame.columns if c != "kind" and not c.startswith(STD)
            and not (c == "stored_bits" and frame[c].isna().all())]


def _legend(metric: str, repeats: bool = False) -> str:
    return (f"Perplexity (↓) per dataset at each record's seqlen; zero-shot accuracy (↑) in percent "
            f"(`{metric}`), Avg over the shown tasks. Bits: the method paper's accounting (`bits_paper`); "
            f"stored bits: every stored bit of the quantized layers (`bits`)."
            + (" Rows with n > 1 are means over n seeds ± their standard deviation." if repeats else ""))


def paper_markdown(frame: pd.DataFrame, *, title: str, metric: str = "acc", reference: Reference | None = None) -> str:
    """The paper table as Markdown: published rows in italics, deltas signed, sources below."""
    parts = [f"# {title}", ""]
    if frame.empty:
        return "\n".join(parts + ["No finished cells.", ""])
    columns, headers = _shown(frame), _headers(frame)
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join(":---" if c in ("model", "method") else "---:" for c in columns) + "|"]
    for _, row in frame.iterrows():
        cells = [_cell(c, row).replace("|", "\\|") for c in columns]
        if row["kind"] == "published":
            cells[1] = f"*{cells[1]}*"
        lines.append("| " + " | ".join(cells) + " |")
    parts += [_legend(metric, "n" in frame), "", *lines]
    if reference is not None:
        parts += ["", f"Published numbers ({reference.name}); Δ rows are ours minus published:"]
        for key, src in reference.sources.items():
            url = f" — {src.url}" if src.url else ""
            note = f" ({src.note})" if src.note else ""
            parts.append(f"- [{key}] {src.title}{url}{note}")
    return "\n".join(parts) + "\n"


def paper_latex(frame: pd.DataFrame, *, metric: str = "acc", reference: Reference | None = None) -> str:
    """The paper table as a booktabs `tabular`: models as row groups, perplexity and zero-shot
    columns under shared headers, published rows in italics (needs `\\usepackage{booktabs}`)."""
    columns = [c for c in _shown(frame) if c != "model"]
    headers = _headers(frame)
    ppl = [c for c in columns if c.startswith(PPL)]
    zs = [c for c in columns if c.startswith(ZS)]
    lines = [r"% Generated by ptq-harness (paper layout); needs \usepackage{booktabs}.",
             f"% {_legend(metric, 'n' in frame)}"]
    if reference is not None:
        lines += [f"% [{k}] {s.title}" + (f" {s.url}" if s.url else "") for k, s in reference.sources.items()]
    lines += [rf"\begin{{tabular}}{{l{'r' * (len(columns) - 1)}}}", r"\toprule"]
    lines += latex_spanners(columns, [(r"Perplexity ($\downarrow$)", ppl), (r"Zero-shot accuracy (\%, $\uparrow$)", zs)])
    lines += [" & ".join(latex_escape(headers.get(c, c)) for c in columns) + r" \\", r"\midrule"]

    def row_cells(row: pd.Series) -> list[str]:
        cells = []
        for c in columns:
            text = _cell(c, row).replace("±", r"$\pm$")
            text = latex_escape(text).replace("Δ", r"$\Delta$") if c == "method" else {"-": "--"}.get(text, text)
            if row["kind"] == "published":
                text = rf"\textit{{{text}}}"
            cells.append(text)
        if row["kind"] != "result":
            cells[0] = r"\quad " + cells[0]
        return cells

    lines += latex_model_groups(frame, len(columns), row_cells)
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_paper_tables(store: ResultStore, *, reference: Reference | None = None, metric: str = "acc",
                       methods: Mapping[str, str] | None = None,
                       title: str | None = None, formats: Sequence[str] = ("markdown", "latex")) -> list[Path]:
    """Write `tables/paper.md` and `tables/paper.tex` under the store; returns the paths."""
    records = store.records()
    frame = paper_frame(records, reference, metric=metric, methods=methods)
    if title is None:
        suites = sorted({str(r.suite) for r in records if r.suite})
        title = f"{', '.join(suites) or 'Results'} (paper layout)"
    written = []
    if "markdown" in formats:
        text = paper_markdown(frame, title=title, metric=metric, reference=reference)
        written.append(atomic_write_text(store.tables_dir / "paper.md", text))
    if "latex" in formats and not frame.empty:
        written.append(atomic_write_text(store.tables_dir / "paper.tex", paper_latex(frame, metric=metric, reference=reference)))
    return written
