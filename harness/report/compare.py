"""Paired comparisons in the report: ``tables/compare.{md,csv}`` (and ``compare_zeroshot.csv``).

One section per requested (base, against) pair (a suite's ``report.compare`` or
``harness report --compare base:against``), built by
:func:`harness.analysis.compare.compare_methods`. A pair that cannot be compared (a method
without finished cells, different evaluation windows) gets its reason in its section and a
warning; the rest of the report is still written.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.compare import CompareResult, compare_methods, fmt_interval, fmt_number, fmt_p, fmt_signed
from harness.analysis.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from harness.errors import HarnessError
from harness.record import CellRecord
from harness.report.style import fmt_bits, fmt_percent
from harness.store import ResultStore, atomic_write_text

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def as_pairs(pairs: Iterable[Any]) -> list[Pair]:
    """``(base, against)`` tuples from tuples, ``"base:against"`` strings or objects with
    ``.base``/``.against`` (the suite's ``report.compare`` entries)."""
    out: list[Pair] = []
    for p in pairs:
        if isinstance(p, str):
            parts = p.split(":")
            if len(parts) != 2 or not all(s.strip() for s in parts):
                raise HarnessError(f"--compare {p!r}: write BASE:AGAINST with two method labels, e.g. --compare aqlm:crvq.")
            out.append((parts[0].strip(), parts[1].strip()))
        elif hasattr(p, "base") and hasattr(p, "against"):
            out.append((str(p.base), str(p.against)))
        else:
            base, against = p
            out.append((str(base), str(against)))
    return out


def _budget(value: Any) -> str:
    return "-" if value is None else str(value)


def ppl_display_rows(result: CompareResult) -> list[dict[str, str]]:
    """The comparison rows as display strings (shared by the CLI table and compare.md)."""
    rows = []
    for c in result.comparisons:
        d = c.difference
        rows.append({
            "model": c.model, "budget": _budget(c.budget), "dataset": c.dataset,
            f"{c.base.label} ppl": fmt_number(d.base), f"{c.against.label} ppl": fmt_number(d.against),
            "Δppl": fmt_signed(d.delta.value), f"{d.delta.level:.0%} CI": fmt_interval(d.delta),
            "Δ %": fmt_signed(100 * d.relative.value, 1), "p": fmt_p(d.p_value, d.resamples).replace("= ", ""),
            "significant": "yes" if d.significant else "no", "seeds": str(d.seeds), "windows": str(d.windows),
            "bits": f"{fmt_bits(c.base.bits, missing='?')} → {fmt_bits(c.against.bits, missing='?')}",
        })
    return rows


def zero_shot_display_rows(result: CompareResult) -> list[dict[str, str]]:
    """Zero-shot rows as display strings: accuracies in percent, differences in points."""
    rows = []
    for z in result.zero_shot:
        level = f"{z.delta.level:.0%} CI" if z.delta else "CI"
        rows.append({
            "model": z.model, "budget": _budget(z.budget), "task": z.task,
            f"{z.base.label} acc %": fmt_percent(z.base_acc), f"{z.against.label} acc %": fmt_percent(z.against_acc),
            "Δacc (points)": fmt_signed(100 * (z.against_acc - z.base_acc), 1),
            level: "-" if z.delta is None else f"[{fmt_percent(z.delta.low)}, {fmt_percent(z.delta.high)}]".replace("-", "−"),
            "p": "-" if z.p_value is None else f"{z.p_value:.3g}",
            "significant": {True: "yes", False: "no", None: "-"}[z.significant],
            "samples": _budget(z.samples),
        })
    return rows


def _table(rows: list[dict[str, str]]) -> str:
    frame = pd.DataFrame(rows)
    align = ["left" if c in ("model", "dataset", "task") else "right" for c in frame.columns]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def compare_markdown(results: Sequence[CompareResult | tuple[Pair, str]], resamples: int) -> str:
    """``compare.md``: one section per pair, or the reason it could not be compared."""
    parts = [
        "# Paired comparisons", "",
        "Δ = perplexity of the second method − perplexity of the first, on the same evaluation windows. The CI and "
        f"the two-sided p come from a paired bootstrap over the windows (and over seeds where there are several; "
        f"{resamples} resamples); significant = the CI excludes 0. Zero-shot differences are **unpaired** "
        "(normal approximation from lm-eval's standard errors).",
    ]
    for item in results:
        if not isinstance(item, CompareResult):
            (base, against), reason = item
            parts += ["", f"## {base} vs {against}", "", f"Not compared: {reason}"]
            continue
        parts += ["", f"## {item.base} vs {item.against}"]
        if item.comparisons:
            parts += ["", _table(ppl_display_rows(item)), ""]
            parts += [f"- {c.group}: {c.verdict()}" for c in item.comparisons]
        if item.zero_shot:
            parts += ["", "Zero-shot accuracy (unpaired, normal approximation):", "", _table(zero_shot_display_rows(item))]
        if item.notes:
            parts += ["", "Notes:", ""] + [f"- {n}" for n in item.notes]
    return "\n".join(parts) + "\n"


def run_comparisons(
    records: Sequence[CellRecord], pairs: Iterable[Any], *, where: str = "records",
    level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
) -> list[CompareResult | tuple[Pair, str]]:
    """:func:`compare_methods` for each pair; a pair that fails gives ``((base, against), reason)``."""
    out: list[CompareResult | tuple[Pair, str]] = []
    for base, against in as_pairs(pairs):
        try:
            out.append(compare_methods(records, base, against, level=level, resamples=resamples, where=where))
        except HarnessError as exc:
            logger.warning("%s vs %s not compared: %s", base, against, exc)
            out.append(((base, against), str(exc)))
    return out


def write_compare_tables(
    store: ResultStore, pairs: Iterable[Any], *, records: Sequence[CellRecord] | None = None,
    level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
) -> list[Path]:
    """Write ``tables/compare.md``, ``tables/compare.csv`` and, when a pair has zero-shot results,
    ``tables/compare_zeroshot.csv``; returns the written paths (none when ``pairs`` is empty)."""
    pairs = as_pairs(pairs)
    if not pairs:
        return []
    records = store.records() if records is None else records
    results = run_comparisons(records, pairs, where=store.root.name, level=level, resamples=resamples)
    done = [r for r in results if isinstance(r, CompareResult)]
    written = [atomic_write_text(store.tables_dir / "compare.md", compare_markdown(results, resamples))]
    ppl = pd.concat([r.frame() for r in done], ignore_index=True) if done else pd.DataFrame()
    written.append(atomic_write_text(store.tables_dir / "compare.csv", ppl.to_csv(index=False)))
    zero_shot = [r.zero_shot_frame() for r in done if r.zero_shot]
    if zero_shot:
        frame = pd.concat(zero_shot, ignore_index=True)
        written.append(atomic_write_text(store.tables_dir / "compare_zeroshot.csv", frame.to_csv(index=False)))
    return written
