"""Which (model, budget) groups of a results directory a claim covers, and the measurement of
each: equal budgets paired by seed as ``harness compare`` pairs them, or — for ``at:
matched_bits`` — the against cells paired with the base's frontier interpolated at their bits."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence

import numpy as np

from harness.analysis.compare import by_seed
from harness.analysis.pareto import pareto_indices
from harness.analysis.side import budget_text
from harness.analysis.stats import DEFAULT_RESAMPLES
from harness.claims.measure import (
    Base,
    Cover,
    NotCovered,
    Record,
    acc_effect,
    algorithm_notes,
    at,
    budget_of,
    dataset_of,
    mean_bits,
    nll_effect,
    one_line,
    pairs_of,
    plain_effect,
    side_records,
)
from harness.claims.schema import Check, Metric, parse_metric
from harness.claims.verdict import Measurement
from harness.errors import HarnessError
from harness.identity import IdentityScope, canonical_json, identity_payload

__all__ = ["measure_check"]


def _models(*groups: Sequence[Record]) -> list[str]:
    return list(dict.fromkeys(r.model_label for rows in groups for r in rows))


def _sorted_budgets(budgets: set[int | None]) -> list[int | None]:
    return sorted(budgets, key=lambda b: (b is not None, b or 0))


def _measure(check: Check, metric: Metric, model: str, budget: int | None, bases: list[Base],
             against: list[Record], where: str, resamples: int, seed: int) -> Measurement:
    if metric.kind in ("ppl", "bpb"):
        m = nll_effect(check, metric, against, bases, where, resamples, seed)
    elif metric.kind == "acc":
        m = acc_effect(check, metric, model, budget, [(b.low, a) for b, a in zip(bases, against)], against)
    else:
        m = plain_effect(check, metric, [(b.low, a) for b, a in zip(bases, against)], against)
    base_bits = None
    if bases:
        values = [b.mix(lambda r: np.nan if (v := r.metric(check.bits)) is None else v) for b in bases]
        base_bits = float(np.mean(values)) if np.isfinite(values).all() else None
    base_label = ""
    if bases:
        lines = list(dict.fromkeys(r.method_label for b in bases for r in b.records()))
        base_label = lines[0] if len(lines) == 1 else f"{check.base.describe()} frontier"
    base_rows = [r for b in bases for r in b.records()]
    notes = (*m.notes, *algorithm_notes(base_rows + list(against)))
    return dataclasses.replace(m, against_bits=mean_bits(against, check.bits), base_bits=base_bits,
                               against_label=against[0].method_label, base_label=base_label, notes=notes)


def measure_check(check: Check, records: Sequence[Record], where: str, *,
                  resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> list[Cover]:
    """One :class:`Cover` per (model, budget) of ``records`` the check's sides cover; a single
    Cover without a model when no cell of the claim's methods is there."""
    metric = parse_metric(check.metric)
    sides = {name: side_records(records, side) for name, side in check.sides.items()}
    missing = [f"{name} {check.sides[name].describe()}" for name, rows in sides.items() if not rows]
    if missing:
        return [Cover(None, check.budget, reason=f"no finished cell of {' and '.join(missing)}")]
    try:
        if check.change is None:
            return _value_covers(check, metric, one_line(sides["method"], check.method), where, resamples, seed)
        against = one_line(sides["against"], check.against)
        if check.at == "matched_bits":
            labels = {r.method_label for r in against}
            base = [r for r in sides["base"] if r.method_label not in labels]
            if check.base.label is None and any(r.method_label == check.base.method for r in base):
                # as at equal budgets: without a label, the lines labelled like the method (the
                # published algorithm), not a variant's (aqlm-harness) on the same frontier
                base = [r for r in base if r.method_label == check.base.method]
            if check.vary is not None:
                recipe = _recipe(against[0], check.vary)
                base = [r for r in base if _recipe(r, check.vary) == recipe]
            if not base:
                alone = "" if check.vary is None else f" that differs from it in {', '.join(check.vary)} alone"
                return [Cover(None, check.budget, reason=f"no {check.base.describe()} cell besides the against line "
                                                         f"{', '.join(sorted(labels))}{alone} to build a frontier from")]
            return _matched_covers(check, metric, base, against, where, resamples, seed)
        return _budget_covers(check, metric, one_line(sides["base"], check.base), against, where, resamples, seed)
    except NotCovered as exc:
        return [Cover(None, check.budget, reason=str(exc))]


def _recipe(record: Record, vary: Sequence[str]) -> str:
    """How ``record``'s quantized model was made, without its seeds, its label and the params in
    ``vary``: equal for the lines of one ablation over those params (``Check.vary``)."""
    payload = identity_payload(record.cell or {}, IdentityScope.REPEAT_GROUP)
    for descriptive in ("evaluations", "method_label"):
        payload.pop(descriptive, None)
    params = payload.get("params") or record.params or {}
    payload["params"] = {k: v for k, v in params.items() if k not in vary}
    return canonical_json(payload)


def _run(check: Check, metric: Metric, model: str, budget: int | None, make, where: str, resamples: int,
         seed: int) -> Cover:
    """Cover of one group: ``make(notes)`` gives (bases, against, matched-bits text) and adds its
    pairing notes; a failure becomes the reason it is not covered."""
    try:
        notes: list[str] = []
        bases, against, matched = make(notes)
        m = _measure(check, metric, model, budget, bases, against, where, resamples, seed)
        return Cover(model, budget, dataclasses.replace(m, matched=matched, notes=(*notes, *m.notes)))
    except (NotCovered, HarnessError, ValueError) as exc:
        return Cover(model, budget, reason=str(exc))
    except ZeroDivisionError:
        return Cover(model, budget, reason=f"the base's {check.metric} is 0, so no relative change can be computed")


def _value_covers(check: Check, metric: Metric, rows: list[Record], where: str, resamples: int, seed: int) -> list[Cover]:
    covers = []
    for model in _models(rows):
        mine = [r for r in rows if r.model_label == model]
        budgets = [check.budget] if check.budget is not None else _sorted_budgets({budget_of(r) for r in mine})
        for budget in budgets:
            cells = [r for r in mine if budget_of(r) == budget]
            if not cells:
                have = ", ".join(budget_text(b) for b in _sorted_budgets({budget_of(r) for r in mine}))
                covers.append(Cover(model, budget, reason=f"no {check.method.describe()} cell at budget {budget} on "
                                                          f"{model} (it has {have})"))
                continue

            def make(notes, cells=cells, budget=budget, model=model):
                group = f"{model}/{budget_text(budget)}"
                return [], list(by_seed(cells, cells[0].method_label, group, where).values()), ""

            covers.append(_run(check, metric, model, budget, make, where, resamples, seed))
    return covers


def _per_model(check: Check, base: list[Record], against: list[Record],
               covers: list[Cover]) -> Iterator[tuple[str, list[Record], list[Record]]]:
    """(model, base rows, against rows) for every model both sides ran; a model that one side
    lacks gets its not-covered row in ``covers``."""
    for model in _models(against, base):
        b_rows = [r for r in base if r.model_label == model]
        a_rows = [r for r in against if r.model_label == model]
        if b_rows and a_rows:
            yield model, b_rows, a_rows
        else:
            side = check.base if not b_rows else check.against
            covers.append(Cover(model, check.budget, reason=f"no {side.describe()} cell on {model}"))


def _budget_covers(check: Check, metric: Metric, base: list[Record], against: list[Record], where: str,
                   resamples: int, seed: int) -> list[Cover]:
    covers: list[Cover] = []
    for model, b_rows, a_rows in _per_model(check, base, against, covers):
        b_budgets, a_budgets = {budget_of(r) for r in b_rows}, {budget_of(r) for r in a_rows}
        if check.budget is not None:
            budgets = [check.budget]
        else:
            budgets = [b for b in _sorted_budgets((b_budgets | a_budgets) - {None})
                       if (b in b_budgets or None in b_budgets) and (b in a_budgets or None in a_budgets)]
        if not budgets:
            covers.append(Cover(model, None, reason=f"{check.base.describe()} and {check.against.describe()} share no "
                                                    f"budget on {model}"))
            continue
        for budget in budgets:
            bb, aa = at(b_rows, model, budget), at(a_rows, model, budget)
            if not bb or not aa:
                side = check.base if not bb else check.against
                covers.append(Cover(model, budget, reason=f"no {side.describe()} cell at budget {budget} on {model}"))
                continue

            def make(notes, bb=bb, aa=aa, budget=budget, model=model):
                pairs = pairs_of(bb, aa, f"{model}/{budget_text(budget)}", where, notes)
                return [Base(b) for b, _ in pairs], [a for _, a in pairs], ""

            covers.append(_run(check, metric, model, budget, make, where, resamples, seed))
    return covers


# --------------------------------------------------------------------------- matched bits

def _config(r: Record) -> str:
    return json.dumps([r.method_label, budget_of(r), r.params or {}], sort_keys=True, default=str)


def _frontier(check: Check, rows: list[Record], ds: str) -> list[tuple[float, list[Record]]]:
    """The base's Pareto frontier (bits vs mean NLL on ``ds``, over its cell configs, seeds averaged),
    sorted by bits: [(bits, records of that config), ...]."""
    configs: dict[str, list[Record]] = {}
    for r in rows:
        configs.setdefault(_config(r), []).append(r)
    points = []
    for group in configs.values():
        bits = mean_bits(group, check.bits)
        try:
            nll = float(np.mean([np.mean(r.window_nll(ds)) for r in group]))
        except (KeyError, TypeError):
            continue
        if bits is not None:
            points.append((bits, nll, group))
    if not points:
        raise NotCovered(f"no base cell with {check.bits} and {ds} losses to build a frontier from")
    front = pareto_indices([p[0] for p in points], [p[1] for p in points])
    return [(points[i][0], points[i][2]) for i in front]


def _label(rows: list[Record]) -> str:
    return f"{rows[0].method_label} {budget_text(budget_of(rows[0]))}".replace(" -", "")


def _matched_covers(check: Check, metric: Metric, base: list[Record], against: list[Record], where: str,
                    resamples: int, seed: int) -> list[Cover]:
    covers: list[Cover] = []
    base_name = check.base.describe()
    for model, b_rows, a_rows in _per_model(check, base, against, covers):
        budgets = [check.budget] if check.budget is not None else _sorted_budgets({budget_of(r) for r in a_rows})
        for budget in budgets:
            aa = [r for r in a_rows if budget_of(r) == budget]
            if not aa:
                covers.append(Cover(model, budget, reason=f"no {check.against.describe()} cell at budget {budget} on {model}"))
                continue

            def make(notes, aa=aa, budget=budget, model=model, b_rows=b_rows):
                ds, _ = dataset_of(b_rows + aa, metric.what)
                front = _frontier(check, b_rows, ds)
                x = mean_bits(aa, check.bits)
                if x is None:
                    raise NotCovered(f"the {check.against.describe()} cells record no {check.bits}")
                xs = [p[0] for p in front]
                if not xs[0] <= x <= xs[-1]:
                    span = f"{xs[0]:.3f}" if len(xs) == 1 else f"{xs[0]:.3f}–{xs[-1]:.3f}"
                    raise NotCovered(
                        f"matched bits: {aa[0].method_label} at {x:.3f} {check.bits} lies outside {base_name}'s "
                        f"frontier on {model} ({span} {check.bits}); a frontier is not extrapolated: run {base_name} at "
                        f"budgets on both sides of it")
                i = int(np.searchsorted(xs, x, side="right")) - 1
                lo, hi = front[i], front[min(i + 1, len(front) - 1)]
                alpha = 0.0 if hi[0] == lo[0] else (x - lo[0]) / (hi[0] - lo[0])
                group = f"{model}/{budget_text(budget)}"
                to_lo = {a.key: b for b, a in pairs_of(lo[1], aa, group, where, notes)}
                to_hi = {a.key: b for b, a in pairs_of(hi[1], aa, group, where, notes)} if alpha > 0 else to_lo
                keys = [a.key for a in aa if a.key in to_lo and a.key in to_hi]
                bases = [Base(to_lo[k], to_hi[k] if alpha > 0 else None, alpha) for k in keys]
                against_rows = [next(a for a in aa if a.key == k) for k in keys]
                against_name = aa[0].method_label
                if alpha == 0:
                    text = f"matched bits: {_label(lo[1])} at {lo[0]:.3f} {check.bits}, the same as {against_name}"
                else:
                    text = (f"matched bits: {base_name}'s frontier interpolated at {against_name}'s {x:.3f} "
                            f"{check.bits}, between {_label(lo[1])} ({lo[0]:.3f}) and {_label(hi[1])} ({hi[0]:.3f}), "
                            f"log-perplexity linear in bits per window")
                return bases, against_rows, text

            covers.append(_run(check, metric, model, budget, make, where, resamples, seed))
    return covers
