"""``harness verify``: every claim of a claims file against the records of results directories,
one verdict per claim, results directory, model and budget — with the numbers beside it.

>>> from harness.claims import load_claims, verify_claims
>>> from harness.store import ResultStore
>>> rows = verify_claims(load_claims("suites/claims/crvq.yaml"), [ResultStore("results/quickstart")])  # doctest: +SKIP
>>> print(rows[0].line())  # doctest: +SKIP
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.analysis.stats import DEFAULT_RESAMPLES
from harness.claims.cover import measure_check
from harness.claims.schema import Claim, ClaimsFile, parse_metric
from harness.claims.verdict import NOT_COVERED, Measurement, verdict_of
from harness.record import CellRecord
from harness.store import ResultStore

__all__ = ["ClaimVerdict", "model_matches", "verify_claims"]

Record = CellRecord


def _aliases(name: str) -> set[str]:
    """A model name with its shape-preset / hub-id aliases (meta-llama/Llama-2-7b-hf ~ llama2-7b)."""
    from harness.models.shapes import HUB_PRESETS

    names = {name, name.rstrip("/").split("/")[-1]}
    names |= {HUB_PRESETS[n] for n in list(names) if n in HUB_PRESETS}
    names |= {hub for hub, preset in HUB_PRESETS.items() if preset in names}
    return {n.lower() for n in names}


def model_matches(pattern: str, record: Record) -> bool:
    """True when the record's model (id or label, or an alias of them) is the claimed model."""
    model = record.model or {}
    names = set().union(*(_aliases(str(n)) for n in (model.get("id"), model.get("label")) if n))
    patterns = {pattern.lower()} | (_aliases(pattern) if not any(c in pattern for c in "*?[") else set())
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


@dataclass(frozen=True)
class ClaimVerdict:
    """The verdict of one claim on one results directory, model and budget."""

    claim: Claim
    results: str
    model: str | None
    budget: int | None
    verdict: str
    measurement: Measurement | None
    stand_in: bool = False
    reason: str = ""  # why not covered

    @property
    def scope(self) -> str:
        if self.model is None:
            return ""
        if self.stand_in:
            return f"checked on a stand-in ({self.model}), not the claimed model"
        return "the claimed model"

    @property
    def claimed_text(self) -> str:
        check = self.claim.check
        low, high = check.claimed
        suffix = "%" if check.unit == "percent" else ""

        def num(x: float) -> str:
            text = f"{x:g}".replace("inf", "∞").replace("-", "−")
            return ("+" + text) if check.unit != "value" and x > 0 else text

        if low == high:
            text = f"{num(low)}{suffix}"
        elif low == float("-inf") or high == float("inf"):
            text = f"≤ {num(high)}{suffix}" if low == float("-inf") else f"≥ {num(low)}{suffix}"
        else:
            text = f"[{num(low)}, {num(high)}]{suffix}"
        points = "" if not suffix else " point" if check.tolerance == 1 else " points"
        return text + (f" ± {check.tolerance:g}{points}" if check.tolerance else "")

    def line(self, *, with_claim: bool = True) -> str:
        """One line: ``<claim> @ <model>/b<budget> [<results>]: <VERDICT> — measured … vs claimed …``."""
        group = f"{self.model or '-'}/{'-' if self.budget is None else f'b{self.budget}'}"
        head = f"{self.claim.id + ' @ ' if with_claim else ''}{group} [{self.results}]: {self.verdict.upper()}"
        if self.measurement is None:
            return f"{head} — {self.reason}"
        m = self.measurement
        metric = self.claim.check.metric
        what = {"percent": f"Δ{metric} (relative)", "absolute": f"Δ{metric}", "value": metric}[m.unit]
        sides = ""
        is_bits = metric in ("bits", "bits_paper", "model_bits")
        if m.base is not None:
            fmt = _fmt_bits if is_bits else _fmt
            sides = f"; {m.base_label} {fmt(m.base)} → {m.against_label} {fmt(m.against)}"
        elif m.against_label:
            sides = f"; {m.against_label}"
        bits = ""
        if m.against_bits is not None and not is_bits:
            base_bits = "?" if m.base_bits is None else f"{m.base_bits:.3f}"
            bits = f" at {base_bits + ' → ' if m.base is not None else ''}{m.against_bits:.3f} {self.claim.check.bits}"
        parts = [f"{head} — measured {what} {m.effect_text(metric)} vs claimed {self.claimed_text}{sides}{bits}",
                 f"{m.how}"]
        parts += [m.matched] if m.matched else []
        parts += list(m.notes)
        if self.stand_in:
            parts.append(self.scope)
        return "; ".join(parts)

    def to_row(self) -> dict[str, Any]:
        check = self.claim.check
        low, high = check.claimed
        row = {
            "claim": self.claim.id, "source": self.claim.source, "table": self.claim.table or "",
            "results": self.results, "model": self.model or "", "budget": self.budget, "claimed_model": check.model,
            "stand_in": self.stand_in, "metric": check.metric, "unit": check.unit,
            "base": check.base.describe() if check.base else "",
            "against": (check.against or check.method).describe(), "at": check.at,
            "claimed_low": low, "claimed_high": high, "tolerance": check.tolerance, "verdict": self.verdict,
        }
        row.update(self.measurement.to_dict() if self.measurement else {
            "measured": None, "ci_low": None, "ci_high": None, "level": check.level, "base_value": None,
            "against_value": None, "base_bits": None, "against_bits": None, "seeds": None, "windows": None, "how": "",
            "matched_bits": ""})
        row["notes"] = "; ".join(list(self.measurement.notes) if self.measurement else [self.reason])
        return row


def _fmt(x: float) -> str:
    from harness.analysis.compare import fmt_number

    return fmt_number(x)


def _fmt_bits(x: float | None) -> str:
    return "?" if x is None else f"{x:.4f}"


def verify_claim(claim: Claim, records: Sequence[Record], results: str, *, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> list[ClaimVerdict]:
    """Verdicts of one claim on one results directory's records (at least one row: not covered)."""
    check = claim.check
    metric = parse_metric(check.metric)
    rows = []
    for cover in measure_check(check, records, results, resamples=resamples, seed=seed):
        stand_in = cover.model is not None and not any(
            model_matches(check.model, r) for r in records if (r.model or {}).get("label") == cover.model
            or str(r.label or "").split("/")[0] == cover.model)
        if cover.measurement is None:
            rows.append(ClaimVerdict(claim, results, cover.model, cover.budget, NOT_COVERED, None, stand_in, cover.reason))
            continue
        m = cover.measurement
        verdict = verdict_of(m.low, m.high, check.claimed, check.tolerance, value_claim=check.change is None,
                             lower_is_better=metric.lower_is_better)
        rows.append(ClaimVerdict(claim, results, cover.model, cover.budget, verdict, m, stand_in))
    return rows


def verify_claims(claims: ClaimsFile, stores: Sequence[ResultStore | tuple[str, Sequence[Record | Mapping[str, Any]]]],
                  *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> list[ClaimVerdict]:
    """Every claim on every results directory (a store, or ``(name, records)``; dicts are read as
    records), claims in file order."""
    sources = [(s.root.name, s.records()) if isinstance(s, ResultStore) else (s[0], [CellRecord.load(r) for r in s[1]])
               for s in stores]
    return [row for claim in claims.claims for name, records in sources
            for row in verify_claim(claim, records, name, resamples=resamples, seed=seed)]
