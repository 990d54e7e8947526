"""Measuring a claim on the records of one results directory: per model and budget the records
cover, the measured effect (or value) with its CI, or the reason it cannot be measured.

Everything statistical is reused: cells are selected, grouped and paired by seed as
``harness compare`` does (:mod:`harness.analysis.compare`); perplexity differences are its paired
bootstrap over windows and seeds (:func:`harness.analysis.stats.paired_difference`); zero-shot
differences its unpaired normal approximation (:mod:`harness.analysis.zeroshot_diff`); the
matched-bits base is the base's Pareto frontier (:func:`harness.report.pareto.pareto_indices`)
interpolated at the other side's bits — per evaluation window, log-perplexity linear in bits —
so that the same paired bootstrap applies.
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from harness.analysis.compare import by_seed, check_windows, common_datasets, pair_seeds
from harness.analysis.side import side_of
from harness.analysis.stats import draws, paired_difference, percentiles, perplexity_interval
from harness.analysis.zeroshot_diff import acc_and_se, zero_shot_differences
from harness.claims.schema import Check, Metric, SideSpec
from harness.claims.verdict import Measurement
from harness.errors import HarnessError
from harness.record import CellRecord

__all__ = [
    "Base", "Cover", "NotCovered", "Pairs", "acc_effect", "algorithm_notes", "at", "budget_of", "dataset_of",
    "mean_bits", "nll_effect", "one_line", "pairs_of", "plain_effect", "side_records",
]

Record = CellRecord
Pairs = list[tuple[Record, Record]]


@dataclass(frozen=True)
class Cover:
    """One (model, budget) group of a claim: its measurement, or why there is none."""

    model: str | None
    budget: int | None
    measurement: Measurement | None = None
    reason: str = ""


class NotCovered(Exception):
    """Internal: this group cannot be measured (the message says why)."""


# --------------------------------------------------------------------------- selection

def _params_match(record: Record, params: dict[str, Any]) -> bool:
    have = record.params or {}
    return all(k in have and have[k] == v for k, v in params.items())


def side_records(records: Sequence[Record], side: SideSpec) -> list[Record]:
    """Finished records of ``side``'s method whose label matches its glob and params match."""
    rows = [r for r in records if r.ok and r.method == side.method]
    if side.label:
        rows = [r for r in rows if fnmatch.fnmatchcase(r.method_label, side.label)]
    return [r for r in rows if _params_match(r, side.params)]


def one_line(rows: list[Record], side: SideSpec) -> list[Record]:
    """The records of one method line: several labels are ambiguous unless one is the method's name."""
    labels = sorted({r.method_label for r in rows})
    if len(labels) <= 1:
        return rows
    if side.method in labels and side.label is None:
        return [r for r in rows if r.method_label == side.method]
    raise NotCovered(f"{side.describe()} matches several method lines ({', '.join(labels)}); name one with `label:`")


def algorithm_notes(rows: Sequence[Record]) -> list[str]:
    """A note per method line whose cells ran a variant rather than the published algorithm: the
    label its method gives the cells' params (``Quantizer.default_label``, e.g. ``crvq-harness``,
    or ``aqlm-kmeans_metric=hessian`` for cells made before the published algorithm was the default)."""
    from harness.registry import default_label, get_method

    notes = []
    for line in dict.fromkeys(r.method_label for r in rows):
        r = next(r for r in rows if r.method_label == line)
        try:
            method = get_method(str(r.method))
            algorithm = default_label(method, r.params)
        except (HarnessError, ValueError):  # an unregistered method, or params of an older config
            continue
        if algorithm != method.name:
            notes.append(f"{line} ran '{algorithm}', not the published {method.name} algorithm")
    return notes


def budget_of(r: Record) -> int | None:
    """The record's budget; None for a reference (it pairs with every budget)."""
    return None if r.is_reference else r.budget


def at(rows: list[Record], model: str, budget: int | None) -> list[Record]:
    """Rows of ``model`` at ``budget`` (a reference, without a budget, pairs with every budget)."""
    return [r for r in rows if r.model_label == model and (budget_of(r) == budget or r.is_reference)]


def pairs_of(base: list[Record], against: list[Record], group: str, where: str, notes: list[str]) -> Pairs:
    """Rows paired by seed as `harness compare` pairs them; its notes (unpaired seeds) go to ``notes``."""
    labels = (base[0].method_label, against[0].method_label)
    pairs, found = pair_seeds(by_seed(base, labels[0], group, where), by_seed(against, labels[1], group, where),
                              labels, group, where)
    notes += [n for n in found if n not in notes]
    return pairs


def mean_bits(rows: Sequence[Record], field: str = "bits") -> float | None:
    """Mean of a bits metric (``bits``, ``bits_paper``, ...) over ``rows``; None if none records it."""
    values = [v for r in rows if (v := r.metric(field)) is not None]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- the base of a pair

@dataclass(frozen=True)
class Base:
    """The base side paired with each against record: one record, or a point interpolated on the
    base's frontier between two records (weight ``alpha`` on the upper one)."""

    low: Record
    high: Record | None = None
    alpha: float = 0.0

    def records(self) -> list[Record]:
        return [self.low] + ([self.high] if self.high is not None else [])

    def mix(self, get: Callable[[Record], Any]) -> np.ndarray:
        value = np.asarray(get(self.low), dtype=np.float64)
        if self.high is None or self.alpha == 0.0:
            return value
        return (1 - self.alpha) * value + self.alpha * np.asarray(get(self.high), dtype=np.float64)


# --------------------------------------------------------------------------- metrics

def dataset_of(records: list[Record], wanted: str) -> tuple[str, str]:
    """The claim's dataset if every record has it, else the first one they share (with a note)."""
    pairs = [(records[0], r) for r in records]
    have = common_datasets(pairs)
    if wanted in have:
        return wanted, ""
    if have:
        return have[0], f"{have[0]} text stands in for {wanted}"
    raise NotCovered(f"no perplexity dataset that every cell evaluated ({wanted} asked)")


def _mean_nll_draws(mats: list[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Bootstrap draws of the mean NLL (over windows, then seeds) of each [seeds, windows] matrix,
    all with the same window and seed indices (those of :func:`harness.analysis.stats.draws`)."""
    seeds, windows = mats[0].shape
    window_idx, seed_idx = draws(windows, seeds, resamples, seed)
    out = []
    for nll in mats:
        per_seed = nll[:, window_idx].mean(axis=2)  # [S, B]
        out.append(per_seed.mean(axis=0) if seed_idx is None else np.take_along_axis(per_seed.T, seed_idx, 1).mean(1))
    return out


def _bpb_factor(rows: Sequence[Record], ds: str) -> float | None:
    """bits per byte per nat of mean NLL (tokens / bytes / ln 2) from the records' ``bpb``."""
    found = [r.perplexity(ds) for r in rows]
    factors = [float(i.bpb) / float(i.nll) for i in found if i is not None and i.bpb and i.nll]
    return float(np.mean(factors)) if factors else None


def nll_effect(check: Check, metric: Metric, against: list[Record], bases: list[Base], where: str,
                resamples: int, seed: int) -> Measurement:
    """ppl or bpb of ``against`` vs ``bases`` (paired per seed), or of ``against`` alone (value)."""
    everyone = against + [r for b in bases for r in b.records()]
    ds, note = dataset_of(everyone, metric.what)
    try:
        check_windows([(everyone[0], r) for r in everyone], ds, where)
    except HarnessError as exc:
        raise NotCovered(str(exc)) from None
    na = np.asarray([a.window_nll(ds) for a in against], dtype=np.float64)
    seeds, windows = na.shape
    how = f"paired bootstrap over {windows} windows × {seeds} seed{'s' if seeds > 1 else ''}"
    notes = (note,) if note else ()
    if not bases:  # a claimed value
        if metric.kind == "ppl":
            iv = perplexity_interval(na, level=check.level, resamples=resamples, seed=seed)
            return Measurement(iv.value, iv.low, iv.high, check.level, "value", iv.value, seeds=seeds, windows=windows,
                               how=how.replace("paired ", ""), notes=notes)
        k = _bpb_factor(against, ds)
        if k is None:
            raise NotCovered(f"the cells record no bpb for {ds} (written before bpb was measured)")
        (nll_draws,) = _mean_nll_draws([na], resamples, seed)
        low, high = percentiles(k * nll_draws, check.level)
        value = k * float(na.mean())
        return Measurement(value, low, high, check.level, "value", value, seeds=seeds, windows=windows,
                           how=how.replace("paired ", ""), notes=notes)
    nb = np.stack([b.mix(lambda r: r.window_nll(ds)) for b in bases])
    if metric.kind == "ppl":
        diff = paired_difference(nb, na, level=check.level, resamples=resamples, seed=seed)
        iv = diff.relative if check.unit == "percent" else diff.delta
        scale = 100.0 if check.unit == "percent" else 1.0
        return Measurement(scale * iv.value, scale * iv.low, scale * iv.high, check.level, check.unit, diff.against,
                           diff.base, seeds=seeds, windows=windows, how=how, notes=notes)
    k_a, k_b = _bpb_factor(against, ds), _bpb_factor([r for b in bases for r in b.records()], ds)
    if check.unit == "absolute" and (k_a is None or k_b is None):
        raise NotCovered(f"the cells record no bpb for {ds} (written before bpb was measured)")
    k_a = k_b = (k_a or 1.0) if check.unit == "percent" else k_a  # same text and tokenizer: the factor cancels
    draws_b, draws_a = _mean_nll_draws([nb, na], resamples, seed)
    base, against_value = k_b * float(nb.mean()), k_a * float(na.mean())
    if check.unit == "percent":
        stat, value = 100 * (k_a * draws_a / (k_b * draws_b) - 1), 100 * (against_value / base - 1)
    else:
        stat, value = k_a * draws_a - k_b * draws_b, against_value - base
    low, high = percentiles(stat, check.level)
    return Measurement(value, low, high, check.level, check.unit, against_value, base, seeds=seeds, windows=windows,
                       how=how, notes=notes)


def acc_effect(check: Check, metric: Metric, model: str, budget: int | None, pairs: Pairs,
                against: list[Record]) -> Measurement:
    """Zero-shot accuracy (percent): one task or the mean over the tasks both sides finished; the
    relative change's CI is the difference's CI divided by the base's mean accuracy."""
    z = NormalDist().inv_cdf(0.5 + check.level / 2)
    if not pairs:  # a claimed value
        per_task = [r.finished_tasks for r in against]
        tasks = [t for t in per_task[0] if all(t in p for p in per_task)]
        tasks = tasks if metric.what == "avg" else [t for t in tasks if t == metric.what]
        if not tasks:
            raise NotCovered(f"no finished zero-shot task {'' if metric.what == 'avg' else metric.what + ' '}in the cells")
        stats = [acc_and_se([p[t] for p in per_task]) for t in tasks]
        if any(se is None for _, se in stats):
            raise NotCovered("a zero-shot task has no standard error, so no interval")
        value = 100 * float(np.mean([a for a, _ in stats]))
        se = 100 * math.sqrt(sum(se**2 for _, se in stats)) / len(stats)
        return Measurement(value, value - z * se, value + z * se, check.level, "value", value, seeds=len(against),
                           how=f"normal approximation from lm-eval's stderr over {len(tasks)} task(s)",
                           notes=_task_note(metric, tasks))
    b_side = side_of(pairs[0][0].method_label, [b for b, _ in pairs])
    a_side = side_of(pairs[0][1].method_label, [a for _, a in pairs])
    found, _ = zero_shot_differences(model, budget, pairs, b_side, a_side, check.level)
    found = found if metric.what == "avg" else [c for c in found if c.task == metric.what]
    if not any(r.finished_tasks for pair in pairs for r in pair):
        raise NotCovered("the cells have no zero-shot results (the suite ran no `evaluations.zero_shot`)")
    if not found:
        raise NotCovered(f"no zero-shot task {'' if metric.what == 'avg' else metric.what + ' '}that both sides finished "
                          f"on the same examples")
    if any(c.delta is None for c in found):
        raise NotCovered("a zero-shot task has no standard error, so no interval")
    base = float(np.mean([c.base_acc for c in found]))
    against_value = float(np.mean([c.against_acc for c in found]))
    se = math.sqrt(sum(((c.delta.high - c.delta.low) / (2 * z)) ** 2 for c in found)) / len(found)
    delta = against_value - base
    scale = 100 / base if check.unit == "percent" else 100.0
    return Measurement(scale * delta, scale * (delta - z * se), scale * (delta + z * se), check.level, check.unit,
                       100 * against_value, 100 * base, seeds=len(pairs),
                       how=f"unpaired normal approximation from lm-eval's stderr over {len(found)} task(s)",
                       notes=_task_note(metric, [c.task for c in found]))


def _task_note(metric: Metric, tasks: list[str]) -> tuple[str, ...]:
    from harness.tasks import PAPER_TASKS

    if metric.what != "avg" or sorted(tasks) == sorted(PAPER_TASKS):
        return ()
    return (f"average over {', '.join(tasks)} (not the paper's {len(PAPER_TASKS)} tasks)",)


def plain_effect(check: Check, metric: Metric, pairs: Pairs, against: list[Record]) -> Measurement:
    """bits (exact) and tok/s (the range of the timed repeats) of the sides, or their change."""
    def get(rows: Sequence[Record]) -> tuple[float, float, float]:
        if metric.kind == "bits":
            value = mean_bits(rows, metric.what)
            if value is None:
                raise NotCovered(f"the cells record no {metric.what}")
            return value, value, value
        found = [r.tokens_per_s().get(int(metric.what[1:])) for r in rows]
        if any(f is None for f in found):
            raise NotCovered(f"no decode throughput at batch size {metric.what[1:]} in the cells")
        return float(np.mean([f[0] for f in found])), min(f[1] for f in found), max(f[2] for f in found)

    how = ("exact (bits counted from the stored tensors)" if metric.kind == "bits"
           else "range of the timed repeats (throughput compares only on one device)")
    if not pairs:
        value, low, high = get(against)
        return Measurement(value, low, high, check.level, "value", value, seeds=len(against), how=how)
    (b, b_lo, b_hi), (a, a_lo, a_hi) = get([x for x, _ in pairs]), get([y for _, y in pairs])
    if check.unit == "percent":
        value, low, high = 100 * (a / b - 1), 100 * (a_lo / b_hi - 1), 100 * (a_hi / b_lo - 1)
    else:
        value, low, high = a - b, a_lo - b_hi, a_hi - b_lo
    return Measurement(value, low, high, check.level, check.unit, a, b, seeds=len(pairs), how=how)
