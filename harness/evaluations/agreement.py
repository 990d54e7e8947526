"""`agreement`: do the packed decode kernels compute the evaluated model? (`harness.metrics.agreement`)

Automatic: it runs for every quantized cell, with no suite block.
"""
from __future__ import annotations

from typing import Any

from harness.evaluations.base import Evaluation, EvaluationContext


class AgreementEvaluation(Evaluation):
    name = "agreement"
    automatic = True

    def run(self, context: EvaluationContext) -> dict[str, Any] | None:
        from harness.metrics.agreement import logit_agreement

        return logit_agreement(context.model)
