"""Verdicts: what a measured effect and its confidence interval say about a claimed effect.

For a claimed change (a number, or a range [low, high]; ``c`` below) with tolerance ``t`` and
a measured CI ``[lo, hi]`` (closed: a claim exactly at an edge of the CI is inside it):

- **inconclusive**: the CI contains zero *and* the claim (it cannot tell the claim from no effect);
- **reproduced**: the CI contains the claim, or lies within the tolerance (``[c − t, c + t]``;
  this comes first: a CI inside a band that holds zero is reproduced, not inconclusive);
- **contradicted**: the CI excludes zero with the sign opposite to the claim's (for a claim of
  no change — a range that contains zero — a CI that excludes the range contradicts it);
  a one-sided claim (``[-.inf, 0]``: "any reduction") is a direction: reproduced by a CI below
  zero, inconclusive for one that holds zero, contradicted by one above;
- **weaker**: same sign as the claim (or not distinguishable from zero), the CI between zero and
  the claim: the effect is smaller than claimed;
- **stronger**: the CI lies beyond the claim: the effect is larger than claimed;
- **not covered**: the results have no cell (or no comparable cells) for the claim.

A claimed *value* (e.g. a published perplexity) has no zero: the CI of the measured value either
contains it (or lies within the tolerance: **reproduced**) or lies on its better side
(**stronger**: lower perplexity/bits, higher accuracy/speed) or worse side (**weaker**).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.analysis.compare import fmt_number

__all__ = ["VERDICTS", "Measurement", "verdict_of"]

REPRODUCED, WEAKER, STRONGER = "reproduced", "weaker", "stronger"
CONTRADICTED, INCONCLUSIVE, NOT_COVERED = "contradicted", "inconclusive", "not covered"
VERDICTS = (REPRODUCED, WEAKER, STRONGER, CONTRADICTED, INCONCLUSIVE, NOT_COVERED)


def verdict_of(
    low: float, high: float, claimed: tuple[float, float], tolerance: float = 0.0, *,
    value_claim: bool = False, lower_is_better: bool = True,
) -> str:
    """The verdict of a measured CI ``[low, high]`` on a claimed change (or value) range."""
    c_lo, c_hi = claimed
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_COVERED
    meets = low <= c_hi and c_lo <= high
    within = c_lo - tolerance <= low and high <= c_hi + tolerance
    if value_claim:
        if meets or within:
            return REPRODUCED
        below = high < c_lo
        return STRONGER if below == lower_is_better else WEAKER
    # a claim of no change (a range holding zero) is met by a CI holding zero; a one-sided claim
    # ("any reduction": [-inf, 0]) is a claimed direction, and a CI holding zero cannot confirm it
    one_sided = (math.isinf(c_lo) and c_hi == 0) or (c_lo == 0 and math.isinf(c_hi))
    claim_has_zero = c_lo <= 0 <= c_hi and not one_sided
    if within:  # first: a CI inside the tolerance band agrees even where the band holds zero
        return REPRODUCED
    if meets:
        return INCONCLUSIVE if low <= 0 <= high and not claim_has_zero else REPRODUCED
    if claim_has_zero:
        return CONTRADICTED
    positive = c_lo > 0
    if (positive and high < 0) or (not positive and low > 0):
        return CONTRADICTED
    beyond = low > c_hi if positive else high < c_lo
    return STRONGER if beyond else WEAKER


@dataclass(frozen=True)
class Measurement:
    """A measured effect (or value) with its CI, and how it was measured.

    ``value``/``low``/``high`` are in the claim's unit: percent of the base's value, the metric's
    unit (accuracy in percent points), or the value itself. ``base``/``against`` are the two sides'
    metric values (``base`` None for a value claim)."""

    value: float
    low: float
    high: float
    level: float
    unit: str  # percent | absolute | value
    against: float
    base: float | None = None
    against_bits: float | None = None
    base_bits: float | None = None
    against_label: str = ""  # the method line(s) measured, e.g. crvq-r0.02-e3
    base_label: str = ""
    seeds: int = 1
    windows: int | None = None
    how: str = ""  # e.g. "paired bootstrap over 40 windows × 3 seeds"
    matched: str = ""  # the matched-bits interpolation, when used
    notes: tuple[str, ...] = field(default_factory=tuple)

    def effect_text(self, metric: str) -> str:
        """``−24.9% [−27.1, −22.6]`` (95% CI) or ``124.02 [120.1, 128.3]``."""
        suffix = "%" if self.unit == "percent" else ""
        sign = "" if self.unit == "value" else ("+" if self.value >= 0 else "")
        interval = f"[{_num(self.low)}, {_num(self.high)}]"
        exact = self.low == self.high == self.value
        return f"{sign}{_num(self.value)}{suffix}" + ("" if exact else f" {self.level:.0%} CI {interval}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "measured": self.value, "ci_low": self.low, "ci_high": self.high, "level": self.level,
            "base_value": self.base, "against_value": self.against, "base_bits": self.base_bits,
            "against_bits": self.against_bits, "base_line": self.base_label, "against_line": self.against_label,
            "seeds": self.seeds, "windows": self.windows, "how": self.how,
            "matched_bits": self.matched,
        }


_num = fmt_number
