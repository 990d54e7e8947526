"""Claims with verdicts: a published claim written once as data (a claims file, validated like a
suite) and checked against results with its uncertainty (``harness verify``).

- :mod:`harness.claims.schema` — the claims file (sources, claims, their checkable form);
- :mod:`harness.claims.verdict` — the six verdicts and how a CI decides between them;
- :mod:`harness.claims.measure` / :mod:`harness.claims.cover` — the measured effect per model and
  budget (the paired bootstrap of ``harness compare``; matched bits on the base's frontier);
- :mod:`harness.claims.verify` — one verdict row per claim, results directory, model and budget;
- :mod:`harness.claims.report` — ``tables/claims.{md,csv}`` (also shown in ``report.html``).
"""
from __future__ import annotations

from harness.claims.schema import ClaimsError, ClaimsFile, load_claims
from harness.claims.verdict import VERDICTS, verdict_of
from harness.claims.verify import ClaimVerdict, verify_claims

__all__ = ["VERDICTS", "ClaimVerdict", "ClaimsError", "ClaimsFile", "load_claims", "verdict_of", "verify_claims"]
