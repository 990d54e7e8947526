"""`zero_shot`: 0-shot accuracy through lm-eval (`harness.metrics.zeroshot`).

Its suite block is `ZeroShotSpec` (`harness.suite.schema`); the result is
`ZeroShotResult.to_dict()`. Per-task results are cached under the store's
`zeroshot/<model identity>/`, so cells that differ only in their evaluations share them.
A failing task is recorded in the result; so is a failure of the whole evaluation (e.g.
lm-eval missing), as `{"tasks": {}, "errors": [...], "error": {...}}`: the cell stays ok.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.evaluations.base import Evaluation, EvaluationContext
from harness.identity import IdentityScope, cell_identity
from harness.store import ResultStore
from harness.suite.schema import Cell, ZeroShotSpec

logger = logging.getLogger(__name__)


def zeroshot_cache_dir(store: ResultStore, cell: Cell) -> Path:
    """`<root>/zeroshot/<model identity>/`: lm-eval results per task of the cell's quantized model."""
    return store.zeroshot_cache_dir(cell_identity(cell.model_dump(mode="json"), IdentityScope.MODEL))


class ZeroShotEvaluation(Evaluation):
    name = "zero_shot"
    Config = ZeroShotSpec

    def run(self, context: EvaluationContext) -> dict[str, Any]:
        from harness.metrics.zeroshot import evaluate_zero_shot

        spec: ZeroShotSpec = self.config
        try:
            result = evaluate_zero_shot(
                context.model, context.tokenizer, spec.tasks, batch_size=spec.batch_size, limit=spec.limit,
                cache_dir=zeroshot_cache_dir(context.store, context.cell),
            )
        except Exception as exc:
            logger.error("%s: zero-shot evaluation failed: %s: %s", context.label, type(exc).__name__, exc)
            return {"tasks": {}, "errors": list(spec.tasks), "error": {"type": type(exc).__name__, "message": str(exc)}}
        return result.to_dict()  # (each failing task is logged by the evaluator)
