"""One side of a comparison of two methods: its label and the records (one per seed) it pairs.

Shared by the paired perplexity comparison (:mod:`harness.analysis.compare`), the zero-shot
differences (:mod:`harness.analysis.zeroshot_diff`) and the claims (:mod:`harness.claims`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from harness.record import CellRecord

__all__ = ["Side", "budget_text", "side_of"]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a method label and the records (one per seed) it pairs."""

    label: str
    keys: tuple[str, ...]
    seeds: tuple[int, ...]
    bits: float | None  # measured bits per weight, mean over the records
    records: tuple[CellRecord, ...] = field(repr=False, compare=False, default=())


def side_of(label: str, rows: Sequence[CellRecord]) -> Side:
    """The :class:`Side` of ``rows`` (paired records, in pair order) under ``label``."""
    bits = [b for r in rows if (b := r.bits) is not None]
    return Side(
        label=label,
        keys=tuple(dict.fromkeys(r.key for r in rows)),
        seeds=tuple(r.seed for r in rows),
        bits=float(np.mean(bits)) if bits else None,
        records=tuple(rows),
    )


def budget_text(budget: int | None) -> str:
    """``b2``, or ``-`` for no budget (a reference cell)."""
    return "-" if budget is None else f"b{budget}"
