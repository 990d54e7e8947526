"""Command line: `harness run | validate | list | report | show | compare | verify | inspect | bits`.

Only this module turns exceptions into a one-paragraph message and an exit code:
0 success, 1 some cell failed, 2 bad input (suite, arguments, paths). `--debug` shows tracebacks.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.logging import RichHandler

from harness.cli_output import (
    compact_record,
    console,
    out,
    print_bits_table,
    print_claims,
    print_comparison,
    print_inspection,
    print_methods,
    print_plan,
    print_records,
    print_stand_in,
)
from harness.errors import HarnessError

if TYPE_CHECKING:  # imported lazily at run time: `harness --help` stays fast
    from harness.store import ResultStore
    from harness.suite import ReportSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark and compare post-training quantization methods.")
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="show full tracebacks"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=debug)],
        force=True,
    )


STAND_IN_HELP = ("run a small stand-in of the suite: `embedded` (SmolLM2-135M, its offline corpus and task pack, "
                 "reduced settings) or an overlay YAML (see harness/stand_in.py); results go to <output_dir>-<stand-in>")


def _select(cells, only: Optional[str]):
    if not only:
        return cells
    pattern = only if any(c in only for c in "*?[") else f"*{only}*"
    return [c for c in cells if fnmatch.fnmatch(c.label, pattern) or c.key.startswith(only)]


@app.command()
def run(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="suite YAML file"),
    only: Optional[str] = typer.Option(None, "--only", help="run only cells whose label matches (glob or substring)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the cell plan (bits, memory, estimated time) and exit"),
    device_profile: Optional[str] = typer.Option(None, "--device-profile", help="dry run: estimate for `cuda` or `cpu` (default: the suite's device)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="results directory (default: the suite's output_dir)"),
    stand_in: Optional[str] = typer.Option(None, "--stand-in", help=STAND_IN_HELP),
) -> None:
    """Run every cell of a suite (finished cells are skipped), then write tables and plots."""
    from harness.claims.report import suite_claim_files
    from harness.executors import check_executor, run_cells
    from harness.report import write_report
    from harness.store import ResultStore
    from harness.suite import load_suite, output_dir, resolve_cells

    suite = load_suite(suite_path, stand_in=stand_in)
    print_stand_in(suite)
    claims = suite_claim_files(suite.report.claims, suite_path)
    cells = _select(resolve_cells(suite, suite_path), only)
    if not cells:
        raise HarnessError(f"{suite_path}: no cell matches --only {only!r}; run with --dry-run to see the cell labels.")
    store = ResultStore(output or output_dir(suite, suite_path))
    if dry_run:
        print_plan(cells, store, base_dir=suite_path.resolve().parent, profile=device_profile)
        return
    check_executor(suite.executor)
    store.save_suite(suite.name, suite_path.read_text(encoding="utf-8"))  # shown in report.html
    progress = not no_progress and os.environ.get("HARNESS_NO_PROGRESS") != "1"
    records = run_cells(cells, store, suite.executor, progress=progress, base_dir=suite_path.resolve().parent)
    paths = write_report(store, tables=suite.report.tables, plots=suite.report.plots, title=suite.name, html=suite.report.html,
                         compare=suite.report.compare, sweeps=suite.report.sweeps, claims=claims)
    print_records(records)
    for p in paths:
        out.print(f"wrote {p}")
    failed = [r for r in records if not r.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(records)} cells failed[/red]; see {store.root}/tables and the logs in {store.root}/logs")
        raise typer.Exit(1)


@app.command()
def validate(
    suite_path: Path = typer.Argument(..., metavar="SUITE"),
    stand_in: Optional[str] = typer.Option(None, "--stand-in", help=STAND_IN_HELP),
) -> None:
    """Check a suite file (schema, methods, params, budgets, models, datasets) without running it."""
    from harness.claims.report import suite_claim_files
    from harness.executors import check_executor
    from harness.suite import load_suite, resolve_cells

    suite = load_suite(suite_path, stand_in=stand_in)
    print_stand_in(suite)
    cells = resolve_cells(suite, suite_path)
    suite_claim_files(suite.report.claims, suite_path)
    check_executor(suite.executor)
    out.print(f"{suite_path}: valid — {len(cells)} cells ({len(suite.models)} models × {len(suite.methods)} method lines)")


@app.command("list")
def list_methods() -> None:
    """Registered methods with their parameters and bit-budget presets."""
    print_methods()


def _saved_report_specs(store: ResultStore) -> list[ReportSpec]:
    """The `report:` sections of the suite copies a results directory keeps (unreadable or
    invalid ones are skipped with a warning: they only supply defaults)."""
    import yaml
    from pydantic import ValidationError

    from harness.suite import ReportSpec

    specs = []
    for path in store.suite_files():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            specs.append(ReportSpec.model_validate(raw.get("report") or {}))
        except (OSError, yaml.YAMLError, ValidationError, AttributeError) as exc:
            logging.getLogger(__name__).warning("%s: its report settings are not used (%s)", path, str(exc).splitlines()[0])
    return specs


@app.command()
def report(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR"),
    layout: str = typer.Option("default", "--layout", help="default (one row per cell, plots) | paper (the papers' table shape)"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="YAML of published numbers shown with deltas (paper layout)"),
    zero_shot_metric: str = typer.Option("acc", "--zero-shot-metric", help="acc | acc_norm (paper layout)"),
    html: bool = typer.Option(True, "--html/--no-html", help="also write report.html (tables, plots, suite, environment in one offline page)"),
    compare: Optional[list[str]] = typer.Option(None, "--compare", help="BASE:AGAINST method labels: paired comparison in tables/compare.{md,csv} (repeatable)"),
    sweep: Optional[list[str]] = typer.Option(None, "--sweep", help="METHOD:PARAM[:LINES_PARAM]: perplexity vs a method parameter in tables/ and plots/sweep_* (repeatable)"),
    claims: Optional[list[Path]] = typer.Option(None, "--claims", help="claims YAML checked against the results: tables/claims.{md,csv} (repeatable; see `harness verify`)"),
) -> None:
    """(Re)write the tables, plots and report.html of a results directory; `--layout paper` writes
    tables/paper.{md,tex} in the papers' shape (optionally with published numbers). Without
    --compare/--sweep, the comparisons and sweeps the run's suite asked for (`report:` in the
    suite copies under suites/) are written again."""
    from harness.report import write_report
    from harness.report.compare import as_pairs, write_compare_tables
    from harness.store import ResultStore

    if not ResultStore(results_dir).exists():
        raise HarnessError(f"{results_dir}: not a results directory (no records/ inside). Give the output_dir of a suite run, e.g. results/quickstart.")
    if layout not in ("default", "paper"):
        raise HarnessError(f"--layout {layout!r}: use `default` or `paper`.")
    if zero_shot_metric not in ("acc", "acc_norm"):
        raise HarnessError(f"--zero-shot-metric {zero_shot_metric!r}: use `acc` or `acc_norm`.")
    if reference is not None and layout != "paper":
        raise HarnessError("--reference needs --layout paper.")
    from harness.report.sweeps import as_sweeps, check_sweeps

    store = ResultStore(results_dir)
    saved = _saved_report_specs(store)
    pairs = list(dict.fromkeys(as_pairs(compare or [spec for r in saved for spec in r.compare])))
    sweeps = as_sweeps(sweep or [spec for r in saved for spec in r.sweeps])
    if sweep:
        check_sweeps(sweeps)
    if claims:
        from harness.claims import load_claims

        for path in claims:
            load_claims(path)  # a bad file given here is an error (saved suites' files only warn)
    claim_files = list(dict.fromkeys(claims or [c for r in saved for c in r.claims]))
    if layout == "paper":
        from harness.report.paper import paper_methods, write_paper_tables
        from harness.report.reference import load_reference

        ref = load_reference(reference) if reference else None
        paths = write_paper_tables(store, reference=ref, metric=zero_shot_metric, methods=paper_methods(saved))
        paths += write_compare_tables(store, pairs)
        if sweeps:
            from harness.report.sweeps import write_sweeps

            paths += write_sweeps(store, sweeps)
        if claim_files:
            from harness.claims.report import write_claims_report

            paths += write_claims_report(store, claim_files)
        if html:  # report.html shows tables/paper.md too
            from harness.report.html import write_html_report

            paths.append(write_html_report(store, title=results_dir.name))
        for p in paths:
            out.print(f"wrote {p}")
        return
    paths = write_report(store, title=results_dir.name, html=html, compare=pairs, sweeps=sweeps, claims=claim_files)
    print_records(store.records())
    for p in paths:
        out.print(f"wrote {p}")


@app.command()
def show(
    cell: str = typer.Argument(..., help="cell key (prefix) or label pattern"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results directory or a folder of them"),
    full: bool = typer.Option(False, "--full", help="include per-window losses and per-layer entries"),
) -> None:
    """Print the record of one cell."""
    from harness.store import ResultStore

    matches = [r for store in ResultStore.roots_under(results) for r in store.find(cell)]
    if not matches:
        raise HarnessError(f"no cell matches '{cell}' under {results}; give a key prefix or a label such as 'smollm2-135m/rtn/b4'.")
    for record in matches:
        out.print_json(json.dumps(record.dump() if full else compact_record(record)))


@app.command()
def compare(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR"),
    base: str = typer.Option(..., "--base", help="method label (or name) to compare against, e.g. aqlm"),
    against: str = typer.Option(..., "--against", help="method label (or name) whose difference is reported, e.g. crvq"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model label (default: every model both ran)"),
    budget: Optional[int] = typer.Option(None, "--budget", "-b", help="bit budget (default: every budget both ran)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="perplexity dataset (default: every one both have)"),
    level: float = typer.Option(0.95, "--level", help="confidence level of the intervals"),
    resamples: int = typer.Option(2000, "--resamples", help="bootstrap resamples"),
    layers: bool = typer.Option(False, "--layers", help="also plot both methods' per-layer errors (plots/compare_*_layers.{png,svg})"),
) -> None:
    """Paired comparison of two methods on the same model and budget: Δ perplexity (against −
    base) with a bootstrap CI over the same evaluation windows (and seeds), and its significance."""
    from harness.analysis.compare import compare_methods
    from harness.store import ResultStore

    if not ResultStore(results_dir).exists():
        raise HarnessError(f"{results_dir}: not a results directory (no records/ inside). Give the output_dir of a suite run, e.g. results/quickstart.")
    store = ResultStore(results_dir)
    result = compare_methods(store, base, against, model=model, budget=budget, dataset=dataset, level=level, resamples=resamples)
    print_comparison(result)
    if layers:
        from harness.report.compare_layers import write_layer_overlay

        for c in {(c.model, c.budget): c for c in result.comparisons}.values():
            paths, metric = write_layer_overlay(store.plots_dir, c.base, c.against, c.model, c.budget)
            for p in paths:
                out.print(f"wrote {p} (per-layer {metric})", highlight=False, markup=False)


@app.command()
def verify(
    claims_path: Path = typer.Argument(..., metavar="CLAIMS", help="claims YAML file, e.g. suites/claims/crvq.yaml"),
    results_dirs: list[Path] = typer.Argument(..., metavar="RESULTS_DIR...", help="results directories, e.g. results/quickstart"),
    write: bool = typer.Option(False, "--write", help="also write tables/claims.{md,csv} into each results directory"),
    resamples: int = typer.Option(2000, "--resamples", help="bootstrap resamples"),
) -> None:
    """Check every claim of a claims file against results: per claim, results directory, model and
    budget a verdict (reproduced, weaker, stronger, contradicted, inconclusive, not covered) with
    the measured effect and its CI (the paired bootstrap of `harness compare`)."""
    from harness.claims import load_claims, verify_claims
    from harness.claims.report import write_claim_tables
    from harness.store import ResultStore

    claims = load_claims(claims_path)
    for results_dir in results_dirs:
        if not ResultStore(results_dir).exists():
            raise HarnessError(f"{results_dir}: not a results directory (no records/ inside). Give the output_dir of a suite run, e.g. results/quickstart.")
    if resamples < 100:
        raise HarnessError(f"--resamples {resamples}: use at least 100 (2000 is the default).")
    stores = [ResultStore(d) for d in results_dirs]
    # a directory is named by its folder, or by its path where two share a folder name (runs/a/quick, runs/b/quick)
    names = [d.name if [e.name for e in results_dirs].count(d.name) == 1 else str(d) for d in results_dirs]
    rows = verify_claims(claims, [(n, s.records()) for n, s in zip(names, stores)], resamples=resamples)
    print_claims(claims, rows)
    if write:
        for name, store in zip(names, stores):
            mine = [r for r in rows if r.results == name]
            for p in write_claim_tables(store, mine, title=f"Claims: {claims.name}"):
                out.print(f"wrote {p}", highlight=False, markup=False)


@app.command()
def inspect(
    cell: str = typer.Argument(..., help="record key, unique key prefix or cell label, e.g. smollm2-135m/crvq/b1"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results directory or a folder of them (default: every results/*/)"),
) -> None:
    """Per-layer diagnostics of one calibrated cell: a per-block table of layer-output errors and
    bits, plots/inspect/<key>_layer_error.{png,svg} (blocks × linear types) and, for CRVQ,
    plots/inspect/<key>_importance.{png,svg} (importance-score distributions across layers)."""
    from harness.report.inspect import find_record, inspect_record

    record, root = find_record(cell, results)
    print_inspection(record, root, inspect_record(record, root))


@app.command()
def bits(
    model: str = typer.Option(..., "--model", "-m", help="shape preset (e.g. llama2-7b), config.json / model dir, or hub id with a cached config"),
    method: str = typer.Option(..., "--method", help="registered method name (see `harness list`)"),
    budget: Optional[int] = typer.Option(None, "--budget", "-b", help="nominal bit budget: the method's preset"),
    params: Optional[str] = typer.Option(None, "--params", "-p", help="method params as JSON, over the preset"),
    storage_bits: int = typer.Option(16, "--storage-bits", help="bits per non-quantized weight"),
    as_json: bool = typer.Option(False, "--json", help="print the table as JSON"),
) -> None:
    """Bits per weight of a method config on a model, from its config alone (no weights):
    per linear shape and in total (bits, the paper's bits, model bits)."""
    from harness.metrics.bits_table import bits_table

    try:
        parsed = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise HarnessError(f"--params is not valid JSON ({exc}); e.g. --params '{{\"critical_ratio\": 0.05}}'") from exc
    if not isinstance(parsed, dict):
        raise HarnessError("--params must be a JSON object, e.g. '{\"in_group_size\": 8}'")
    table = bits_table(model, method, budget=budget, params=parsed, storage_bits=storage_bits)
    if as_json:
        out.print_json(json.dumps(table.as_dict()))
        return
    print_bits_table(table, title=f"{method}{f' b{budget}' if budget else ''} on {model} ({table.source})",
                     storage_bits=storage_bits)


def main() -> None:
    """Console entry point: one-paragraph errors with exit code 2, tracebacks only with --debug.

    Command-line usage errors (a missing argument, an unknown option) are typer's own exceptions:
    typer >= 0.29 carries its own copy of click, so they are caught through typer's API."""
    from pydantic import ValidationError

    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit here
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: typer prints the usage line and the message
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            console.print(f"error: {exc}", soft_wrap=True, highlight=False, markup=False)
        sys.exit(2)
    except (HarnessError, ValidationError, ImportError, FileNotFoundError) as exc:
        if _state["debug"]:
            console.print_exception()
        console.print(f"error: {exc}", soft_wrap=True, highlight=False, markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished cells are saved, run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
