"""`perplexity`: perplexity and bits per byte of held-out text (`harness.metrics.perplexity`).

Its suite block is `PerplexitySpec` (`harness.suite.schema`); the result, per dataset, is
`PerplexityResult.to_dict()` plus the hash of the evaluated tokens (and, in the identical-text
setting, the text's size and SHA-256). A NaN/inf mean loss fails the cell (`NonFiniteError`).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from harness.evaluations.base import Evaluation, EvaluationContext, NonFiniteError
from harness.suite.schema import PerplexitySpec

logger = logging.getLogger(__name__)


class PerplexityEvaluation(Evaluation):
    name = "perplexity"
    Config = PerplexitySpec

    def run(self, context: EvaluationContext) -> dict[str, Any]:
        from harness.data import token_hash
        from harness.data.windows import eval_text_windows
        from harness.metrics.perplexity import perplexity

        spec: PerplexitySpec = self.config
        out: dict[str, Any] = {}
        for dataset in spec.datasets:
            seqlen = spec.seqlen or context.default_seqlen
            evaluated = eval_text_windows(
                dataset, context.tokenizer, seqlen, max_windows=spec.max_windows, text_bytes=spec.text_bytes,
                base_dir=context.base_dir,
            )
            windows = evaluated.windows
            result = perplexity(
                context.model, windows, batch_size=spec.batch_size, progress=context.progress, desc=f"ppl {dataset}",
                window_bytes=evaluated.window_bytes,
            )
            if not math.isfinite(result.nll):
                raise NonFiniteError(
                    f"{dataset} perplexity: the mean loss is {result.nll} (NaN/inf): the quantized model "
                    f"produces non-finite logits; check the method's params (e.g. a larger group size or more bits)"
                )
            out[dataset] = {
                **result.to_dict(),
                "token_hash": token_hash(windows if isinstance(windows, torch.Tensor) else torch.cat(windows)),
                **({"text_bytes": evaluated.text_bytes, "text_sha256": evaluated.text_sha256} if evaluated.text_bytes else {}),
            }
            logger.info(
                "%s: %s perplexity %.3f, %s bits/byte (%d windows of %d)", context.label, dataset, result.ppl,
                f"{result.bpb:.4f}" if result.bpb is not None else "no", result.windows, seqlen,
            )
        return out
