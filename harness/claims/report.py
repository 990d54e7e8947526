"""The verdict table: ``tables/claims.md`` (one row per claim, results, model and budget, with
the claim's source and statement listed below) and ``tables/claims.csv`` (every number).
``report.html`` shows ``claims.md`` first among the extra tables."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.claims.verdict import NOT_COVERED
from harness.claims.verify import ClaimVerdict
from harness.record import CellRecord
from harness.store import ResultStore, atomic_write_text

__all__ = ["claims_markdown", "display_rows", "suite_claim_files", "write_claim_tables", "write_claims_report"]

logger = logging.getLogger(__name__)


def display_rows(rows: Sequence[ClaimVerdict]) -> list[dict[str, str]]:
    """Display strings per verdict (shared by the CLI table and claims.md)."""
    out = []
    for v in rows:
        m, check = v.measurement, v.claim.check
        measured = "-" if m is None else m.effect_text(check.metric)
        detail = v.reason if m is None else "; ".join([m.how, *([m.matched] if m.matched else []), *m.notes])
        num = _bits if check.metric in ("bits", "bits_paper", "model_bits") else _num
        out.append({
            "claim": v.claim.id, "results": v.results, "model": v.model or "-",
            "budget": "-" if v.budget is None else str(v.budget), "metric": check.metric,
            "claimed": v.claimed_text, "measured": measured,
            "sides": "-" if m is None else (f"{m.base_label} {num(m.base)} → {m.against_label} {num(m.against)}"
                                            if m.base is not None else f"{m.against_label} {num(m.against)}"),
            "verdict": v.verdict, "scope": v.scope or "-", "how": detail or "-",
        })
    return out


def _bits(x: float | None) -> str:
    return "?" if x is None else f"{x:.4f}"


def _num(x: float | None) -> str:
    from harness.analysis.compare import fmt_number

    return "?" if x is None else fmt_number(x)


def claims_markdown(rows: Sequence[ClaimVerdict], title: str = "Claims") -> str:
    """``claims.md``: the verdict table, then each claim's source and statement."""
    parts = [
        f"# {title}", "",
        "Each published claim checked against the results: the measured effect (the second method vs the first; "
        "percent of the first's value, or the metric's unit) with its CI — a paired bootstrap over evaluation "
        "windows and seeds for perplexity and bpb, an unpaired normal approximation for zero-shot accuracy, exact for "
        "bits. **reproduced**: the CI contains the claim or lies within its tolerance; **weaker**/**stronger**: the "
        "CI excludes the claim, on zero's side of it / beyond it; **contradicted**: the CI excludes zero with the "
        "opposite sign; **inconclusive**: the CI contains both zero and the claim; **not covered**: no cell for it. "
        "Equal-bits claims compare at matched bits (the base's frontier interpolated) and say so.",
    ]
    if rows:
        frame = pd.DataFrame(display_rows(rows))
        align = ["left" if c in ("claim", "results", "model", "metric", "verdict", "scope", "how") else "right"
                 for c in frame.columns]
        parts += ["", frame.to_markdown(index=False, disable_numparse=True, colalign=align)]
        counts = pd.Series([v.verdict for v in rows]).value_counts()
        parts += ["", "Verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + "."]
    else:
        parts += ["", "No claims."]
    seen: dict[str, ClaimVerdict] = {}
    for v in rows:
        seen.setdefault(v.claim.id, v)
    if seen:
        parts += ["", "## The claims", ""]
        for v in seen.values():
            c = v.claim
            where = f", {c.table}" if c.table else ""
            parts.append(f"- **{c.id}** ({c.source}{where}; claimed model {c.check.model}): {c.statement}")
    return "\n".join(parts) + "\n"


def write_claim_tables(store: ResultStore, rows: Sequence[ClaimVerdict], *, title: str = "Claims") -> list[Path]:
    """Write ``tables/claims.md`` and ``tables/claims.csv``; returns their paths."""
    md = atomic_write_text(store.tables_dir / "claims.md", claims_markdown(rows, title))
    frame = pd.DataFrame([v.to_row() for v in rows])
    csv = atomic_write_text(store.tables_dir / "claims.csv", frame.to_csv(index=False))
    uncovered = sum(v.verdict == NOT_COVERED for v in rows)
    logger.debug("claims: %d verdict(s), %d not covered; %s", len(rows), uncovered, md)
    return [md, csv]


def write_claims_report(store: ResultStore, claim_files: Sequence[str | Path], *,
                        records: Sequence[CellRecord] | None = None) -> list[Path]:
    """``report.claims``: verify each claims file on this store and write the tables (a file
    that cannot be read is reported in the log and skipped)."""
    from harness.claims.schema import ClaimsError, load_claims
    from harness.claims.verify import verify_claims

    records = store.records() if records is None else records
    rows: list[ClaimVerdict] = []
    names = []
    for path in claim_files:
        try:
            claims = load_claims(path)
        except ClaimsError as exc:
            logger.warning("claims not checked: %s", exc)
            continue
        names.append(claims.name)
        rows += verify_claims(claims, [(store.root.name, records)])
    if not names:
        return []
    return write_claim_tables(store, rows, title=f"Claims: {', '.join(names)}")


def suite_claim_files(paths: Sequence[str], suite_path: Path) -> list[Path]:
    """The claims files of a suite's ``report.claims`` (read from the working directory or the
    suite's folder), each loaded once to validate it; ClaimsError naming the suite field otherwise."""
    from harness.claims.schema import ClaimsError, load_claims
    from harness.suite import resolve_path

    found = []
    for i, value in enumerate(paths):
        path = resolve_path(value, Path(suite_path))
        if path is None or not path.is_file():
            raise ClaimsError(
                f"{suite_path}: field `report.claims[{i}]`: claims file '{value}' not found. Give the path of a claims "
                f"YAML (relative to the working directory or the suite's folder), e.g. suites/claims/crvq.yaml."
            )
        load_claims(path)
        found.append(path)
    return found
