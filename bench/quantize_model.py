"""Time to quantize the whole embedded model with one method, and the peak memory.

Usage: python bench/quantize_model.py --method gptq --params '{"bits": 4}' \
           [--num-sequences 128] [--seqlen 512] [--out bench/results/gptq4_quantize.json]

Measures the full calibrated path the harness uses (capture, H accumulation, per-layer
quantization, block propagation): wall time, peak resident memory (RSS high-water mark of
this process), and the model's perplexity on the first 32 evaluation windows as a sanity check.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_calibration_options, bench_parser, calibration_label, embedded_calibration, parse_args, processor, timed,
    write_json,
)
from harness.data import eval_windows  # noqa: E402
from harness.metrics.perplexity import perplexity  # noqa: E402
from harness.quantize import quantize  # noqa: E402
from harness.registry import build_quantizer  # noqa: E402


def main() -> None:
    parser = bench_parser()
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--params", default="{}", help="JSON params (merged over --budget preset)")
    parser.add_argument("--budget", type=int, default=None)
    add_calibration_options(parser)
    parser.add_argument("--ppl-windows", type=int, default=32)
    args = parse_args(parser)

    quantizer = build_quantizer(args.method, args.budget, json.loads(args.params))
    loaded, calib = embedded_calibration(args)

    logs, seconds, _, _ = timed(lambda: quantize(
        loaded.model, quantizer, adapter=loaded.adapter, calibration=calib, seed=0, progress=True,
        calibration_dtype=getattr(torch, args.calibration_dtype),
    ))
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    windows = eval_windows("embedded", loaded.tokenizer, args.seqlen, max_windows=args.ppl_windows)
    ppl = perplexity(loaded.model, windows, progress=False).ppl
    write_json({
        "method": args.method,
        "params": quantizer.config.model_dump(),
        "calibration": calibration_label(args),
        "quantize_seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "layers": len([entry for entry in logs if "bits" in entry]),
        f"ppl_first_{args.ppl_windows}_windows": round(ppl, 3),
        "machine": f"{processor()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }, args.out)


if __name__ == "__main__":
    main()
