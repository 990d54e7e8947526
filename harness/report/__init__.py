"""The report: result tables (Markdown, LaTeX, CSV) and plots, written from a results store.

>>> from harness.store import ResultStore
>>> from harness.report import write_report
>>> paths = write_report(ResultStore("results/quickstart"))  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.report.tables import (
    aggregate_results,
    evaluation_errors_frame,
    failures_frame,
    records_frame,
    results_frame,
    write_by_seed_tables,
    write_tables,
)
from harness.store import ResultStore

logger = logging.getLogger(__name__)

__all__ = ["failures_frame", "results_frame", "write_report"]


def write_report(
    store: ResultStore,
    *,
    tables: Sequence[str] = ("markdown", "latex", "csv"),
    plots: Sequence[str] = ("png", "svg"),
    title: str | None = None,
    html: bool = True,
    compare: Sequence[Any] = (),
    sweeps: Sequence[Any] = (),
    claims: Sequence[str | Path] = (),
) -> list[Path]:
    """Write ``tables/results.{md,tex,csv}`` (+ ``tables/failures.md``),
    ``plots/<model>_<dataset>_ppl_vs_bits.{png,svg}`` and, for models with zero-shot results,
    ``plots/<model>_zeroshot_acc_vs_bits.{png,svg}`` under ``store.root``, and the Pareto views
    ``plots/pareto_<metric>_vs_{bits,size}.{png,svg}`` (:mod:`harness.report.pareto`). With
    repeats (several seeds of a cell) the results table has one row per cell config (mean ± std
    over seeds) and ``tables/results_by_seed.{md,csv}`` one row per seed.

    ``title`` heads the Markdown (default: the suite name(s) of the records). Last, unless
    ``html`` is false, ``report.html`` (:mod:`harness.report.html`): all of it in one page.
    Returns the written paths; an empty store gives tables that say so and no plots.
    ``compare`` (``(base, against)`` method pairs) adds ``tables/compare.{md,csv}``
    (:mod:`harness.report.compare`: paired differences with bootstrap CIs). ``sweeps``
    (``method:x[:lines]`` strings or the suite's ``report.sweeps``) add
    ``tables/sweep_*.{md,csv}`` and ``plots/sweep_*`` (:mod:`harness.report.sweeps`). ``claims``
    (claims files, a suite's ``report.claims``) add ``tables/claims.{md,csv}`` (:mod:`harness.claims`).
    """
    records = store.records()
    by_record = records_frame(records)
    results = aggregate_results(by_record, records)  # one row per cell config: repeats over seeds aggregated
    failures = failures_frame(records)
    if title is None:
        suites = sorted({str(r.suite) for r in records if r.suite})
        title = f"{', '.join(suites)} results" if suites else "Results"
    errors = evaluation_errors_frame(records)
    written = (
        write_tables(results, failures, store.tables_dir, tables, title=title, evaluation_errors=errors) if tables else []
    )
    if tables and (results["n"] > 1).any():  # repeats: every seed's row too
        written += write_by_seed_tables(by_record, store.tables_dir, tables, title=title)
    if plots and not results.empty:
        from harness.report.plots import write_plots  # matplotlib only when plotting

        written += write_plots(results, store.plots_dir, plots)
        from harness.report.pareto import write_pareto_plots

        written += write_pareto_plots(results, store.plots_dir, plots, title=title)
    if compare:
        from harness.report.compare import write_compare_tables

        written += write_compare_tables(store, compare, records=records)
    if sweeps:
        from harness.report.sweeps import write_sweeps

        written += write_sweeps(store, sweeps, plots=plots, records=records)
    if claims:
        from harness.claims.report import write_claims_report

        written += write_claims_report(store, claims, records=records)
    if html:  # last: it embeds the tables and plots written above
        from harness.report.html import write_html_report

        written.append(write_html_report(store, title=title))
    logger.info(
        "report: %d finished and %d failed cell(s); %d file(s) under %s",
        len(results), len(failures), len(written), store.root,
    )
    return written
