"""The report: result tables (Markdown, LaTeX, CSV) and plots, written from a results store.

>>> from harness.store import ResultStore
>>> from harness.report import write_report
>>> paths = write_report(ResultStore("results/quickstart"))  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from harness.report.tables import evaluation_errors_frame, failures_frame, results_frame, write_tables
from harness.store import ResultStore

logger = logging.getLogger(__name__)

__all__ = ["failures_frame", "results_frame", "write_report"]


def write_report(
    store: ResultStore,
    *,
    tables: Sequence[str] = ("markdown", "latex", "csv"),
    plots: Sequence[str] = ("png", "svg"),
    title: str | None = None,
) -> list[Path]:
    """Write ``tables/results.{md,tex,csv}`` (+ ``tables/failures.md``),
    ``plots/<model>_<dataset>_ppl_vs_bits.{png,svg}`` and, for models with zero-shot results,
    ``plots/<model>_zeroshot_acc_vs_bits.{png,svg}`` under ``store.root``.

    ``title`` heads the Markdown (default: the suite name(s) of the records). Returns the
    written paths; an empty store gives tables that say so and no plots.
    """
    records = store.records()
    results = results_frame(records)
    failures = failures_frame(records)
    if title is None:
        suites = sorted({str(r["suite"]) for r in records if r.get("suite")})
        title = f"{', '.join(suites)} results" if suites else "Results"
    errors = evaluation_errors_frame(records)
    written = (
        write_tables(results, failures, store.tables_dir, tables, title=title, evaluation_errors=errors) if tables else []
    )
    if plots and not results.empty:
        from harness.report.plots import write_plots  # matplotlib only when plotting

        written += write_plots(results, store.plots_dir, plots)
    logger.info(
        "report: %d finished and %d failed cell(s); %d file(s) under %s",
        len(results), len(failures), len(written), store.root,
    )
    return written
