"""`throughput`: decode throughput (`harness.metrics.throughput`) of the cell's model and, in the
same run (repeats interleaved), of the unquantized model loaded again; each result row of a
quantized cell gets `speedup_vs_reference`. Its suite block is `ThroughputSpec`."""
from __future__ import annotations

from typing import Any

from harness.evaluations.base import Evaluation, EvaluationContext
from harness.suite.schema import ThroughputSpec


class ThroughputEvaluation(Evaluation):
    name = "throughput"
    Config = ThroughputSpec

    def run(self, context: EvaluationContext) -> dict[str, Any]:
        from harness.metrics.throughput import DecodeSettings, decode_throughput

        spec: ThroughputSpec = self.config
        settings = DecodeSettings(
            batch_sizes=tuple(spec.batch_sizes), prompt_len=spec.prompt_len, new_tokens=spec.new_tokens,
            warmup=spec.warmup, repeats=spec.repeats, cuda_graphs=spec.cuda_graphs, seed=context.cell.seed,
        )
        models = {"model": context.model}
        if spec.reference and context.quantized:
            models["reference"] = context.load_unquantized()
        records = decode_throughput(models, settings, progress=context.progress)
        result = records["model"]
        reference = records.get("reference")
        if reference is not None:
            result["reference"] = {k: reference[k] for k in ("weights_gib", "results")}
            for row, ref_row in zip(result["results"], reference["results"]):
                row["speedup_vs_reference"] = row["tokens_per_s"] / ref_row["tokens_per_s"]
        return result
