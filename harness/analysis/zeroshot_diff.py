"""Zero-shot accuracy differences between two methods, per task: *unpaired*.

lm-eval records each task's accuracy and its standard error, not per-example results, so the
difference ``acc(against) − acc(base)`` gets a normal-approximation CI from the two standard
errors. It ignores the (positive) correlation from scoring the same examples, so it is wider
than a paired interval would be: a conservative check, labelled unpaired wherever it is shown.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from harness.analysis.side import Side, budget_text
from harness.analysis.stats import Interval
from harness.record import CellRecord, ZeroShotTask

__all__ = ["ZeroShotComparison", "acc_and_se", "zero_shot_differences"]


@dataclass(frozen=True)
class ZeroShotComparison:
    """``acc(against) − acc(base)`` on one zero-shot task: unpaired, normal approximation."""

    model: str
    budget: int | None
    task: str
    base: Side
    against: Side
    base_acc: float
    against_acc: float
    delta: Interval | None  # None when a side has no acc_stderr
    p_value: float | None
    samples: int | None

    @property
    def significant(self) -> bool | None:
        if self.delta is None:
            return None
        return self.delta.low > 0 or self.delta.high < 0

    def to_row(self) -> dict[str, Any]:
        return {
            "model": self.model, "budget": self.budget, "task": self.task,
            "base": self.base.label, "against": self.against.label,
            "base_acc": self.base_acc, "against_acc": self.against_acc,
            "delta_acc": self.against_acc - self.base_acc,
            "ci_low": None if self.delta is None else self.delta.low,
            "ci_high": None if self.delta is None else self.delta.high,
            "p_value": self.p_value, "significant": self.significant, "seeds": len(self.base.seeds),
            "samples": self.samples, "paired": False,
        }


def acc_and_se(rows: Sequence[ZeroShotTask]) -> tuple[float, float | None]:
    """Mean accuracy over seeds (one finished task result per seed) and its standard error: the
    items are the same for every seed, so item noise is not averaged away (mean of the squared
    stderrs) and seed noise adds on. The error is None when a seed has no finite stderr."""
    acc = np.array([float(v.acc) for v in rows])
    stderr = [v.acc_stderr for v in rows]
    if any(s is None or not math.isfinite(float(s)) for s in stderr):
        return float(acc.mean()), None
    var = float(np.mean(np.square(np.asarray(stderr, dtype=float))))
    if len(acc) > 1:
        var += float(acc.var(ddof=1)) / len(acc)
    return float(acc.mean()), math.sqrt(var)


def zero_shot_differences(
    model: str, budget: int | None, pairs: list[tuple[CellRecord, CellRecord]], base: Side, against: Side, level: float,
) -> tuple[list[ZeroShotComparison], list[str]]:
    """Per task that every paired record finished: the accuracy difference (mean over seeds) with
    its normal-approximation CI at ``level`` and two-sided p; tasks run on different examples
    (samples, limit or task-file fingerprint) are left out with a note."""
    out: list[ZeroShotComparison] = []
    notes: list[str] = []
    base_tasks = [b.finished_tasks for b, _ in pairs]
    against_tasks = [a.finished_tasks for _, a in pairs]
    names = [t for t in base_tasks[0] if all(t in bt for bt in base_tasks) and all(t in at for at in against_tasks)]
    z = NormalDist().inv_cdf(0.5 + level / 2)
    for task in names:
        rows_b, rows_a = [bt[task] for bt in base_tasks], [at[task] for at in against_tasks]
        settings = {(v.samples, v.limit, v.fingerprint) for v in rows_b + rows_a}
        if len(settings) > 1:
            group = f"{model}/{budget_text(budget)}"
            notes.append(f"{group}: zero-shot task {task} left out: the two sides ran it on different examples "
                         f"(samples, limit or task files differ)")
            continue
        acc_b, se_b = acc_and_se(rows_b)
        acc_a, se_a = acc_and_se(rows_a)
        delta, p = acc_a - acc_b, None
        interval = None
        if se_b is not None and se_a is not None:
            se = math.hypot(se_a, se_b)
            interval = Interval(delta, delta - z * se, delta + z * se, level)
            p = math.erfc(abs(delta) / se / math.sqrt(2)) if se > 0 else (0.0 if delta else 1.0)
        out.append(ZeroShotComparison(model, budget, task, base, against, acc_b, acc_a, interval, p,
                                      rows_b[0].samples))
    return out, notes
