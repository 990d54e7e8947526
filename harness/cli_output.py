"""What the command line prints: the rich consoles (messages to stderr, tables to stdout) and
the tables of cell plans, finished records and comparisons."""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console
from rich.table import Table

from harness.record import CellRecord

if TYPE_CHECKING:
    from harness.analysis.compare import CompareResult
    from harness.claims import ClaimsFile, ClaimVerdict
    from harness.metrics.bits_table import BitsTable
    from harness.report.inspect import Inspection
    from harness.store import ResultStore
    from harness.suite import Cell, Suite

__all__ = ["compact_record", "console", "out", "print_bits_table", "print_claims", "print_comparison", "print_inspection",
           "print_methods", "print_plan", "print_records", "print_stand_in", "zero_shot_cell"]

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)


def print_stand_in(suite: Suite) -> None:
    """List what a stand-in substituted (also stored in every record)."""
    if not suite.stand_in:
        return
    info = suite.stand_in
    console.print(f"stand-in '{info['name']}' of suite '{info['suite']}': {info['description']}", highlight=False)
    for change in info["substitutions"]:
        console.print(f"  {change}", highlight=False, markup=False)


def print_comparison(result: CompareResult) -> None:
    """The paired perplexity table, one verdict line per row, zero-shot (unpaired) and notes."""
    from rich.text import Text

    from harness.report.compare import ppl_display_rows, zero_shot_display_rows

    def grid(title: str, rows: list[dict[str, str]]) -> Table:
        table = Table(title=title, title_justify="left")
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("model", "dataset", "task") else "right", no_wrap=True)
        for row in rows:
            table.add_row(*(Text(v) for v in row.values()))
        return table

    if result.comparisons:
        out.print(grid(f"{result.against} vs {result.base}: perplexity, paired bootstrap over windows and seeds",
                       ppl_display_rows(result)))
        for c in result.comparisons:
            out.print(f"{c.group}: {c.verdict()}", highlight=False, markup=False)
    if result.zero_shot:
        out.print(grid(f"{result.against} vs {result.base}: zero-shot accuracy (unpaired, normal approximation "
                       f"from lm-eval's stderr)", zero_shot_display_rows(result)))
    for note in result.notes:
        out.print(f"note: {note}", highlight=False, markup=False)


def print_claims(claims: ClaimsFile, rows: Sequence[ClaimVerdict]) -> None:
    """Per claim its source and statement, then one verdict line per results directory, model and
    budget (measured effect, CI, claimed effect, how it was measured), then the verdict counts."""
    from collections import Counter

    for claim in claims.claims:
        where = f", {claim.table}" if claim.table else ""
        out.print(f"{claim.id} ({claim.source}{where}; claimed model {claim.check.model}): {claim.statement}",
                  highlight=False, markup=False, soft_wrap=True)
        for row in (r for r in rows if r.claim.id == claim.id):
            out.print(f"  {row.line(with_claim=False)}", highlight=False, markup=False, soft_wrap=True)
    counts = Counter(r.verdict for r in rows)
    out.print(f"{len(rows)} verdict(s) for {len(claims.claims)} claim(s): "
              + ", ".join(f"{n} {v}" for v, n in counts.most_common()), highlight=False, markup=False)


def compact_record(record: CellRecord) -> dict[str, Any]:
    """A record's JSON for `harness show`: layer logs counted, window NLLs dropped."""
    data = record.dump()
    if record.layers is not None:
        data["layers"] = f"<{len(record.layers)} layers; --full to show>"
    for ppl in ((data.get("metrics") or {}).get("perplexity") or {}).values():
        if isinstance(ppl, dict):
            ppl.pop("window_nll", None)
    return data


def print_plan(cells: Sequence[Cell], store: ResultStore, *, base_dir: Path, profile: Optional[str] = None) -> None:
    """The cell plan: closed-form bits, memory and estimated time per cell (`harness.plan`)."""
    from harness.plan import PROFILES, describe, format_seconds, plan_cells

    plans = plan_cells(cells, base_dir=base_dir, profile=profile)
    table = Table(title=f"{len(cells)} cells → {store.root}")
    for col in ("label", "key", "bits", "bits_paper", "model_bits", "GPU GiB", "host GiB", "est. time",
                "calibration", "evaluations", "status"):
        table.add_column(col, no_wrap=col in ("label", "key"), justify="right" if "bits" in col or "GiB" in col else "left")
    sources: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    for p in plans:
        c = p.cell
        status = "finished" if store.is_finished(c.key) else "to run"
        facts = describe(c)
        if p.error:  # e.g. a group size that does not divide the model's hidden size: said before running
            table.add_row(c.label, c.key, "?", "?", "?", "?", "?", "?", facts["calibration"], facts["evaluations"],
                          "[red]cannot run[/red]" if status == "to run" else status)
            errors.append((c.label, p.error))
            continue
        sources[c.model.label] = p.source
        gib = "-" if p.device_gib is None else f"{p.device_gib:.1f}"
        time = format_seconds(p.seconds) + ("" if p.method_cost_known else " + ?")
        table.add_row(c.label, c.key, f"{p.bits:.4f}", f"{p.bits_paper:.4f}", f"{p.model_bits:.4f}", gib,
                      f"{p.host_gib:.1f}", time, facts["calibration"], facts["evaluations"], status)
    out.print(table)
    for label, source in sources.items():
        out.print(f"model {label}: {source}", highlight=False)
    for label, error in errors:
        out.print(f"cell {label} cannot run: {error}", highlight=False)
    todo = [p for p in plans if not p.error and not store.is_finished(p.cell.key)]
    for name in sorted({p.profile for p in plans}):
        out.print(f"estimates for {name}: {PROFILES[name].basis}", highlight=False)
    out.print(
        f"estimated time of the {len(todo)} unfinished cells: {format_seconds(sum(p.seconds for p in todo))} "
        f"(a FLOP model, not a measurement; block fine-tuning counted at its maximum epochs; `+ ?` = a method "
        f"without a cost model). Bits are closed forms from the model configs; memory is the peak phase "
        f"(see harness/plan.py).", highlight=False,
    )


def zero_shot_cell(record: CellRecord) -> str:
    """'43.6' (mean zero-shot acc, %) plus the number of tasks that failed, for the results table."""
    avg = record.zero_shot_average()
    text = "-" if avg is None else f"{100 * avg:.1f}"
    failed = len((record.zero_shot.errors or []) if record.zero_shot is not None else [])
    return text + (f" [red]({failed} failed)[/red]" if failed else "")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_records(records: Sequence[CellRecord | Mapping[str, Any]]) -> None:
    """The results table of finished and failed cells (dicts are read as records)."""
    records = [CellRecord.load(r) for r in records]
    table = Table(title="results")
    zero_shot = any(r.zero_shot is not None for r in records)
    columns = ("cell", "status", "bits", "model_bits", "size MB", "perplexity", *(("zero-shot acc %",) if zero_shot else ()), "time s")
    for col in columns:
        table.add_column(col, no_wrap=col == "cell")
    for r in records:
        ppl = " ".join(f"{k}={_number(v.ppl, '.2f')}" for k, v in r.perplexities.items())
        zs = (zero_shot_cell(r),) if zero_shot else ()
        if r.ok:
            size = r.metric("size_bytes")
            table.add_row(
                str(r.label), "ok", _number(r.bits, ".3f"), _number(r.metric("model_bits"), ".3f"),
                _number(None if size is None else size / 1e6, ".1f"), ppl, *zs,
                _number((r.timings or {}).get("total_s"), ".0f"),
            )
        else:
            message = (r.error.message if r.error is not None else None) or ""
            table.add_row(str(r.label), "[red]failed[/red]", "", "", "", message[:60], *("" for _ in zs), "")
    out.print(table)


def print_inspection(record: CellRecord, root: Path, result: Inspection) -> None:
    """`harness inspect`: the per-block table of layer-output errors and bits, notes and files."""
    table = Table(title=f"{record.label} ({record.key}) in {root}: {result.table.error_field} per block")
    for col in ("block", "linears", "mean error", "max error", "worst", "bits", "seconds"):
        table.add_column(col, justify="left" if col in ("block", "worst") else "right")
    for i, row in enumerate(result.summary):  # the blocks, then `all`
        table.add_row(str(row["block"]), str(row["layers"]), f"{row['mean_error']:.4g}", f"{row['max_error']:.4g}",
                      row["max_kind"], f"{row['bits']:.4f}", f"{row['seconds']:.1f}", end_section=i == len(result.summary) - 2)
    out.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    for p in result.paths:
        out.print(f"wrote {p}")


def print_bits_table(table: BitsTable, *, title: str, storage_bits: int) -> None:
    """`harness bits`: bits per linear shape, the params, and the totals."""
    grid = Table(title=title, title_justify="left")
    for col in ("layers", "count", "out", "in", "bits", "bits_paper"):
        grid.add_column(col, justify="left" if col == "layers" else "right")
    for s in table.shapes:
        grid.add_row(", ".join(s.names), str(s.count), str(s.out), str(s.inp), f"{s.bits:.4f}", f"{s.bits_paper:.4f}")
    out.print(grid)
    out.print(" ".join(f"{k}={v}" for k, v in table.params.items()), highlight=False)
    out.print(
        f"total over {table.quantized_weights:,} quantized weights: bits {table.bits:.4f}  bits_paper "
        f"{table.bits_paper:.4f}  model_bits {table.model_bits:.4f} (all {table.total_weights:,} weights, "
        f"non-quantized at {storage_bits} bits)", highlight=False,
    )


def print_methods() -> None:
    """`harness list`: each registered method's params, calibration need and budget presets, then
    the embedded models."""
    import json

    from harness.models.embedded import EMBEDDED_MODELS, missing_files
    from harness.registry import get_method, method_names

    for name in method_names():
        method = get_method(name)
        table = Table(title=f"{name}  ({method.__module__}.{method.__name__})", title_justify="left", show_edge=False)
        for col in ("param", "type", "default", "description"):
            table.add_column(col)
        for field_name, field in method.Config.model_fields.items():
            annotation = getattr(field.annotation, "__name__", str(field.annotation))
            table.add_row(field_name, annotation, repr(field.default), field.description or "")
        out.print(table)
        out.print(f"  {'needs calibration' if method.requires_calibration else 'calibration-free'}")
        for budget in method.supported_budgets():
            out.print(f"  budget {budget}: {json.dumps(method.presets(budget))}")
        out.print()
    from harness.evaluations import evaluation_names, get_evaluation

    out.print("Evaluations (blocks of a suite's `evaluations`):")
    for name in evaluation_names():
        cls = get_evaluation(name)
        how = "runs for every quantized cell" if cls.automatic else f"settings: {', '.join(cls.Config.model_fields) or 'none'}"
        out.print(f"  {name} ({cls.__module__}.{cls.__name__}): {how}", highlight=False)
    out.print()
    out.print("Embedded models (name them in a suite's `models`):")
    for model in EMBEDDED_MODELS.values():
        state = "installed" if not missing_files(model.name) else f"not installed: `{model.install_hint}`"
        out.print(f"  {model.name}: {model.description}. License: {model.license}. {state}", highlight=False)
