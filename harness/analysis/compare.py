"""Paired comparison of two methods: ``ppl(against) − ppl(base)`` with a bootstrap CI.

Records are selected by method (its label first, then its registered name), grouped by model
and bit budget, and paired per seed; both sides must have been evaluated on the same windows
(dataset, seqlen, number of windows and, where recorded, the hash of the token ids). The
statistics are :func:`harness.analysis.stats.paired_difference`. Zero-shot accuracies are
compared per task too, but *unpaired* (lm-eval records only each task's accuracy and its
standard error, not per-example results): a normal-approximation CI from the two stderrs.

>>> from harness.store import ResultStore
>>> result = compare_methods(ResultStore("results/quickstart"), "aqlm", "crvq", budget=1)  # doctest: +SKIP
>>> print(result.comparisons[0].verdict())  # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.analysis.side import Side, budget_text, side_of
from harness.analysis.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, PairedDifference, paired_difference
from harness.analysis.zeroshot_diff import ZeroShotComparison, zero_shot_differences
from harness.errors import HarnessError
from harness.record import CellRecord
from harness.store import ResultStore

__all__ = ["CompareResult", "Comparison", "Side", "by_seed", "check_windows", "common_datasets", "compare_methods",
           "fmt_interval", "fmt_number", "fmt_p", "fmt_signed", "pair_seeds", "select_method"]

Record = CellRecord


@dataclass(frozen=True)
class Comparison:
    """The paired perplexity difference of two methods on one model, budget and dataset."""

    model: str
    budget: int | None
    dataset: str
    seqlen: int
    base: Side
    against: Side
    difference: PairedDifference
    notes: tuple[str, ...] = ()

    @property
    def significant(self) -> bool:
        return self.difference.significant

    @property
    def group(self) -> str:
        """``<model>/b<budget>``, e.g. ``smollm2-135m/b1``."""
        return f"{self.model}/{budget_text(self.budget)}"

    def verdict(self) -> str:
        """One line, e.g. ``crvq lowers embedded perplexity vs aqlm by 34.86 (−22.7%), 95% CI
        [−39.2, −30.8]; significant (p < 0.001)``."""
        d = self.difference
        direction = "lowers" if d.delta.value < 0 else "raises"
        rel = 100 * d.relative.value
        sig = "significant" if d.significant else "not significant"
        return (
            f"{self.against.label} {direction} {self.dataset} perplexity vs {self.base.label} by "
            f"{fmt_number(abs(d.delta.value))} ({fmt_signed(rel, 1)}%), {d.delta.level:.0%} CI "
            f"{fmt_interval(d.delta)}; {sig} (p {fmt_p(d.p_value, d.resamples)})"
        )

    def to_row(self) -> dict[str, Any]:
        d = self.difference
        return {
            "model": self.model, "budget": self.budget, "dataset": self.dataset,
            "base": self.base.label, "against": self.against.label,
            "base_ppl": d.base, "against_ppl": d.against,
            "delta_ppl": d.delta.value, "ci_low": d.delta.low, "ci_high": d.delta.high,
            "rel_delta_pct": 100 * d.relative.value, "rel_ci_low_pct": 100 * d.relative.low,
            "rel_ci_high_pct": 100 * d.relative.high,
            "p_value": d.p_value, "significant": d.significant, "level": d.delta.level,
            "seeds": d.seeds, "windows": d.windows, "seqlen": self.seqlen, "resamples": d.resamples,
            "base_bits": self.base.bits, "against_bits": self.against.bits,
            "base_keys": " ".join(self.base.keys), "against_keys": " ".join(self.against.keys),
        }


@dataclass
class CompareResult:
    """Every comparison of one ``base`` vs ``against`` request, and what was left out (notes)."""

    base: str
    against: str
    comparisons: list[Comparison]
    zero_shot: list[ZeroShotComparison]
    notes: list[str]

    def frame(self) -> pd.DataFrame:
        """One row per (model, budget, dataset); see :meth:`Comparison.to_row` for the columns."""
        return pd.DataFrame([c.to_row() for c in self.comparisons])

    def zero_shot_frame(self) -> pd.DataFrame:
        return pd.DataFrame([z.to_row() for z in self.zero_shot])


# --------------------------------------------------------------------------- formatting

def fmt_number(x: float) -> str:
    """A perplexity-like number with a sensible number of digits; ``−`` for negatives."""
    if not math.isfinite(x):
        return str(x)
    mag = abs(x)
    spec = ",.0f" if mag >= 1000 else ".1f" if mag >= 100 else ".2f" if mag >= 1 else ".3g"
    return f"{x:{spec}}".replace("-", "−")


def fmt_signed(x: float, digits: int | None = None) -> str:
    text = fmt_number(x) if digits is None else f"{x:,.{digits}f}".replace("-", "−")
    return text if text.startswith("−") else "+" + text


def fmt_interval(interval: Interval, scale: float = 1.0) -> str:
    return f"[{fmt_number(scale * interval.low)}, {fmt_number(scale * interval.high)}]"


def fmt_p(p: float, resamples: int) -> str:
    """``= 0.41`` or ``< 0.001`` (a bootstrap p-value resolves no further than 2/resamples)."""
    floor = 2.0 / resamples
    return f"< {floor:.2g}" if p < floor else f"= {p:.3g}"


# --------------------------------------------------------------------------- selection

def select_method(records: Sequence[Record], name: str, where: str) -> tuple[str, list[Record]]:
    """(label, ok records) of a method: those whose ``method_label`` is ``name``, else those
    whose registered method name is ``name`` (when they carry a single label)."""
    ok = [r for r in records if r.ok]
    chosen = [r for r in ok if r.stored_method_label == name]
    if not chosen:
        chosen = [r for r in ok if r.method == name]
        labels = sorted({r.method_label for r in chosen})
        if len(labels) > 1:
            raise HarnessError(
                f"{where}: method '{name}' ran under several labels ({', '.join(labels)}); give one of these "
                f"labels instead of the method name."
            )
    if not chosen:
        available = sorted({r.method_label for r in ok})
        raise HarnessError(
            f"{where}: no finished record of method '{name}'. Method labels with finished records: "
            f"{', '.join(available) or 'none'}."
        )
    return chosen[0].method_label, chosen


def _filter(records: list[Record], label: str, where: str, *, model: str | None, budget: int | None) -> list[Record]:
    kept = [r for r in records if model is None or r.model_label == model]
    if not kept:
        models = sorted({r.model_label for r in records})
        raise HarnessError(f"{where}: no finished '{label}' record for model '{model}'; its models: {', '.join(models)}.")
    if budget is not None:  # a reference (no budget) pairs with every budget
        matching = [r for r in kept if r.budget == budget or r.is_reference]
        if not matching:
            budgets = sorted({str(r.budget) for r in kept})
            raise HarnessError(f"{where}: no finished '{label}' record at budget {budget}; its budgets: {', '.join(budgets)}.")
        kept = matching
    return kept


def by_seed(records: list[Record], label: str, group: str, where: str) -> dict[int, Record]:
    """``{seed: record}`` of one side in one group; two records of one seed are an error."""
    out: dict[int, Record] = {}
    for r in records:
        seed = r.seed
        if seed in out:
            raise HarnessError(
                f"{where}: '{label}' has two finished records for {group} seed {seed}: {out[seed].display} and "
                f"{r.display} (e.g. a suite re-run with changed settings); move the stale record out of records/ "
                f"or give the lines distinct method labels."
            )
        out[seed] = r
    return out


def pair_seeds(
    base: dict[int, Record], against: dict[int, Record], labels: tuple[str, str], group: str, where: str
) -> tuple[list[tuple[Record, Record]], list[str]]:
    """Rows paired by seed (the seeds both sides have). A single reference record (unquantized:
    deterministic) is paired with every seed of the other side; without a common seed, a single
    record on each side is paired anyway (with a note)."""
    notes: list[str] = []
    for single, many, one_label in ((base, against, labels[0]), (against, base, labels[1])):
        ref = next(iter(single.values()))
        if len(single) == 1 and ref.is_reference and not next(iter(many.values())).is_reference:
            if len(many) > 1:
                notes.append(f"{group}: the single {one_label} record (unquantized, deterministic) is paired with every seed")
            return [(ref, many[s]) if single is base else (many[s], ref) for s in sorted(many)], notes
    common = sorted(base.keys() & against.keys())
    if common:
        for seeds, label in ((base.keys(), labels[0]), (against.keys(), labels[1])):
            extra = sorted(seeds - set(common))
            if extra:
                notes.append(f"{group}: seeds {extra} of {label} have no counterpart and are left out")
        return [(base[s], against[s]) for s in common], notes
    if len(base) == 1 and len(against) == 1:
        (sb, rb), (sa, ra) = next(iter(base.items())), next(iter(against.items()))
        notes.append(f"{group}: {labels[0]} ran with seed {sb} and {labels[1]} with seed {sa}; paired over windows only")
        return [(rb, ra)], notes
    raise HarnessError(
        f"{where}: {group}: no seed in common ({labels[0]} seeds {sorted(base)}, {labels[1]} seeds {sorted(against)}); "
        f"run both methods with the same suite `seeds`."
    )


# --------------------------------------------------------------------------- perplexity

def check_windows(pairs: list[tuple[Record, Record]], dataset: str, where: str) -> int:
    """Raise unless every record was evaluated on the same windows of ``dataset``; return the seqlen."""
    first = pairs[0][0]
    ref = first.perplexity(dataset)
    for r in (r for pair in pairs for r in pair):
        info = r.perplexity(dataset)
        nll = r.window_nll(dataset)
        if not nll or len(nll) != info.windows:
            raise HarnessError(
                f"{where}: {r.display} has no per-window losses for {dataset} (written by an older harness), so "
                f"no interval can be computed; re-run that cell (move its record out of records/ and run the suite)."
            )
        shape, ref_shape = (info.seqlen, info.windows), (ref.seqlen, ref.windows)
        hashes = info.token_hash, ref.token_hash
        same_tokens = None in hashes or hashes[0] == hashes[1]
        if shape != ref_shape or not same_tokens:
            what = (f"seqlen {shape[0]} × {shape[1]} windows vs seqlen {ref_shape[0]} × {ref_shape[1]} windows"
                    if shape != ref_shape else f"token hash {hashes[0]} vs {hashes[1]}: different evaluation tokens")
            raise HarnessError(
                f"{where}: {r.display} and {first.display} were evaluated on different {dataset} windows ({what}); a "
                f"paired comparison needs the same windows: re-run one of them with the other's "
                f"`evaluations.perplexity` settings (seqlen, max_windows) and the same evaluation text."
            )
    return int(ref.seqlen)


# --------------------------------------------------------------------------- entry point

def compare_methods(
    source: ResultStore | Sequence[Record | Mapping[str, Any]],
    base: str,
    against: str,
    *,
    model: str | None = None,
    budget: int | None = None,
    dataset: str | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    where: str | None = None,
) -> CompareResult:
    """Compare ``against`` with ``base`` on every (model, budget, dataset) both have (or the one
    selected): one :class:`Comparison` per combination, plus per-task zero-shot differences.

    ``base``/``against`` are method labels (or registered names); ``source`` is a store or its
    records (dicts are read as records); a reference cell (method
    ``none``, no budget) pairs with every budget of the other side. Raises
    :class:`HarnessError` when nothing can be paired or the windows differ; ``where`` names the
    results in its messages (default: the store's folder).
    """
    if not 0 < level < 1:
        raise HarnessError(f"--level {level}: give a confidence level between 0 and 1, e.g. 0.95.")
    if resamples < 100:
        raise HarnessError(f"--resamples {resamples}: use at least 100 (2000 is the default).")
    where = where or (str(source.root) if isinstance(source, ResultStore) else "records")
    records = source.records() if isinstance(source, ResultStore) else [CellRecord.load(r) for r in source]
    base_label, base_records = select_method(records, base, where)
    against_label, against_records = select_method(records, against, where)
    if base_label == against_label:
        raise HarnessError(f"--base and --against both select '{base_label}': give two different methods.")
    base_records = _filter(base_records, base_label, where, model=model, budget=budget)
    against_records = _filter(against_records, against_label, where, model=model, budget=budget)

    groups = _common_groups(base_records, against_records, (base_label, against_label), where)
    result = CompareResult(base_label, against_label, [], [], [])
    for (model_name, b_budget, a_budget), (b_rows, a_rows) in groups.items():
        budget_value = a_budget if b_budget is None else b_budget
        group = f"{model_name}/{budget_text(budget_value)}"
        pairs, notes = pair_seeds(
            by_seed(b_rows, base_label, group, where), by_seed(a_rows, against_label, group, where),
            (base_label, against_label), group, where,
        )
        result.notes += notes
        base_side = side_of(base_label, [b for b, _ in pairs])
        against_side = side_of(against_label, [a for _, a in pairs])
        datasets = [d for d in common_datasets(pairs) if dataset is None or d == dataset]
        if not datasets:
            result.notes.append(f"{group}: no perplexity dataset{f' {dataset!r}' if dataset else ''} that both sides evaluated")
        for ds in datasets:
            seqlen = check_windows(pairs, ds, where)
            try:
                diff = paired_difference(
                    [b.window_nll(ds) for b, _ in pairs], [a.window_nll(ds) for _, a in pairs],
                    level=level, resamples=resamples, seed=seed,
                )
            except ValueError as exc:
                raise HarnessError(f"{where}: {group} {ds}: {exc}") from exc
            result.comparisons.append(
                Comparison(model_name, budget_value, ds, seqlen, base_side, against_side, diff, tuple(notes))
            )
        zs, zs_notes = zero_shot_differences(model_name, budget_value, pairs, base_side, against_side, level)
        result.zero_shot += zs
        result.notes += zs_notes
    if not result.comparisons and not result.zero_shot:
        raise HarnessError(
            f"{where}: {base_label} and {against_label} have no perplexity dataset or zero-shot task in common"
            f"{f' (asked for dataset {dataset!r})' if dataset else ''}; "
            f"{'; '.join(result.notes) or 'check the `evaluations` of the suites'}."
        )
    return result


def common_datasets(pairs: list[tuple[Record, Record]]) -> list[str]:
    """Perplexity datasets every paired record has (in the first record's order)."""
    return [d for d in pairs[0][0].perplexities if all(r.perplexity(d) is not None for pair in pairs for r in pair)]


def _common_groups(
    base: list[Record], against: list[Record], labels: tuple[str, str], where: str,
) -> dict[tuple[str, int | None, int | None], tuple[list[Record], list[Record]]]:
    """(model, base budget, against budget) -> (base records, against records) for every model
    and budget both sides have; a reference side (no budget) matches every budget."""
    def by_group(rows: list[Record]) -> dict[tuple[str, int | None], list[Record]]:
        out: dict[tuple[str, int | None], list[Record]] = {}
        for r in rows:
            out.setdefault((r.model_label, None if r.is_reference else r.budget), []).append(r)
        return out

    b_groups, a_groups = by_group(base), by_group(against)
    groups = {}
    for (m, bb), b_rows in sorted(b_groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        for (m2, ab), a_rows in sorted(a_groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            if m == m2 and (bb == ab or bb is None or ab is None):
                groups[(m, bb, ab)] = (b_rows, a_rows)
    if not groups:
        def listing(g: dict) -> str:
            return ", ".join(f"{m}/{budget_text(b)}" for m, b in sorted(g, key=lambda k: (k[0], k[1] or 0)))

        raise HarnessError(
            f"{where}: {labels[0]} and {labels[1]} share no model and budget ({labels[0]}: {listing(b_groups)}; "
            f"{labels[1]}: {listing(a_groups)}); a paired comparison needs both methods run on the same model at "
            f"the same budget."
        )
    return groups
