"""Result tables: one row per finished configuration, written as Markdown, LaTeX (booktabs) and CSV.

The frames come from :mod:`harness.report.frames`, their display strings from
:mod:`harness.report.display`, the LaTeX from :mod:`harness.report.latex`; this module writes
the Markdown documents and the files (and re-exports the frame and LaTeX functions)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.columns import ACC_AVG
from harness.report.display import display, markdown_table, uncertainty_legend
from harness.report.frames import (
    aggregate_results,
    evaluation_errors_frame,
    failures_frame,
    params_strings,
    records_frame,
    results_frame,
)
from harness.report.latex import latex_escape, latex_model_groups, latex_spanners, to_latex
from harness.store import atomic_write_text

__all__ = [
    "aggregate_results", "evaluation_errors_frame",
    "evaluation_errors_markdown", "failures_frame", "failures_markdown", "latex_escape", "latex_model_groups",
    "latex_spanners", "params_strings", "records_frame", "results_frame", "to_latex", "to_markdown",
    "write_by_seed_tables", "write_tables",
]

logger = logging.getLogger(__name__)


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
        parts.append(markdown_table(display(results, optional)))
    if failures is not None and not failures.empty:
        parts += ["", failures_markdown(failures, heading="## Failed cells")]
    return "\n".join(parts) + "\n"


def failures_markdown(failures: pd.DataFrame, heading: str = "# Failed cells") -> str:
    """The failed cells as Markdown (``No failed cells.`` when there are none)."""
    if failures.empty:
        return f"{heading}\n\nNo failed cells.\n"
    shown = failures.copy()
    shown["error"] = shown["error"].str.replace("|", "\\|", regex=False)
    shown = display(shown, ["params"], hidden=())
    return (
        f"{heading}\n\n{len(failures)} cell(s) failed; they are re-run by the next `harness run`. "
        f"Tracebacks: `logs/<key>.traceback.txt` (or `harness show <key>`), logs: `logs/<key>.log`.\n\n{markdown_table(shown)}\n"
    )


def evaluation_errors_markdown(errors: pd.DataFrame, heading: str = "## Failed evaluations") -> str:
    """Failed evaluations of finished cells as Markdown ('' when there are none)."""
    if errors.empty:
        return ""
    shown = errors.copy()
    shown["error"] = shown["error"].str.replace("|", "\\|", regex=False)
    return (
        f"{heading}\n\n{len(errors)} evaluation(s) of finished cells failed; their other metrics are "
        f"in the results. To retry, delete the cell's record (`records/<key>.json`) and run again "
        f"(zero-shot tasks already evaluated are read from `zeroshot/`).\n\n{markdown_table(display(shown, (), hidden=()))}\n"
    )


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
